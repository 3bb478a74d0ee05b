"""Forward spooled instances to their archives: one thread per archive, oldest first.

The extension ``start`` (in ``proxy.app.EXTENSIONS``) opens the spool, has
C-STOREs received straight into its temp dir (``proxy.association`` Rule 2), and starts
``forward_associations`` ``Forwarder`` threads (lanes) per archive named in a route's
``store_to`` (or still holding pending instances). ``services.plugins.spool`` is the open
``Spool``.

Rule 1: a lane takes an archive's instances in spool order (arrival order), ``_CHUNK`` at
        a time, over one association for as long as there is work; a new association
        only when an instance needs a presentation context not yet negotiated, after
        ``_MAX_PER_ASSOCIATION`` instances, or after ``_LINGER`` s of quiet.
Rule 2: each instance is proposed in its own transfer syntax and, if the
        archive accepts that, sent from the spool file as stored — never
        decoded (``forwarding.plan_contexts`` / ``choose``): the association is the
        proxy's lean one (``ArchiveClient.link``, ``proxy.ul``), the data set written
        with ``sendmsg`` straight from the file, after its file meta. Only when the
        archive accepted the other little-endian syntax alone is the instance decoded
        and re-encoded (Explicit <-> Implicit VR, ``pynetdicom.dsutils.encode``).
        One C-STORE at a time: the link negotiates no asynchronous window, so the
        archive is never kept waiting for the proxy's own work. While it stores one
        instance, the lane does the bookkeeping of the one before (its ``upstream``
        line, its spool link removed, counted, gauges: ``_deferred``; a crash in
        between resends that one instance, and archives keep it once), takes the next
        entries when its chunk is used up, and reads the next instance's data set
        into memory when it is at most ``_READ_AHEAD_MAX`` (``_read_ahead``). The
        answer comes, and that C-STORE goes out at once: command and data set in one
        ``sendmsg``, no file opened in between.
Rule 3: what happens next is decided by ``forwarding.classify``: delivered →
        removed from the queue; archive unreachable, rejecting, timing out or
        out of resources → retried after ``backoff_delay`` (exponential, capped,
        forever); a retryable failure status of one instance → retried up to
        ``max_attempts``; a permanent refusal (SOP class or transfer syntax not
        accepted, 0x0122, 0xA9xx, 0xCxxx, ...) → dead-letter folder with the
        reason, a ``forward_dead_lettered`` log line and metric.
Rule 4: every C-STORE to an archive is one ``upstream`` event, naming its ``lane`` when
        the archive has several (an association
        that cannot be opened is one too); every outcome is counted in
        ``dicom_proxy_suboperations_total{operation="C-STORE-forward"}``.
Rule 5: an association calls with one calling AE title: the archive's ``calling_ae``,
        or, for instances received on a route with ``pass_calling_ae``, the title
        of the workstation that sent them (``routing.forward_calling_ae``); an
        association carries only a run of consecutive instances with the same one.
        An archive that permanently rejects a workstation's title ("calling AE not
        recognised") refuses that workstation's instances for good: they go to the
        dead-letter folder, so they do not hold up the other senders' (Rule 3).
Rule 6: ``[archives.X] forward_associations`` (default 1) lanes share an archive's queue
        through ``Lanes``: an instance a lane has taken is skipped by the others until
        that lane's association ends, and its retry count is the archive's, not the
        lane's. The first lane alone probes the archive (and backs off while it is down);
        the others work only while the first one holds an open association, so a
        backlog goes over several associations at once — over a long link (a remote
        site) each C-STORE waits a round trip, and N lanes keep N in flight — while one
        instance or a down archive costs one association. With more than one lane,
        instances may reach the archive out of spool order; one lane keeps it strict.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from itertools import count, takewhile
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.presentation import build_context

from proxy.config import SpoolConfig
from proxy.dicom import commands, pdu
from proxy.observe import events as ev
from proxy.routing import (
    DIAG_CALLING_AE_NOT_RECOGNISED,
    RESULT_PERMANENT,
    SOURCE_SERVICE_USER,
    forward_calling_ae,
)
from proxy.services import Services
from proxy.status import Status
from proxy.store.policy import (
    Choice,
    Key,
    Verdict,
    choose,
    classify,
    key,
    plan_contexts,
    status_text,
    uid_name,
)
from proxy.store.spool import Entry, InstanceMeta, Spool, data_offset
from proxy.store.worker import QueueWorker
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient, UpstreamError

_BATCH = 64                       # queue entries looked at per planning round
_CHUNK = 4                        # entries a lane takes at a time (Rule 6)
_READ_AHEAD_MAX = 4 << 20         # bytes of the next instance read while one is stored
_MAX_PER_ASSOCIATION = 2000
_LINGER = 2.0                     # seconds an idle upstream association waits for more
_STATS_INTERVAL = 5.0             # seconds between spool gauge refreshes (age keeps growing)
_CALLING_NOT_RECOGNISED = (RESULT_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNISED)
_CONTEXT_RESULTS = {0x01: "rejected by the archive", 0x02: "rejected, no reason given",
                    0x03: "SOP class not supported", 0x04: "transfer syntax not supported"}


Pair = tuple[Entry, InstanceMeta]


class Lanes:
    """What one archive's forwarders share (Rule 6)."""

    def __init__(self, count: int = 1) -> None:
        self.count = count                          # lanes of the archive
        self._lock = threading.Lock()
        self._taken: dict[str, int] = {}            # entry id -> the lane sending it
        self.attempts: dict[str, int] = {}          # entry id -> failed attempts so far
        self.first_open = False                     # the first lane holds an association

    def free(self, lane: int, entries: list[Entry]) -> list[Entry]:
        """Those of ``entries`` no other lane has taken."""
        with self._lock:
            return [e for e in entries if self._taken.get(e.id, lane) == lane]

    def others(self, lane: int) -> int:
        """How many entries the other lanes hold."""
        with self._lock:
            return sum(1 for held in self._taken.values() if held != lane)

    def take(self, lane: int, pairs: list[Pair]) -> list[Pair]:
        """Take those of ``pairs`` no other lane has; the ones taken, in order."""
        with self._lock:
            out = [p for p in pairs if self._taken.setdefault(p[0].id, lane) == lane]
        return out

    def release(self, lane: int) -> None:
        """The lane's association ended: what it still holds is anyone's again."""
        with self._lock:
            self._taken = {k: v for k, v in self._taken.items() if v != lane}


