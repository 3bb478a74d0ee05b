"""Behind a load balancer: a real HAProxy (TCP mode, ``send-proxy-v2`` and ``send-proxy``)
in front of the proxy, which reads the PROXY protocol header from the balancer only.

Everything is loopback: HAProxy listens on 127.0.0.3 and connects to the proxy *from*
127.0.0.4 (``source``), so the proxy's TCP peer is the balancer, while the workstation
(DCMTK ``echoscu``/``findscu``) connects from 127.0.0.1. Source-network rules, log lines
and metrics must see 127.0.0.1; the balancer's own address must never be taken for a
workstation's, and only the balancer named in ``proxy_protocol_from`` is believed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.dcmtk import echoscu, findscu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port, wait_for_port
from tests.e2e.processes import spawn, stop_process
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
FRONT, BALANCER = "127.0.0.3", "127.0.0.4"
ROUTE = "BEHIND_LB"
ProxyFactory = Callable[..., ProxyProcess]

pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy not installed")


@pytest.fixture(scope="module")
def pacs() -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS") as archive:
        yield archive


@pytest.fixture
def proxy(pacs: OrthancArchive, proxy_factory: ProxyFactory) -> ProxyProcess:
    return proxy_factory({
        "proxy": {"proxy_protocol_from": [f"{BALANCER}/32"]},
        "archives": {"pacs": archive_entry(pacs)},
        "routes": [{"called_ae": ROUTE, "archives": ["pacs"], "destinations": [],
                    "allow": ["WS_REAL@127.0.0.1/32", f"WS_AS_LB@{BALANCER}/32"]}]})


class HAProxy:
    """``haproxy -db`` with one TCP frontend per PROXY protocol version."""

    def __init__(self, workdir: Path, backend_port: int) -> None:
        self.ports = {"v2": free_port(), "v1": free_port()}
        config = workdir / "haproxy.cfg"
        config.write_text(f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend dicom_v2
    bind {FRONT}:{self.ports['v2']}
    default_backend proxy_v2
frontend dicom_v1
    bind {FRONT}:{self.ports['v1']}
    default_backend proxy_v1
backend proxy_v2
    server p {LOOPBACK}:{backend_port} send-proxy-v2 source {BALANCER}
backend proxy_v1
    server p {LOOPBACK}:{backend_port} send-proxy source {BALANCER}
""")
        subprocess.run([HAPROXY, "-c", "-f", str(config)], check=True, capture_output=True)
        self.proc = spawn([HAPROXY, "-db", "-f", str(config)], log_path=workdir / "haproxy.log")
        for port in self.ports.values():
            wait_for_port(port, host=FRONT, alive=lambda: self.proc.poll() is None)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def haproxy(proxy: ProxyProcess, tmp_path: Path) -> Iterator[HAProxy]:
    balancer = HAProxy(tmp_path, proxy.port)
    yield balancer
    balancer.stop()


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_workstations_own_address_is_what_rules_logs_and_metrics_see(
        proxy: ProxyProcess, haproxy: HAProxy, version: str) -> None:
    port = haproxy.ports[version]
    # WS_REAL may call from 127.0.0.1 only: admitted only if the header was believed.
    assert echoscu(FRONT, port, ROUTE, "WS_REAL").ok
    found = findscu(FRONT, port, ROUTE, "WS_REAL", keys=["StudyInstanceUID"])
    assert found.ok, found.output[-2000:]
    accepted = [e for e in proxy.events("association_accepted") if e["calling_ae"] == "WS_REAL"]
    assert len(accepted) == 2
    assert all(str(e["peer"]).startswith("127.0.0.1:") for e in accepted), accepted
    ops = proxy.operations("C-FIND")
    assert ops and all(str(o["peer"]).startswith("127.0.0.1:") for o in ops)
    # WS_AS_LB may call from the balancer's address only: through the balancer it is
    # the workstation's address that counts, so it is refused, naming 127.0.0.1.
    refused = echoscu(FRONT, port, ROUTE, "WS_AS_LB")
    assert refused.association_rejected, refused.output[-2000:]
    line = proxy.wait_event("association_rejected", lambda e: e["calling_ae"] == "WS_AS_LB")
    assert "from 127.0.0.1" in str(line["reason"]) and BALANCER not in str(line["peer"])
    assert proxy.metric("dicom_proxy_security_events_total", kind="source_network") == 1


def test_the_balancer_without_a_header_is_not_served(proxy: ProxyProcess) -> None:
    # A connection from the balancer's address that does not start with the header (a
    # misconfigured balancer, or someone on its host) is closed before any DICOM byte.
    sock = socket.socket()
    sock.bind((BALANCER, 0))
    sock.settimeout(10)
    sock.connect((LOOPBACK, proxy.port))
    sock.sendall(b"\x01\x00\x00\x00\x00\x44" + b"\x00" * 0x44)   # an A-ASSOCIATE-RQ's start
    try:                                          # closed, nothing answered (unread bytes:
        answer = sock.recv(1024)                  # the close is a reset)
    except ConnectionResetError:
        answer = b""
    assert answer == b""
    sock.close()
    line = proxy.wait_event("connection_refused", lambda e: str(e["peer"]).startswith(BALANCER))
    assert "PROXY protocol" in str(line["reason"])
    assert not proxy.events("association_accepted")
    assert not proxy.events("association_aborted")


def test_a_workstation_that_is_not_a_balancer_is_served_as_itself(proxy: ProxyProcess) -> None:
    # proxy_protocol_from names the balancer only: direct workstations send no header.
    assert echoscu(LOOPBACK, proxy.port, ROUTE, "WS_REAL").ok
    refused = echoscu(LOOPBACK, proxy.port, ROUTE, "WS_AS_LB")
    assert refused.association_rejected
