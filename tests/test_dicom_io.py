"""proxy.dicom.io over real loopback sockets: an echo/store SCP built on the driver
answers pynetdicom's SCU and DCMTK echoscu; garbage, a 4 GB PDU header, a silent peer
and a slow reader end only their own association; 200 idle associations cost ~0 CPU;
the connection cap, TLS, the requestor side and shutdown."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from io import BytesIO
from typing import Any, TypeVar

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import decode, encode

from proxy.dicom import commands, pdu
from proxy.dicom.dimse import fragments
from proxy.dicom.events import Aborted, DataFragment, MessageReceived, SendMessage
from proxy.dicom.io import (
    AssociationRejected,
    Driver,
    Handler,
    Limits,
    Link,
    LinkClosed,
    Outbox,
    run,
)
from proxy.dicom.items import PresentationContextRQ, UserInformation
from proxy.dicom.link import NotSent
from proxy.dicom.negotiation import Offer, Policy, negotiate

VERIFICATION, CT = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
POLICY = Policy({VERIFICATION: Offer((IMPLICIT, EXPLICIT)), CT: Offer((EXPLICIT, IMPLICIT))},
                called_aes=frozenset({"PROXY"}), max_pdu=16384)
RQ = pdu.AssociateRQ("PROXY", "RAW", (PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),),
                     UserInformation(max_length=16384))
T = TypeVar("T")


class LoopThread:
    """An event loop in a thread with one Driver on it, serving ``factory``."""

    def __init__(self, factory: Callable[[Link], Handler], limits: Limits,
                 tls: ssl.SSLContext | None = None,
                 new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
                 ) -> None:
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> tuple[Driver, int]:
            driver = Driver(limits)
            return driver, driver.serve("127.0.0.1", 0, factory, tls=tls)
        self.driver, self.port = self.call(start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.driver.shutdown(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Scp:
    """C-ECHO on the loop; C-STORE (and any message with data) in a worker."""
    received: list[tuple[str, bytes]]
    closed: list[Link]

    def __init__(self, link: Link) -> None:
        self.link = link

    def on_associate_request(self, request: pdu.AssociateRQ) -> pdu.AssociateAC | pdu.AssociateRJ:
        return negotiate(request, POLICY)

    def on_message(self, message: MessageReceived | DataFragment) -> None:
        assert isinstance(message, MessageReceived)
        cmd, cx = message.command, message.context_id
        if cmd[commands.COMMAND_FIELD] == 0x0030:
            self.link.send(SendMessage(cx, {
                commands.COMMAND_FIELD: 0x8030, commands.RESPONDED_TO: cmd[commands.MESSAGE_ID],
                commands.AFFECTED_SOP_CLASS: VERIFICATION, commands.STATUS: 0}))
        elif cmd[commands.COMMAND_FIELD] == commands.C_STORE_RQ:
            self.link.run_in_worker(lambda outbox: self.store(outbox, cmd, cx, message.data))

    def store(self, outbox: Outbox, cmd: commands.Command, cx: int, data: bytes | None) -> None:
        assert data is not None
        Scp.received.append((str(cmd[commands.AFFECTED_SOP_INSTANCE]), data))
        outbox.send(SendMessage(cx, {
            commands.COMMAND_FIELD: commands.C_STORE_RSP,
            commands.RESPONDED_TO: cmd[commands.MESSAGE_ID],
            commands.AFFECTED_SOP_CLASS: cmd[commands.AFFECTED_SOP_CLASS],
            commands.AFFECTED_SOP_INSTANCE: cmd[commands.AFFECTED_SOP_INSTANCE],
            commands.STATUS: 0}))

    def on_release(self) -> None:
        pass

    def on_abort(self, aborted: Aborted) -> None:
        pass

    def on_closed(self) -> None:
        Scp.closed.append(self.link)


@pytest.fixture
def scp() -> Iterator[LoopThread]:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(acse_timeout=1.0, network_timeout=3.0, dimse_timeout=3.0))
    yield server
    server.stop()


def pynetdicom_echo(port: int) -> int:
    ae = AE(ae_title="WS1")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="PROXY")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def raw_associate(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(pdu.encode(RQ))
    buf = b""
    while (framed := pdu.frame(buf, 1 << 20)) is None:
        chunk = sock.recv(65536)
        assert chunk, "closed before A-ASSOCIATE-AC"
        buf += chunk
    assert isinstance(pdu.parse(buf[:framed[1]]), pdu.AssociateAC)
    return sock


def read_pdus(sock: socket.socket, count: int) -> list[pdu.Pdu]:
    out: list[pdu.Pdu] = []
    buf = b""
    while len(out) < count:
        framed = pdu.frame(buf, 1 << 20)
        if framed is None:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(out)} PDUs"
            buf += chunk
            continue
        out.append(pdu.parse(buf[:framed[1]]))
        buf = buf[framed[1]:]
    return out


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def read_or_reset(sock: socket.socket) -> bytes:
    try:
        return read_until_closed(sock)
    except ConnectionResetError:
        return b""


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:    # queued in the backlog of a listener that just closed
        return False                # (it may not be closed yet): ask again
    return False


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_pynetdicom_echo_and_multi_fragment_store(scp: LoopThread) -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, generate_uid(), "IO-1"
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(256)) * 800            # 200 KB: 13+ PDUs at 16 KB
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title="WS1")
    ae.maximum_pdu_size = 16384
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PROXY")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    [(uid, data)] = Scp.received
    assert uid == ds.SOPInstanceUID
    stored = decode(BytesIO(data), False, True)       # explicit VR little endian
    assert stored == ds and stored.PixelData == ds.PixelData
    wait_for(lambda: len(Scp.closed) == 1)


def test_dcmtk_echoscu(scp: LoopThread) -> None:
    done = subprocess.run(["/usr/bin/echoscu", "-aec", "PROXY", "127.0.0.1", str(scp.port)],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(["/usr/bin/echoscu", "-aec", "NOBODY", "127.0.0.1",
                              str(scp.port)], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stderr


@pytest.mark.parametrize("attack", [b"\xff" * 32, b"\x04\x00\xff\xff\xff\xff",
                                    b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 100])
def test_garbage_and_huge_pdu_abort_only_themselves(scp: LoopThread, attack: bytes) -> None:
    ae = AE(ae_title="WS1")
    ae.add_requested_context(VERIFICATION)
    bystander = ae.associate("127.0.0.1", scp.port, ae_title="PROXY")
    assert bystander.is_established
    with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
        sock.sendall(attack)
        answer = read_until_closed(sock)
    assert answer[:1] == b"\x07"                      # A-ABORT, then the connection closed
    assert isinstance(pdu.parse(answer), pdu.Abort)
    assert bystander.send_c_echo().Status == 0
    bystander.release()


def test_silent_peers_time_out_alone(scp: LoopThread) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as silent, \
            raw_associate(scp.port) as idle:
        assert pynetdicom_echo(scp.port) == 0
        assert read_until_closed(silent) == b""        # ARTIM (acse_timeout 1 s)
        artim = time.monotonic() - started
        assert pdu.parse(read_until_closed(idle)) == pdu.Abort()   # network_timeout 3 s
        idle_end = time.monotonic() - started
    assert 0.9 <= artim < 2.5 and 2.9 <= idle_end < 5, (artim, idle_end)
    assert pynetdicom_echo(scp.port) == 0


def test_two_hundred_idle_associations_cost_no_cpu() -> None:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(network_timeout=60))
    socks = [raw_associate(server.port) for _ in range(200)]
    try:
        time.sleep(0.2)                                # let the last ACs settle
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(2.0)
        share = (time.process_time() - cpu) / (time.monotonic() - wall)
        assert share < 0.05, f"{share:.1%} of a core for 200 idle associations"
        print(f"200 idle associations: {share:.3%} of one core")
        assert len(server.driver.links) == 200
        assert pynetdicom_echo(server.port) == 0
    finally:
        for sock in socks:
            sock.close()
        server.stop()


ECHO_RQ = {commands.COMMAND_FIELD: 0x0030, commands.MESSAGE_ID: 1,
           commands.AFFECTED_SOP_CLASS: VERIFICATION}


FLOOD_RSP = {commands.COMMAND_FIELD: 0x8030, commands.RESPONDED_TO: 1,
             commands.AFFECTED_SOP_CLASS: VERIFICATION, commands.STATUS: 0xFF00}
FLOOD_DATA = b"\x00" * (1 << 20)


class Flood:
    """On a request, a worker sends 40 messages of 1 MB each."""
    sent: dict[int, int]
    closed: list[int]

    def __init__(self, link: Link) -> None:
        self.link = link

    def on_associate_request(self, request: pdu.AssociateRQ) -> pdu.AssociateAC | pdu.AssociateRJ:
        return negotiate(request, POLICY)

    def on_message(self, message: MessageReceived | DataFragment) -> None:
        assert isinstance(message, MessageReceived)
        self.link.run_in_worker(lambda outbox: self.flood(outbox, message.context_id))

    def flood(self, outbox: Outbox, cx: int) -> None:
        Flood.sent[id(self)] = 0
        try:
            for _ in range(40):
                outbox.send(SendMessage(cx, FLOOD_RSP, FLOOD_DATA))
                Flood.sent[id(self)] += 1
        except LinkClosed:
            Flood.closed.append(id(self))

    def on_release(self) -> None: ...
    def on_abort(self, aborted: Aborted) -> None: ...
    def on_closed(self) -> None: ...


def test_slow_reader_back_pressure_aborts_only_it() -> None:
    Flood.sent, Flood.closed = {}, []
    server = LoopThread(Flood, Limits(write_high_water=256 * 1024, network_timeout=1.5))
    request = b"".join(fragments(1, ECHO_RQ, None, 16384))
    try:
        with raw_associate(server.port) as slow, raw_associate(server.port) as fast:
            slow.sendall(request)
            wait_for(lambda: len(Flood.sent) == 1)
            [slow_id] = Flood.sent
            fast.sendall(request)
            wait_for(lambda: len(Flood.sent) == 2)
            expected = 40 * sum(map(len, fragments(1, FLOOD_RSP, FLOOD_DATA, 16384)))
            got = 0
            while got < expected:                        # the fast reader gets everything
                got += len(fast.recv(1 << 20))
            assert got == expected
            stalled = Flood.sent[slow_id]
            assert stalled < 16, f"{stalled} MB queued for a peer that reads nothing"
            wait_for(lambda: Flood.closed == [slow_id])  # its writer did not drain: aborted
            assert Flood.sent[slow_id] == stalled
    finally:
        server.stop()


class Gate(Scp):
    """Answers C-ECHO from a worker that waits for the test to open the gate."""
    gate = threading.Event()
    seen: list[int]

    def on_message(self, message: MessageReceived | DataFragment) -> None:
        assert isinstance(message, MessageReceived)
        Gate.seen.append(len(Gate.seen))
        msg_id = message.command[commands.MESSAGE_ID]

        def answer(outbox: Outbox) -> None:
            Gate.gate.wait(10)
            outbox.send(SendMessage(message.context_id, {
                commands.COMMAND_FIELD: 0x8030, commands.RESPONDED_TO: msg_id,
                commands.AFFECTED_SOP_CLASS: VERIFICATION, commands.STATUS: 0}))
        self.link.run_in_worker(answer)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_reading_pauses_while_the_handler_is_busy(in_flight: int) -> None:
    Gate.gate.clear()
    Gate.seen, Scp.closed = [], []
    server = LoopThread(Gate, Limits(max_in_flight=in_flight))
    try:
        with raw_associate(server.port) as sock:
            burst = b"".join(b"".join(fragments(1, {**ECHO_RQ, commands.MESSAGE_ID: i}, None,
                                                16384)) for i in range(1, 3001))
            sock.sendall(burst)                          # ~260 KB: more than one read
            wait_for(lambda: len(Gate.seen) == in_flight)
            time.sleep(0.3)
            [link] = server.driver.links
            assert len(Gate.seen) == in_flight           # nothing more delivered ...
            assert link.association.buffered <= 256 * 1024   # ... nor read past one chunk
            Gate.gate.set()
            answers = read_pdus(sock, 3000)
            assert {type(p) for p in answers} == {pdu.PData}
            assert len(Gate.seen) == 3000
    finally:
        server.stop()


class Holder(Scp):
    """Answers C-ECHO on the loop; the first one also holds reading (``hold_reading``), as
    a handler whose worker is behind on a data set handed on as it arrives does."""
    seen: list[int]

    def on_message(self, message: MessageReceived | DataFragment) -> None:
        if not Holder.seen:
            self.link.hold_reading(True)
        Holder.seen.append(len(Holder.seen))
        super().on_message(message)


def test_a_handler_holding_reading_gets_nothing_more_until_it_lets_go() -> None:
    Holder.seen, Scp.closed = [], []
    server = LoopThread(Holder, Limits())
    try:
        with raw_associate(server.port) as sock:
            burst = b"".join(b"".join(fragments(1, {**ECHO_RQ, commands.MESSAGE_ID: i}, None,
                                                16384)) for i in range(1, 3001))
            sock.sendall(burst)                          # ~260 KB: more than one read
            assert len(read_pdus(sock, 1)) == 1          # the first is answered
            time.sleep(0.3)
            [link] = server.driver.links
            assert len(Holder.seen) == 1                 # nothing more delivered ...
            assert link.association.buffered <= 256 * 1024   # ... nor read past one chunk
            link.hold_released()                         # from this (another) thread
            answers = read_pdus(sock, 2999)
            assert {type(p) for p in answers} == {pdu.PData}
            assert len(Holder.seen) == 3000
    finally:
        server.stop()


def test_connection_cap_closes_extra_connections_unread() -> None:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(max_connections=2))
    try:
        with raw_associate(server.port), raw_associate(server.port), \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
            extra.sendall(pdu.encode(RQ))
            assert read_or_reset(extra) == b""            # closed unread: EOF or reset
            assert len(server.driver.links) == 2
        wait_for(lambda: not server.driver.links)
        assert pynetdicom_echo(server.port) == 0        # room again
    finally:
        server.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    where = tmp_path_factory.mktemp("tls")
    key, cert = str(where / "key.pem"), str(where / "cert.pem")
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True,
                   timeout=60)
    return key, cert


class Client:
    """A requestor-side handler collecting what arrives."""
    def __init__(self, link: Link) -> None:
        self.link = link
        self.messages: asyncio.Queue[MessageReceived | DataFragment] = asyncio.Queue()

    def on_associate_request(self, request: pdu.AssociateRQ) -> pdu.AssociateAC | pdu.AssociateRJ:
        raise AssertionError("a requestor is never asked")

    def on_message(self, message: MessageReceived | DataFragment) -> None:
        self.messages.put_nowait(message)

    def on_release(self) -> None: ...
    def on_abort(self, aborted: Aborted) -> None: ...
    def on_closed(self) -> None: ...


async def echo_through(driver: Driver, port: int, tls: ssl.SSLContext | None = None) -> int:
    link = await driver.connect("127.0.0.1", port, RQ, Client, tls=tls)
    assert link.association.contexts == {1: IMPLICIT}
    link.send(SendMessage(1, ECHO_RQ))
    client = link.handler
    assert isinstance(client, Client)
    answer = await asyncio.wait_for(client.messages.get(), 5)
    assert isinstance(answer, MessageReceived)
    link.release()
    await asyncio.wait_for(link.closed, 5)
    return int(answer.command[commands.STATUS])


def test_tls_handshake_failures_close_only_their_connection(
        certificate: tuple[str, str]) -> None:
    key, cert = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(handshake_timeout=1.0), tls=server_ctx)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain, \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as mute:
            plain.sendall(pdu.encode(RQ))                # DICOM bytes where TLS is due
            assert not read_or_reset(plain).startswith(b"\x02")   # no A-ASSOCIATE-AC
            assert server.call(echo_through(server.driver, server.port, client_ctx)) == 0
            assert read_until_closed(mute) == b""        # handshake timeout, 1 s
        assert Scp.received == [] and len(Scp.closed) == 1
    finally:
        server.stop()


def test_tls_outcomes_are_reported_and_a_swapped_context_reaches_new_connections(
        certificate: tuple[str, str]) -> None:
    """``on_tls`` hears each handshake (error or None); a callable ``tls`` is read per accept."""
    key, cert = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    current = {"ctx": server_ctx}
    outcomes: list[tuple[str, BaseException | None]] = []
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(handshake_timeout=1.0))

    async def serve_tls() -> int:
        return server.driver.serve("127.0.0.1", 0, Scp, tls=lambda: current["ctx"],
                                   on_tls=lambda peer, error, der: outcomes.append((peer, error)))
    try:
        port = server.call(serve_tls())
        assert server.call(echo_through(server.driver, port, client_ctx)) == 0
        with socket.create_connection(("127.0.0.1", port), timeout=5) as mute:
            mute_peer = f"127.0.0.1:{mute.getsockname()[1]}"
            assert read_until_closed(mute) == b""
        deadline = time.monotonic() + 5
        while len(outcomes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outcomes[0][1] is None
        assert outcomes[1][0] == mute_peer and outcomes[1][1] is not None
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)      # no certificate: every
        current["ctx"] = other                               # new handshake fails now
        with pytest.raises((ssl.SSLError, OSError)):
            server.call(echo_through(server.driver, port, client_ctx))
    finally:
        server.stop()


def test_requestor_connect_against_pynetdicom_scp_and_rejection(scp: LoopThread) -> None:
    ae = AE(ae_title="PROXY")
    ae.add_supported_context(VERIFICATION)
    pyscp = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = pyscp.socket.getsockname()[1]
        assert scp.call(echo_through(scp.driver, port)) == 0
        stranger = pdu.AssociateRQ("PROXY", "RAW", RQ.contexts, RQ.user,
                                   application_context="1.2.3.4")
        with pytest.raises(AssociationRejected) as rejected:
            scp.call(scp.driver.connect("127.0.0.1", scp.port, stranger, Client))
        assert rejected.value.reject == pdu.AssociateRJ(1, 1, 2)
    finally:
        pyscp.shutdown()


def test_shutdown_stops_accepting_then_aborts_the_rest() -> None:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits())
    with raw_associate(server.port) as idle:
        started = time.monotonic()
        server.call(server.driver.shutdown(0.5))
        assert 0.5 <= time.monotonic() - started < 3
        assert pdu.parse(read_until_closed(idle)) == pdu.Abort()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert not server.driver.links and len(Scp.closed) == 1
    server.loop.call_soon_threadsafe(server.loop.stop)
    server.thread.join(5)
    server.loop.close()


def test_message_begun_and_not_completed_times_out_on_dimse_timeout() -> None:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(dimse_timeout=1.0, network_timeout=10.0))
    try:
        with raw_associate(server.port) as stuck:
            started = time.monotonic()
            stuck.sendall(b"".join(fragments(1, ECHO_RQ, None, 16384))[:10])   # half a PDU
            assert pdu.parse(read_until_closed(stuck)) == pdu.Abort()
            assert 0.9 <= time.monotonic() - started < 3
        assert pynetdicom_echo(server.port) == 0
    finally:
        server.stop()


class Broken(Scp):
    """Fails on message ID 99, on the loop or in a worker."""
    def on_message(self, message: MessageReceived | DataFragment) -> None:
        assert isinstance(message, MessageReceived)
        if message.command[commands.MESSAGE_ID] == 99:
            raise RuntimeError("handler bug")
        if message.command[commands.MESSAGE_ID] == 98:
            self.link.run_in_worker(lambda outbox: 1 / 0)   # type: ignore[func-returns-value]
            return
        super().on_message(message)


@pytest.mark.parametrize("msg_id", [98, 99])
def test_handler_failure_aborts_only_its_association(msg_id: int) -> None:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Broken, Limits())
    try:
        with raw_associate(server.port) as victim:
            victim.sendall(b"".join(fragments(1, {**ECHO_RQ, commands.MESSAGE_ID: msg_id}, None,
                                              16384)))
            assert pdu.parse(read_until_closed(victim)) == pdu.Abort()
        assert pynetdicom_echo(server.port) == 0
    finally:
        server.stop()


def test_run_uses_an_event_loop() -> None:
    seen: list[bool] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop().is_running())
    run(main)
    assert seen == [True]


def test_uvloop_drives_the_same_scp() -> None:
    uvloop = pytest.importorskip("uvloop")
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits(), new_loop=uvloop.new_event_loop)
    try:
        assert pynetdicom_echo(server.port) == 0
        done = subprocess.run(["/usr/bin/echoscu", "-aec", "PROXY", "127.0.0.1",
                               str(server.port)], capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()


def test_shutdown_lets_a_running_association_finish_within_grace() -> None:
    Scp.received, Scp.closed = [], []
    server = LoopThread(Scp, Limits())
    ae = AE(ae_title="WS1")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PROXY")
    assert assoc.is_established
    stopping = asyncio.run_coroutine_threadsafe(server.driver.shutdown(10.0), server.loop)
    wait_for(lambda: refused(server.port))              # no longer accepting
    assert assoc.send_c_echo().Status == 0              # still served ...
    started = time.monotonic()
    assoc.release()                                      # ... and released, not aborted
    stopping.result(5)
    assert time.monotonic() - started < 2 and assoc.is_released and not assoc.is_aborted
    # probes of refused() may have been accepted before the listener closed
    assert len([link for link in Scp.closed if link.association.contexts]) == 1
    server.loop.call_soon_threadsafe(server.loop.stop)
    server.thread.join(5)
    server.loop.close()


GET_MODEL = "1.2.840.10008.5.1.4.1.2.1.3"          # Patient Root Q/R - GET
GET_POLICY = Policy({GET_MODEL: Offer((IMPLICIT, EXPLICIT)),
                     CT: Offer((EXPLICIT, IMPLICIT), roles=(True, True))})


class GetScp(Scp):
    """C-GET: a worker sends each instance as a C-STORE sub-operation on the same
    association and waits for its C-STORE-RSP (``Outbox.request``)."""
    instances: list[Dataset]

    def on_associate_request(self, request: pdu.AssociateRQ) -> pdu.AssociateAC | pdu.AssociateRJ:
        return negotiate(request, GET_POLICY)

    def on_message(self, message: MessageReceived | DataFragment) -> None:
        assert isinstance(message, MessageReceived)
        self.link.run_in_worker(lambda outbox: self.get(outbox, message))

    def get(self, outbox: Outbox, message: MessageReceived) -> None:
        assoc = self.link.association
        [store_cx] = [cx for cx in assoc.contexts if assoc.proposed[cx] == CT]
        msg_id = int(message.command[commands.MESSAGE_ID])
        counts = {commands.REMAINING: len(GetScp.instances), commands.COMPLETED: 0,
                  commands.FAILED: 0, commands.WARNING: 0}
        for n, ds in enumerate(GetScp.instances, start=1):
            rsp = outbox.request(SendMessage(store_cx, {
                commands.COMMAND_FIELD: commands.C_STORE_RQ, commands.MESSAGE_ID: 1000 + n,
                commands.AFFECTED_SOP_CLASS: CT, commands.PRIORITY: 0,
                commands.AFFECTED_SOP_INSTANCE: ds.SOPInstanceUID},
                encode(ds, False, True)))
            counts[commands.REMAINING] -= 1
            counts[commands.COMPLETED if rsp.command[commands.STATUS] == 0
                   else commands.FAILED] += 1
            status = 0xFF00 if counts[commands.REMAINING] else 0x0000
            outbox.send(SendMessage(message.context_id, {
                commands.COMMAND_FIELD: commands.C_GET_RSP, commands.RESPONDED_TO: msg_id,
                commands.AFFECTED_SOP_CLASS: GET_MODEL, commands.STATUS: status, **counts}))


def c_get(port: int, patient_id: str, on_store: Callable[[evt.Event], int],
          max_pdu: int = 0) -> list[int]:
    """A pynetdicom C-GET of ``patient_id`` taking the C-STOREs with ``on_store``: the
    statuses of the C-GET responses."""
    ae = AE(ae_title="WS1")
    if max_pdu:
        ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(GET_MODEL)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="PROXY",
                         ext_neg=[build_role(CT, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.PatientID = "PATIENT", patient_id
    statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, GET_MODEL)]
    assoc.release()
    return statuses


@pytest.mark.parametrize("in_flight", [1, 2])
def test_c_get_sub_operations_over_the_same_association(in_flight: int) -> None:
    GetScp.instances = []
    for n in range(3):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, generate_uid(), "GET-1"
        ds.BitsAllocated, ds.PixelData = 8, bytes([n]) * 50_000   # 4 PDUs each at 16 KB
        GetScp.instances.append(ds)
    Scp.received, Scp.closed = [], []
    server = LoopThread(GetScp, Limits(max_in_flight=in_flight))
    stored: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset)
        return 0
    try:
        statuses = c_get(server.port, "GET-1", on_store, max_pdu=16384)
        assert statuses == [0xFF00, 0xFF00, 0x0000]
        assert [ds.SOPInstanceUID for ds in stored] == \
            [ds.SOPInstanceUID for ds in GetScp.instances]
        assert [ds.PixelData for ds in stored] == [ds.PixelData for ds in GetScp.instances]
    finally:
        server.stop()


class ChainedGetScp(GetScp):
    """C-GET whose worker hands every C-STORE over at once, each to follow the one before
    (``Outbox.request_after``), the third told not to go."""
    asked: list[float] = []                 # when the link asked each request's ``go``
    results: list[object] = []

    def get(self, outbox: Outbox, message: MessageReceived) -> None:
        assoc = self.link.association
        [store_cx] = [cx for cx in assoc.contexts if assoc.proposed[cx] == CT]
        answers = []
        previous = -1
        for n, ds in enumerate(GetScp.instances, start=1):
            def go(n: int = n) -> bool:
                ChainedGetScp.asked.append(time.monotonic())
                return n <= 2
            answers.append(outbox.request_after(previous, SendMessage(store_cx, {
                commands.COMMAND_FIELD: commands.C_STORE_RQ, commands.MESSAGE_ID: 1000 + n,
                commands.AFFECTED_SOP_CLASS: CT, commands.PRIORITY: 0,
                commands.AFFECTED_SOP_INSTANCE: ds.SOPInstanceUID},
                encode(ds, False, True)), go))
            previous = 1000 + n
        for answer in answers:
            try:
                ChainedGetScp.results.append(answer.result(10).command[commands.STATUS])
            except NotSent:
                ChainedGetScp.results.append("not sent")
        outbox.send(SendMessage(message.context_id, {
            commands.COMMAND_FIELD: commands.C_GET_RSP,
            commands.RESPONDED_TO: int(message.command[commands.MESSAGE_ID]),
            commands.AFFECTED_SOP_CLASS: GET_MODEL, commands.STATUS: 0xFE00,
            commands.REMAINING: 1, commands.COMPLETED: 2, commands.FAILED: 0,
            commands.WARNING: 0}))


def test_a_request_handed_over_early_goes_only_once_the_one_before_is_answered() -> None:
    """Rule 7: one C-STORE on the wire at a time; the next is sent by the loop when the
    answer is in, after asking its ``go`` then, not when it was handed over."""
    GetScp.instances = []
    for n in range(3):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, generate_uid(), "GET-2"
        ds.BitsAllocated, ds.PixelData = 8, bytes([n]) * 50_000
        GetScp.instances.append(ds)
    ChainedGetScp.asked, ChainedGetScp.results = [], []
    Scp.received, Scp.closed = [], []
    server = LoopThread(ChainedGetScp, Limits())
    handled: list[tuple[float, float]] = []        # each C-STORE the SCU handled: in, out

    def on_store(event: evt.Event) -> int:
        began = time.monotonic()
        time.sleep(0.3)
        handled.append((began, time.monotonic()))
        return 0
    try:
        assert c_get(server.port, "GET-2", on_store) == [0xFE00]
        assert ChainedGetScp.results == [0, 0, "not sent"]
        assert len(handled) == 2 and len(ChainedGetScp.asked) == 3
        assert ChainedGetScp.asked[0] < handled[0][0]
        # each later one was asked for (and sent) only after the one before was handled
        assert ChainedGetScp.asked[1] >= handled[0][1]
        assert ChainedGetScp.asked[2] >= handled[1][1]
        assert handled[1][0] >= handled[0][1]
    finally:
        server.stop()
