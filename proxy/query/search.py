"""One query over a route's archives, answered as one: what C-FIND and QIDO-RS both run.

Job: the federation machinery without a DIMSE request. ``search`` fans a C-FIND identifier
out to the route's archives (``fanout``), past their silent caps (the federation's
``find_query`` plug), de-duplicates or merges the answers (``merging``), and yields each
match; what the asker does with a match (a C-FIND response, a DICOM JSON object) is the
caller's business (``proxy.operations.find``, ``proxy.web.qido_rs``).

Rule 1: ``Asker`` says who asks, whatever the protocol: the log identity of its events, the
        transfer syntax to ask archives in first (a workstation's, so matches pass as their
        bytes; ``None`` for HTTP), the token its cancel fires (a C-CANCEL, an HTTP client gone),
        and whether it is still there to read the answer.
Rule 2: one archive: every match and its final status are passed back as is. Several
        (federation): matches are de-duplicated by the level's unique key across archives
        only (``merging`` rules 1-1b). ``merge = "stream"``: the first answer for an entity
        is yielded at once, later ones dropped and counted (``duplicates``); ``"complete"``:
        every answer is collected, merged per entity (``merging.merge_all``) and yielded when
        the last archive has answered.
Rule 3: ``recheck``: each match is re-checked against the query (PS3.4 C.2.2.2); the ones
        that do not match are dropped and counted (``recheck_dropped``).
Rule 4: every archive that answers for an entity is remembered (``remember_location``),
        duplicates included, before de-duplication.
Rule 5: the asker's cancel reaches every archive; an asker gone mid-answer (the generator is
        closed at its ``yield``, or ``link_up`` turns false) cancels the archives and the
        search ends with no status (``record.status`` stays None).
Rule 6: otherwise the search sets ``record.status`` and ``record.hint`` (``final_status``)
        and returns every archive's ``Outcome``: the asker tells a partial answer from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from pydicom import Dataset

from proxy.cancel import CancelToken
from proxy.observe.events import AssocInfo, FindMatched, UpstreamCompleted
from proxy.query.fanout import Match, Outcome, fan_out
from proxy.query.matching import matches
from proxy.query.merging import LEVEL_UNIQUE_KEYS, Deduplicator, merge_all
from proxy.services import OperationRecord, Services
from proxy.status import Status
from proxy.upstream import ArchiveClient, UpstreamError

Found = tuple[int, Dataset]             # (Pending status, match)
Search = Iterator[Found]


@dataclass(frozen=True)
class Asker:
    """Who a search runs for (Rule 1)."""

    info: AssocInfo
    cancel: CancelToken = field(default_factory=CancelToken)
    syntax: str | None = None
    link_up: Callable[[], bool] = lambda: True
    gone: str = "the asker went away before the answer was complete"


def search(services: Services, clients: dict[str, ArchiveClient], identifier: Dataset,
           model: str, level: str, asker: Asker, record: OperationRecord, *,
           merge: str = "stream", recheck: bool = False,
           ) -> Generator[Found, None, list[Outcome]]:
    """Yield every (status, match) of ``identifier`` over ``clients`` (Rules 2-6).

    The generator's return value is the list of every archive's ``Outcome`` (empty when
    the asker went away).
    """
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
    info = asker.info
    finder = services.plugins.find_query  # federation may plug in cap recovery

    def query(client: ArchiveClient, tok: CancelToken) -> Iterator[tuple[int | None,
                                                                         Dataset | None]]:
        if finder is not None:
            return finder(client, identifier, model, tok, asker)
        return client.find(identifier, model, tok, syntax=asker.syntax)

    def watch_cancel() -> None:
        if not token.is_set and asker.cancel.is_set:
            token.cancel()

    lost = False  # the asker went away mid-answer (Rule 5)
    try:
        with asker.cancel.on_cancel(token.cancel):   # also while waiting upstream
            for item in fan_out(clients, query, token, poll=watch_cancel,
                                abandon=lambda: not asker.link_up()):
                if isinstance(item, Outcome):
                    outcomes.append(item)
                    services.bus.emit(_upstream_event(item, time.monotonic() - started, info,
                                                      record.phi))
                    if finder is None:  # the finder accounts for each request it makes
                        services.bus.emit(_matched_event(services, info, item))
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
                yield item.status, ds
        lost = not asker.link_up()
        if complete and not token.is_set:
            merged = merge_all(level, collected, consume=True,  # ours to give away
                               sources=origins)
            record.details["duplicates"] = len(collected) - len(merged)
            for ds in merged:
                watch_cancel()
                if token.is_set:
                    break
                yield Status.PENDING, ds
    except GeneratorExit:       # the asker is gone (Rule 5)
        lost = True
        raise
    finally:
        if lost:
            token.cancel()
            record.details["error"] = asker.gone
        answered = {o.archive for o in outcomes}
        for name in clients:
            if name not in answered:  # the asker went away first
                services.bus.emit(_upstream_event(
                    Outcome(name, None, 0, UpstreamError(name, f"abandoned: {asker.gone}")),
                    time.monotonic() - started, info, record.phi))
    if lost:
        return []
    record.status, record.hint = final_status(outcomes, token.is_set, federated)
    if dedupe is not None:
        record.details["duplicates"] = dedupe.duplicates
    failed = [o.archive for o in outcomes if o.error is not None]
    if failed:
        record.details["archives_failed"] = failed
    return outcomes


def incomplete(outcomes: list[Outcome]) -> list[Outcome]:
    """The archives whose share of the answer is missing or partial (not Success)."""
    return [o for o in outcomes if o.error is not None or o.status != Status.SUCCESS]


def final_status(outcomes: list[Outcome], cancelled: bool,
                 federated: bool) -> tuple[int, str | None]:
    """The status of the whole answer, with a hint when it is not Success.

    - Cancelled by the asker: Cancel (0xFE00, PS3.4 C.4.1.1.4).
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
    bad = incomplete(outcomes)
    if not federated:
        only = outcomes[0] if outcomes else None
        if only is None or only.error is not None or only.status is None:
            why = only.error.reason if only and only.error else "no final status"
            return Status.UNABLE_TO_PROCESS, why
        return only.status, None if only.status == Status.SUCCESS else "archive status"
    if not bad:
        return Status.SUCCESS, None
    names = ", ".join(f"{o.archive} ({shortfall(o)})" for o in bad)
    if len(bad) == len(outcomes) and not any(o.matches for o in outcomes):
        return Status.UNABLE_TO_PROCESS, f"no archive answered: {names}"
    return Status.REFUSED_OUT_OF_RESOURCES, f"incomplete answer from: {names}"


def shortfall(outcome: Outcome) -> str:
    """One word or two on why an archive's share is missing or partial."""
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


def _matched_event(services: Services, info: AssocInfo, outcome: Outcome) -> FindMatched:
    cap = services.config.archives[outcome.archive].max_results
    truncated = bool(cap) and outcome.matches >= cap and outcome.error is None
    return FindMatched(outcome.archive, outcome.matches, truncated, cap, info)
