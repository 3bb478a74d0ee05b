"""MPPS delivery: at once while the modality waits, or from the journal, in order.

The extension ``start`` (in ``proxy.app.EXTENSIONS``) opens the journal (``journal``),
puts an ``Mpps`` in ``services.plugins.mpps`` for the handler (``proxy.operations.mpps``)
and starts a ``Deliverer`` per archive named in a route's ``mpps_to`` (or still holding
journaled messages).

Rule 1: ``Mpps.submit`` handles one message for one archive under that archive's lock, so
        two modalities' messages never overtake each other: it forwards at once or
        journals as ``policy`` decides, and journals (fsync before the caller answers
        Success) what the archive did not answer. The lock is never held by a
        ``Deliverer``: a message is only forwarded at once when the queue is empty, and
        a queued one leaves the queue only once the archive has answered it.
Rule 2: a ``Deliverer`` sends its archive's queue oldest first, over one association for
        a run of messages with the same calling AE title; an unreachable or silent
        archive, or a resource shortage, is retried after ``backoff_delay`` ([spool]
        retry_initial, retry_max; forever); a refusal moves the message to ``dead/`` with
        an ``mpps_dead_lettered`` log line (the modality already had Success).
Rule 3: every message sent to an archive is one ``upstream`` event (operation N-CREATE or
        N-SET); an association that cannot be opened is one too.
Rule 4: the calling AE title is chosen when the message is received (``Services.archive``:
        the route's ``pass_calling_ae``) and kept with it in the journal.
Rule 5: every change of an archive's journal (a message kept, delivered, dead-lettered)
        is one ``MppsJournalChanged`` (the ``dicom_proxy_mpps_pending`` and
        ``_mpps_dead_letters`` gauges).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import count

from proxy.dicom import commands
from proxy.observe import events as ev
from proxy.services import Services
from proxy.session import Request
from proxy.status import hex_status
from proxy.store.worker import QueueWorker
from proxy.ul.link import Link
from proxy.upstream import ArchiveClient
from proxy.workflow import policy, ris
from proxy.workflow.journal import Entry, Journal, Message
from proxy.workflow.policy import Step, Verdict


@dataclass(frozen=True)
class Outcome:
    """What became of one message for one archive."""

    archive: str
    step: Step
    answer: ris.Answer | None = None
    error: str | None = None          # why the archive did not answer, if it did not


class Mpps:
    """The handler's side: submit a message to a route's archives (Rule 1)."""

    def __init__(self, services: Services, journal: Journal) -> None:
        self.services = services
        self.journal = journal
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def lock(self, archive: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(archive, threading.Lock())

    def submit_all(self, request: Request, message: Message,
                   archives: Sequence[str]) -> list[Outcome]:
        """``submit`` to every archive (in parallel), outcomes in ``archives`` order."""
        if len(archives) == 1:
            return [self.submit(request, message, archives[0])]
        with ThreadPoolExecutor(max_workers=len(archives)) as pool:
            return list(pool.map(lambda name: self.submit(request, message, name), archives))

    def submit(self, request: Request, message: Message, archive: str) -> Outcome:
        client = self.services.archive(archive, request)
        message = replace(message, calling_ae=client.peer.calling_ae)
        uid = message.sop_instance
        with self.lock(archive):
            known = self.journal.knows(archive, uid)
            step = policy.first_step(message.operation, self.journal.pending(archive) == 0,
                                     known)
            if step is Step.JOURNAL:
                self._keep(archive, message)
                return Outcome(archive, step)
            failure: ris.Unanswered | None = None
            with self.services.upstream_call(archive, message.operation, request) as call:
                call["details"] = {"sop_instance_uid": uid}
                try:
                    with ris.connect(client) as link:
                        answer = ris.exchange(client, link, message, 1)
                    call["status"] = answer.status
                except ris.Unanswered as exc:
                    failure = exc
                    call["error"], call["hint"] = exc.reason, exc.hint
            if failure is not None:
                step = policy.when_unanswered(message.operation, known)
                if step is Step.JOURNAL:
                    self._keep(archive, replace(message, maybe_received=failure.sent))
                return Outcome(archive, step, error=failure.reason)
            if policy.remembers(answer.status):
                self.journal.know(archive, uid)
            return Outcome(archive, Step.FORWARD, answer)

    def _keep(self, archive: str, message: Message) -> None:
        self.journal.append(archive, message)
        if message.operation == "N-CREATE":
            self.journal.know(archive, message.sop_instance)     # policy Rule 5
        publish(self.services, self.journal, archive)


def publish(services: Services, journal: Journal, archive: str) -> None:
    """The archive's journal gauges (Rule 5)."""
    services.bus.emit(ev.MppsJournalChanged(archive, journal.pending(archive),
                                            journal.dead(archive)))


