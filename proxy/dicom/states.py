"""The DICOM Upper Layer state machine (PS3.8 9.2), as the standard's own table.

Job: say, for a state and an event, which action the upper layer takes and which
state follows — nothing else. ``TABLE`` is PS3.8 Table 9-10 cell by cell;
``NEXT_STATE`` is the "next state" column of Tables 9-6 to 9-9.

Rule 1: pure data and one pure function; the association object performs the actions.
Rule 2: a cell the standard fills is in ``TABLE`` exactly as printed — including the AA
        (abort) actions the standard assigns to a PDU arriving in the wrong state.
Rule 3: a cell the standard leaves empty is a local primitive the user may not issue in
        that state (e.g. P-DATA request, Evt9, after A-RELEASE-RQ was sent: Sta7);
        ``transition`` raises ``InvalidTransition`` and the state does not change.
Rule 4: two actions have two possible next states: AE-6 (Sta3 if the DUL finds the
        A-ASSOCIATE-RQ acceptable, else Sta13) and AR-8 (Sta9 for the requestor,
        Sta10 for the acceptor of a release collision); the caller says which.
Rule 5: the table is consulted for every PDU either way, so states, events and actions
        hash by identity (members are singletons), not by ``Enum.__hash__``, a Python
        function called once per key per lookup.
"""

from __future__ import annotations

from enum import Enum, unique


class State(Enum):
    __hash__ = object.__hash__          # Rule 5
    Sta1 = "Idle"
    Sta2 = "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)"
    Sta3 = "Awaiting local A-ASSOCIATE response primitive"
    Sta4 = "Awaiting transport connection opening to complete"
    Sta5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    Sta6 = "Association established and ready for data transfer"
    Sta7 = "Awaiting A-RELEASE-RP PDU"
    Sta8 = "Awaiting local A-RELEASE response primitive"
    Sta9 = "Release collision requestor side; awaiting A-RELEASE response primitive"
    Sta10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    Sta11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    Sta12 = "Release collision acceptor side; awaiting A-RELEASE response primitive"
    Sta13 = "Awaiting transport connection close indication"


class Event(Enum):
    __hash__ = object.__hash__          # Rule 5
    Evt1 = "A-ASSOCIATE request (local user)"
    Evt2 = "Transport connect confirmation (local transport service)"
    Evt3 = "A-ASSOCIATE-AC PDU (received on transport connection)"
    Evt4 = "A-ASSOCIATE-RJ PDU (received on transport connection)"
    Evt5 = "Transport connection indication (local transport service)"
    Evt6 = "A-ASSOCIATE-RQ PDU (received on transport connection)"
    Evt7 = "A-ASSOCIATE response primitive (accept)"
    Evt8 = "A-ASSOCIATE response primitive (reject)"
    Evt9 = "P-DATA request primitive"
    Evt10 = "P-DATA-TF PDU (received on transport connection)"
    Evt11 = "A-RELEASE request primitive"
    Evt12 = "A-RELEASE-RQ PDU (received on transport connection)"
    Evt13 = "A-RELEASE-RP PDU (received on transport connection)"
    Evt14 = "A-RELEASE response primitive"
    Evt15 = "A-ABORT request primitive"
    Evt16 = "A-ABORT PDU (received on transport connection)"
    Evt17 = "Transport connection closed indication (local transport service)"
    Evt18 = "ARTIM timer expired (Association reject/release timer)"
    Evt19 = "Unrecognized or invalid PDU received"


