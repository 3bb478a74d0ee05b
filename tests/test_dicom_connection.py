"""proxy.dicom.connection: two sans-IO associations (requestor and acceptor) talking to
each other in memory — negotiate, C-ECHO, a multi-fragment C-STORE, release — and the
abort, reject, collision, timer and bounded-buffer paths. Properties: any chunking of
the input gives the same events; random or mutated input never raises and never
buffers beyond the limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.dicom import commands, pdu
from proxy.dicom.connection import Association, LocalProtocolError
from proxy.dicom.events import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    ConnectionClosed,
    DataFragment,
    MessageReceived,
    NeedData,
    ReleaseConfirmed,
    ReleaseRequested,
    SendMessage,
)
from proxy.dicom.items import PresentationContextAC, PresentationContextRQ, UserInformation
from proxy.dicom.states import State

VERIFICATION, CT = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
IMPL = "1.2.826.0.1.3680043.9.3811.3.0.4"
RQ = pdu.AssociateRQ("ARCHIVE", "STATION", (
    PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
    PresentationContextRQ(3, CT, (EXPLICIT, IMPLICIT)),
    PresentationContextRQ(5, "1.2.3.999", (IMPLICIT,))),
    UserInformation(max_length=16384, implementation_class_uid=IMPL))
AC = pdu.AssociateAC("ARCHIVE", "STATION", (
    PresentationContextAC(1, 0, IMPLICIT), PresentationContextAC(3, 0, EXPLICIT),
    PresentationContextAC(5, 3, IMPLICIT)),
    UserInformation(max_length=1024, implementation_class_uid=IMPL))
ECHO_RQ = {commands.COMMAND_FIELD: 0x0030, commands.MESSAGE_ID: 1,
           commands.AFFECTED_SOP_CLASS: VERIFICATION}
ECHO_RSP = {commands.COMMAND_FIELD: 0x8030, commands.RESPONDED_TO: 1,
            commands.AFFECTED_SOP_CLASS: VERIFICATION, commands.STATUS: 0}
DATA = bytes(range(256)) * 20                      # 5120 bytes: 6 fragments at 1024


def drain(assoc: Association) -> list[object]:
    out: list[object] = []
    while True:
        event = assoc.next_event()
        if isinstance(event, NeedData):
            return out
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return out


def deliver(data: bytes, to: Association) -> list[object]:
    to.receive_data(data)
    return drain(to)


def establish(stream: bool = False) -> tuple[Association, Association]:
    requestor, acceptor = Association("requestor"), Association("acceptor", stream_data=stream)
    assert acceptor.state is State.Sta2 and acceptor.artim_running
    assert deliver(requestor.send(RQ), acceptor) == [AssociateRequested(RQ)]
    assert acceptor.state is State.Sta3 and not acceptor.artim_running
    assert deliver(acceptor.send(AC), requestor) == [AssociateAccepted(AC)]
    assert requestor.state is acceptor.state is State.Sta6
    assert requestor.contexts == acceptor.contexts == {1: IMPLICIT, 3: EXPLICIT}
    return requestor, acceptor


def test_full_association_echo_store_release() -> None:
    requestor, acceptor = establish()
    events = deliver(requestor.send(SendMessage(1, ECHO_RQ)), acceptor)
    assert [type(e) for e in events] == [MessageReceived]
    assert events[0].command[commands.MESSAGE_ID] == 1           # type: ignore[attr-defined]
    (rsp,) = deliver(acceptor.send(SendMessage(1, ECHO_RSP)), requestor)
    assert rsp.command[commands.STATUS] == 0                      # type: ignore[attr-defined]

    store = commands.decode(commands.c_store_rq(2, CT, "1.2.3.4"))
    wire = requestor.send(SendMessage(3, store, DATA))
    assert wire.count(b"\x04\x00") >= 6                           # fragmented at 1024
    (msg,) = deliver(wire, acceptor)
    assert isinstance(msg, MessageReceived) and msg.context_id == 3 and msg.data == DATA
    rsp_bytes = acceptor.send(SendMessage(3, commands.decode(
        commands.c_store_rsp(2, CT, "1.2.3.4", 0))))
    assert deliver(rsp_bytes, requestor)[0].command[commands.STATUS] == 0  # type: ignore[attr-defined]

    assert deliver(requestor.send(pdu.ReleaseRQ()), acceptor) == [ReleaseRequested()]
    assert requestor.state is State.Sta7 and acceptor.state is State.Sta8
    with pytest.raises(LocalProtocolError, match="Evt9"):       # issue 10: not after RQ
        requestor.send(SendMessage(1, ECHO_RQ))
    assert requestor.state is State.Sta7
    late = acceptor.send(SendMessage(1, ECHO_RSP))                # AR-7: still allowed
    assert [type(e) for e in deliver(late, requestor)] == [MessageReceived]
    assert deliver(acceptor.send(pdu.ReleaseRP()), requestor) == [ReleaseConfirmed(),
                                                                 ConnectionClosed()]
    assert requestor.state is State.Sta1
    assert acceptor.state is State.Sta13 and acceptor.artim_running
    assert deliver(b"", acceptor) == [ConnectionClosed()]
    assert acceptor.state is State.Sta1 and not acceptor.artim_running


def test_streamed_store() -> None:
    requestor, acceptor = establish(stream=True)
    store = commands.decode(commands.c_store_rq(2, CT, "1.2.3.4"))
    events = deliver(requestor.send(SendMessage(3, store, DATA)), acceptor)
    assert isinstance(events[0], MessageReceived) and events[0].data_follows
    assert all(isinstance(e, DataFragment) for e in events[1:])
    assert b"".join(e.data for e in events[1:]) == DATA          # type: ignore[attr-defined]
    assert events[-1].last                                        # type: ignore[attr-defined]


def test_refused_context_cannot_be_used_either_way() -> None:
    requestor, acceptor = establish()
    with pytest.raises(LocalProtocolError, match="context 5 was not accepted"):
        requestor.send(SendMessage(5, ECHO_RQ))
    forged = pdu.encode(pdu.PData((pdu.Pdv(5, True, True, commands.encode(ECHO_RQ)),)))
    (event,) = deliver(forged, acceptor)
    assert isinstance(event, Aborted) and event.local and "context 5" in event.reason_text
    assert acceptor.data_to_send() == pdu.encode(pdu.Abort(2, 6))


def test_reject() -> None:
    requestor, acceptor = Association("requestor"), Association("acceptor")
    deliver(requestor.send(RQ), acceptor)
    rj = pdu.AssociateRJ(1, 1, 7)
    assert deliver(acceptor.send(rj), requestor) == [AssociateRejected(rj), ConnectionClosed()]
    assert acceptor.state is State.Sta13 and acceptor.artim_running
    assert acceptor.timer_expired() == ConnectionClosed()
    assert acceptor.state is State.Sta1


def test_unsupported_protocol_version_is_rejected_by_the_provider() -> None:
    acceptor = Association("acceptor")
    assert deliver(pdu.encode(pdu.AssociateRQ("A", "B", RQ.contexts, protocol_version=2)),
                   acceptor) == []
    assert pdu.parse(acceptor.data_to_send()) == pdu.AssociateRJ(1, 2, 2)   # PS3.8 Table 9-21
    assert acceptor.state is State.Sta13 and acceptor.artim_running


def test_user_abort_and_artim() -> None:
    requestor, acceptor = establish()
    wire = requestor.send(pdu.Abort())
    assert requestor.state is State.Sta13 and requestor.artim_running
    assert deliver(wire, acceptor) == [Aborted(0, 0, local=False), ConnectionClosed()]
    assert acceptor.state is State.Sta1
    with pytest.raises(LocalProtocolError):
        requestor.send(SendMessage(1, ECHO_RQ))
    assert requestor.timer_expired() == ConnectionClosed()
    assert requestor.timer_expired() is None
    assert requestor.next_event() == ConnectionClosed()


def test_artim_expires_waiting_for_the_request() -> None:
    acceptor = Association("acceptor")
    assert acceptor.timer_expired() == ConnectionClosed()
    assert acceptor.state is State.Sta1


def test_transport_closed_mid_association() -> None:
    requestor, acceptor = establish()
    acceptor.receive_data(requestor.send(SendMessage(1, ECHO_RQ))[:20])
    assert deliver(b"", acceptor) == [Aborted(2, 0, local=False,
                                              reason_text="transport connection closed"),
                                      ConnectionClosed()]


def test_release_collision() -> None:
    requestor, acceptor = establish()
    from_requestor, from_acceptor = requestor.send(pdu.ReleaseRQ()), acceptor.send(pdu.ReleaseRQ())
    assert deliver(from_acceptor, requestor) == [ReleaseRequested(collision=True)]
    assert deliver(from_requestor, acceptor) == [ReleaseRequested(collision=True)]
    assert (requestor.state, acceptor.state) == (State.Sta9, State.Sta10)
    assert deliver(requestor.send(pdu.ReleaseRP()), acceptor) == [ReleaseConfirmed()]
    assert (requestor.state, acceptor.state) == (State.Sta11, State.Sta12)
    assert deliver(acceptor.send(pdu.ReleaseRP()), requestor) == [ReleaseConfirmed(),
                                                                 ConnectionClosed()]
    assert (requestor.state, acceptor.state) == (State.Sta1, State.Sta13)


def test_unexpected_pdu_aborts_with_the_table_action() -> None:
    _, acceptor = establish()
    (event,) = deliver(pdu.encode(RQ), acceptor)                  # Evt6 in Sta6: AA-8
    assert event == Aborted(2, 2, local=True,
                            reason_text="AssociateRQ PDU (type 0x01) unexpected in Sta6")
    assert acceptor.data_to_send() == pdu.encode(pdu.Abort(2, 2))
    assert deliver(pdu.encode(pdu.ReleaseRQ()), acceptor) == []   # Sta13: AA-6, ignored
    assert deliver(pdu.encode(pdu.Abort()), acceptor) == [ConnectionClosed()]  # AA-2


def test_garbage_before_the_request_gets_a_user_source_abort() -> None:
    acceptor = Association("acceptor")
    (event,) = deliver(b"GET / HTTP/1.1\r\n\r\n", acceptor)       # AA-1 in Sta2
    assert isinstance(event, Aborted) and event.local and "0x47" in event.reason_text
    assert acceptor.data_to_send() == pdu.encode(pdu.Abort(0, 0))
    assert acceptor.state is State.Sta13


def test_oversized_pdu_aborts_without_buffering() -> None:
    requestor, acceptor = establish()
    (event,) = deliver(b"\x04\x00\xff\xff\xff\xff" + b"\x00" * 1000, acceptor)
    assert isinstance(event, Aborted) and event.reason == 6 and "exceeds the limit" in \
        event.reason_text
    assert acceptor.buffered == 0
    acceptor.receive_data(b"\x00" * 100_000)                       # discarded from now on
    assert acceptor.buffered == 0
    assert acceptor.data_to_send() == pdu.encode(pdu.Abort(2, 6))
    small = Association("acceptor", max_associate_pdu=512)
    (event,) = deliver(b"\x01\x00\x00\x00\x02\x01", small)       # A-ASSOCIATE-RQ of 513
    assert isinstance(event, Aborted) and "exceeds the limit of 512" in event.reason_text
    # the requestor announced 16384: a P-DATA-TF of 16385 is one byte too many
    (event,) = deliver(b"\x04\x00\x00\x00\x40\x01", requestor)
    assert isinstance(event, Aborted) and event.local


def test_local_misuse_changes_nothing() -> None:
    acceptor = Association("acceptor")
    for item in (RQ, SendMessage(1, ECHO_RQ), pdu.ReleaseRQ(), pdu.ReleaseRP(), pdu.Abort()):
        with pytest.raises(LocalProtocolError):
            acceptor.send(item)                                   # type: ignore[arg-type]
        assert acceptor.state is State.Sta2
    requestor = Association("requestor")
    deliver(requestor.send(RQ), acceptor)
    with pytest.raises(LocalProtocolError, match="did not propose"):
        acceptor.send(pdu.AssociateAC("A", "B", (PresentationContextAC(7, 0, IMPLICIT),)))
    assert acceptor.state is State.Sta3


# -- properties ------------------------------------------------------------------------

def conversation() -> bytes:
    """Everything a requestor sends in one association, after the A-ASSOCIATE-RQ."""
    requestor, acceptor = Association("requestor"), Association("acceptor")
    deliver(requestor.send(RQ), acceptor)
    deliver(acceptor.send(AC), requestor)
    store = commands.decode(commands.c_store_rq(2, CT, "1.2.3.4"))
    return (requestor.send(SendMessage(1, ECHO_RQ)) + requestor.send(SendMessage(3, store, DATA))
            + requestor.send(pdu.ReleaseRQ()))


CONVERSATION = pdu.encode(RQ) + conversation()


def answer(rq: pdu.AssociateRQ) -> pdu.AssociateAC:
    """AC's answers, for the contexts this (possibly mutated) request proposed."""
    return pdu.AssociateAC(rq.called_ae, rq.calling_ae, tuple(
        PresentationContextAC(cx.context_id, 0, (cx.transfer_syntaxes or ("",))[0])
        for cx in rq.contexts), AC.user)


