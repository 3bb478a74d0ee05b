"""proxy.ul.link: one association over a socket, driven by a raw-PDU peer.

The peer is the other end of a ``socket.socketpair()`` (or a tiny acceptor on
127.0.0.1 port 0) writing and reading raw PDUs, in a thread where the link would
otherwise block; the end-to-end tests at the bottom use a real pynetdicom acceptor.
"""

from __future__ import annotations

import io
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import encode as pn_encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from proxy import tls
from proxy.config import TlsConfig
from proxy.dicom import commands, items, pdu
from proxy.dicom.connection import LocalProtocolError
from proxy.dicom.events import AssociateAccepted
from proxy.dicom.states import State
from proxy.ul import link as ul_link
from proxy.ul.link import (
    COMMAND,
    LAST,
    RELEASE_RP,
    RELEASE_RQ,
    Link,
    LinkClosed,
    Negotiated,
    ProtocolError,
    Rejected,
    TlsFailed,
    new_association,
    sendmsg_all,
)
from proxy.upstream import ArchiveClient, Peer, UpstreamError
from tests.tls_certs import Pki, make_pki

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
STORE_RQ = commands.c_store_rq(5, CT, INSTANCE, "MOVER", 3)       # announces a data set
STORE_RSP = commands.c_store_rsp(5, CT, INSTANCE, 0)              # has none

Pair = tuple[socket.socket, socket.socket]


# -- raw PDU helpers (independent of the code under test) ---------------------------------


def pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">LBB", len(f) + 2, cx, control) + f for cx, control, f in pdvs)
    return struct.pack(">BxL", 0x04, len(body)) + body


def read_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        got = sock.recv(n - len(out))
        assert got, f"peer: connection closed after {len(out)} of {n} bytes"
        out += got
    return bytes(out)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    kind, length = struct.unpack(">BxL", read_exact(sock, 6))
    return kind, read_exact(sock, length)


def split_pdvs(body: bytes) -> list[tuple[int, int, bytes]]:
    out, at = [], 0
    while at < len(body):
        length, cx, control = struct.unpack_from(">LBB", body, at)
        out.append((cx, control, body[at + 6:at + 4 + length]))
        at += 4 + length
    assert at == len(body)
    return out


def read_until_last(sock: socket.socket, data: bool = True) -> list[tuple[int, bytes]]:
    """PDUs until the last fragment of the data set (or of the command when not ``data``)."""
    pdus = []
    while True:
        kind, body = read_pdu(sock)
        pdus.append((kind, body))
        assert kind == pdu.P_DATA_TF
        for _cx, control, _f in split_pdvs(body):
            if control & LAST and bool(control & COMMAND) != data:
                return pdus


def closed_by_link(sock: socket.socket) -> bool:
    return sock.recv(1) == b""