@unique
class Action(Enum):
    __hash__ = object.__hash__          # Rule 5
    AE1 = "AE-1: Issue TRANSPORT CONNECT request primitive to local transport service"
    AE2 = "AE-2: Send A-ASSOCIATE-RQ-PDU"
    AE3 = "AE-3: Issue A-ASSOCIATE confirmation (accept) primitive"
    AE4 = "AE-4: Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection"
    AE5 = "AE-5: Issue Transport connection response primitive; start ARTIM timer"
    AE6 = ("AE-6: Stop ARTIM timer and if A-ASSOCIATE-RQ acceptable by service-provider: issue "
           "A-ASSOCIATE indication primitive; otherwise send A-ASSOCIATE-RJ-PDU and start "
           "ARTIM timer")
    AE7 = "AE-7: Send A-ASSOCIATE-AC PDU"
    AE8 = "AE-8: Send A-ASSOCIATE-RJ PDU and start ARTIM timer"
    DT1 = "DT-1: Send P-DATA-TF PDU"
    DT2 = "DT-2: Send P-DATA indication primitive"
    AR1 = "AR-1: Send A-RELEASE-RQ PDU"
    AR2 = "AR-2: Issue A-RELEASE indication primitive"
    AR3 = "AR-3: Issue A-RELEASE confirmation primitive, and close transport connection"
    AR4 = "AR-4: Issue A-RELEASE-RP PDU and start ARTIM timer"
    AR5 = "AR-5: Stop ARTIM timer"
    AR6 = "AR-6: Issue P-DATA indication"
    AR7 = "AR-7: Issue P-DATA-TF PDU"
    AR8 = "AR-8: Issue A-RELEASE indication (release collision)"
    AR9 = "AR-9: Send A-RELEASE-RP PDU"
    AR10 = "AR-10: Issue A-RELEASE confirmation primitive"
    AA1 = ("AA-1: Send A-ABORT PDU (service-user source) and start (or restart if already "
           "started) ARTIM timer")
    AA2 = "AA-2: Stop ARTIM timer if running. Close transport connection"
    AA3 = ("AA-3: If (service-user initiated abort): issue A-ABORT indication and close transport "
           "connection; otherwise (service-provider initiated abort): issue A-P-ABORT "
           "indication and close transport connection")
    AA4 = "AA-4: Issue A-P-ABORT indication primitive"
    AA5 = "AA-5: Stop ARTIM timer"
    AA6 = "AA-6: Ignore PDU"
    AA7 = "AA-7: Send A-ABORT PDU"
    AA8 = ("AA-8: Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and "
           "start ARTIM timer")

    @property
    def label(self) -> str:
        """The standard's spelling: AE-1, DT-2, AR-10, AA-8."""
        return self.value.split(":")[0]

    @property
    def description(self) -> str:
        return self.value.split(": ", 1)[1]


S, E, A = State, Event, Action

NEXT_STATE: dict[Action, State | None] = {      # None: Rule 4
    A.AE1: S.Sta4, A.AE2: S.Sta5, A.AE3: S.Sta6, A.AE4: S.Sta1, A.AE5: S.Sta2,
    A.AE6: None, A.AE7: S.Sta6, A.AE8: S.Sta13,
    A.DT1: S.Sta6, A.DT2: S.Sta6,
    A.AR1: S.Sta7, A.AR2: S.Sta8, A.AR3: S.Sta1, A.AR4: S.Sta13, A.AR5: S.Sta1,
    A.AR6: S.Sta7, A.AR7: S.Sta8, A.AR8: None, A.AR9: S.Sta11, A.AR10: S.Sta12,
    A.AA1: S.Sta13, A.AA2: S.Sta1, A.AA3: S.Sta1, A.AA4: S.Sta1, A.AA5: S.Sta1,
    A.AA6: S.Sta13, A.AA7: S.Sta13, A.AA8: S.Sta13,
}


def _row(*cells: str) -> dict[State, Action]:
    """One event's row of Table 9-10: 13 cells for Sta1..Sta13, "" where empty."""
    assert len(cells) == 13
    return {State[f"Sta{i}"]: Action[c.replace("-", "")]
            for i, c in enumerate(cells, 1) if c}


