"""Health C-ECHOs: the pure decisions, the monitor's events, and how observers show them."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest

from proxy.config import ConfigError, HealthConfig, parse
from proxy.observe import events as ev
from proxy.observe import health
from proxy.observe.health import HealthMonitor, transition, verdict
from proxy.observe.logs import LogObserver, PhiFilter, make_logger
from proxy.observe.metrics import MetricsObserver
from proxy.services import Plugins
from proxy.upstream import UpstreamError
from tests.recording import Recorder

REFUSED = UpstreamError("site_a", "127.0.0.1:4242: TCP connection refused", "start PACS_A",
                        kind="refused")


class FakeEchoer:
    """Answers each echo() with the next scripted result (a status or an exception)."""

    def __init__(self, *script: int | Exception | None) -> None:
        self.script = list(script)
        self.calls = 0

    def echo(self) -> int | None:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


def monitor(peers: dict[tuple[str, str], FakeEchoer]) -> tuple[HealthMonitor, Recorder]:
    rec = Recorder()
    ticks = iter(range(1000))
    return HealthMonitor(ev.EventBus([rec]), peers, 30.0,
                         clock=lambda: next(ticks) * 0.25), rec


# -- pure decisions ---------------------------------------------------------------


@pytest.mark.parametrize(("previous", "now", "changed"), [
    (None, True, True), (None, False, True), (True, True, False),
    (False, False, False), (True, False, True), (False, True, True)])
def test_transition_is_logged_only_on_change(previous: bool | None, now: bool,
                                             changed: bool) -> None:
    assert transition(previous, now) is changed


def test_verdict_success_is_up_with_latency() -> None:
    assert verdict(0x0000, None, 0.012) == health.Verdict(True, 0.012)


def test_verdict_upstream_error_keeps_reason_and_hint() -> None:
    v = verdict(None, REFUSED, 1.0)
    assert (v.up, v.latency_s, v.reason, v.hint) == (False, None, REFUSED.reason, "start PACS_A")


@pytest.mark.parametrize(("status", "error", "words"), [
    (0x0110, None, "C-ECHO answered status 0x0110"),
    (None, None, "no C-ECHO response"),
    (None, RuntimeError("boom"), "RuntimeError: boom")])
def test_verdict_other_failures_are_down_with_a_reason(status: int | None,
                                                       error: Exception | None,
                                                       words: str) -> None:
    v = verdict(status, error, 0.5)
    assert not v.up and v.reason is not None and words in v.reason


# -- the monitor ---------------------------------------------------------------------


def test_every_probe_is_reported_but_only_changes_are_logged() -> None:
    peer = FakeEchoer(0x0000, 0x0000, REFUSED, REFUSED, 0x0000)
    mon, rec = monitor({("archive", "site_a"): peer})
    for _ in range(5):
        mon.probe(("archive", "site_a"))
    probed = rec.of(ev.ArchiveProbed)
    assert [p.up for p in probed] == [True, True, False, False, True]
    assert [p.latency_s for p in probed] == [0.25, 0.25, None, None, 0.25]
    changed = rec.of(ev.ArchiveHealthChanged)
    assert [(c.up, c.reason, c.hint) for c in changed] == [
        (True, None, None), (False, REFUSED.reason, "start PACS_A"), (True, None, None)]
    assert mon.state("archive", "site_a") is True


def test_a_round_probes_archives_and_destinations_separately() -> None:
    mon, rec = monitor({("archive", "ws1"): FakeEchoer(0x0000),
                        ("destination", "ws1"): FakeEchoer(REFUSED)})
    results = mon.probe_all()
    assert results[("archive", "ws1")].up and not results[("destination", "ws1")].up
    kinds = {(e.kind, e.archive, e.up) for e in rec.of(ev.ArchiveHealthChanged)}
    assert kinds == {("archive", "ws1", True), ("destination", "ws1", False)}
    assert mon.state("destination", "ws1") is False
    assert mon.state("destination", "nope") is None


def test_nothing_is_reported_once_stopping() -> None:
    mon, rec = monitor({("archive", "a"): FakeEchoer(0x0000)})
    mon.stop()
    mon.probe(("archive", "a"))
    assert rec.events == []


def test_the_thread_probes_at_once_and_stops() -> None:
    peer = FakeEchoer(0x0000)
    rec = Recorder()
    mon = HealthMonitor(ev.EventBus([rec]), {("archive", "a"): peer}, interval=60.0)
    mon.start()
    try:
        deadline = time.monotonic() + 5
        while not rec.of(ev.ArchiveProbed):
            assert time.monotonic() < deadline, "no probe within 5 s"
            time.sleep(0.01)
    finally:
        mon.stop(timeout=2.0)
    assert mon._thread is not None and not mon._thread.is_alive()
    assert peer.calls == 1


# -- observers ------------------------------------------------------------------------


def test_metrics_archive_and_destination_gauges_are_separate() -> None:
    m = MetricsObserver(["site_a"])
    m(ev.ArchiveProbed("site_a", True, 0.02))
    m(ev.ArchiveProbed("ws1", False, None, kind="destination"))
    value = m.registry.get_sample_value
    assert value("dicom_proxy_archive_up", {"archive": "site_a"}) == 1
    assert value("dicom_proxy_archive_echo_seconds", {"archive": "site_a"}) == 0.02
    assert value("dicom_proxy_destination_up", {"destination": "ws1"}) == 0
    assert value("dicom_proxy_archive_up", {"archive": "ws1"}) is None
    m(ev.ArchiveProbed("site_a", False))
    assert value("dicom_proxy_archive_up", {"archive": "site_a"}) == 0


def _log_lines(*events: ev.Event) -> list[dict[str, Any]]:
    out = io.StringIO()
    observer = LogObserver(make_logger("json", "info", out), PhiFilter("hash"))
    for event in events:
        observer(event)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_log_lines_name_the_peer_and_say_why() -> None:
    lines = _log_lines(
        ev.ArchiveProbed("site_a", False),                       # not logged
        ev.ArchiveHealthChanged("site_a", False, REFUSED.reason, REFUSED.hint),
        ev.ArchiveHealthChanged("site_a", True),
        ev.ArchiveHealthChanged("ws1", False, "refused", "start WS1", kind="destination"))
    assert [(x["event"], x["level"]) for x in lines] == [
        ("archive_down", "warning"), ("archive_up", "info"), ("destination_down", "warning")]
    assert lines[0]["archive"] == "site_a" and lines[0]["reason"] == REFUSED.reason
    assert lines[0]["hint"] == "start PACS_A"
    assert "hint" not in lines[1] and "reason" not in lines[1]
    assert lines[2]["destination"] == "ws1" and "archive" not in lines[2]


# -- config ---------------------------------------------------------------------------

_MINIMAL = {"proxy": {"ae_title": "QR_PROXY"},
            "archives": {"a": {"ae_title": "A", "host": "127.0.0.1", "port": 104}},
            "routes": [{"called_ae": "R", "archives": ["a"]}]}


def test_health_section_defaults_and_values() -> None:
    assert parse(_MINIMAL).health == HealthConfig(enabled=True, interval=30.0, timeout=10.0)
    cfg = parse({**_MINIMAL, "health": {"enabled": False, "interval": 5, "timeout": 2.5}})
    assert cfg.health == HealthConfig(enabled=False, interval=5.0, timeout=2.5)


@pytest.mark.parametrize(("body", "message"), [
    ({"interval": 0}, "health.interval: must be a positive number"),
    ({"enabled": "yes"}, "health.enabled: must be true or false"),
    ({"intervall": 5}, "health.intervall: unknown key")])
def test_health_section_errors_name_the_key(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({**_MINIMAL, "health": body})


def test_disabled_health_starts_nothing() -> None:
    class FakeServices:
        config = parse({**_MINIMAL, "health": {"enabled": False}})
        plugins = Plugins()

    assert health.start(FakeServices()) is None  # type: ignore[arg-type]
    assert FakeServices.plugins.health is None
