"""proxy.dicom.states: every cell of PS3.8 Table 9-10, checked against pynetdicom's
public ``pynetdicom.fsm.TRANSITION_TABLE``/``ACTIONS`` as an independent transcription,
plus the empty cells (local primitives refused) and the two split next states."""

from __future__ import annotations

import itertools

import pytest
from pynetdicom import fsm

from proxy.dicom.states import (
    NEXT_STATE,
    TABLE,
    Action,
    Event,
    InvalidTransition,
    State,
    transition,
)

CELLS = list(itertools.product(State, Event))
LOCAL_PRIMITIVES = {Event.Evt1, Event.Evt7, Event.Evt8, Event.Evt9, Event.Evt11,
                    Event.Evt14, Event.Evt15}


def _pynetdicom_cell(state: State, event: Event) -> str | None:
    name = fsm.TRANSITION_TABLE.get((event.name, state.name))
    return None if name is None else str(name)


def test_table_covers_exactly_the_cells_pynetdicom_fills() -> None:
    ours = {(s.name, e.name) for s, e in TABLE}
    theirs = {(s, e) for e, s in fsm.TRANSITION_TABLE}
    assert ours == theirs
    assert len(TABLE) == 123


@pytest.mark.parametrize(("state", "event"), CELLS, ids=[f"{s.name}-{e.name}" for s, e in CELLS])
def test_every_cell(state: State, event: Event) -> None:
    expected = _pynetdicom_cell(state, event)
    if expected is None:
        with pytest.raises(InvalidTransition):
            transition(state, event)
        return
    for requestor, acceptable in itertools.product((True, False), repeat=2):
        action, following = transition(state, event, requestor=requestor,
                                       acceptable=acceptable)
        assert action.label == expected
        theirs = fsm.ACTIONS[expected][2]
        if isinstance(theirs, tuple):          # AE-6 and AR-8: Rule 4 picks one
            assert following.name in theirs
        else:
            assert following.name == theirs


def test_actions_and_descriptions_match_the_standard_wording() -> None:
    assert {a.label for a in Action} == set(fsm.ACTIONS)
    for action in Action:
        assert action.description.split()[:2] == fsm.ACTIONS[action.label][0].split()[:2]
    assert set(NEXT_STATE) == set(Action)


def test_split_next_states() -> None:
    assert transition(State.Sta2, Event.Evt6, acceptable=True) == (Action.AE6, State.Sta3)
    assert transition(State.Sta2, Event.Evt6, acceptable=False) == (Action.AE6, State.Sta13)
    assert transition(State.Sta7, Event.Evt12, requestor=True) == (Action.AR8, State.Sta9)
    assert transition(State.Sta7, Event.Evt12, requestor=False) == (Action.AR8, State.Sta10)


def test_no_data_after_sending_release_request() -> None:
    """Issue #10: never write to an association after A-RELEASE-RQ (Sta7)."""
    assert transition(State.Sta6, Event.Evt11) == (Action.AR1, State.Sta7)
    with pytest.raises(InvalidTransition, match="Evt9"):
        transition(State.Sta7, Event.Evt9)
    # the side that received A-RELEASE-RQ may still finish sending (AR-7)
    assert transition(State.Sta8, Event.Evt9) == (Action.AR7, State.Sta8)


def test_received_pdus_in_wrong_states_abort() -> None:
    """Network events are never refused: the standard gives every state an action."""
    network = set(Event) - LOCAL_PRIMITIVES - {Event.Evt2, Event.Evt5, Event.Evt18}
    for state in set(State) - {State.Sta1, State.Sta4}:
        for event in network:
            action, _ = transition(state, event)
            assert action.label[:2] in ("AA", "AE", "AR", "DT")
    assert transition(State.Sta6, Event.Evt3)[0] is Action.AA8
    assert transition(State.Sta13, Event.Evt10)[0] is Action.AA6
