"""The proxy under hostile or broken peers: each fault ends one association, is logged,
and the listener and every other association carry on.

Raw sockets play the misbehaving workstation (bytes a DICOM library would never
send); scripted pynetdicom archives play the slow or silent upstream. After each
fault the test proves the proxy is still whole: an association opened before
the fault still works, and a new echoscu is answered.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, Association
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from tests.e2e.dcmtk import echoscu
from tests.e2e.fault_peers import (
    ScriptedArchive,
    associate_rq,
    closed_by_peer,
    find_rq,
    gated_stream,
    many_matches,
    never_answers,
    pdu_header,
    read_pdu,
    study_match,
)
from tests.e2e.ports import LOOPBACK, port_is_open
from tests.e2e.proxy_harness import ProxyProcess

ProxyFactory = Callable[..., ProxyProcess]
ACSE_TIMEOUT = 1.5
NETWORK_TIMEOUT = 3.0
MAX_ASSOCIATIONS = 3
FIND = StudyRootQueryRetrieveInformationModelFind
IMPLICIT = "1.2.840.10008.1.2"
A_ASSOCIATE_AC_TYPE, A_ABORT_TYPE = 0x02, 0x07


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedArchive]:
    peer = ScriptedArchive(never_answers, aet="SCRIPTED")
    yield peer
    peer.close()


def rules_for(scripted: ScriptedArchive, **proxy: Any) -> dict[str, Any]:
    return {
        "proxy": {"acse_timeout": ACSE_TIMEOUT, "network_timeout": NETWORK_TIMEOUT,
                  "max_associations": MAX_ASSOCIATIONS, "max_connections": 32, **proxy},
        "archives": {"scripted": {"ae_title": "SCRIPTED", "host": LOOPBACK,
                                  "port": scripted.dicom_port, "timeout": 30}},
        "routes": [{"called_ae": "RELAY", "archives": ["scripted"], "echo": "local"}],
    }


@pytest.fixture(scope="module")
def proxy(scripted: ScriptedArchive,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    running = ProxyProcess(rules_for(scripted), tmp_path_factory.mktemp("robust")).start()
    yield running
    assert running.stop() == 0, running.stderr()[-2000:]


def workstation(port: int, calling: str = "WS_HEALTHY") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate(LOOPBACK, port, ae_title="RELAY")


@pytest.fixture
def healthy(proxy: ProxyProcess) -> Iterator[Association]:
    """An association opened before the fault, which must survive it."""
    assoc = workstation(proxy.port)
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    yield assoc
    if assoc.is_established:
        assoc.release()


def still_serving(proxy: ProxyProcess, healthy: Association | None = None) -> None:
    if healthy is not None:
        assert healthy.is_established, "the fault took a healthy association down"
        assert healthy.send_c_echo().Status == 0
    assert echoscu(LOOPBACK, proxy.port, "RELAY", "WS_AFTER", timeout=15).ok


def connect(proxy: ProxyProcess, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((LOOPBACK, proxy.port))
    return sock


def peer_of(sock: socket.socket) -> str:
    return f"{LOOPBACK}:{sock.getsockname()[1]}"


def aborted_line(proxy: ProxyProcess, peer: str, timeout: float = 15) -> dict[str, Any]:
    return proxy.wait_event("association_aborted", lambda e: e["peer"] == peer, timeout=timeout)


def rss_kb(proxy: ProxyProcess) -> int:
    assert proxy.proc is not None
    with open(f"/proc/{proxy.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def associate_raw(proxy: ProxyProcess, calling: str, rcvbuf: int | None = None,
                  contexts: list[tuple[str, list[str]]] | None = None) -> socket.socket:
    sock = connect(proxy, rcvbuf)
    sock.sendall(associate_rq("RELAY", calling, contexts or [(FIND, [IMPLICIT])]))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == A_ASSOCIATE_AC_TYPE
    return sock


# -- bytes that are not DICOM ---------------------------------------------------------------

GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
    "unknown-pdu-type": pdu_header(0x09, 10) + b"0123456789",
    "malformed-associate-rq": pdu_header(0x01, 24) + b"\x00\x01" + b"\xff" * 22,
    "p-data-before-association": pdu_header(0x04, 12) + b"\x00\x00\x00\x08\x01\x03" + b"\x00" * 6,
}


@pytest.mark.parametrize("payload", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_ends_that_connection_only(proxy: ProxyProcess, healthy: Association,
                                           payload: str) -> None:
    sock = connect(proxy)
    peer = peer_of(sock)
    sock.sendall(GARBAGE[payload])
    started = time.monotonic()
    first = read_pdu(sock, timeout=ACSE_TIMEOUT + NETWORK_TIMEOUT + 2)
    # an A-ABORT (the proxy's "no, this is not DICOM"), or the connection simply closed
    assert first is None or first[0] == A_ABORT_TYPE, first
    assert time.monotonic() - started < ACSE_TIMEOUT + NETWORK_TIMEOUT + 2
    sock.close()
    line = aborted_line(proxy, peer)
    assert line["calling_ae"] == "unknown" and "A-ASSOCIATE-RQ" in line["reason"]
    still_serving(proxy, healthy)


def test_a_port_probe_is_not_reported_as_an_aborted_association(proxy: ProxyProcess,
                                                                healthy: Association) -> None:
    # Load balancers and monitoring open and close the port every few seconds;
    # that must not become a warning line each time. A real peer's garbage still does.
    probe = connect(proxy)
    probe_peer = peer_of(probe)
    probe.close()
    sock = connect(proxy)
    peer = peer_of(sock)
    sock.sendall(GARBAGE["http"])
    read_pdu(sock, timeout=ACSE_TIMEOUT + NETWORK_TIMEOUT + 2)
    sock.close()
    aborted_line(proxy, peer)            # the garbage connection is reported...
    assert not [e for e in proxy.events("association_aborted") if e["peer"] == probe_peer]
    still_serving(proxy, healthy)


def test_a_client_that_says_nothing_is_closed_after_acse_timeout(proxy: ProxyProcess,
                                                               healthy: Association) -> None:
    sock = connect(proxy)
    closed_after = closed_by_peer(sock, timeout=ACSE_TIMEOUT + 5)
    assert closed_after is not None and ACSE_TIMEOUT * 0.8 < closed_after < ACSE_TIMEOUT + 2
    line = aborted_line(proxy, peer_of(sock))
    assert "said nothing" in line["reason"] and f"{ACSE_TIMEOUT:g}s" in line["reason"]
    sock.close()
    still_serving(proxy, healthy)


# -- a PDU header that claims 4 GB ----------------------------------------------------------------

@pytest.mark.parametrize("when", ["before-association", "after-association"])
def test_a_4gb_pdu_is_never_read(proxy: ProxyProcess, healthy: Association, when: str) -> None:
    before = rss_kb(proxy)
    if when == "before-association":
        sock = connect(proxy)
        header = pdu_header(0x01, 0xFFFFFFF0)
    else:
        sock = associate_raw(proxy, "WS_HUGE", contexts=[(Verification, [IMPLICIT])])
        header = pdu_header(0x04, 0xFFFFFFF0)
    sock.sendall(header)
    started = time.monotonic()
    sent = 0
    try:   # keep pushing: a proxy that reads the body would swallow all of this
        while sent < 64 * 1024 * 1024 and time.monotonic() - started < 5:
            sent += sock.send(b"\x00" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_by_peer(sock, timeout=5) is not None
    assert time.monotonic() - started < 5
    line = aborted_line(proxy, peer_of(sock))
    assert "4294967280-byte PDU" in line["reason"] and "without reading it" in line["reason"]
    if when == "after-association":
        assert line["calling_ae"] == "WS_HUGE"
    assert rss_kb(proxy) - before < 16 * 1024       # kB: the body never entered memory
    sock.close()
    still_serving(proxy, healthy)


# -- limits ----------------------------------------------------------------------------------

def test_association_limit_rejects_transiently(proxy: ProxyProcess,
                                               healthy: Association) -> None:
    held = [workstation(proxy.port, f"WS_HOLD{i}") for i in range(MAX_ASSOCIATIONS - 1)]
    try:
        assert all(a.is_established for a in held)
        extra = workstation(proxy.port, "WS_EXTRA")
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        # PS3.8 9.3.4: rejected-transient, service-provider (presentation), local-limit-exceeded
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        line = proxy.wait_event("association_rejected", lambda e: e["calling_ae"] == "WS_EXTRA")
        assert line["reason"] == f"association limit reached ({MAX_ASSOCIATIONS} active)"
        assert "max_associations" in line["hint"]
    finally:
        for assoc in held:
            assoc.release()
    still_serving(proxy, healthy)


def test_connection_limit_closes_extra_connections_at_once(scripted: ScriptedArchive,
                                                           proxy_factory: ProxyFactory) -> None:
    limited = proxy_factory({**rules_for(scripted, max_connections=3, acse_timeout=10),
                             "log": {"level": "debug"}})
    held = [connect(limited) for _ in range(3)]
    extra = connect(limited)
    peers = [peer_of(sock) for sock in held]
    try:
        closed_after = closed_by_peer(extra, timeout=3)
        assert closed_after is not None and closed_after < 1.0
        refused = limited.wait_event("connection_refused", lambda e: e["peer"] == peer_of(extra))
        assert refused["reason"] == "connection limit reached (3 open)"
        for sock in held:          # the first three are untouched
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in [*held, extra]:
            sock.close()
    for peer in peers:             # their slots come back as soon as they hang up
        # (connected, said nothing, hung up: a port probe, logged at debug level only)
        limited.wait_event("connection_probed", lambda e, p=peer: e["peer"] == p, timeout=15)
    assert not [e for e in limited.events("association_aborted") if e["peer"] in peers]
    assert echoscu(LOOPBACK, limited.port, "RELAY", "WS_AFTER", timeout=15).ok
    assert limited.metric("dicom_proxy_connections_refused_total") >= 1


# -- presentation contexts ------------------------------------------------------------------

@pytest.mark.parametrize(("offered", "accepted"), [
    ([DeflatedExplicitVRLittleEndian], None),
    ([DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
], ids=["deflated-alone", "deflated-or-explicit"])
def test_deflated_transfer_syntax_is_never_accepted(proxy: ProxyProcess, offered: list[str],
                                                    accepted: str | None) -> None:
    sock = connect(proxy)
    sock.sendall(associate_rq("RELAY", "WS_DEFLATE", [(FIND, offered)]))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == A_ASSOCIATE_AC_TYPE
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu_header(answer[0], len(answer[1])) + answer[1])
    [context] = ac.presentation_context
    if accepted is None:
        assert context.result == 0x04   # PS3.8 9.3.3.2: transfer syntaxes not supported
    else:
        assert context.result == 0x00 and context.transfer_syntax == accepted
    sock.close()
    still_serving(proxy)


WORKLIST = "1.2.840.10008.5.1.4.31"           # Modality Worklist Information Model - FIND
FILM_SESSION = "1.2.840.10008.5.1.1.1"        # Basic Film Session (Print Management)


def test_only_served_contexts_are_accepted(proxy: ProxyProcess) -> None:
    ae = AE(ae_title="WS_CONTEXTS")
    ae.add_requested_context(FIND, [ImplicitVRLittleEndian])
    ae.add_requested_context(WORKLIST, [ImplicitVRLittleEndian])     # relayed (issue #14)
    ae.add_requested_context(FILM_SESSION, [ImplicitVRLittleEndian])  # print: not served
    assoc = ae.associate(LOOPBACK, proxy.port, ae_title="RELAY")
    try:
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [FIND, WORKLIST]
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [FILM_SESSION]
    finally:
        assoc.release()


# -- a workstation that stops reading --------------------------------------------------------

def test_a_workstation_that_never_reads_cannot_hang_the_proxy(proxy: ProxyProcess,
                                                            scripted: ScriptedArchive) -> None:
    scripted.reset(many_matches(4000, 8000))       # ~32 MB of answers
    before = rss_kb(proxy)
    sock = associate_raw(proxy, "WS_NOREAD", rcvbuf=4096)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    started = time.monotonic()
    sock.sendall(find_rq(query))
    assert scripted.first_sent.wait(10)
    # meanwhile, another workstation is served normally
    assert echoscu(LOOPBACK, proxy.port, "RELAY", "WS_MEANWHILE", timeout=10).ok
    line = proxy.wait_event("association_aborted", lambda e: e["calling_ae"] == "WS_NOREAD",
                            timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 4 * NETWORK_TIMEOUT + 5, elapsed
    assert "stopped reading" in line["reason"]
    # The handler reports once its send fails: just after the association's end is logged.
    proxy.wait_event("operation", lambda e: e["assoc_id"] == line["assoc_id"], timeout=10)
    ops = [o for o in proxy.operations("C-FIND") if o["assoc_id"] == line["assoc_id"]]
    assert len(ops) == 1 and ops[0]["status"] == "none" and "stopped reading" in ops[0]["error"]
    # Back-pressure: what left the proxy is bounded by the kernel's socket buffers
    # plus a short backlog (~300 here), not by how fast the archive answers (a proxy
    # without it queues everything the archive sends until the link dies: >1200).
    assert ops[0]["matches"] < 800
    assert scripted.cancelled.wait(10)              # and the archive was told to stop
    assert rss_kb(proxy) - before < 48 * 1024
    sock.close()
    still_serving(proxy)


# -- stopping while a query runs ---------------------------------------------------------------

def _find_in_thread(port: int, results: list[int]) -> threading.Thread:
    def run() -> None:
        assoc = workstation(port, "WS_RUNNING")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        try:
            for status, _ in assoc.send_c_find(query, FIND):
                results.append(int(status.Status) if "Status" in status else -1)
        finally:
            if assoc.is_established:
                assoc.release()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_a_running_query_finish(scripted: ScriptedArchive,
                                             proxy_factory: ProxyFactory) -> None:
    scripted.reset(gated_stream([study_match(k) for k in range(3)]))
    stopping = proxy_factory(rules_for(scripted, shutdown_grace=20))
    results: list[int] = []
    thread = _find_in_thread(stopping.port, results)
    assert scripted.first_sent.wait(10)
    assert stopping.proc is not None
    stopping.proc.terminate()
    stopping.wait_event("proxy_stopping")
    deadline = time.monotonic() + 5           # no new connections once stopping
    while port_is_open(stopping.port):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    scripted.gate.set()                       # the archive finishes its answer
    thread.join(15)
    assert results == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert stopping.proc.wait(15) == 0
    assert stopping.wait_event("proxy_stopped")["unfinished_associations"] == 0
    assert len(stopping.operations("C-FIND")) == 1


def test_sigterm_waits_no_longer_than_shutdown_grace(scripted: ScriptedArchive,
                                                     proxy_factory: ProxyFactory) -> None:
    scripted.reset(never_answers)
    grace = 1.5
    stopping = proxy_factory(rules_for(scripted, shutdown_grace=grace))
    results: list[int] = []
    thread = _find_in_thread(stopping.port, results)
    deadline = time.monotonic() + 10
    while not scripted.identifiers:           # the query is at the archive now
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert stopping.proc is not None
    started = time.monotonic()
    stopping.proc.terminate()
    assert stopping.proc.wait(grace + 10) == 0
    assert time.monotonic() - started < grace + 5
    assert stopping.wait_event("proxy_stopped")["unfinished_associations"] == 1
    thread.join(10)
    assert results and results[-1] != 0x0000  # the workstation was not told "complete"
    assert len(stopping.operations("C-FIND")) == 1
