"""C-FIND: relay a query to the route's archive(s) and stream the matches back.

Rule 1: the workstation's identifier goes upstream unchanged (match and return
        keys); each match is sent downstream as soon as it arrives. Both pass as the
        bytes they came in: the proxy reads elements with ``proxy.rawtext`` (never
        converting one in place, which would make pynetdicom re-encode it) and writes
        them with ``proxy.fastencode`` (``proxy.responder``) — whatever the Specific
        Character Set.
Rule 2: one archive: every match and its final status are passed back as is —
        a route never drops what its archive returned. Several archives
        (federation): matches are de-duplicated by the level's unique key across
        archives only (``proxy.query.merging`` rules 1-1b: an archive's own answers are
        never duplicates of each other), and the final status is chosen by
        ``final_status`` (documented there).
        Route ``merge = "stream"`` (default): the first answer for an entity is
        sent at once, later ones dropped and counted (``duplicates``).
        ``merge = "complete"``: every answer is collected, then merged per entity
        by ``proxy.query.merging.merge_all`` (empty keys filled from later archives,
        counts take the larger) and sent when the last archive has answered.
Rule 2b: ``recheck_matches = true``: each match is re-checked against the
        workstation's query with ``proxy.query.matching.matches`` (PS3.4 C.2.2.2);
        non-matching ones are dropped and counted (``recheck_dropped``).
Rule 2c: every archive that answers for an entity is remembered
        (``remember_location``), duplicates included, before de-duplication.
Rule 3: Retrieve AE Title (0008,0054) in every match names the route's AE
        title, so the workstation retrieves through the proxy.
Rule 4: a C-CANCEL from the workstation is passed to every archive; the
        workstation then gets Cancel (0xFE00).
Rule 5: back-pressure: each match yielded is sent before the next is taken, the send
        waiting while the workstation is behind (``proxy.listener`` Rule 4); when its
        link is gone (the generator is closed at its ``yield``) the archives get a
        C-CANCEL and the operation ends with no status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pydicom import Dataset
from pydicom.tag import Tag

from proxy.cancel import CancelToken
from proxy.contexts import FIND_MODELS
from proxy.observe.events import AssocInfo, FindMatched, UpstreamCompleted
from proxy.query.fanout import Match, Outcome, fan_out, workstation_syntax
from proxy.query.matching import matches
from proxy.query.merging import LEVEL_UNIQUE_KEYS, WORKLIST, Deduplicator, merge_all
from proxy.rawtext import element, set_text, text_values
from proxy.services import OperationRecord, Services
from proxy.session import Request
from proxy.status import Status
from proxy.upstream import ArchiveClient, UpstreamError

Response = tuple[int | Dataset, Dataset | None]
_RETRIEVE_AE = Tag(0x00080054)
_LEVEL = Tag(0x00080052)


def handle(event: Request, services: Services) -> Iterator[Response]:
    session = services.session(event)
    route = session.route
    with services.operation(event, "C-FIND") as record:
        identifier: Dataset = event.identifier
        model = str(event.sop_class)
        level = read_query(record, identifier)
        if FIND_MODELS.get(model) == WORKLIST:    # no Query/Retrieve Level (PS3.4 K.6)
            level = record.details["level"] = WORKLIST
        if route is None:  # cannot happen after admission; answer rather than crash
            record.status = Status.UNABLE_TO_PROCESS
            yield _failure(record.status, "no route for this association")
            return
        record.archives = list(route.archives)
        clients = {name: services.archive(name, event) for name in route.archives}
        yield from _relay(event, services, record, clients, identifier, model, level,
                          route.called_ae, merge=route.merge, recheck=route.recheck_matches)


def _relay(event: Request, services: Services, record: OperationRecord,
           clients: dict[str, ArchiveClient], identifier: Dataset, model: str, level: str,
           retrieve_ae: str, merge: str = "stream", recheck: bool = False) -> Iterator[Response]:
    token = CancelToken()
    federated = len(clients) > 1
    complete = federated and merge == "complete" and level in LEVEL_UNIQUE_KEYS
    dedupe = Deduplicator(level) if federated and not complete else None
    collected: list[Dataset] = []
    origins: list[str] = []           # the archive of each collected answer
    if recheck:
        record.details["recheck_dropped"] = 0
    outcomes: list[Outcome] = []
    started = time.monotonic()
    info = services.session(event).info
    finder = services.plugins.find_query  # federation may plug in cap recovery
    syntax = workstation_syntax(event)

    def query(client: ArchiveClient, tok: CancelToken) -> Iterator[tuple[int | None,
                                                                         Dataset | None]]:
        if finder is not None:
            return finder(client, identifier, model, tok, event)
        return client.find(identifier, model, tok, syntax=syntax)

    def watch_cancel() -> None:
        if not token.is_set and event.is_cancelled:
            token.cancel()

    lost = False  # the workstation's link went away mid-answer (Rule 5)
    try:
        with event.cancel.on_cancel(token.cancel):   # Rule 4, also while waiting upstream
            for item in fan_out(clients, query, token, poll=watch_cancel,
                                abandon=lambda: not event.link_up()):
                if isinstance(item, Outcome):
                    outcomes.append(item)
                    services.bus.emit(_upstream_event(item, time.monotonic() - started, info,
                                                      record.phi))
                    if finder is None:  # the finder accounts for each request it makes
                        services.bus.emit(_matched_event(services, event, item))
                    continue
                assert isinstance(item, Match)
                if token.is_set:
                    continue
                ds = item.identifier
                if recheck and not matches(identifier, ds):
                    record.details["recheck_dropped"] += 1
                    continue
                remember = services.plugins.remember_location
                if remember is not None:
                    remember(item.archive, level, ds)
                if complete:
                    collected.append(ds)
                    origins.append(item.archive)
                    continue
                if dedupe is not None and not dedupe.offer(ds, item.archive):
                    continue
                yield _deliver(record, ds, item.status, retrieve_ae)
        lost = not event.link_up()
        if complete and not token.is_set:
            merged = merge_all(level, collected, consume=True,  # ours to give away
                               sources=origins)
            record.details["duplicates"] = len(collected) - len(merged)
            for ds in merged:
                watch_cancel()
                if token.is_set:
                    break
                yield _deliver(record, ds, Status.PENDING, retrieve_ae)
    except GeneratorExit:       # the workstation's link is gone (Rule 5)
        lost = True
        raise
    finally:
        if lost:
            token.cancel()
            record.details["error"] = (
                "the workstation's association ended before the answer was sent (it "
                "stopped reading, aborted or went away)")
        answered = {o.archive for o in outcomes}
        for name in clients:
            if name not in answered:  # the workstation went away first
                services.bus.emit(_upstream_event(
                    Outcome(name, None, 0, UpstreamError(name, "abandoned: the workstation "
                                                         "association ended first")),
                    time.monotonic() - started, info, record.phi))
    if lost:
        return
    record.status, record.hint = final_status(outcomes, token.is_set, federated)
    if dedupe is not None:
        record.details["duplicates"] = dedupe.duplicates
    failed = [o.archive for o in outcomes if o.error is not None]
    if failed:
        record.details["archives_failed"] = failed
    if record.status == Status.SUCCESS:
        return
    comment = record.hint if record.status not in (Status.CANCEL,) else None
    yield _failure(record.status, comment)


def read_query(record: OperationRecord, identifier: Dataset) -> str:
    """Note the workstation's query in ``record`` (level, log summary, PHI); its level.

    Every element is read, none converted (Rule 1): the identifier goes upstream as is.
    """
    level = "\\".join(text_values(identifier, _LEVEL)).strip().upper()
    record.details.update(level=level, matches=0, query=query_summary(identifier))
    record.protect(identifier)
    return level


def _deliver(record: OperationRecord, ds: Dataset, status: int, retrieve_ae: str) -> Response:
    if _RETRIEVE_AE in ds:          # raw bytes: the SCP copies them, no value conversion
        set_text(ds, _RETRIEVE_AE, "AE", retrieve_ae)
    record.details["matches"] += 1
    record.protect(ds)
    return status, ds


def final_status(outcomes: list[Outcome], cancelled: bool,
                 federated: bool) -> tuple[int, str | None]:
    """The status the workstation gets at the end, with a hint when it is not Success.

    - Cancelled by the workstation: Cancel (0xFE00, PS3.4 C.4.1.1.4).
    - One archive: its own final status, unchanged; when it could not be reached
      or stopped answering: Unable to process (0xC000).
    - Federation: Success when every archive answered Success. When some did not
      but others did, the matches already sent stand and the status is
      Out of resources (0xA700, "Refused: Out of Resources") — the one C-FIND
      failure status that says "the answer is not complete" without claiming the
      query itself was wrong; the hint names the archives that failed (or whose
      silent cap could not be fully recovered: "capped, partly recovered").
      When no archive answered and no match was sent: Unable to process (0xC000).
    """
    if cancelled:
        return Status.CANCEL, None
    bad = [o for o in outcomes if o.error is not None or o.status != Status.SUCCESS]
    if not federated:
        only = outcomes[0] if outcomes else None
        if only is None or only.error is not None or only.status is None:
            why = only.error.reason if only and only.error else "no final status"
            return Status.UNABLE_TO_PROCESS, why
        return only.status, None if only.status == Status.SUCCESS else "archive status"
    if not bad:
        return Status.SUCCESS, None
    names = ", ".join(f"{o.archive} ({_why(o)})" for o in bad)
    if len(bad) == len(outcomes) and not any(o.matches for o in outcomes):
        return Status.UNABLE_TO_PROCESS, f"no archive answered: {names}"
    return Status.REFUSED_OUT_OF_RESOURCES, f"incomplete answer from: {names}"


def _why(outcome: Outcome) -> str:
    if outcome.error is not None:
        return outcome.error.kind
    if outcome.status == Status.REFUSED_OUT_OF_RESOURCES:
        return "capped, partly recovered"   # see the find_incomplete log line
    return f"status 0x{outcome.status:04X}" if outcome.status is not None else "no status"


def _upstream_event(outcome: Outcome, elapsed: float, info: AssocInfo,
                    phi: list[str]) -> UpstreamCompleted:
    error = outcome.error
    return UpstreamCompleted(outcome.archive, "C-FIND", outcome.status, elapsed, info,
                             error.reason if error else None, error.hint if error else None,
                             {"matches": outcome.matches}, list(phi))


def _matched_event(services: Services, event: Request, outcome: Outcome) -> FindMatched:
    cap = services.config.archives[outcome.archive].max_results
    truncated = bool(cap) and outcome.matches >= cap and outcome.error is None
    return FindMatched(outcome.archive, outcome.matches, truncated, cap,
                       services.session(event).info)


def _failure(status: int, comment: str | None) -> Response:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]
    return ds, None


def query_summary(identifier: Dataset) -> dict[str, str]:
    """The non-empty matching keys of a query, for the log (PHI scrubbed there).

    Each element is decoded apart (``rawtext.element``): the identifier itself goes
    upstream as the workstation's bytes (Rule 1).
    """
    out: dict[str, str] = {}
    for tag in list(identifier.keys()):
        elem = element(identifier, tag)
        if elem is None or elem.VR == "SQ" or elem.keyword in (
                "", "QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        value = str(elem.value) if elem.value not in (None, "") else ""
        if value:
            out[elem.keyword] = value[:128]
    return out