def expected_sizes(total: int, fragment: int) -> list[int]:
    if total == 0:
        return [0]
    return [fragment] * (total // fragment) + ([total % fragment] if total % fragment else [])


class Collect:
    """A DataTarget keeping a copy of every fragment."""

    def __init__(self) -> None:
        self.fragments: list[bytes] = []
        self.kinds: set[type] = set()

    def write(self, fragment: memoryview) -> int:
        self.kinds.add(type(fragment))
        self.fragments.append(bytes(fragment))
        return len(fragment)


# -- fixtures --------------------------------------------------------------------------------




@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


LINK_CONTEXTS = (1, 3, 5, 7, 9)


def make_link(sock: socket.socket, peer_max: int = 16384, our_max: int = 16384) -> Link:
    """A link whose association was negotiated in memory, PDU by PDU (A-ASSOCIATE-RQ out,
    A-ASSOCIATE-AC in): contexts 1-9 accepted, the given maximum PDU lengths."""
    association = new_association()
    association.send(pdu.AssociateRQ("ARCHIVE", "QR_PROXY", tuple(
        items.PresentationContextRQ(cx, CT, (EXPLICIT,)) for cx in LINK_CONTEXTS),
        items.UserInformation(our_max)))
    ac = pdu.AssociateAC("ARCHIVE", "QR_PROXY", tuple(
        items.PresentationContextAC(cx, 0, EXPLICIT) for cx in LINK_CONTEXTS),
        items.UserInformation(peer_max))
    raw = pdu.encode(ac)
    association.get_buffer()[:len(raw)] = raw
    association.buffer_updated(len(raw))
    assert isinstance(association.next_event(), AssociateAccepted)
    assert association.state is State.Sta6
    return Link(sock, association, Negotiated.of(ac))


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- read_message ----------------------------------------------------------------------------


def test_read_message_reassembles_a_fragmented_command_and_a_data_set_over_many_pdus(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, theirs = pair
    link = make_link(ours, our_max=32768)
    data = payload(400_000)
    command_parts = [STORE_RQ[:10], STORE_RQ[10:11], STORE_RQ[11:]]
    sizes = [1, 32762, 777, 4096, 0, 16378, 3]           # 32762 = a PDU of exactly our max
    data_parts, at, i = [], 0, 0
    while at < len(data):
        data_parts.append(data[at:at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1

    def peer() -> None:
        for n, part in enumerate(command_parts):
            last = LAST if n == len(command_parts) - 1 else 0
            theirs.sendall(pdata((3, COMMAND | last, part)))
        for n, part in enumerate(data_parts):
            theirs.sendall(pdata((3, LAST if n == len(data_parts) - 1 else 0, part)))

    sent = pool.submit(peer)
    target = Collect()
    asked: list[tuple[int, commands.Command]] = []

    def target_for(cx: int, command: commands.Command) -> Collect:
        asked.append((cx, command))
        return target

    message = link.read_message(target_for)
    sent.result(timeout=5)
    assert message.context_id == 3
    assert message.command == commands.decode(STORE_RQ)
    assert message.command[commands.MOVE_ORIGINATOR_AE] == "MOVER"
    assert message.data is None
    assert asked == [(3, message.command)]
    assert target.fragments == data_parts                 # in order, byte-identical
    assert b"".join(target.fragments) == data
    assert target.kinds == {memoryview}
    assert not link.closed


def test_several_pdvs_in_one_p_data_tf_and_the_next_message_in_the_same_pdu(
        pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ), (1, 0, b"first-"), (1, 0, b""),
                         (1, LAST, b"second"), (3, COMMAND, STORE_RSP[:20]))
                   + pdata((3, COMMAND | LAST, STORE_RSP[20:])))
    target = Collect()
    first = link.read_message(lambda _cx, _command: target)
    assert first.context_id == 1
    assert first.command[commands.COMMAND_FIELD] == commands.C_STORE_RQ
    assert target.fragments == [b"first-", b"", b"second"]
    second = link.read_message(lambda _cx, _command: pytest.fail("no data set expected"))
    assert second.context_id == 3
    assert second.command == commands.decode(STORE_RSP)
    assert second.data is None


def test_data_is_collected_when_target_for_returns_none(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, theirs = pair
    link = make_link(ours, our_max=4096)
    data = payload(50_000, seed=2)

    def peer() -> None:
        theirs.sendall(pdata((5, COMMAND | LAST, STORE_RQ)))
        for at in range(0, len(data), 4090):
            last = LAST if at + 4090 >= len(data) else 0
            theirs.sendall(pdata((5, last, data[at:at + 4090])))

    sent = pool.submit(peer)
    message = link.read_message(lambda _cx, _command: None)
    sent.result(timeout=5)
    assert message.data == data
    assert message.context_id == 5


def test_command_without_data_set_does_not_ask_for_a_target(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, COMMAND | LAST, commands.c_cancel_rq(9))))
    message = link.read_message(lambda _cx, _command: pytest.fail("asked for a target"))
    assert message.command[commands.COMMAND_FIELD] == commands.C_CANCEL_RQ
    assert message.command[commands.RESPONDED_TO] == 9
    assert message.data is None


def test_a_abort_raises_link_closed(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdu.encode(pdu.Abort(2, 6)))
    with pytest.raises(LinkClosed, match="A-ABORT"):
        link.read_message(lambda _cx, _command: None)
    assert link.closed
    assert closed_by_link(theirs)                          # and nothing was sent back


def test_a_abort_inside_a_data_set_raises_link_closed(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ), (1, 0, b"partial"))
                   + pdu.encode(pdu.Abort()))
    target = Collect()
    with pytest.raises(LinkClosed, match="A-ABORT"):
        link.read_message(lambda _cx, _command: target)
    assert target.fragments == [b"partial"]
    assert link.closed


@pytest.mark.parametrize("sent", [b"", pdata((1, COMMAND, STORE_RQ[:8])),
                                  pdata((1, COMMAND | LAST, STORE_RQ))[:-3],
                                  b"\x04\x00\x00"])
def test_peer_closing_raises_link_closed(pair: Pair, sent: bytes) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(sent)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(LinkClosed, match="closed the connection"):
        link.read_message(lambda _cx, _command: None)
    assert link.closed


def test_a_release_rq_mid_operation_is_answered_and_raises_link_closed(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ), (1, 0, b"some")) + RELEASE_RQ)
    with pytest.raises(LinkClosed, match="released"):
        link.read_message(lambda _cx, _command: Collect())
    assert link.closed
    assert read_pdu(theirs) == (pdu.A_RELEASE_RP, b"\x00" * 4)
    assert closed_by_link(theirs)


def test_a_p_data_tf_of_exactly_our_max_is_read(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours, our_max=4096)
    data = payload(4090)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ)) + pdata((1, LAST, data)))
    assert link.read_message(lambda _cx, _command: None).data == data


def test_a_p_data_tf_longer_than_our_max_aborts(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours, our_max=4096)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ)) + pdata((1, LAST, payload(4091))))
    with pytest.raises(pdu.PduError, match=r"4097-byte PDU .* limit of 4096"):
        link.read_message(lambda _cx, _command: None)
    assert link.closed
    kind, body = read_pdu(theirs)
    assert kind == pdu.A_ABORT
    # Evt19 in Sta6 is AA-8: service-provider source (2), invalid parameter value (6)
    assert body == b"\x00\x00\x02\x06"
    assert closed_by_link(theirs)


@pytest.mark.parametrize("kind", [0x02, 0x09, 0x00, 0x06])
def test_an_unexpected_pdu_type_aborts(pair: Pair, kind: int) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(struct.pack(">BxL", kind, 4) + b"\x00" * 4)
    with pytest.raises(pdu.PduError, match=f"0x{kind:02X}"):
        link.read_message(lambda _cx, _command: None)
    assert link.closed
    assert read_pdu(theirs)[0] == pdu.A_ABORT


def test_a_pdu_larger_than_the_buffer_aborts_even_when_not_p_data(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours, our_max=4096)
    theirs.sendall(struct.pack(">BxL", pdu.A_ABORT, 10_000_000))
    with pytest.raises(pdu.PduError, match="10000000"):
        link.read_message(lambda _cx, _command: None)
    assert read_pdu(theirs)[0] == pdu.A_ABORT


