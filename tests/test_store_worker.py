"""``proxy.store.worker``: the draining thread's loop — waits, backs off, survives a bug."""

from __future__ import annotations

import threading
from pathlib import Path

from proxy.config import parse
from proxy.observe import events as ev
from proxy.services import Services
from proxy.store.worker import QueueWorker


class _Recorder:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)


class _Queue(QueueWorker):
    failed_event = "test_failed"

    def __init__(self, services: Services, outcomes: list[object]) -> None:
        super().__init__("pacs", services, services.config.spool, "test-worker")
        self.outcomes = outcomes
        self.sessions = 0
        self.changed = threading.Condition()
        self.done = threading.Event()

    def _pending(self) -> bool:
        return bool(self.outcomes)

    def _wait(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def _wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _session(self) -> bool:
        self.sessions += 1
        outcome = self.outcomes.pop(0)
        if not self.outcomes:
            self.done.set()
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)


def services(tmp_path: Path) -> Services:
    config = parse({"proxy": {"ae_title": "P"},
                    "spool": {"dir": str(tmp_path), "retry_initial": 0.01, "retry_max": 0.02},
                    "archives": {"pacs": {"ae_title": "PACS", "host": "h", "port": 104}},
                    "routes": [{"called_ae": "R", "archives": ["pacs"]}]})
    return Services(config, _Recorder(), None, {}, {})  # type: ignore[arg-type]


def test_a_bug_is_reported_and_the_queue_drained_anyway(tmp_path: Path) -> None:
    svc = services(tmp_path)
    worker = _Queue(svc, [RuntimeError("boom"), False, True, True])
    worker.start()
    assert worker.done.wait(5)
    worker.stop(grace=2)
    assert not worker.thread.is_alive()
    assert worker.sessions == 4                    # the bug and the refusal were retried
    failed = [e for e in svc.bus.events if isinstance(e, ev.Noted)]  # type: ignore[attr-defined]
    assert [(e.message, e.fields["archive"], e.fields["error"]) for e in failed] == [
        ("test_failed", "pacs", "RuntimeError: boom")]


def test_stop_wakes_an_idle_worker_at_once(tmp_path: Path) -> None:
    worker = _Queue(services(tmp_path), [])
    worker.start()
    worker.stop(grace=0.5)
    assert not worker.thread.is_alive()
