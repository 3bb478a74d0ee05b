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
Rule 5: the identifier is read as the archive reads it (``identifiers``): a missing
        Query/Retrieve Level is inferred, a selection by other keys than the unique key
        (Accession Number) is surveyed with those keys and retrieved by the UIDs found.
        Refused with 0xA900 (PS3.4 C.4.2.1.5), with an Error Comment and a log hint,
        only what cannot be routed: an unknown model or level, or no key with a value
        (that would retrieve the whole archive).
Rule 6: back to the workstation (C-GET), the next instance is handed over while the
        one before awaits its C-STORE response (``WorkstationSink.begin``): the loop
        sends it the moment that response is in, one on the wire at a time. Each is
        counted once its own response is in; one not sent because of a C-CANCEL is not
        counted (it stays Remaining).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from pydicom import Dataset

from proxy.cancel import CancelToken
from proxy.contexts import FIND_MODEL_FOR, GET_MODELS, MOVE_MODELS
from proxy.observe import events as ev
from proxy.retrieve.buffer import InstanceBuffer
from proxy.retrieve.identifiers import (
    LEVEL_KEYS,
    LEVELS,
    level_of,
    selecting_keys,
    upstream_identifier,
)
from proxy.retrieve.puller import Puller
from proxy.retrieve.reception import Buffered
from proxy.retrieve.sinks import Delivery, Handed, Sink, WorkstationSink
from proxy.retrieve.sopclasses import Instance
from proxy.retrieve.survey import Survey, list_instances, survey
from proxy.retrieve.tally import Tally, final_status, response
from proxy.services import OperationRecord, Services
from proxy.session import Request
from proxy.status import Status
from proxy.upstream import UpstreamError

OpenSink = Callable[[list[Instance]], Sink]
_POLL = 0.05
PENDING_INTERVAL = 0.2   # seconds between Pending responses (they are optional, PS3.4 C.4.2.3.1)


