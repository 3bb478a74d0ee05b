"""proxy.dicom.connection, the driver-facing bulk paths (Rules 7 and 8): reading in place
(``receive_into``: ``get_buffer``/``buffer_updated``) gives the events ``receive_data``
gives, for any chunking, in a bounded buffer, handing data fragments on as views of that
buffer (a PDU split across reads included); ``send_pdata`` lets the state table decide on
P-DATA-TF PDUs whose payload the driver writes itself."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.dicom import commands, pdu
from proxy.dicom.connection import READ_ROOM, Association, LocalProtocolError
from proxy.dicom.events import (
    Aborted,
    AssociateAccepted,
    AssociateRequested,
    ConnectionClosed,
    DataFragment,
    MessageReceived,
    NeedData,
    ReleaseRequested,
    SendMessage,
)
from proxy.dicom.items import UserInformation
from proxy.dicom.states import State
from tests.test_dicom_connection import AC, CONVERSATION, CT, ECHO_RQ, RQ, answer

STORE = commands.decode(commands.c_store_rq(2, CT, "1.2.3.4"))


def fill(association: Association, data: bytes) -> None:
    """What a driver's recv_into does: ``data`` into the buffer, as much as fits."""
    view = association.get_buffer()
    assert len(view) >= len(data), "test feeds at most what the buffer offers"
    view[:len(data)] = data
    association.buffer_updated(len(data))


def kept(event: object) -> object:
    """An event as the consumer keeps it: a fragment's view copied before the next read."""
    if isinstance(event, DataFragment):
        return DataFragment(event.context_id, bytes(event.data), event.last)
    return event


def in_place_events(chunks: list[bytes], stream: bool) -> list[object]:
    """``acceptor_events`` of test_dicom_connection, reading in place; the buffer stays
    within one PDU (limit 4096 here, 16384 announced) plus room for a read."""
    acceptor = Association("acceptor", stream_data=stream, max_associate_pdu=4096,
                           receive_into=True)
    events: list[object] = []
    for chunk in [*chunks, b""]:
        pieces = [chunk[i:i + READ_ROOM // 4] for i in range(0, len(chunk), READ_ROOM // 4)]
        if not chunk:
            acceptor.receive_data(b"")
            pieces = [b""]
        for piece in pieces:
            if piece:
                fill(acceptor, piece)
            assert len(acceptor.get_buffer().obj) <= (1 << 16) + READ_ROOM  # type: ignore[arg-type]
            while not isinstance(event := acceptor.next_event(), NeedData):
                events.append(kept(event))
                if isinstance(event, AssociateRequested):
                    acceptor.send(answer(event.request))
                if isinstance(event, ConnectionClosed):
                    return events
    return events


def data_events(chunks: list[bytes], stream: bool) -> list[object]:
    acceptor = Association("acceptor", stream_data=stream, max_associate_pdu=4096)
    events: list[object] = []
    for chunk in [*chunks, b""]:
        acceptor.receive_data(chunk)
        while not isinstance(event := acceptor.next_event(), NeedData):
            events.append(kept(event))
            if isinstance(event, AssociateRequested):
                acceptor.send(answer(event.request))
            if isinstance(event, ConnectionClosed):
                return events
    return events


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, len(CONVERSATION) - 1), max_size=30), st.booleans())
def test_reading_in_place_gives_the_events_of_receive_data(cuts: list[int],
                                                           stream: bool) -> None:
    points = [0, *sorted(set(cuts)), len(CONVERSATION)]
    chunks = [CONVERSATION[a:b] for a, b in itertools.pairwise(points)]
    expected = data_events([CONVERSATION], stream)
    assert in_place_events(chunks, stream) == expected
    assert [type(e).__name__ for e in expected if not isinstance(e, DataFragment)] == [
        "AssociateRequested", "MessageReceived", "MessageReceived", "ReleaseRequested",
        "Aborted", "ConnectionClosed"]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_input_in_place_never_raises_and_matches(data: st.DataObject) -> None:
    raw = bytearray(CONVERSATION)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    size = data.draw(st.integers(1, 5000))
    chunks = [bytes(raw[i:i + size]) for i in range(0, len(raw), size)]
    assert in_place_events(chunks, True) == data_events(chunks, True)