_ROWS: dict[Event, dict[State, Action]] = {
    #            Sta1    Sta2    Sta3    Sta4    Sta5    Sta6    Sta7    Sta8    Sta9
    #            Sta10   Sta11   Sta12   Sta13
    E.Evt1: _row("AE-1", "", "", "", "", "", "", "", "", "", "", "", ""),
    E.Evt2: _row("", "", "", "AE-2", "", "", "", "", "", "", "", "", ""),
    E.Evt3: _row("", "AA-1", "AA-8", "", "AE-3", "AA-8", "AA-8", "AA-8", "AA-8",
                 "AA-8", "AA-8", "AA-8", "AA-6"),
    E.Evt4: _row("", "AA-1", "AA-8", "", "AE-4", "AA-8", "AA-8", "AA-8", "AA-8",
                 "AA-8", "AA-8", "AA-8", "AA-6"),
    E.Evt5: _row("AE-5", "", "", "", "", "", "", "", "", "", "", "", ""),
    E.Evt6: _row("", "AE-6", "AA-8", "", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",
                 "AA-8", "AA-8", "AA-8", "AA-7"),
    E.Evt7: _row("", "", "AE-7", "", "", "", "", "", "", "", "", "", ""),
    E.Evt8: _row("", "", "AE-8", "", "", "", "", "", "", "", "", "", ""),
    E.Evt9: _row("", "", "", "", "", "DT-1", "", "AR-7", "", "", "", "", ""),
    E.Evt10: _row("", "AA-1", "AA-8", "", "AA-8", "DT-2", "AR-6", "AA-8", "AA-8",
                  "AA-8", "AA-8", "AA-8", "AA-6"),
    E.Evt11: _row("", "", "", "", "", "AR-1", "", "", "", "", "", "", ""),
    E.Evt12: _row("", "AA-1", "AA-8", "", "AA-8", "AR-2", "AR-8", "AA-8", "AA-8",
                  "AA-8", "AA-8", "AA-8", "AA-6"),
    E.Evt13: _row("", "AA-1", "AA-8", "", "AA-8", "AA-8", "AR-3", "AA-8", "AA-8",
                  "AR-10", "AR-3", "AA-8", "AA-6"),
    E.Evt14: _row("", "", "", "", "", "", "", "AR-4", "AR-9", "", "", "AR-4", ""),
    E.Evt15: _row("", "", "AA-1", "AA-2", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1",
                  "AA-1", "AA-1", "AA-1", ""),
    E.Evt16: _row("", "AA-2", "AA-3", "", "AA-3", "AA-3", "AA-3", "AA-3", "AA-3",
                  "AA-3", "AA-3", "AA-3", "AA-2"),
    E.Evt17: _row("", "AA-5", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4",
                  "AA-4", "AA-4", "AA-4", "AR-5"),
    E.Evt18: _row("", "AA-2", "", "", "", "", "", "", "", "", "", "", "AA-2"),
    E.Evt19: _row("", "AA-1", "AA-8", "", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",
                  "AA-8", "AA-8", "AA-8", "AA-7"),
}

TABLE: dict[tuple[State, Event], Action] = {
    (state, event): action for event, row in _ROWS.items() for state, action in row.items()}


class InvalidTransition(Exception):
    """A local primitive issued in a state where PS3.8 Table 9-10 has no action (Rule 3)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event.name} ({event.value}) is not allowed in {state.name} "
                         f"({state.value})")
        self.state, self.event = state, event


def transition(state: State, event: Event, *, requestor: bool = True,
               acceptable: bool = True) -> tuple[Action, State]:
    """The action for ``event`` in ``state`` and the state that follows (Rules 2-4)."""
    action = TABLE.get((state, event))
    if action is None:
        raise InvalidTransition(state, event)
    following = NEXT_STATE[action]
    if following is None:
        if action is Action.AE6:
            following = State.Sta3 if acceptable else State.Sta13
        else:
            following = State.Sta9 if requestor else State.Sta10
    return action, following
