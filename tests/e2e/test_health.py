"""Health C-ECHOs for real: an Orthanc archive goes down and comes back.

The destination is a pynetdicom peer that counts the C-ECHOs it answers: as
every round probes all peers, its count is how the test knows that probe
rounds happened while Orthanc was down (no fixed sleeps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from tests.e2e.conftest import OrthancFactory
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

ProxyFactory = Callable[..., ProxyProcess]


class EchoCounter:
    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def on_echo(self, event: evt.Event) -> int:
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        return 0x0000

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.count >= count, timeout), \
                f"{self.count} health C-ECHOs after {timeout}s, wanted {count}"


@pytest.fixture
def counting_destination() -> Iterator[tuple[EchoCounter, int]]:
    counter = EchoCounter()
    ae = AE(ae_title="WS1")
    ae.add_supported_context(Verification)
    server = ae.start_server((LOOPBACK, 0), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, counter.on_echo)])
    try:
        yield counter, int(server.server_address[1])
    finally:
        server.shutdown()


def test_archive_down_and_up_are_logged_once_each_with_reason_and_hint(
    orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory,
    counting_destination: tuple[EchoCounter, int],
) -> None:
    archive = orthanc_factory("PACS_H")
    counter, ws_port = counting_destination
    proxy = proxy_factory({
        "health": {"enabled": True, "interval": 0.2, "timeout": 2},
        "archives": {"site_h": archive_entry(archive)},
        "destinations": {"ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": ws_port}},
        "routes": [{"called_ae": "RELAY", "archives": ["site_h"]}],
    })
    first = proxy.wait_event("archive_up", lambda e: e.get("archive") == "site_h")
    proxy.wait_event("destination_up", lambda e: e.get("destination") == "ws1")
    assert first["level"] == "info"
    assert proxy.metric("dicom_proxy_archive_up", archive="site_h") == 1
    assert proxy.metric("dicom_proxy_destination_up", destination="ws1") == 1
    assert 0 < proxy.metric("dicom_proxy_archive_echo_seconds", archive="site_h") < 2

    archive.stop()                                   # SIGKILL: a crash, port closed
    down = proxy.wait_event("archive_down", lambda e: e.get("archive") == "site_h")
    rounds = counter.count
    counter.wait_for(rounds + 3)                     # three more rounds with the archive down
    assert down["level"] == "warning"
    assert "TCP connection refused" in down["reason"]
    assert f"{LOOPBACK}:{archive.dicom_port}" in down["reason"]
    assert down["hint"].startswith("check that PACS_H is running and reachable")
    assert proxy.metric("dicom_proxy_archive_up", archive="site_h") == 0

    archive.start()
    proxy.wait_event("archive_up", lambda e: e.get("archive") == "site_h" and
                     e["timestamp"] > down["timestamp"])
    assert proxy.metric("dicom_proxy_archive_up", archive="site_h") == 1
    changes = [(e["event"], e.get("archive") or e.get("destination")) for e in proxy.events()
               if e["event"] in ("archive_up", "archive_down", "destination_up",
                                 "destination_down")]
    assert sorted(changes) == sorted([("archive_up", "site_h"), ("destination_up", "ws1"),
                                      ("archive_down", "site_h"), ("archive_up", "site_h")])
    # Health C-ECHOs are not upstream requests: no upstream lines, no upstream series.
    assert proxy.events("upstream") == []
    assert proxy.metric("dicom_proxy_upstream_requests_total") == 0


def test_health_disabled_probes_nothing(
    orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory,
) -> None:
    archive = orthanc_factory("PACS_H")
    proxy = proxy_factory({
        "health": {"enabled": False},
        "archives": {"site_h": archive_entry(archive)},
        "routes": [{"called_ae": "RELAY", "archives": ["site_h"]}],
    })
    # The proxy is up and answering metrics; no probe has been made or reported.
    text: Any = proxy.metrics()
    assert "dicom_proxy_archive_up{" not in text
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:               # and none comes on its own
        assert proxy.events("archive_up") == []
        time.sleep(0.05)
    assert archive.calling_aets() == []