def test_a_data_fragment_without_a_command_raises_link_closed(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, LAST, b"orphan data")))
    with pytest.raises(LinkClosed, match="without a command"):
        link.read_message(lambda _cx, _command: None)


@pytest.mark.parametrize(("intruder", "why"), [
    ((1, COMMAND | LAST, STORE_RSP), "command fragment while the data set of the previous"),
    ((3, LAST, b"other"), "context changed mid-message from 1 to 3")])
def test_a_message_interleaved_into_a_data_set_raises_link_closed(
        pair: Pair, intruder: tuple[int, int, bytes], why: str) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ), (1, 0, b"part"), intruder))
    with pytest.raises(LinkClosed, match=why):
        link.read_message(lambda _cx, _command: Collect())
    assert link.closed
    assert read_pdu(theirs) == (pdu.A_ABORT, b"\x00\x00\x02\x06")    # AA-8


def test_an_unreadable_command_raises_pdu_error(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((1, COMMAND | LAST, STORE_RQ[:-1])))
    with pytest.raises(pdu.PduError, match="not a complete group 0000 element"):
        link.read_message(lambda _cx, _command: None)


def test_a_malformed_pdv_raises_pdu_error(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(struct.pack(">BxL", 0x04, 6) + struct.pack(">LBB", 1, 1, 3))
    with pytest.raises(pdu.PduError, match="PDV item length 1"):
        link.read_message(lambda _cx, _command: None)


def test_read_times_out(pair: Pair) -> None:
    ours, _theirs = pair
    ours.settimeout(0.05)
    link = make_link(ours)
    with pytest.raises(TimeoutError):
        link.read_message(lambda _cx, _command: None)


# -- send_message ----------------------------------------------------------------------------


def check_message(pdus: list[tuple[int, bytes]], peer_max: int, cx: int) -> tuple[
        bytes, bytes, list[int]]:
    """Every PDU fits the peer's max and holds one PDV; bits right; (command, data, sizes)."""
    command, data, sizes = bytearray(), bytearray(), []
    pdvs = []
    for kind, body in pdus:
        assert kind == pdu.P_DATA_TF
        assert len(body) <= peer_max
        items = split_pdvs(body)
        assert len(items) == 1
        pdvs.extend(items)
    command_pdvs = [p for p in pdvs if p[1] & COMMAND]
    data_pdvs = [p for p in pdvs if not p[1] & COMMAND]
    assert pdvs == command_pdvs + data_pdvs                # command first, then data
    for group in (command_pdvs, data_pdvs):
        if group:
            assert [bool(c & LAST) for _cx, c, _f in group] == [False] * (len(group) - 1) + [True]
    assert all(p_cx == cx for p_cx, _c, _f in pdvs)
    assert all(c & ~(COMMAND | LAST) == 0 for _cx, c, _f in pdvs)
    for _cx, control, fragment in pdvs:
        (command if control & COMMAND else data).extend(fragment)
    sizes = [len(f) for _cx, _c, f in data_pdvs]
    return bytes(command), bytes(data), sizes


@pytest.mark.parametrize("size", [0, 1, 1017, 1018, 1019, 3 * 1018, 10_000])
def test_send_message_fragments_at_the_peers_max(
        pair: Pair, pool: ThreadPoolExecutor, size: int) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=1024)
    assert link.fragment == 1018
    data = payload(size)
    received = pool.submit(read_until_last, theirs)
    link.send_message(7, STORE_RQ, data)
    command, got, sizes = check_message(received.result(timeout=5), 1024, 7)
    assert command == STORE_RQ
    assert got == data
    assert sizes == expected_sizes(size, 1018)


def test_a_command_longer_than_a_fragment_is_split_with_the_command_bit(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=64)
    received = pool.submit(read_until_last, theirs, False)
    link.send_message(1, STORE_RQ)
    pdus = received.result(timeout=5)
    command, data, _sizes = check_message(pdus, 64, 1)
    assert command == STORE_RQ
    assert data == b""
    assert len(pdus) == -(-len(STORE_RQ) // 58)
    ours.shutdown(socket.SHUT_WR)
    assert closed_by_link(theirs)                          # no data fragment followed


def test_a_peer_without_a_limit_gets_one_fragment(pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=0)
    data = payload(300_000)
    received = pool.submit(read_until_last, theirs)
    link.send_message(1, STORE_RQ, memoryview(data))
    _command, got, sizes = check_message(received.result(timeout=5), 1 << 30, 1)
    assert got == data
    assert sizes == [300_000]


@pytest.mark.parametrize(("peer_max", "length"), [
    (1024, 0), (1024, 1), (1024, 3 * 1018), (1024, 3 * 1018 + 5),
    (16384, 32 * 16378),            # exactly one send batch
    (16384, 2 * 32 * 16378 + 1),    # two batches and a byte
])
def test_send_message_from_a_file(pair: Pair, pool: ThreadPoolExecutor, tmp_path: Path,
                                  peer_max: int, length: int) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=peer_max)
    data = payload(length, seed=3)
    path = tmp_path / "instance.bin"
    path.write_bytes(b"H" * 132 + data + b"TRAILER-NOT-SENT")
    received = pool.submit(read_until_last, theirs)
    with open(path, "rb") as source:
        source.seek(132)
        link.send_message(9, STORE_RQ, source=source, length=length)
        assert source.tell() == 132 + length
    command, got, sizes = check_message(received.result(timeout=5), peer_max, 9)
    assert command == STORE_RQ
    assert got == data
    assert sizes == expected_sizes(length, peer_max - 6)


