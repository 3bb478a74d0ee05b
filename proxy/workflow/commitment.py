"""Storage Commitment delivery: N-ACTION to the archive once the spool has delivered, the
archive's report back to the modality.

The extension ``start`` (in ``proxy.app.EXTENSIONS``) opens the journal (``commitments``),
puts a ``Commitments`` in ``services.plugins.commitment`` for the handlers
(``proxy.operations.commitment``), starts a ``Committer`` per archive a route asks for
Storage Commitment (``RouteConfig.commitment_archive``, or still holding commitments) and
one ``Reporter``.

Rule 1: a ``Committer`` sends its archive's waiting commitments, oldest first, once
        ``commit_policy.ready`` (the spool delivered what they reference), each on an
        association calling as ``[proxy] ae_title`` — the archive sends its report there,
        so it must know that title at the proxy's address — proposing the Push Model in
        Explicit/Implicit VR Little Endian, the Action Information as the modality sent
        it (re-encoded only when the archive took the other syntax). After a Success the
        association stays open up to ``LINGER`` s, until the report has come (J.3.3: an
        archive may send it on this association while it is open; ``take_on_link``) or
        came on a new association to the proxy's listener; then it is released.
Rule 2: an unreachable or silent archive, or a resource shortage, is retried after
        ``backoff_delay`` ([spool] retry_initial, retry_max; forever); a refusal moves
        the commitment to ``dead/`` with a ``commitment_dead_lettered`` log line (the
        modality had Success for its request: its own commitment timeout tells it).
Rule 3: the ``Reporter`` sends each reported commitment to its modality
        (``commit_policy.target``) as an N-EVENT-REPORT on a new association calling as
        ``[proxy] ae_title``, proposing the Push Model with the SCP role (the proxy plays
        the archive's part, J.3.3) in one context listing both little-endian syntaxes,
        so the modality chooses as it does when the archive calls it; Event Type ID and
        Event Information as the archive sent them (re-encoded only into the other
        syntax, when the modality chose it); an unreachable modality is retried with
        backoff per commitment; a modality not in ``[destinations]``, or one refusing the
        report for good, is a dead letter naming what to do.
Rule 4: every N-ACTION and N-EVENT-REPORT the proxy sends is one ``upstream`` event (the
        modality's under its destination name); an association that cannot be opened is
        one too.
Rule 5: every change of the journal is one ``CommitmentsChanged`` (the
        ``dicom_proxy_commitments_pending`` and ``_commitment_dead_letters`` gauges).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, build_role
from pynetdicom.presentation import PresentationContext

from proxy.contexts import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from proxy.dicom import commands, pdu
from proxy.observe import events as ev
from proxy.services import Services
from proxy.status import hex_status
from proxy.store.policy import backoff_delay
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient
from proxy.workflow import commit_policy, ris
from proxy.workflow.commit_reports import take_on_link
from proxy.workflow.commitments import (
    FORWARDED,
    REPORTED,
    WAITING,
    Commitment,
    CommitmentJournal,
)
from proxy.workflow.policy import Verdict

_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
LINGER = 1.0            # s a forwarding association stays open for a report on it (Rule 1)
_counter = count()
_counter_lock = threading.Lock()


def _next_id() -> int:
    with _counter_lock:
        return 1 + next(_counter) % 65535


def _contexts(first: str, together: bool = False) -> list[PresentationContext]:
    """The Push Model in each little-endian syntax, ``first`` (the data set's) first: a
    context each (the archive may take the data set's own), or one context listing both
    (``together``: the modality picks as it would from the archive directly, Rule 3)."""
    order = list(dict.fromkeys([*([first] if first in _SYNTAXES else []), *_SYNTAXES]))
    if together:
        return [build_context(STORAGE_COMMITMENT, order)]
    return [build_context(STORAGE_COMMITMENT, [ts]) for ts in order]


@dataclass
class Commitments:
    """The handlers' side: keep a request, take a report (``commitments`` Rules 1-4)."""

    services: Services
    journal: CommitmentJournal

    def __post_init__(self) -> None:
        self.committers: dict[str, threading.Event] = {}   # archive -> its Committer's wake
        self.reporter = threading.Event()

    def request(self, item: Commitment, action: bytes | None) -> Commitment:
        kept = self.journal.add(item, action)
        publish(self.services, self.journal)
        wake = self.committers.get(kept.archive)
        if wake is not None:
            wake.set()
        return kept

    def report(self, transaction_uid: str, event_type: int, syntax: str,
               data: bytes | None) -> Commitment | None:
        item = self.journal.reported(transaction_uid, event_type, syntax, data)
        publish(self.services, self.journal)
        self.reporter.set()
        return item


def publish(services: Services, journal: CommitmentJournal) -> None:
    """The journal's gauges (Rule 5)."""
    names = {r.commitment_archive for r in services.config.routes} - {None}
    pending = {str(name): 0 for name in names} | journal.counts()
    services.bus.emit(ev.CommitmentsChanged(pending, journal.dead()))


def dead_letter(services: Services, journal: CommitmentJournal, item: Commitment,
                reason: str, hint: str, status: int | None = None) -> None:
    path = journal.dead_letter(item.id, {
        "transaction_uid": item.transaction_uid, "archive": item.archive,
        "modality": item.modality, "state": item.state,
        "status": None if status is None else hex_status(status), "reason": reason,
        "hint": hint})
    publish(services, journal)
    services.bus.emit(ev.Noted("warning", "commitment_dead_lettered", {
        "archive": item.archive, "modality": item.modality, "state": item.state,
        "transaction_uid": item.transaction_uid, "reason": reason, "hint": hint,
        "status": None if status is None else hex_status(status), "path": str(path)}))


class _Worker:
    """A delivery thread: runs ``_round`` until stopped; a bug is reported, not fatal."""

    name = "commitment"

    def __init__(self, services: Services, journal: CommitmentJournal,
                 wake: threading.Event) -> None:
        self.services, self.journal, self.wake = services, journal, wake
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def stop(self) -> None:
        self.request_stop()
        self.thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self._round()
            except Exception as exc:  # a bug must not end delivery; report and back off
                pause = 1.0
                self.services.bus.emit(ev.Noted("error", "commitment_delivery_failed", {
                    "worker": self.name, "error": f"{type(exc).__name__}: {exc}"}))
            if pause > 0 and self.wake.wait(pause):
                self.wake.clear()

    def _round(self) -> float:
        """One pass; how long to wait before the next (woken earlier by ``wake``)."""
        raise NotImplementedError

    def _backoff(self, failures: int) -> float:
        s = self.services.config.spool
        return backoff_delay(failures, s.retry_initial, s.retry_max, random.random())

    @property
    def own_title(self) -> str:
        return self.services.config.proxy.ae_title


class Committer(_Worker):
    """Sends one archive's waiting commitments (Rules 1, 2)."""

    def __init__(self, archive: str, services: Services, journal: CommitmentJournal) -> None:
        self.name = f"commit-{archive}"
        self.archive = archive
        super().__init__(services, journal, threading.Event())
        self._failures = 0
        self._said_overdue: set[str] = set()

    def _round(self) -> float:
        self._overdue()
        waiting = self.journal.in_state(WAITING, self.archive)
        if not waiting:
            return 1.0
        spool = self.services.plugins.spool
        wanted = {uid for item in waiting for uid in item.instances}
        held = spool.holding(self.archive, wanted) if spool is not None else set()
        ready = [item for item in waiting if commit_policy.ready(item.instances, held)]
        for item in ready:
            if self._stop.is_set():
                break
            if not self._forward(item):
                self._failures += 1
                return self._backoff(self._failures)
            self._failures = 0
        # The spool is still delivering some: look again soon (each look scans the
        # archive's spool queue, so not on every instance it delivers).
        return 0.5 if len(ready) < len(waiting) else 0.0

    def _overdue(self) -> None:
        """Rule 6 of ``commit_policy``: a forwarded commitment without its report, said once."""
        forwarded = {item.id: item for item in self.journal.in_state(FORWARDED, self.archive)}
        after = self.services.config.spool.commitment_overdue
        late = commit_policy.overdue(((i, item.received_at) for i, item in forwarded.items()),
                                     time.time(), after, self._said_overdue)
        self._said_overdue &= set(forwarded)            # reported since: forget them
        p = self.services.config.proxy
        for item_id in late:
            item = forwarded[item_id]
            self._said_overdue.add(item_id)
            self.services.bus.emit(ev.Noted("warning", "commitment_overdue", {
                "archive": self.archive, "transaction_uid": item.transaction_uid,
                "modality": item.modality, "waiting_s": round(time.time() - item.received_at),
                "hint": f"the archive accepted the N-ACTION but has sent no report in "
                        f"{after:g} s: check that it knows {p.ae_title} at the proxy's "
                        f"address and port {p.port} and can connect there; restarting the "
                        f"proxy sends the N-ACTION again"}))

    def _forward(self, item: Commitment) -> bool:
        """One N-ACTION; False when the archive should be tried again later."""
        current = self.journal.by_transaction(item.transaction_uid)
        if current is None or current.state != WAITING:
            return True                 # reported meanwhile (a report after a restart)
        base = self.services.archives[self.archive]
        client = base if base.peer.calling_ae == self.own_title else \
            base.calling_as(self.own_title)
        try:
            with ris.connect(client, _contexts(item.syntax)) as link:
                answer = self._action(client, link, item)
                if answer is None:
                    return False
                verdict = commit_policy.forward_verdict(answer.status)
                if verdict is Verdict.DELIVERED:
                    self.journal.forwarded(item.id)
                    self._linger(client, link, item)
        except ris.Unanswered as exc:                       # no association
            with self.services.upstream_call(self.archive, "N-ACTION") as call:
                call.update(error=exc.reason, hint=exc.hint)
                call["details"] = {"transaction_uid": item.transaction_uid,
                                   "delivery": "association"}
            return False
        if verdict is Verdict.RETRY:
            return False
        if verdict is Verdict.DEAD:
            comment = answer.elements.get(commands.ERROR_COMMENT)
            dead_letter(self.services, self.journal, item,
                        f"the archive refused the N-ACTION with {hex_status(answer.status)}"
                        + (f" ({comment})" if comment else ""),
                        f"enable Storage Commitment on {self.archive} for calling AE title "
                        f"{self.own_title}; the modality gets no report for this request",
                        answer.status)
        return True

    def _action(self, client: ArchiveClient, link: Link, item: Commitment) -> ris.Answer | None:
        """Send the N-ACTION, one ``upstream`` event (Rule 4); None: no answer."""
        with self.services.upstream_call(self.archive, "N-ACTION") as call:
            call["details"] = {"transaction_uid": item.transaction_uid,
                               "instances": len(item.instances), "modality": item.modality}
            try:
                cx, syntax = ris.context_for(
                    client, link, STORAGE_COMMITMENT, item.syntax,
                    "Storage Commitment Push Model", "enable Storage Commitment (SCP) on "
                    f"the archive for calling AE title {self.own_title}")
                data = ris.convert(self.journal.action(item), item.syntax, syntax)
                msg_id = _next_id()
                command = commands.n_action_rq(msg_id, STORAGE_COMMITMENT,
                                               STORAGE_COMMITMENT_INSTANCE,
                                               commit_policy.REQUEST_COMMIT, data is not None)
                answer = ris.call(client, link, cx, "N-ACTION", command, data,
                                  commands.N_ACTION_RSP, msg_id)
            except ris.Unanswered as exc:
                call["error"], call["hint"] = exc.reason, exc.hint
                return None
            call["status"] = answer.status
            return answer

    def _linger(self, client: ArchiveClient, link: Link, item: Commitment) -> None:
        """Rule 1: a report on the forwarding association, while it is still open (J.3.3),
        for up to ``LINGER`` s or until the report came on another association."""
        deadline = time.monotonic() + min(LINGER, client.peer.timeout)
        engine = self.services.plugins.commitment
        try:
            while time.monotonic() < deadline and engine is not None:
                current = self.journal.by_transaction(item.transaction_uid)
                if current is None or current.state == REPORTED:
                    return
                message = link.poll_message(0.05, client.peer.timeout)
                if message is None:
                    continue
                if message.command.get(commands.COMMAND_FIELD) != commands.N_EVENT_REPORT_RQ:
                    link.abort()               # nothing else is expected from the archive
                    return
                take_on_link(self.services, engine, link, message, client)
        except (LinkClosed, OSError, pdu.PduError):
            return                             # the archive ended it: nothing is lost


class Reporter(_Worker):
    """Sends reported commitments to their modalities (Rule 3)."""

    name = "commit-reports"

    def __init__(self, services: Services, journal: CommitmentJournal) -> None:
        super().__init__(services, journal, threading.Event())
        self._failures: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def _round(self) -> float:
        now = time.monotonic()
        reported = self.journal.in_state(REPORTED)
        for item in reported:
            if self._stop.is_set():
                break
            if self._due.get(item.id, 0.0) > now:
                continue
            if self._deliver(item):
                self._failures.pop(item.id, None)
                self._due.pop(item.id, None)
            else:
                failures = self._failures[item.id] = self._failures.get(item.id, 0) + 1
                self._due[item.id] = time.monotonic() + self._backoff(failures)
        later = [self._due[i.id] for i in self.journal.in_state(REPORTED) if i.id in self._due]
        if later:
            return max(0.0, min(min(later) - time.monotonic(), 1.0))
        return 1.0

    def _deliver(self, item: Commitment) -> bool:
        """One N-EVENT-REPORT; False when the modality should be tried again later."""
        destination = commit_policy.target(self.services.config, item.modality)
        if destination is None:
            dead_letter(self.services, self.journal, item,
                        f"the requesting modality {item.modality!r} is not in [destinations]",
                        f"add [destinations.<name>] with ae_title = {item.modality!r}, host "
                        "and port to rules.toml, then move the commitment's files from the "
                        "dead-letter folder back to the commitment folder and restart")
            return True
        client: ArchiveClient = self.services.destinations[destination.name]
        data = self.journal.report(item)
        assert item.event_type is not None
        with self.services.upstream_call(destination.name, "N-EVENT-REPORT") as call:
            call["details"] = {"transaction_uid": item.transaction_uid,
                               "event_type": item.event_type, "reported_by": item.archive}
            try:
                roles = [build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)]
                with ris.connect(client, _contexts(item.report_syntax, True), roles) as link:
                    cx, syntax = ris.context_for(
                        client, link, STORAGE_COMMITMENT, item.report_syntax,
                        "Storage Commitment Push Model", f"the modality {item.modality} must "
                        "accept Storage Commitment reports (SCU role with SCP role selection)")
                    data = ris.convert(data, item.report_syntax, syntax)
                    msg_id = _next_id()
                    command = commands.n_event_report_rq(
                        msg_id, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE,
                        item.event_type, data is not None)
                    answer = ris.call(client, link, cx, "N-EVENT-REPORT", command, data,
                                      commands.N_EVENT_REPORT_RSP, msg_id)
            except ris.Unanswered as exc:
                call["error"], call["hint"] = exc.reason, exc.hint
                return False
            call["status"] = answer.status
        verdict = commit_policy.forward_verdict(answer.status)
        if verdict is Verdict.RETRY:
            return False
        if verdict is Verdict.DEAD:
            dead_letter(self.services, self.journal, item,
                        f"the modality refused the report with {hex_status(answer.status)}",
                        "see the modality's log; the report is kept in the dead-letter "
                        "folder", answer.status)
            return True
        self.journal.done(item.id)
        publish(self.services, self.journal)
        return True


# -- the extension ------------------------------------------------------------------------


def start(services: Services) -> Callable[[], None] | None:
    """Open the journal, offer ``Commitments`` to the handlers, start the workers."""
    config = services.config
    wanted = {r.commitment_archive for r in config.routes if r.commitment_archive}
    journal = CommitmentJournal(config.spool.dir)
    if not wanted and not journal.root.is_dir():
        return None                   # no route asks for commitment and nothing is kept
    counts = journal.open()
    engine = Commitments(services, journal)
    services.plugins.commitment = engine
    names = sorted({str(n) for n in wanted} | set(counts))
    known = [name for name in names if name in config.archives]
    orphaned = sorted(set(names) - set(known))
    services.bus.emit(ev.Noted("info", "commitment_journal_opened", {
        "dir": str(journal.root), "pending": counts, "commit_to": known}))
    if journal.unreadable:
        services.bus.emit(ev.Noted("warning", "commitment_unreadable", {
            "records": journal.unreadable, "dir": str(journal.root / "dead"),
            "hint": "these commitments were moved to the dead-letter folder; their "
                    "modalities get no report through the proxy"}))
    if orphaned:
        services.bus.emit(ev.Noted("warning", "commitment_orphaned", {
            "archives": orphaned, "hint": "Storage Commitment requests are kept for archives "
                                          "no longer in rules.toml; they stay until it names "
                                          "them again"}))
    committers = [Committer(name, services, journal) for name in known]
    reporter = Reporter(services, journal)
    workers: list[_Worker] = [*committers, reporter]
    engine.committers = {c.archive: c.wake for c in committers}
    engine.reporter = reporter.wake
    publish(services, journal)
    for worker in workers:
        worker.start()

    def stop() -> None:
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.stop()

    return stop