class Forwarder(QueueWorker):
    """Drains one archive's queue as one of its lanes; see the module rules (the thread:
    ``QueueWorker``)."""

    failed_event = "forwarder_failed"

    def __init__(self, archive: str, client: ArchiveClient, spool: Spool, services: Services,
                 settings: SpoolConfig, publish: Callable[[], None], lane: int = 0,
                 lanes: Lanes | None = None) -> None:
        super().__init__(archive, services, settings,
                         f"forward-{archive}" + (f"-{lane + 1}" if lane else ""))
        self.client = client
        self.spool = spool
        self.publish = publish
        self.lane = lane
        self.lanes = lanes if lanes is not None else Lanes()
        self._attempts = self.lanes.attempts
        self._deferred: Callable[[], None] | None = None   # a delivered one's bookkeeping
        self._ready: tuple[str, memoryview] | None = None   # the next one's data set

    def _head(self, limit: int = _BATCH) -> list[Entry]:
        """The oldest pending entries no other lane has taken (Rule 6)."""
        entries = self.spool.head(self.archive, limit + self.lanes.others(self.lane))
        return self.lanes.free(self.lane, entries)[:limit]

    def _pending(self) -> bool:
        if self.lane and not self.lanes.first_open:
            return False                # Rule 6: only the first lane probes the archive
        return bool(self._head(1))

    def _wait(self, timeout: float) -> None:
        self.spool.wait(timeout)

    def _wake(self) -> None:
        with self.spool.changed:
            self.spool.changed.notify_all()

    # One upstream association; False when the archive could not take anything (back off).
    def _session(self) -> bool:
        batch = self._readable(self._head())
        if not batch:
            return True
        calling = self._calling(batch[0][1])
        batch = list(takewhile(lambda pair: self._calling(pair[1]) == calling, batch))
        client = self.client.calling_as(calling)
        contexts, covered = plan_contexts([m for _, m in batch])
        planned = batch[:covered]            # what the proposed contexts cover
        proposed = {key(m) for _, m in planned}
        batch = self.lanes.take(self.lane, planned[:_CHUNK])
        if not batch:
            return True                 # another lane took them meanwhile
        try:
            with client.link([build_context(sop, ts) for sop, ts in contexts]) as link:
                self.link = link
                if not self.lane:
                    self.lanes.first_open = True
                    self._wake()        # the other lanes may help now (Rule 6)
                if not link.accept.accepted:
                    # The archive accepted the association but none of the contexts: every
                    # instance proposed is refused for good (Rule 3), not the archive down.
                    for entry, meta in self.lanes.take(self.lane, planned):
                        self._dead(entry, meta, None, self._no_context_reason(meta, link))
                    return True
                try:
                    return self._stream(link, batch, proposed, calling)
                finally:
                    self._settle_deferred()
        except UpstreamError as exc:
            with self.services.upstream_call(self.archive, "C-STORE") as call:
                call.update(error=exc.reason, hint=exc.hint)
                call["details"] = {"pending": len(self.spool.head(self.archive, _BATCH)),
                                   "forward": "association"}
            if client.peer.for_workstation and exc.rejection == _CALLING_NOT_RECOGNISED:
                # Rule 5: this sender only, for good (all of its planned run at once)
                for entry, meta in self.lanes.take(self.lane, planned):
                    self._dead(entry, meta, None, exc.reason, exc.hint)
                return True
            return False
        finally:
            self.link = None
            self._ready = None
            if not self.lane:
                self.lanes.first_open = False
            self.lanes.release(self.lane)
            self._wake()                # what it held is the others' to take

    def _stream(self, link: Link, batch: list[tuple[Entry, InstanceMeta]], proposed: set[Key],
                calling: str) -> bool:
        offered = sorted((cx, link.abstract[cx], ts) for cx, ts in link.accept.accepted.items()
                         if cx in link.abstract)
        accepted = [(sop, ts) for _, sop, ts in offered]
        context_ids: dict[Key, int] = {}
        for cx, sop, ts in offered:
            context_ids.setdefault((sop, ts), cx)     # the lowest ID, as pynetdicom chose
        ids = (1 + i % 65535 for i in count())
        sent: set[str] = set()             # entries this association has carried
        todo = list(batch)

        def upcoming() -> Pair | None:
            """The entry after the one being stored, taken while the archive stores it."""
            if not todo and len(sent) < _MAX_PER_ASSOCIATION:
                todo.extend(self._more(proposed, calling, sent, wait=False))
            return todo[0] if todo else None

        while todo:
            entry, meta = todo.pop(0)
            if self.stopping or link.closed:
                return True
            sent.add(entry.id)
            if not self._forward(link, next(ids), entry, meta, accepted, context_ids, upcoming):
                return False
            if len(sent) >= _MAX_PER_ASSOCIATION or link.closed:
                return True
            if not todo:
                self._settle_deferred()    # off the queue before looking at it again
                todo.extend(self._more(proposed, calling, sent))
        return True

    def _calling(self, meta: InstanceMeta) -> str:
        """The calling AE title to forward this instance with (Rule 5)."""
        config = self.services.config
        return forward_calling_ae(config, config.archives[self.archive], meta.sending_ae,
                                  meta.receiving_ae)

    def _more(self, proposed: set[Key], calling: str, sent: set[str],
              wait: bool = True) -> list[tuple[Entry, InstanceMeta]]:
        """The next entries this association can carry (none of ``sent``), waiting up to
        _LINGER for some when ``wait``."""
        deadline = time.monotonic() + _LINGER
        while not self.stopping:
            head = self._readable([e for e in self._head(_CHUNK + 2) if e.id not in sent])
            fits: list[tuple[Entry, InstanceMeta]] = []
            for entry, meta in head[:_CHUNK]:
                if key(meta) not in proposed or self._calling(meta) != calling:
                    break               # needs a new association; keep the order
                fits.append((entry, meta))
            taken = self.lanes.take(self.lane, fits)
            if taken or (head and not fits):
                return taken
            if fits:
                continue                # another lane took these meanwhile: look again
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not wait:
                return []
            self.spool.wait(min(remaining, 0.5))
        return []

    def _readable(self, entries: list[Entry]) -> list[tuple[Entry, InstanceMeta]]:
        out = []
        for entry in entries:
            try:
                out.append((entry, self.spool.meta(self.archive, entry)))
            except Exception as exc:   # not a DICOM file any more: nothing to retry
                meta = InstanceMeta("", "", "")
                if self.lanes.take(self.lane, [(entry, meta)]):     # one lane says so
                    entry.meta = meta
                    self._dead(entry, meta, None, f"spool file unreadable: "
                                                  f"{type(exc).__name__}: {exc}")
        return out

    # One C-STORE; False when the caller must back off (the instance stays pending).
    def _forward(self, link: Link, msg_id: int, entry: Entry, meta: InstanceMeta,
                 accepted: list[tuple[str, str]], context_ids: dict[Key, int],
                 upcoming: Callable[[], Pair | None]) -> bool:
        choice = choose(meta, accepted)
        if choice is None:
            self._dead(entry, meta, None, self._no_context_reason(meta, link))
            return True
        details: dict[str, Any] = {
            "instance": entry.id, "sop_instance_uid": meta.sop_instance,
            "transfer_syntax": choice.transfer_syntax, "bytes": entry.size, "raw": choice.raw}
        if self.lanes.count > 1:
            details["lane"] = self.lane + 1                   # which association (Rule 6)
        started = time.monotonic()
        status, error = self._store(link, context_ids[meta.sop_class, choice.transfer_syntax],
                                    msg_id, entry, meta, choice, upcoming)
        reported = ev.UpstreamCompleted(self.archive, "C-STORE", status,
                                        time.monotonic() - started, None, error, None, details)
        self._settle_deferred()              # not sent (a file that failed): settle it now
        verdict = classify(status)
        if verdict in (Verdict.DELIVERED, Verdict.WARNING):
            def delivered() -> None:
                self.services.bus.emit(reported)   # Rule 4, timed when the answer came
                self.spool.forwarded(self.archive, entry)
                self._attempts.pop(entry.id, None)
                self._count(completed=verdict is Verdict.DELIVERED,
                            warning=verdict is Verdict.WARNING)
                self.publish()
            self._deferred = delivered          # done once the next one is on its way
            return True
        self.services.bus.emit(reported)
        if verdict is Verdict.REFUSED:
            assert status is not None
            self._dead(entry, meta, status, f"archive answered {status_text(status)}")
            return True
        if verdict is Verdict.RETRY_INSTANCE:
            tries = self._attempts[entry.id] = self._attempts.get(entry.id, 0) + 1
            if tries >= self.settings.max_attempts:
                self._attempts.pop(entry.id, None)
                why = status_text(status) if status is not None else "no status"
                self._dead(entry, meta, status, f"gave up after {tries} attempts; last: {why}")
                return True
        return False

    def _store(self, link: Link, cx: int, msg_id: int, entry: Entry, meta: InstanceMeta,
               choice: Choice, upcoming: Callable[[], Pair | None]
               ) -> tuple[int | None, str | None]:
        """One C-STORE-RQ from the spool file (or what ``_read_ahead`` kept of it) and its
        response: (status, error); the ``upcoming`` one is read ahead meanwhile (Rule 2).

        No status when the archive did not answer (it is aborted then); 0x0110 when
        the file, not the archive, failed — an attempt of the instance (Rule 3).
        """
        command = commands.c_store_rq(msg_id, meta.sop_class, meta.sop_instance)
        ready, self._ready = self._ready, None
        writing = False
        try:
            if ready is not None and ready[0] == entry.id and choice.raw:
                writing = True
                link.send_message(cx, command, data=ready[1])
            else:
                path = self.spool.path(self.archive, entry)
                with open(path, "rb") as source:
                    if choice.raw:
                        start = _data_offset(source, path)
                        length = os.fstat(source.fileno()).st_size - start
                        source.seek(start)
                        writing = True
                        link.send_message(cx, command, source=source, length=length)
                    else:
                        data = _reencoded(source, choice.transfer_syntax)
                        writing = True
                        link.send_message(cx, command, data=data)
            self._settle_deferred()            # the previous one's, while this one is stored
            self._ready = self._read_ahead(upcoming())
            rsp = link.read_message().command
        except TimeoutError:
            link.abort()
            return None, (f"no C-STORE response within timeout ({self.client.peer.timeout:g}s);"
                          " the proxy aborted the association")
        except (LinkClosed, pdu.PduError, ConnectionError) as exc:
            link.abort()
            return None, f"association ended before the response ({exc})"
        except Exception as exc:
            if link.closed:
                return None, f"association ended before the response ({exc})"
            if writing:                     # half a message went out: the link is unusable
                link.abort()
            return Status.PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}"
        status = rsp.get(commands.STATUS)
        if (rsp.get(commands.COMMAND_FIELD) != commands.C_STORE_RSP
                or rsp.get(commands.RESPONDED_TO) != msg_id or not isinstance(status, int)):
            link.abort()
            return None, "the archive answered the C-STORE with something else; aborted"
        return status, None

    def _read_ahead(self, pair: Pair | None) -> tuple[str, memoryview] | None:
        """The next instance's data set, read while the archive stores this one (Rule 2);
        None when there is none, it is over ``_READ_AHEAD_MAX`` or cannot be read now
        (it is then read from its file when sent, and a failure is reported there)."""
        if pair is None or pair[0].size > _READ_AHEAD_MAX:
            return None
        try:
            with open(self.spool.path(self.archive, pair[0]), "rb", buffering=0) as source:
                whole = source.readall()
            return pair[0].id, memoryview(whole)[data_offset(whole):]
        except (OSError, ValueError):
            return None

    def _settle_deferred(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred()

    def _dead(self, entry: Entry, meta: InstanceMeta, status: int | None, reason: str,
              cause: str | None = None) -> None:
        hint = (f"{cause or 'fix the cause'}, then move {entry.id}.dcm from the dead-letter "
                f"folder back to the archive's pending folder and restart the proxy")
        path = self.spool.dead_letter(self.archive, entry, {
            "status": None if status is None else f"0x{status:04X}", "reason": reason,
            "hint": hint})
        self.services.bus.emit(ev.ForwardDeadLettered(
            self.archive, entry.id, meta.sop_class, meta.sop_instance, status, reason,
            str(path), hint))
        self._count(failed=True)
        self.publish()

    def _count(self, completed: bool = False, failed: bool = False,
               warning: bool = False) -> None:
        self.services.bus.emit(ev.SubOperationsCounted(
            "C-STORE-forward", int(completed), int(failed), int(warning)))

    def _no_context_reason(self, meta: InstanceMeta, link: Link) -> str:
        results = [_CONTEXT_RESULTS.get(result, f"result {result}")
                   for cx, result in link.accept.refused.items()
                   if link.abstract.get(cx) == meta.sop_class]
        why = f" ({', '.join(sorted(set(results)))})" if results else ""
        return (f"archive {self.client.peer.ae_title} did not accept "
                f"{uid_name(meta.sop_class)} in {uid_name(meta.transfer_syntax)}{why}; the "
                f"proxy does not transcode compressed pixel data")


# -- the extension ------------------------------------------------------------------------


def publish(services: Services, spool: Spool) -> None:
    """Refresh the spool gauges (pending, bytes, oldest age, dead letters)."""
    s = spool.stats()
    services.bus.emit(ev.SpoolChanged(s.pending, s.pending_bytes, s.oldest_age_s, s.dead))


def start(services: Services) -> Callable[[], None]:
    """Open the spool, receive C-STOREs into it, start one forwarder per archive."""
    config = services.config
    spool = Spool(config.spool.dir, config.spool.max_bytes)
    stats = spool.open()
    services.plugins.spool = spool
    listener = services.listener

    listener.reception = spool.reception     # C-STOREs arrive as files in the spool

    wanted = {name for route in config.routes for name in route.store_to}
    orphaned = sorted(set(spool.archives()) - set(config.archives))
    names = sorted((wanted | set(spool.archives())) & set(config.archives))
    services.bus.emit(ev.Noted("info", "spool_opened", {
        "dir": str(spool.root), "pending": stats.pending, "pending_bytes": stats.pending_bytes,
        "dead_letters": stats.dead, "used_bytes": stats.used_bytes,
        "max_bytes": spool.max_bytes, "forward_to": names}))
    if orphaned:
        services.bus.emit(ev.Noted("warning", "spool_orphaned", {
            "archives": orphaned, "hint": "instances are pending for archives no longer in "
                                          "rules.toml; they stay in the spool until it names "
                                          "them again or they are moved by hand"}))

    def refresh() -> None:
        publish(services, spool)

    forwarders = []
    for name in names:
        count = config.archives[name].forward_associations
        lanes = Lanes(count)
        forwarders += [Forwarder(name, services.archives[name], spool, services, config.spool,
                                 refresh, lane, lanes) for lane in range(count)]
    for forwarder in forwarders:
        forwarder.start()
    stopping = threading.Event()

    def tick() -> None:
        while not stopping.wait(_STATS_INTERVAL):
            refresh()

    threading.Thread(target=tick, name="spool-gauges", daemon=True).start()
    refresh()

    def stop() -> None:
        stopping.set()
        listener.reception = None
        for forwarder in forwarders:
            forwarder.request_stop()       # all at once, then wait for each
        for forwarder in forwarders:
            forwarder.stop()
        refresh()

    return stop


def _data_offset(source: BinaryIO, path: Path) -> int:
    """Where the data set starts in a spool file (after its preamble and file meta)."""
    try:
        return data_offset(source.read(1024))
    except ValueError:        # a file meta without group length (put there by hand)
        return int(split_dataset(path)[1])


def _reencoded(source: BinaryIO, syntax: str) -> bytes:
    """The instance decoded and encoded in a little-endian syntax it was not stored in."""
    data: bytes | None = encode(dcmread(source), syntax == ImplicitVRLittleEndian, True)
    if data is None:
        raise ValueError(f"the data set could not be encoded in {uid_name(syntax)}")
    return data