@pytest.mark.parametrize("batches", [
    [(3000, False), (5, False), (2000, True)],       # pieces across batches, each cut
    [(1018, False), (0, True)],                      # an empty last batch: an empty PDV
    [(0, True)],                                     # an empty data set
    [(4000, True)],
])
def test_send_arriving_cuts_each_batch_at_the_peers_max_and_marks_only_the_last(
        pair: Pair, pool: ThreadPoolExecutor, batches: list[tuple[int, bool]]) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=1024)
    data = payload(sum(n for n, _ in batches), seed=5)
    parts, at = [], 0
    for n, last in batches:
        # each batch as two views, as an Inflow hands over what it holds
        parts.append(([memoryview(data)[at:at + n // 2], memoryview(data)[at + n // 2:at + n]],
                      last))
        at += n
    received = pool.submit(read_until_last, theirs)
    link.send_arriving(3, STORE_RQ, iter(parts))
    command, got, sizes = check_message(received.result(timeout=5), 1024, 3)
    assert command == STORE_RQ
    assert got == data
    assert all(0 < size <= 1018 for size in sizes[:-1]) and sizes[-1] <= 1018


@pytest.mark.parametrize(("length", "from_file", "batches"), [
    (526_000, False, 1),            # a CT slice in memory: command and data set, one write
    (600 * 16378, False, 3),        # 600 fragments: one write per MAX_PARTS buffers
    (526_000, True, 2),             # from a file: one write per SEND_BATCH bytes read
])
def test_the_command_goes_with_the_data_set_in_as_few_writes_as_the_bounds_allow(
        pair: Pair, pool: ThreadPoolExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        length: int, from_file: bool, batches: int) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=16384)
    writes: list[int] = []

    def counted(sock: Any, parts: list[bytes | memoryview]) -> None:
        writes.append(len(parts))
        sendmsg_all(sock, parts)

    monkeypatch.setattr(ul_link, "sendmsg_all", counted)
    data = payload(length, seed=6)
    received = pool.submit(read_until_last, theirs)
    if from_file:
        path = tmp_path / "instance.bin"
        path.write_bytes(data)
        with open(path, "rb") as source:
            link.send_message(5, STORE_RQ, source=source, length=length)
    else:
        link.send_message(5, STORE_RQ, data)
    command, got, sizes = check_message(received.result(timeout=10), 16384, 5)
    assert command == STORE_RQ and got == data
    assert sizes == expected_sizes(length, 16378)
    assert len(writes) == batches
    assert max(writes) <= ul_link.MAX_PARTS


def test_a_command_of_several_fragments_before_a_file_keeps_every_write_in_bounds(
        pair: Pair, pool: ThreadPoolExecutor, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=64)                    # the command takes 2+ fragments
    writes: list[int] = []

    def counted(sock: Any, parts: list[bytes | memoryview]) -> None:
        writes.append(len(parts))
        sendmsg_all(sock, parts)

    monkeypatch.setattr(ul_link, "sendmsg_all", counted)
    data = payload(100_000, seed=7)
    path = tmp_path / "instance.bin"
    path.write_bytes(data)
    received = pool.submit(read_until_last, theirs)
    with open(path, "rb") as source:
        link.send_message(3, STORE_RQ, source=source, length=len(data))
    command, got, sizes = check_message(received.result(timeout=10), 64, 3)
    assert command == STORE_RQ and got == data
    assert sizes == expected_sizes(len(data), 58)
    assert max(writes) <= ul_link.MAX_PARTS


def test_a_file_shorter_than_length_raises_os_error(pair: Pair, tmp_path: Path) -> None:
    ours, _theirs = pair
    link = make_link(ours, peer_max=1024)
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    with open(path, "rb") as source, pytest.raises(OSError, match="ended early"):
        link.send_message(1, STORE_RQ, source=source, length=120)


@pytest.mark.parametrize("peer_max", [128, 512, 1000])
def test_a_small_peer_max_with_a_large_data_set(pair: Pair, pool: ThreadPoolExecutor,
                                                tmp_path: Path, peer_max: int) -> None:
    """More fragments per send batch than sendmsg takes buffers (IOV_MAX)."""
    ours, theirs = pair
    link = make_link(ours, peer_max=peer_max)
    data = payload(700_000, seed=4)
    received = pool.submit(read_until_last, theirs)
    link.send_message(1, STORE_RQ, data)
    _command, got, sizes = check_message(received.result(timeout=5), peer_max, 1)
    assert got == data
    assert sizes == expected_sizes(len(data), peer_max - 6)
    path = tmp_path / "instance.bin"
    path.write_bytes(data)
    received = pool.submit(read_until_last, theirs)
    with open(path, "rb") as source:
        link.send_message(1, STORE_RQ, source=source, length=len(data))
    _command, got, sizes = check_message(received.result(timeout=5), peer_max, 1)
    assert got == data
    assert sizes == expected_sizes(len(data), peer_max - 6)


class WatchedSource(io.RawIOBase):
    """A source that records whether the link's send lock is held while it is read."""

    def __init__(self, data: bytes, link: Link) -> None:
        self.inner = io.BytesIO(data)
        self.link = link
        self.locked: list[bool] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.locked.append(self.link._send_lock.locked())
        return self.inner.readinto(buffer)


def test_a_whole_message_goes_out_under_the_send_lock(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, theirs = pair
    link = make_link(ours, peer_max=16384)
    data = payload(1_200_000)
    source = WatchedSource(data, link)
    received = pool.submit(read_until_last, theirs)
    link.send_message(1, STORE_RQ, source=io.BufferedReader(source), length=len(data))
    assert check_message(received.result(timeout=5), 16384, 1)[1] == data
    assert len(source.locked) >= 2 and all(source.locked)
    assert not link._send_lock.locked()


def test_send_times_out_when_the_peer_does_not_read(pair: Pair) -> None:
    ours, _theirs = pair
    ours.settimeout(0.05)
    link = make_link(ours, peer_max=16384)
    with pytest.raises(TimeoutError):
        link.send_message(1, STORE_RQ, bytes(16 * 1024 * 1024))


# -- abort / release on an established link ---------------------------------------------------


def test_abort_sends_a_abort_once_and_closes(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    link.abort()
    link.abort()
    assert link.closed
    assert read_pdu(theirs) == (pdu.A_ABORT, b"\x00\x00\x00\x00")
    assert closed_by_link(theirs)


def test_abort_from_another_thread_does_not_wait_for_a_blocked_sender(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, _theirs = pair                # the peer never reads: the send blocks
    ours.settimeout(60)
    link = make_link(ours)
    sending = pool.submit(link.send_message, 1, STORE_RQ, bytes(64 * 1024 * 1024))
    deadline = time.monotonic() + 5
    while not link._send_lock.locked():          # the sender holds it until it is done
        assert time.monotonic() < deadline and not sending.done()
    started = time.monotonic()
    link.abort()                        # waiting for the lock would take the 60 s timeout
    assert time.monotonic() - started < 2
    with pytest.raises(OSError):
        sending.result(timeout=5)
    assert link.closed


def _answer_release(sock: socket.socket, before: bytes, answer: bytes) -> tuple[int, bytes]:
    request = read_pdu(sock)
    sock.sendall(before + answer)
    return request


@pytest.mark.parametrize(("before", "answer"), [
    (b"", RELEASE_RP),
    (pdata((1, COMMAND | LAST, STORE_RSP)), RELEASE_RP),     # late data is discarded
    (b"", pdu.encode(pdu.Abort(2, 0))),
])
def test_release_completes_when_the_peer_answers(
        pair: Pair, pool: ThreadPoolExecutor, before: bytes, answer: bytes) -> None:
    ours, theirs = pair
    link = make_link(ours)
    peer = pool.submit(_answer_release, theirs, before, answer)
    link.release()
    assert peer.result(timeout=5) == (pdu.A_RELEASE_RQ, b"\x00" * 4)
    assert link.closed
    assert closed_by_link(theirs)


def test_release_when_the_peer_just_closes(pair: Pair, pool: ThreadPoolExecutor) -> None:
    ours, theirs = pair
    link = make_link(ours)

    def peer() -> int:
        kind = read_pdu(theirs)[0]
        theirs.shutdown(socket.SHUT_WR)
        return kind

    answered = pool.submit(peer)
    link.release()
    assert answered.result(timeout=5) == pdu.A_RELEASE_RQ
    assert link.closed


def test_release_after_close_sends_nothing(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdu.encode(pdu.Abort()))
    with pytest.raises(LinkClosed):
        link.read_message(lambda _cx, _command: None)
    link.release()
    link.abort()
    assert closed_by_link(theirs)


def test_release_collision_is_answered_and_completes(pair: Pair, pool: ThreadPoolExecutor) -> None:
    """PS3.8 9.2.4: both sides send A-RELEASE-RQ; the requestor answers first (Sta9 →
    Sta11), then takes the acceptor's A-RELEASE-RP."""
    ours, theirs = pair
    link = make_link(ours)

    def acceptor_side() -> list[tuple[int, bytes]]:
        heard = [read_pdu(theirs)]              # our A-RELEASE-RQ ...
        theirs.sendall(RELEASE_RQ)              # ... crosses the acceptor's own
        heard.append(read_pdu(theirs))          # the requestor answers the collision
        theirs.sendall(RELEASE_RP)
        return heard

    peer = pool.submit(acceptor_side)
    link.release()
    assert peer.result(timeout=5) == [(pdu.A_RELEASE_RQ, b"\x00" * 4),
                                      (pdu.A_RELEASE_RP, b"\x00" * 4)]
    assert link.association.state is State.Sta1   # AR-3: released, not aborted
    assert link.closed
    assert closed_by_link(theirs)


def test_a_pdu_the_state_table_does_not_expect_is_aborted(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdu.encode(REQUEST))           # A-ASSOCIATE-RQ in Sta6: Evt6, AA-8
    with pytest.raises(ProtocolError, match=r"AssociateRQ PDU \(type 0x01\) unexpected in Sta6"):
        link.read_message()
    assert read_pdu(theirs) == (pdu.A_ABORT, b"\x00\x00\x02\x02")   # unexpected PDU
    assert closed_by_link(theirs)


def test_an_invalid_pdu_during_a_blocked_send_is_answered_without_waiting(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    """The reader's A-ABORT (AA-8) never waits for a send in progress (Rule 1)."""
    ours, theirs = pair                 # the peer never reads: the send blocks
    ours.settimeout(60)
    link = make_link(ours)
    sending = pool.submit(link.send_message, 1, STORE_RQ, bytes(64 * 1024 * 1024))
    deadline = time.monotonic() + 5
    while not link._send_lock.locked():
        assert time.monotonic() < deadline and not sending.done()
    theirs.sendall(pdu.encode(REQUEST))           # Evt6 in Sta6
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="unexpected in Sta6"):
        link.read_message()
    assert time.monotonic() - started < 2         # not the 60 s the send could take
    with pytest.raises(OSError):
        sending.result(timeout=5)
    assert link.closed


def test_a_pdv_on_a_context_never_accepted_is_aborted(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    theirs.sendall(pdata((11, COMMAND | LAST, STORE_RSP)))
    with pytest.raises(ProtocolError, match="context 11, which this association did not"):
        link.read_message()
    assert read_pdu(theirs)[0] == pdu.A_ABORT


def test_sending_on_a_context_not_accepted_writes_nothing(pair: Pair) -> None:
    ours, theirs = pair
    link = make_link(ours)
    with pytest.raises(LocalProtocolError, match="context 11 was not accepted"):
        link.send_message(11, STORE_RQ, b"data")
    link.send_message(1, STORE_RSP)               # the link is still usable
    (kind, body), = read_until_last(theirs, data=False)
    assert kind == pdu.P_DATA_TF and split_pdvs(body) == [(1, COMMAND | LAST, STORE_RSP)]


def test_no_message_goes_out_once_our_release_request_did(
        pair: Pair, pool: ThreadPoolExecutor) -> None:
    """Evt9 in Sta7 has no action in PS3.8 Table 9-10: the state table refuses the
    message before a byte of it is written, while the release waits for its answer."""
    ours, theirs = pair
    link = make_link(ours)
    releasing = pool.submit(link.release)
    assert read_pdu(theirs)[0] == pdu.A_RELEASE_RQ   # the link is now in Sta7
    with pytest.raises(LinkClosed, match=r"no longer carry a message.*Evt9.*Sta7"):
        link.send_message(1, STORE_RQ, b"late")
    theirs.sendall(RELEASE_RP)
    releasing.result(timeout=5)
    assert closed_by_link(theirs)                  # nothing but the A-RELEASE-RQ came


def test_fragments_are_views_of_the_read_buffer_not_copies(pair: Pair,
                                                           pool: ThreadPoolExecutor) -> None:
    """Rule 2: each data fragment is a view of the association's one read buffer, PDUs
    split across reads included (the buffer holds a whole PDU: none is gathered)."""
    ours, theirs = pair
    link = make_link(ours, our_max=65536)
    data = payload(600_000, seed=5)
    wire = pdata((1, COMMAND | LAST, STORE_RQ)) + b"".join(
        pdata((1, LAST if at + 65530 >= len(data) else 0, data[at:at + 65530]))
        for at in range(0, len(data), 65530))

    def peer() -> None:                            # odd pieces: PDUs straddle reads
        for at in range(0, len(wire), 7919):
            theirs.sendall(wire[at:at + 7919])

    sent = pool.submit(peer)
    owners: set[int] = set()
    kinds: set[type] = set()
    got = bytearray()

    class Views:
        def write(self, fragment: memoryview) -> None:
            owners.add(id(fragment.obj))
            kinds.add(type(fragment.obj))
            got.extend(fragment)

    link.read_message(lambda _cx, _command: Views())
    sent.result(timeout=5)
    assert bytes(got) == data
    assert kinds == {bytearray} and len(owners) == 1


# -- Link.open against a tiny acceptor on 127.0.0.1 -------------------------------------------

REQUEST = pdu.AssociateRQ(
    "ARCHIVE", "QR_PROXY",
    (items.PresentationContextRQ(1, "1.2.840.10008.5.1.4.1.2.2.3", (EXPLICIT, IMPLICIT)),
     items.PresentationContextRQ(3, CT, (EXPLICIT, IMPLICIT)),
     items.PresentationContextRQ(5, "1.2.840.10008.5.1.4.1.1.4", (IMPLICIT,))),
    items.UserInformation(65536, "1.2.826.0.1.3680043.9.3811.3.0.4", "TEST",
                          roles=(items.RoleSelection(CT, False, True),)))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    yield server
    server.close()


def acceptor(server: socket.socket, answer: bytes,
             then: Callable[[socket.socket], Any] | None = None) -> tuple[A_ASSOCIATE_RQ, Any]:
    conn, _addr = server.accept()
    conn.settimeout(5)
    with conn:
        kind, body = read_pdu(conn)
        assert kind == pdu.A_ASSOCIATE_RQ
        rq = A_ASSOCIATE_RQ()
        rq.decode(struct.pack(">BxL", kind, len(body)) + body)
        if answer:
            conn.sendall(answer)
        return rq, (then(conn) if then else None)


def ac_bytes(max_length: int = 16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.called_ae_title = "ARCHIVE"
    primitive.calling_ae_title = "QR_PROXY"
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.result = 0
    results = []
    for cx_id, result, syntax in [(1, 0, EXPLICIT), (3, 0, IMPLICIT), (5, 3, IMPLICIT)]:
        cx = PresentationContext()
        cx.context_id, cx.result = cx_id, result
        cx.add_transfer_syntax(syntax)
        results.append(cx)
    primitive.presentation_context_definition_results_list = results
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_length
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CT, False, True
    primitive.user_information = [ml, impl, role]
    encoded: bytes = A_ASSOCIATE_AC(primitive).encode()
    return encoded


def port_of(server: socket.socket) -> int:
    port: int = server.getsockname()[1]
    return port


def test_open_negotiates_and_release_completes(
        listener: socket.socket, pool: ThreadPoolExecutor) -> None:
    def release(conn: socket.socket) -> tuple[int, bytes]:
        request = read_pdu(conn)
        conn.sendall(RELEASE_RP)
        return request

    peer = pool.submit(acceptor, listener, ac_bytes(16384), release)
    link = Link.open("127.0.0.1", port_of(listener), REQUEST, 5.0, 5.0)
    assert link.accept.accepted == {1: EXPLICIT, 3: IMPLICIT}
    assert link.accept.refused == {5: 3}
    assert link.accept.max_pdu_length == 16384
    assert link.accept.scp_roles == {CT: True}
    assert link.fragment == 16384 - 6
    assert link.max_pdu_length == 65536
    assert link.sock.gettimeout() == 5.0
    assert link.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    link.release()
    rq, release_request = peer.result(timeout=5)
    assert release_request == (pdu.A_RELEASE_RQ, b"\x00" * 4)
    assert link.closed
    assert (rq.called_ae_title, rq.calling_ae_title) == ("ARCHIVE", "QR_PROXY")
    assert [cx.context_id for cx in rq.presentation_context] == [1, 3, 5]
    assert rq.user_information.maximum_length == 65536
    assert rq.user_information.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert rq.user_information.implementation_version_name == "TEST"
    roles = rq.user_information.role_selection
    assert {uid: (r.scu_role, r.scp_role) for uid, r in roles.items()} == {CT: (False, True)}
    # PS3.7 D.3.3: sub-items in ascending type order, as the lean layer always sent them
    assert [i.item_type for i in rq.user_information.user_data] == [0x51, 0x52, 0x54, 0x55]


def test_open_with_an_acceptor_without_a_limit(
        listener: socket.socket, pool: ThreadPoolExecutor) -> None:
    peer = pool.submit(acceptor, listener, ac_bytes(0))
    link = Link.open("127.0.0.1", port_of(listener), REQUEST, 5.0, 5.0)
    peer.result(timeout=5)
    assert link.accept.max_pdu_length == 0
    assert link.fragment == 1 << 20
    link.abort()


@pytest.mark.parametrize(("result", "source", "diagnostic"), [(1, 1, 7), (2, 3, 1)])
def test_open_rejected(listener: socket.socket, pool: ThreadPoolExecutor,
                       result: int, source: int, diagnostic: int) -> None:
    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = result, source, diagnostic
    peer = pool.submit(acceptor, listener, rj.encode(), closed_by_link)
    with pytest.raises(Rejected) as raised:
        Link.open("127.0.0.1", port_of(listener), REQUEST, 5.0, 5.0)
    assert raised.value.rj == pdu.AssociateRJ(result, source, diagnostic)
    assert f"diagnostic {diagnostic}" in str(raised.value)
    assert peer.result(timeout=5)[1] is True               # the socket was closed


@pytest.mark.parametrize(("answer", "message"), [
    (pdu.encode(pdu.Abort(2, 0)), "PDU type 0x07"),
    (b"", "closed the connection"),
])
def test_open_answered_with_abort_or_close(listener: socket.socket, pool: ThreadPoolExecutor,
                                           answer: bytes, message: str) -> None:
    peer: Future[Any] = pool.submit(acceptor, listener, answer)
    with pytest.raises(LinkClosed, match=message):
        Link.open("127.0.0.1", port_of(listener), REQUEST, 5.0, 5.0)
    peer.result(timeout=5)


def test_open_with_an_invalid_request_closes_the_socket(listener: socket.socket) -> None:
    bad = pdu.AssociateRQ("ARCHIVE", "QR_PROXY", (items.PresentationContextRQ(2, CT, (IMPLICIT,)),),
                          items.UserInformation(0, "1.2.3"))
    with pytest.raises(pdu.PduError, match="context ID 2"):
        Link.open("127.0.0.1", port_of(listener), bad, 5.0, 5.0)
    conn, _addr = listener.accept()
    conn.settimeout(5)
    with conn:
        assert closed_by_link(conn)                        # connected, nothing sent, closed


# -- ArchiveClient.link against a real pynetdicom acceptor ------------------------------------


@pytest.fixture(scope="module")
def archive() -> Iterator[tuple[int, list[Dataset]]]:
    ae = AE(ae_title="ARCHIVE")
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ImplicitVRLittleEndian, scu_role=True,
                             scp_role=True)
    stored: list[Dataset] = []

    def on_store(event: Any) -> int:
        stored.append(event.dataset)
        return 0x0000

    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield server.server_address[1], stored
    server.shutdown()


def client(port: int, called: str = "ARCHIVE") -> ArchiveClient:
    return ArchiveClient(Peer("arch", called, "127.0.0.1", port, "QR_PROXY", 5.0),
                         network_timeout=5.0, max_pdu_size=65536)


def test_archive_client_link_negotiates_with_pynetdicom(
        archive: tuple[int, list[Dataset]]) -> None:
    port, _stored = archive
    contexts = [build_context(Verification),
                build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                build_context(MRImageStorage)]
    with client(port).link(contexts, [build_role(CTImageStorage, scp_role=True)]) as link:
        assert link.accept.accepted == {1: IMPLICIT, 3: IMPLICIT}
        assert link.accept.refused == {5: 3}             # abstract syntax not supported
        assert link.accept.scp_roles == {CT: True}
        assert link.abstract == {1: Verification, 3: CTImageStorage, 5: MRImageStorage}
        assert link.accept.max_pdu_length > 0
        assert link.fragment == min(link.accept.max_pdu_length - 6, 1 << 20)
    assert link.closed                                    # released on exit


def test_archive_client_link_echo_and_store_with_pynetdicom(
        archive: tuple[int, list[Dataset]]) -> None:
    port, stored = archive
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    contexts = [build_context(Verification), build_context(CTImageStorage, ImplicitVRLittleEndian)]
    with client(port).link(contexts) as link:
        echo = commands.encode({commands.AFFECTED_SOP_CLASS: Verification,
                                commands.COMMAND_FIELD: 0x0030, commands.MESSAGE_ID: 1,
                                commands.DATA_SET_TYPE: commands.NO_DATA_SET})
        link.send_message(1, echo)
        rsp = link.read_message(lambda _cx, _command: None)
        assert rsp.command[commands.COMMAND_FIELD] == 0x8030
        assert rsp.command[commands.RESPONDED_TO] == 1
        assert rsp.command[commands.STATUS] == 0
        data = pn_encode(ct, True, True)
        link.send_message(3, commands.c_store_rq(2, CTImageStorage, ct.SOPInstanceUID,
                                                 "MOVER", 7), data)
        rsp = link.read_message(lambda _cx, _command: None)
        assert rsp.context_id == 3
        assert rsp.command[commands.COMMAND_FIELD] == commands.C_STORE_RSP
        assert rsp.command[commands.RESPONDED_TO] == 2
        assert rsp.command[commands.STATUS] == 0
    assert [ds.SOPInstanceUID for ds in stored] == [ct.SOPInstanceUID]
    assert stored[0].PixelData == ct.PixelData


def test_archive_client_link_wrong_called_ae_is_rejected(
        archive: tuple[int, list[Dataset]]) -> None:
    port, _stored = archive
    with pytest.raises(UpstreamError) as raised, client(port, "WRONG").link(
            [build_context(Verification)]):
        pytest.fail("the association should have been rejected")
    assert raised.value.kind == "rejected"
    assert "called AE title not recognised" in raised.value.reason
    assert raised.value.hint is not None and "WRONG" in raised.value.hint


# -- what the link derives from the PDUs ------------------------------------------------------


def test_negotiated_of_an_ac_with_refusals_roles_and_no_length_limit() -> None:
    ac = pdu.AssociateAC("ARCHIVE", "QR_PROXY", (
        items.PresentationContextAC(1, 0, EXPLICIT), items.PresentationContextAC(3, 0, IMPLICIT),
        items.PresentationContextAC(5, 3), items.PresentationContextAC(7, 4),
        items.PresentationContextAC(9, 1), items.PresentationContextAC(11, 0)),
        items.UserInformation(None, "1.2.3", roles=(items.RoleSelection(CT, False, True),
                                                    items.RoleSelection(MR, True, False))))
    parsed = pdu.parse(pdu.encode(ac))
    assert isinstance(parsed, pdu.AssociateAC)
    got = Negotiated.of(parsed)
    assert got.max_pdu_length == 0
    assert got.accepted == {1: EXPLICIT, 3: IMPLICIT}
    # accepted without a transfer syntax is no context to send on
    assert got.refused == {5: 3, 7: 4, 9: 1, 11: 0}
    assert got.scp_roles == {CT: True, MR: False}


# -- Link.open over TLS (Rule 5) against a tiny TLS acceptor ----------------------------------


@pytest.fixture(scope="module")
def link_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("link-pki"))


def _tls_config(pki: Pki, **kw: Any) -> TlsConfig:
    values: dict[str, Any] = {"cert": pki.proxy.cert, "key": pki.proxy.key, "ca": pki.ca.path,
                              **kw}
    return TlsConfig(**values)


def test_open_over_tls_negotiates_and_sends_a_large_data_set_in_order(
        listener: socket.socket, pool: ThreadPoolExecutor, link_pki: Pki) -> None:
    server = tls.server_context(_tls_config(link_pki, cert=link_pki.workstation.cert,
                                            key=link_pki.workstation.key,
                                            require_client_cert=True))
    data = payload(3 * 1024 * 1024 + 17)        # several sendmsg batches' worth

    def tls_acceptor() -> tuple[bytes, bytes, list[int]]:
        conn, _addr = listener.accept()
        conn.settimeout(5)
        with server.wrap_socket(conn, server_side=True) as secure:
            assert secure.getpeercert() is not None          # the proxy presented its own
            assert read_pdu(secure)[0] == pdu.A_ASSOCIATE_RQ
            secure.sendall(ac_bytes(16384))
            return check_message(read_until_last(secure), 16384, 3)

    peer = pool.submit(tls_acceptor)
    heard: list[bytes | None] = []
    link = Link.open("127.0.0.1", port_of(listener), REQUEST, 5.0, 5.0,
                     tls=tls.client_context(_tls_config(link_pki)),
                     server_hostname="localhost", on_tls=heard.append)
    assert link.accept.accepted == {1: EXPLICIT, 3: IMPLICIT}
    link.send_message(3, STORE_RQ, data)
    command, got, sizes = peer.result(timeout=10)
    assert command == STORE_RQ and got == data
    assert sizes == expected_sizes(len(data), 16384 - 6)
    assert heard and heard[0]                                 # the peer certificate (DER)
    link.abort()


def test_open_over_tls_to_a_wrongly_named_peer_raises_tls_failed(
        listener: socket.socket, pool: ThreadPoolExecutor, link_pki: Pki) -> None:
    server = tls.server_context(_tls_config(link_pki, cert=link_pki.wrong_name.cert,
                                            key=link_pki.wrong_name.key,
                                            require_client_cert=False))

    def tls_acceptor() -> None:
        conn, _addr = listener.accept()
        try:
            server.wrap_socket(conn, server_side=True).close()
        except (OSError, ssl.SSLError):
            conn.close()

    pool.submit(tls_acceptor)
    with pytest.raises(TlsFailed) as info:
        Link.open("127.0.0.1", port_of(listener), REQUEST, 5.0, 5.0,
                  tls=tls.client_context(_tls_config(link_pki)), server_hostname="localhost")
    assert tls.explain_peer(info.value.error, "archive", "localhost", 5)[0] == tls.NAME_MISMATCH