def relay(services: Services, event: Request, record: OperationRecord, operation: str,
          open_sink: OpenSink) -> Iterator[Dataset]:
    """The body of the C-MOVE and C-GET handlers; yields response status datasets."""
    started = time.monotonic()
    session = services.session(event)
    identifier: Dataset = event.identifier
    record.protect(identifier)
    model = str(event.sop_class)
    level = level_of(identifier, MOVE_MODELS.get(model) or GET_MODELS.get(model) or "STUDY")
    record.details["level"] = level or ""
    if level and "QueryRetrieveLevel" not in identifier:
        record.details["level_inferred"] = True
    tally = Tally()
    refusal = _unroutable(session.route is None, identifier, level, model)
    if refusal is not None:
        record.status, comment, record.hint = refusal
        yield response(record.status, tally, comment)
        return
    assert level is not None and session.route is not None
    token = CancelToken()
    order = archive_order(services, list(session.route.archives), identifier, level)
    record.archives = order
    find_model = FIND_MODEL_FOR[model]
    found = survey(services, event, order, identifier, level, find_model, token, record.phi)
    tally.expect(list(found.instances))
    tally.upstream_total = found.count
    record.details.update(expected=found.count, survey="counted" if found.fast else "listed")
    if found.timed_out:
        record.details["timed_out"] = sorted(found.timed_out)
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
        _fail_the_rest(services, event, found, identifier, level, find_model, record, tally,
                       f"destination unreachable: {exc.reason}")
        record.hint = exc.hint
        yield from _finish(services, record, operation, tally, False, None,
                           f"destination unreachable: {exc.reason}")
        return
    root = services.config.spool.dir / "retrieve"
    spool = services.config.spool
    buffer = InstanceBuffer(root / f"{session.info.assoc_id}-{event.message_id}",
                            spool.retrieve_max_bytes, spool.retrieve_memory_bytes,
                            spool.retrieve_spill_after)
    upstream_request = upstream_identifier(identifier, level, found.selected)
    puller = Puller(services, event, found, order, upstream_request, model, buffer, token,
                    record.phi, lambda n: setattr(tally, "upstream_total",
                                                  max(tally.upstream_total, n)),
                    sink.accepted())
    cancelled = False
    sink_failure: str | None = None
    first: float | None = None                # since the request came in
    last_pending = 0.0
    handing = sink if isinstance(sink, WorkstationSink) else None   # Rule 6
    held: Handed | None = None                # handed to the workstation, not yet answered

    def account(item: Buffered, delivery: Delivery | None) -> Iterator[Dataset]:
        """Count one sub-operation (none when it was never sent: cancelled before its
        turn); a Pending response at most every PENDING_INTERVAL."""
        nonlocal first, last_pending, sink_failure
        buffer.done(item)
        if delivery is None:
            return
        tally.record(item.sop_instance_uid, delivery.status, delivery.reason)
        if delivery.transcoded:            # the proxy converted it: the log says so
            record.details["transcoded"] = record.details.get("transcoded", 0) + 1
        if first is None:
            first = time.monotonic() - started
        if delivery.fatal:
            sink_failure = delivery.reason
            token.cancel()
            return
        now = time.monotonic()
        if now - last_pending >= PENDING_INTERVAL:
            last_pending = now
            yield response(Status.PENDING, tally, remaining=True)

    puller.start()
    try:
        while sink_failure is None:
            if event.is_cancelled:
                cancelled = True
                token.cancel()
                break
            item = buffer.take(0.0 if held is not None else _POLL)
            if item is None:
                if handing is not None and held is not None:   # nothing more yet: its answer
                    answered, held = held, None
                    yield from account(answered.item, handing.finish(answered))
                elif buffer.drained:
                    break
                continue
            if handing is None:
                yield from account(item, sink.store(item))
                continue
            earlier, held = held, handing.begin(item, held)   # sent once ``held`` is answered
            if earlier is not None:
                yield from account(earlier.item, handing.finish(earlier))
        if handing is not None and held is not None:   # cancelled, or the workstation gone
            last, held = held, None
            delivery = handing.finish(last)
            if sink_failure is None:
                yield from account(last.item, delivery)
            else:
                buffer.done(last.item)         # counted with the rest, as before
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
        _fail_the_rest(services, event, found, identifier, level, find_model, record, tally,
                       upstream or "the archive did not deliver it")
    yield from _finish(services, record, operation, tally, cancelled, upstream, sink_failure)


def _fail_the_rest(services: Services, event: Request, found: Survey, identifier: Dataset,
                   level: str, find_model: str, record: OperationRecord, tally: Tally,
                   why: str) -> None:
    """Every sub-operation not done is Failed; on the fast path, list them first to name them."""
    if found.fast:
        listed = list_instances(services, event, list(found.holdings), identifier, find_model,
                                CancelToken(), record.phi, level)
        tally.expect(list(listed.instances))
    tally.settle(why)
    tally.settle_unlisted(why)


def _unroutable(no_route: bool, identifier: Dataset, level: str | None,
                model: str) -> tuple[Status, str, str] | None:
    """(status, Error Comment, log hint) for a request the proxy cannot route (Rule 5)."""
    if no_route:
        return Status.UNABLE_TO_PROCESS, "no route for this association", \
            "no route for this association"
    if model not in FIND_MODEL_FOR:
        return (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "unknown retrieve model",
                f"SOP Class {model} is not a Patient/Study Root C-MOVE/C-GET model")
    if level is None:        # PS3.4 C.4.2.1.5: 0xA900, identifier does not match SOP class
        return (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no level and no key with a value",
                "the identifier has no Query/Retrieve Level and no key with a value: it "
                "selects nothing (give e.g. StudyInstanceUID or AccessionNumber)")
    if level not in LEVELS:
        return (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"QueryRetrieveLevel {level}"[:64],
                f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    if not selecting_keys(identifier, level):     # would select the whole archive
        return (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no key with a value",
                f"a {level} retrieve whose keys are all empty selects nothing; give "
                f"{LEVEL_KEYS[level]} (or another key the archive matches on)")
    return None


def archive_order(services: Services, archives: list[str], identifier: Dataset,
                  level: str) -> list[str]:
    """The route's archives, those the location cache says hold the data first."""
    cache = services.plugins.locations
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
