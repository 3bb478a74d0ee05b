"""One workstation C-MOVE or C-GET, end to end: survey, pull, deliver, count, answer.

The handler thread (the workstation's association) runs this generator; the
``Puller`` runs on its own thread and fills the ``InstanceBuffer``; this loop takes
each instance as soon as it is there, hands it to the sink (Move Destination or
the workstation itself) and yields a Pending response with the counts — so the
first instance reaches the destination while the archive is still sending the
rest, and memory holds paths, not data sets.

Rule 1: the number of sub-operations is known before the first instance (the survey);
        Pending responses carry Remaining/Completed/Failed/Warning: one after the first
        sub-operation, then at most one per ``PENDING_INTERVAL`` (each costs the
        workstation link a message; a 1,000-instance study needs no 1,000 of them).
Rule 2: the final response is chosen by ``tally.final_status`` with true counts and
        the Failed SOP Instance UID List; one ``SubOperationsCounted`` per request.
Rule 3: C-CANCEL from the workstation stops the puller (C-CANCEL upstream, later
        sub-operations refused) and the forwarding at once; the answer is Cancel
        (0xFE00) with the counts so far and the Remaining ones.
Rule 4: whatever ends the request (success, cancel, the workstation vanishing, an
        exception) the buffer's files are deleted and the sink closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from pydicom import Dataset
from pynetdicom import evt

from proxy.cancel import CancelToken
from proxy.contexts import FIND_MODEL_FOR
from proxy.observe import events as ev
from proxy.operations.base import OperationRecord, Services
from proxy.retrieve.buffer import InstanceBuffer
from proxy.retrieve.forwarder import Sink
from proxy.retrieve.puller import Puller
from proxy.retrieve.sopclasses import Instance
from proxy.retrieve.survey import Survey, list_instances, survey
from proxy.retrieve.tally import Tally, final_status, response
from proxy.status import Status
from proxy.upstream import UpstreamError

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
LEVEL_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
              "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
OpenSink = Callable[[list[Instance]], Sink]
_POLL = 0.05
PENDING_INTERVAL = 0.2   # seconds between Pending responses (they are optional, PS3.4 C.4.2.3.1)


def relay(services: Services, event: evt.Event, record: OperationRecord, operation: str,
          open_sink: OpenSink) -> Iterator[Dataset]:
    """The body of the C-MOVE and C-GET handlers; yields response status datasets."""
    started = time.monotonic()
    session = services.session(event)
    identifier: Dataset = event.identifier
    record.protect(identifier)
    model = str(event.request.AffectedSOPClassUID)
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    record.details["level"] = level
    tally = Tally()
    if session.route is None or level not in LEVELS or model not in FIND_MODEL_FOR:
        record.status = (Status.UNABLE_TO_PROCESS if session.route is None
                         else Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
        record.hint = ("no route for this association" if session.route is None else
                       f"QueryRetrieveLevel {level or '(missing)'} is not valid for C-MOVE/C-GET")
        yield response(record.status, tally, record.hint)
        return
    token = CancelToken()
    order = archive_order(services, list(session.route.archives), identifier, level)
    record.archives = order
    find_model = FIND_MODEL_FOR[model]
    found = survey(services, event, order, identifier, level, find_model, token, record.phi)
    tally.expect(list(found.instances))
    tally.upstream_total = found.count
    record.details.update(expected=found.count, survey="counted" if found.fast else "listed")
    if event.is_cancelled:
        record.status = Status.CANCEL
        yield response(record.status, tally, remaining=True)
        return
    if found.empty:                                  # nothing matches anywhere
        yield from _finish(services, record, operation, tally, False,
                           _survey_failure(found), None)
        return
    try:
        sink = open_sink(found.described())
    except UpstreamError as exc:     # dead destination: Failed = N, nothing pulled
        _fail_the_rest(services, event, found, identifier, find_model, record, tally,
                       f"destination unreachable: {exc.reason}")
        record.hint = exc.hint
        yield from _finish(services, record, operation, tally, False, None,
                           f"destination unreachable: {exc.reason}")
        return
    root = services.config.spool.dir / "retrieve"
    spool = services.config.spool
    buffer = InstanceBuffer(root / f"{session.info.assoc_id}-{event.request.MessageID}",
                            spool.retrieve_max_bytes, spool.retrieve_memory_bytes,
                            spool.retrieve_spill_after)
    puller = Puller(services, event, found, order, identifier, model, buffer, token,
                    record.phi, lambda n: setattr(tally, "upstream_total",
                                                  max(tally.upstream_total, n)),
                    sink.accepted())
    cancelled = False
    sink_failure: str | None = None
    first: float | None = None                # since the request came in
    last_pending = 0.0
    puller.start()
    try:
        while True:
            if event.is_cancelled:
                cancelled = True
                token.cancel()
                break
            item = buffer.take(_POLL)
            if item is None:
                if buffer.drained:
                    break
                continue
            delivery = sink.store(item)
            buffer.done(item)
            tally.record(item.sop_instance_uid, delivery.status, delivery.reason)
            if delivery.transcoded:        # the proxy converted it: the log says so
                record.details["transcoded"] = record.details.get("transcoded", 0) + 1
            if first is None:
                first = time.monotonic() - started
            if delivery.fatal:
                sink_failure = delivery.reason
                token.cancel()
                break
            now = time.monotonic()
            if now - last_pending >= PENDING_INTERVAL:
                last_pending = now
                yield response(Status.PENDING, tally, remaining=True)
    except GeneratorExit:            # the workstation went away: no final response possible
        record.status = Status.UNABLE_TO_PROCESS
        record.details["ended"] = "workstation association ended during the retrieve"
        raise
    finally:
        if not buffer.drained:
            token.cancel()
        buffer.close()
        puller.join(timeout=5.0)
        sink.close()
        record.details.update(buffer.stats())
        if first is not None:
            record.details["first_instance_ms"] = round(first * 1000.0, 1)
        record.details.update(tally.details())
    upstream = _upstream_failure(puller, found)
    record.hint = next((o.hint for o in puller.outcomes if o.hint), None)
    if not cancelled and tally.remaining:
        _fail_the_rest(services, event, found, identifier, find_model, record, tally,
                       upstream or "the archive did not deliver it")
    yield from _finish(services, record, operation, tally, cancelled, upstream, sink_failure)


def _fail_the_rest(services: Services, event: evt.Event, found: Survey, identifier: Dataset,
                   find_model: str, record: OperationRecord, tally: Tally, why: str) -> None:
    """Every sub-operation not done is Failed; on the fast path, list them first to name them."""
    if found.fast:
        listed = list_instances(services, event, list(found.holdings), identifier, find_model,
                                CancelToken(), record.phi)
        tally.expect(list(listed.instances))
    tally.settle(why)
    tally.settle_unlisted(why)


def archive_order(services: Services, archives: list[str], identifier: Dataset,
                  level: str) -> list[str]:
    """The route's archives, those the location cache says hold the data first."""
    cache = services.extras.get("locations")
    if cache is None or len(archives) < 2:
        return archives
    known: list[str] = []
    values = identifier.get(LEVEL_KEYS[level])
    uids = [values] if isinstance(values, str) else list(values or [])
    for uid in uids:
        for name in cache.lookup(level, str(uid)):
            if name in archives and name not in known:
                known.append(name)
    return known + [name for name in archives if name not in known]


def _finish(services: Services, record: OperationRecord, operation: str, tally: Tally,
            cancelled: bool, upstream: str | None, sink: str | None) -> Iterator[Dataset]:
    status, hint = final_status(tally, cancelled=cancelled, upstream_failure=upstream,
                                sink_failure=sink)
    record.status = status
    record.hint = record.hint or hint
    record.details.update(tally.details())
    if tally.reasons:
        record.details["failure_reasons"] = dict(list(tally.reasons.items())[:5])
    if tally.failed_uids:
        record.details["failed_sop_instance_uids"] = tally.failed_uids[:20]
    services.bus.emit(ev.SubOperationsCounted(operation, tally.completed, tally.failed,
                                              tally.warning))
    yield response(status, tally, hint, remaining=cancelled)


def _upstream_failure(puller: Puller, found: Survey) -> str | None:
    bad = [f"{o.archive}: {o.error}" for o in puller.outcomes if o.error]
    if not puller.outcomes and found.failed:
        return _survey_failure(found)
    return "; ".join(bad) or None


def _survey_failure(found: Survey) -> str | None:
    if not found.failed:
        return None
    return "; ".join(f"{name}: {why}" for name, why in found.failed.items())
