"""One thread that drains one archive's durable queue, backing off while the archive is down.

Job: the loop store-and-forward (``proxy.store.drain``) and MPPS delivery
(``proxy.workflow.delivery``) share: wait for work, run one association's worth of it,
back off exponentially (``policy.backoff_delay``, with jitter) while the archive takes
nothing, and stop on request without waiting out a stuck archive.

Rule 1: ``_pending`` says whether the queue holds work, ``_wait`` blocks until it may
        (the queue's condition), ``_session`` runs one association and says whether the
        archive took what it could (False: back off before the next).
Rule 2: a bug in a session is one ``<name>_failed`` error line and a back-off, never
        the end of the thread: the queue is durable, the next round tries again.
Rule 3: ``stop`` wakes the thread (``_wake``), waits ``grace`` seconds, then aborts the
        association in progress (``link``) so a stuck archive does not hold the
        shutdown; what was being sent stays queued.
"""

from __future__ import annotations

import random
import threading

from proxy.config import SpoolConfig
from proxy.observe import events as ev
from proxy.services import Services
from proxy.store.policy import backoff_delay
from proxy.ul.link import Link


class QueueWorker:
    """The thread and its back-off; subclasses give the queue (Rule 1)."""

    failed_event = "worker_failed"          # the error line's event name (Rule 2)

    def __init__(self, archive: str, services: Services, settings: SpoolConfig,
                 name: str) -> None:
        self.archive = archive
        self.services = services
        self.settings = settings
        self.link: Link | None = None         # the association in progress (Rule 3)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- what a queue provides (Rule 1) ---------------------------------------------------

    def _pending(self) -> bool:
        raise NotImplementedError

    def _wait(self, timeout: float) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def _session(self) -> bool:
        raise NotImplementedError

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        self.thread.join(grace)
        link = self.link
        if self.thread.is_alive() and link is not None:
            link.abort()                 # stuck on a slow archive: the work stays queued
            self.thread.join(2.0)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if not self._pending():
                self._wait(1.0)
                continue
            try:
                ok = self._session()
            except Exception as exc:  # Rule 2: a bug must not end the draining
                ok = False
                self.services.bus.emit(ev.Noted("error", self.failed_event, {
                    "archive": self.archive, "error": f"{type(exc).__name__}: {exc}"}))
            failures = 0 if ok else failures + 1
            if failures:
                self._stop.wait(backoff_delay(failures, self.settings.retry_initial,
                                              self.settings.retry_max, random.random()))