def acceptor_events(chunks: list[bytes], stream: bool = False) -> list[object]:
    """Events one at a time, answering each before asking for the next (as a driver)."""
    acceptor = Association("acceptor", stream_data=stream, max_associate_pdu=4096)
    events: list[object] = []
    for chunk in [*chunks, b""]:
        before = acceptor.buffered
        acceptor.receive_data(chunk)
        assert before <= 4096 + 6        # what is left between calls: one partial PDU
        assert acceptor.buffered <= 4096 + 6 + len(chunk)
        while not isinstance(event := acceptor.next_event(), NeedData):
            events.append(event)
            if isinstance(event, AssociateRequested):
                acceptor.send(answer(event.request))
            if isinstance(event, ConnectionClosed):
                return events
    return events


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, len(CONVERSATION) - 1), max_size=30), st.booleans())
def test_any_chunking_gives_the_same_events(cuts: list[int], stream: bool) -> None:
    points = [0, *sorted(set(cuts)), len(CONVERSATION)]
    chunks = [CONVERSATION[a:b] for a, b in itertools.pairwise(points)]
    whole = acceptor_events([CONVERSATION], stream)
    assert acceptor_events(chunks, stream) == whole
    names = [type(e).__name__ for e in whole if not isinstance(e, DataFragment)]
    assert names == ["AssociateRequested", "MessageReceived", "MessageReceived",
                     "ReleaseRequested", "Aborted", "ConnectionClosed"]
    assert sum(isinstance(e, DataFragment) for e in whole) == (6 if stream else 0)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_input_never_raises(data: st.DataObject) -> None:
    raw = bytearray(CONVERSATION)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    size = data.draw(st.integers(1, 5000))
    acceptor_events([bytes(raw[i:i + size]) for i in range(0, len(raw), size)])


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.booleans())
def test_random_input_never_raises(raw: bytes, established: bool) -> None:
    prefix = CONVERSATION[:len(pdu.encode(RQ))] if established else b""
    events = acceptor_events([prefix, raw])
    assert all(not isinstance(e, NeedData) for e in events)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(7, 4000), st.integers(7, 4000),
       st.lists(st.tuples(st.booleans(), st.sampled_from([1, 3]),
                          st.none() | st.binary(max_size=6000)), min_size=1, max_size=8))