class Deliverer(QueueWorker):
    """Sends one archive's journal, oldest first (Rule 2; the thread: ``QueueWorker``)."""

    failed_event = "mpps_delivery_failed"

    def __init__(self, archive: str, services: Services, journal: Journal) -> None:
        super().__init__(archive, services, services.config.spool, f"mpps-{archive}")
        self.journal = journal
        self._maybe_received: set[str] = set()    # ids an attempt here sent unanswered
        self._ids = (1 + i % 65535 for i in count())

    def _pending(self) -> bool:
        return self.journal.head(self.archive) is not None

    def _wait(self, timeout: float) -> None:
        self.journal.wait(timeout)

    def _wake(self) -> None:
        with self.journal.changed:
            self.journal.changed.notify_all()

    def _next(self) -> Entry | None:
        """The oldest message; an unreadable one goes to ``dead/`` on the way."""
        while (entry_id := self.journal.head(self.archive)) is not None:
            try:
                return self.journal.read(self.archive, entry_id)
            except (OSError, ValueError, KeyError) as exc:
                self._dead(entry_id, None, None, f"journal file unreadable: "
                                                 f"{type(exc).__name__}: {exc}")
        return None

    def _session(self) -> bool:
        """One association; False when the archive took nothing more (back off)."""
        entry = self._next()
        if entry is None:
            return True
        calling, operation = entry.message.calling_ae, entry.message.operation
        client = self.services.archives[self.archive]
        client = client.calling_as(calling) if calling else client
        try:
            with ris.connect(client) as link:
                self.link = link
                while entry is not None and not self.stopping:
                    if entry.message.calling_ae != calling or link.closed:
                        return True                       # a new association for the next
                    if not self._deliver(client, link, entry):
                        return False
                    entry = self._next()
                return True
        except ris.Unanswered as exc:
            with self.services.upstream_call(self.archive, operation) as call:
                call.update(error=exc.reason, hint=exc.hint)
                call["details"] = {"pending": self.journal.pending(self.archive),
                                   "delivery": "association"}
            return False
        finally:
            self.link = None

    def _deliver(self, client: ArchiveClient, link: Link, entry: Entry) -> bool:
        message = entry.message
        maybe = message.maybe_received or entry.id in self._maybe_received
        with self.services.upstream_call(self.archive, message.operation) as call:
            call["details"] = {"journal": entry.id, "sop_instance_uid": message.sop_instance}
            try:
                answer = ris.exchange(client, link, message, next(self._ids))
            except ris.Unanswered as exc:
                call["error"], call["hint"] = exc.reason, exc.hint
                if exc.sent:
                    self._maybe_received.add(entry.id)
                return False
            call["status"] = answer.status
        verdict = policy.verdict(message.operation, answer.status, maybe)
        if verdict is Verdict.RETRY:
            return False
        if verdict is Verdict.DEAD:
            comment = answer.elements.get(commands.ERROR_COMMENT)
            self._dead(entry.id, message, answer.status,
                       f"the archive answered {hex_status(answer.status)}"
                       + (f" ({comment})" if comment else ""))
            return True
        self.journal.delivered(self.archive, entry.id)
        publish(self.services, self.journal, self.archive)
        self._maybe_received.discard(entry.id)
        if policy.remembers(answer.status) or message.operation == "N-CREATE":
            self.journal.know(self.archive, message.sop_instance)
        return True

    def _dead(self, entry_id: str, message: Message | None, status: int | None,
              reason: str) -> None:
        hint = (f"fix the cause, then move {entry_id}.msg from the dead-letter folder back to "
                f"the archive's pending folder and restart the proxy")
        path = self.journal.dead_letter(self.archive, entry_id, {
            "operation": message.operation if message else None,
            "sop_instance_uid": message.sop_instance if message else None,
            "status": None if status is None else hex_status(status), "reason": reason,
            "hint": hint})
        self._maybe_received.discard(entry_id)
        publish(self.services, self.journal, self.archive)
        self.services.bus.emit(ev.Noted("warning", "mpps_dead_lettered", {
            "archive": self.archive, "id": entry_id,
            "operation": message.operation if message else None,
            "sop_instance_uid": message.sop_instance if message else None,
            "status": None if status is None else hex_status(status), "reason": reason,
            "path": str(path), "hint": hint}))


# -- the extension ------------------------------------------------------------------------


def start(services: Services) -> Callable[[], None] | None:
    """Open the journal, offer ``Mpps`` to the handler, start one deliverer per archive."""
    config = services.config
    wanted = {name for route in config.routes for name in route.mpps_to}
    journal = Journal(config.spool.dir)
    if not wanted and not (journal.root.is_dir() and any(journal.root.iterdir())):
        return None                          # no route sends MPPS and nothing is journaled
    pending = journal.open()
    services.plugins.mpps = Mpps(services, journal)
    names = sorted((wanted | set(pending)) & set(config.archives))
    orphaned = sorted(set(pending) - set(config.archives))
    services.bus.emit(ev.Noted("info", "mpps_journal_opened", {
        "dir": str(journal.root), "pending": pending, "deliver_to": names}))
    if orphaned:
        services.bus.emit(ev.Noted("warning", "mpps_orphaned", {
            "archives": orphaned, "hint": "MPPS messages are journaled for archives no longer "
                                          "in rules.toml; they stay until it names them again"}))
    deliverers = [Deliverer(name, services, journal) for name in names]
    for name in names:
        publish(services, journal, name)
    for deliverer in deliverers:
        deliverer.start()

    def stop() -> None:
        for deliverer in deliverers:
            deliverer.request_stop()
        for deliverer in deliverers:
            deliverer.stop()

    return stop