def established(max_length: int = 16384, peer_max: int = 1024) -> Association:
    """A requestor reading in place, accepted on contexts 1 and 3 (5 refused)."""
    requestor = Association("requestor", stream_data=True, receive_into=True)
    requestor.send(pdu.AssociateRQ(RQ.called_ae, RQ.calling_ae, RQ.contexts,
                                   UserInformation(max_length=max_length)))
    fill(requestor, pdu.encode(pdu.AssociateAC(AC.called_ae, AC.calling_ae, AC.contexts,
                                               UserInformation(max_length=peer_max))))
    assert requestor.next_event() == AssociateAccepted(pdu.AssociateAC(
        AC.called_ae, AC.calling_ae, AC.contexts, UserInformation(max_length=peer_max)))
    assert requestor.state is State.Sta6
    return requestor


def pdata(cx: int, control: int, fragment: bytes) -> bytes:
    return pdu.encode(pdu.PData((pdu.Pdv(cx, bool(control & pdu.COMMAND),
                                         bool(control & pdu.LAST), fragment),)))


def test_a_pdu_split_across_reads_is_handed_on_as_a_view_of_the_buffer() -> None:
    requestor = established()
    data = bytes(range(256)) * 60                               # 15360: one PDU
    wire = pdata(3, pdu.COMMAND | pdu.LAST, commands.encode(STORE)) + pdata(3, pdu.LAST, data)
    events: list[object] = []
    for at in range(0, len(wire), 1000):                        # 16 reads, none a whole PDU
        fill(requestor, wire[at:at + 1000])
        while not isinstance(event := requestor.next_event(), NeedData):
            events.append(event)
            if isinstance(event, DataFragment):
                buffer = requestor.get_buffer().obj             # where the next read goes
                assert isinstance(event.data, memoryview)
                assert event.data.obj is buffer                 # a view of it, not a copy
                assert bytes(event.data) == data
    assert [type(e) for e in events] == [MessageReceived, DataFragment]


def test_a_pdu_larger_than_the_buffer_grows_it_within_the_limit() -> None:
    requestor = established(max_length=0)                       # no limit announced
    initial = len(requestor.get_buffer().obj)                   # type: ignore[arg-type]
    data = bytes(range(251)) * 12000                            # ~3 MB in one PDU
    wire = pdata(3, pdu.COMMAND | pdu.LAST, commands.encode(STORE)) + pdata(3, pdu.LAST, data)
    assert len(wire) > initial
    got: list[bytes] = []
    for at in range(0, len(wire), 200_000):
        fill(requestor, wire[at:at + 200_000])
        while not isinstance(event := requestor.next_event(), NeedData):
            if isinstance(event, DataFragment):
                got.append(bytes(event.data))
    assert got == [data]
    assert initial < len(data) < len(requestor.get_buffer().obj)  # type: ignore[arg-type]


def test_a_header_over_the_limit_is_refused_without_growing_the_buffer() -> None:
    requestor = established(max_length=16384)
    size = len(requestor.get_buffer().obj)                      # type: ignore[arg-type]
    fill(requestor, b"\x04\x00\x00\x00\x40\x01")                # 16385: one byte too many
    event = requestor.next_event()
    assert isinstance(event, Aborted) and event.local and "exceeds the limit" in \
        event.reason_text
    assert requestor.data_to_send() == pdu.encode(pdu.Abort(2, 6))
    view = requestor.get_buffer()
    assert len(view.obj) == size and requestor.buffered == 0   # type: ignore[arg-type]
    fill(requestor, b"\x04" * 100)                              # discarded from now on
    assert requestor.next_event() == NeedData() and requestor.buffered == 0