def test_messages_arrive_intact_both_ways(rq_max: int, ac_max: int,
                                          messages: list[tuple[bool, int, bytes | None]]) -> None:
    requestor, acceptor = Association("requestor"), Association("acceptor")
    rq = pdu.AssociateRQ(RQ.called_ae, RQ.calling_ae, RQ.contexts,
                         UserInformation(max_length=rq_max, implementation_class_uid=IMPL))
    deliver(requestor.send(rq), acceptor)
    deliver(acceptor.send(pdu.AssociateAC(AC.called_ae, AC.calling_ae, AC.contexts,
                                          UserInformation(max_length=ac_max))), requestor)
    for n, (upward, context_id, data) in enumerate(messages, 1):
        sender, receiver = (requestor, acceptor) if upward else (acceptor, requestor)
        command = {commands.COMMAND_FIELD: 0x0001, commands.MESSAGE_ID: n}
        wire = sender.send(SendMessage(context_id, command, data))
        limit = ac_max if upward else rq_max
        at = 0
        while at < len(wire):                  # every PDU within the receiver's maximum
            length = int.from_bytes(wire[at + 2:at + 6], "big")
            assert length <= limit
            at += 6 + length
        (event,) = deliver(wire, receiver)
        assert isinstance(event, MessageReceived)
        assert (event.context_id, event.command[commands.MESSAGE_ID], event.data) == (
            context_id, n, data)


def test_a_requestor_asks_once() -> None:
    requestor = Association("requestor")
    requestor.send(RQ)
    with pytest.raises(LocalProtocolError, match="Evt1"):
        requestor.send(RQ)
    assert requestor.state is State.Sta5