def test_reading_in_place_takes_no_bytes_through_receive_data() -> None:
    requestor = established()
    with pytest.raises(LocalProtocolError, match="reads in place"):
        requestor.receive_data(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    requestor.receive_data(b"")                                 # the transport closing
    assert [requestor.next_event(), requestor.next_event()] == [
        Aborted(2, 0, local=False, reason_text="transport connection closed"),
        ConnectionClosed()]


# -- send_pdata (Rule 8) ------------------------------------------------------------------

@pytest.mark.parametrize(("control", "length"), [(pdu.COMMAND | pdu.LAST, 0), (0, 1),
                                                 (pdu.LAST, 1018)])
def test_send_pdata_gives_the_header_of_the_pdu(control: int, length: int) -> None:
    requestor = established(peer_max=1024)
    header = requestor.send_pdata(3, control, length)
    assert header + bytes(length) == pdata(3, control, bytes(length))
    assert requestor.state is State.Sta6                        # DT-1


def test_send_pdata_checks_what_send_checks() -> None:
    requestor = established(peer_max=1024)
    with pytest.raises(LocalProtocolError, match="context 5 was not accepted"):
        requestor.send_pdata(5, 0, 10)                          # refused in the AC
    with pytest.raises(LocalProtocolError, match="1019-byte fragment exceeds"):
        requestor.send_pdata(3, 0, 1019)
    with pytest.raises(LocalProtocolError, match="reserved bits"):
        requestor.send_pdata(3, 0x04, 10)
    assert requestor.state is State.Sta6
    requestor.send(pdu.ReleaseRQ())                             # Sta7: Evt9 has no action
    with pytest.raises(LocalProtocolError, match="Evt9"):
        requestor.send_pdata(3, 0, 10)
    assert requestor.state is State.Sta7
    before = Association("requestor", receive_into=True)
    with pytest.raises(LocalProtocolError, match="Evt9"):
        before.send_pdata(1, 0, 10)
    assert before.state is State.Sta1


def test_send_pdata_after_the_peer_asked_to_release_is_ar_7() -> None:
    requestor = established()
    fill(requestor, pdu.encode(pdu.ReleaseRQ()))
    assert requestor.next_event() == ReleaseRequested()
    assert requestor.state is State.Sta8
    requestor.send_pdata(1, pdu.COMMAND | pdu.LAST, 10)        # a pending response may go
    assert requestor.state is State.Sta8


def test_a_message_written_from_send_pdata_headers_reaches_the_peer_intact() -> None:
    """As proxy.ul.link writes: headers from the state machine, payload sliced as is."""
    requestor, acceptor = Association("requestor", receive_into=True), Association("acceptor")
    acceptor.receive_data(requestor.send(RQ))
    assert isinstance(acceptor.next_event(), AssociateRequested)
    fill(requestor, acceptor.send(AC))
    assert isinstance(requestor.next_event(), AssociateAccepted)
    step = 1024 - 6                                              # AC announced 1024
    data = bytes(range(256)) * 20
    wire = bytearray()
    for control, payload in ((pdu.COMMAND, commands.encode({**STORE, commands.DATA_SET_TYPE: 0})),
                             (0, data)):
        for at in range(0, len(payload), step):
            piece = payload[at:at + step]
            last = pdu.LAST if at + step >= len(payload) else 0
            wire += requestor.send_pdata(3, control | last, len(piece)) + piece
    acceptor.receive_data(bytes(wire))
    (message,) = [e for e in iter(acceptor.next_event, NeedData())]
    assert isinstance(message, MessageReceived) and message.data == data
    assert message.command[commands.MESSAGE_ID] == 2
    echo = acceptor.send(SendMessage(1, {**ECHO_RQ, commands.COMMAND_FIELD: 0x8030,
                                         commands.RESPONDED_TO: 1, commands.STATUS: 0}))
    fill(requestor, echo)
    assert isinstance(requestor.next_event(), MessageReceived)
