"""One archive's C-FIND, past its silent match cap: ask, detect the cap, split, ask again.

Job: the I/O half of ``proxy.query.federation.caps``. ``Recovery.run`` is what the federation
plugs into ``services.plugins.find_query``: it yields ``(status, identifier)`` for every
match as it arrives and one final status, like ``ArchiveClient.find``.

Rule 1: the workstation's query goes upstream first, matching keys unchanged (helper return
        keys added for an archive with a known cap, caps rule 3). When its answer is not
        capped, its final status is passed on unchanged: recovery costs nothing then.
Rule 2: a capped answer's matches are sent at once; the pieces that ``caps.plan`` cuts are
        then asked one after another (depth first, one association each), their matches
        de-duplicated against everything this archive already sent, so the workstation gets
        each entity once per archive and the first matches never wait for the split.
        Matches of one response are never de-duplicated against each other (merging rule
        1b): two studies of two patients under one Study Instance UID are two matches, and
        an uncapped answer passes through whole.
Rule 3: every request is accounted for: one ``FindMatched`` per request to the archive
        (raw match count, ``truncated`` when capped, so ``dicom_proxy_find_truncated_total``
        counts capped responses, not the recovered total), and one ``UpstreamCompleted`` per
        sub-query (``find.py`` reports the first request). A summary ``find_recovered`` (info)
        or ``find_incomplete`` (warning) log line names the archive, sub-queries and why.
Rule 4: final status after a capped answer: Success when every piece answered below the cap;
        Refused: Out of Resources (0xA700, PS3.4 C.4.1.1.4, the status find.final_status
        uses for "the answer is not complete") when a piece could not be split (caps rule 4)
        or failed, or the sub-query budget (``federation.max_subqueries``) ran out.
        An archive that stops answering mid-recovery raises its UpstreamError as usual.
Rule 5: C-CANCEL: the shared CancelToken reaches the sub-query in flight (``find`` sends a
        C-CANCEL upstream); no further sub-query starts; the final status is Cancel.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.tag import Tag

from proxy.cancel import CancelToken
from proxy.observe.events import AssocInfo, FindMatched, Noted
from proxy.query.federation import caps
from proxy.query.merging import LEVEL_UNIQUE_KEYS, Deduplicator
from proxy.rawtext import text_values
from proxy.services import OperationRecord, Services
from proxy.status import PENDING, Status
from proxy.upstream import ArchiveClient

if TYPE_CHECKING:   # annotations only: search plugs this module's finder in
    from proxy.query.search import Asker

Response = tuple[int | None, Dataset | None]


@dataclass
class _Answer:
    matches: int = 0
    status: int | None = None
    capped: bool = False


class Recovery:
    """One archive's share of one C-FIND (Rules 1-5); use once."""

    def __init__(self, services: Services, asker: Asker | None, client: ArchiveClient,
                 model: str, level: str, token: CancelToken) -> None:
        self.services = services
        self.client = client
        self.archive = client.peer.name
        self.model = model
        self.level = level
        self.token = token
        self.cap = services.config.archives[self.archive].max_results
        self.budget = services.config.federation.max_subqueries
        self.subqueries = 0
        self.capped = 0
        self.problems: list[str] = []
        self._info: AssocInfo | None = asker.info if asker is not None else None
        self._phi: list[str] = []
        # A workstation's syntax: matches pass through unconverted (None: HTTP, a survey).
        self.syntax = asker.syntax if asker is not None else None

    def run(self, identifier: Dataset) -> Iterator[Response]:
        record = OperationRecord("C-FIND")
        record.protect(identifier)
        self._phi = record.phi
        if self.level not in LEVEL_UNIQUE_KEYS:       # e.g. a worklist query: nothing to split
            yield from self._plain(identifier)
            return
        root = identifier
        if self.cap:
            root, _ = caps.with_return_keys(identifier, caps.HELPER_KEYS[self.level])
        added = [k for k in caps.SPLIT_KEYS if k not in identifier]   # the proxy's, not asked
        root_answer = _Answer()
        started = time.monotonic()
        for status, ds in self._walk(caps.Piece(root, "query"), self.level, root_answer):
            if self.cap or self.capped:      # else: the workstation's own query, untouched
                for keyword in added:
                    if keyword in ds:
                        del ds[keyword]
            yield status, ds
        if self.token.is_set:
            yield Status.CANCEL, None
        elif not self.capped:
            yield root_answer.status, None
        else:
            yield self._conclude(time.monotonic() - started), None

    def _plain(self, identifier: Dataset) -> Iterator[Response]:
        """A query with nothing to split on (a worklist): passed through; a capped answer
        is detected and ends with Out of Resources (Rules 3, 4), never as complete."""
        answer = _Answer()
        started = time.monotonic()
        final: Response | None = None
        for status, ds in self._find(identifier):
            if status in PENDING and ds is not None:
                answer.matches += 1
                yield status, ds
            else:
                answer.status = status
                final = (status, ds)
        capped = caps.is_capped(answer.matches, self.cap, answer.status, self.token.is_set)
        self._account(answer, is_capped=capped)
        if capped and not self.token.is_set:
            self.capped += 1
            self.problems.append(f"the answer stopped at the archive's cap ({answer.matches} "
                                 "matches) and a query without a Query/Retrieve Level has "
                                 "nothing to split on")
            yield self._conclude(time.monotonic() - started), None
        elif final is not None:
            yield final

    def _find(self, query: Dataset) -> Iterator[tuple[int | None, Dataset | None]]:
        # No workstation (a location survey): syntax None, the default contexts.
        return self.client.find(query, self.model, self.token, syntax=self.syntax)

    def _walk(self, start: caps.Piece, level: str, root: _Answer | None,
              ) -> Iterator[tuple[int, Dataset]]:
        """Every distinct match of ``start`` and of the pieces it splits into, depth first."""
        dedupe = Deduplicator(level)      # one source per response (merging rule 1b)
        responses = itertools.count()
        stack = [start]
        while stack and not self.token.is_set:
            piece = stack.pop()
            is_root = root is not None and piece is start
            if not is_root:
                self.subqueries += 1
                if self.subqueries > self.budget:
                    self.problems.append(f"sub-query budget of {self.budget} spent")
                    return
            answer = root if is_root and root is not None else _Answer()
            sample = caps.Sample.for_query(level, piece.query)
            source = next(responses)
            yield from self._ask(piece, is_root, answer, sample, dedupe, source)
            dedupe.forget(source)
            if self.token.is_set:
                return
            if not answer.capped:
                if not is_root and answer.status != Status.SUCCESS:
                    self.problems.append(f"{piece.label} answered {_hex(answer.status)}")
                continue
            self.capped += 1
            decided = caps.plan(level, piece.query, sample, self.cap)
            if isinstance(decided, caps.Stuck):
                self.problems.append(decided.reason)
            elif isinstance(decided, caps.Split):
                if decided.caveat:
                    self.problems.append(decided.caveat)
                stack.extend(reversed(decided.pieces))
            else:
                parents = self._enumerate(decided)
                if not parents:
                    self.problems.append(f"no {decided.parent_level} found to drill down into")
                stack.extend(reversed(caps.children(piece.query, decided.key, parents,
                                                    decided.batch)))

    def _enumerate(self, drill: caps.DrillDown) -> list[str]:
        """The parent UIDs of a drill-down, themselves recovered past the cap."""
        uids: dict[str, None] = {}
        start = caps.Piece(drill.parent_query, f"{drill.parent_level} enumeration")
        for _status, ds in self._walk(start, drill.parent_level, None):
            value = "\\".join(text_values(ds, Tag(drill.key))).strip(" \0")
            if value:
                uids[value] = None
        return list(uids)

    def _ask(self, piece: caps.Piece, is_root: bool, answer: _Answer, sample: caps.Sample,
             dedupe: Deduplicator, source: int) -> Iterator[tuple[int, Dataset]]:
        def stream() -> Iterator[tuple[int, Dataset]]:
            for status, ds in self._find(piece.query):
                if status in PENDING and ds is not None:
                    answer.matches += 1
                    sample.add(ds)
                    if dedupe.offer(ds, source):
                        yield status, ds
                else:
                    answer.status = status
            answer.capped = caps.is_capped(answer.matches, self.cap, answer.status,
                                           self.token.is_set)

        if is_root:                  # find.py reports the workstation's own request
            yield from stream()
        else:
            with self.services.upstream_call(self.archive, "C-FIND", phi=self._phi,
                                             info=self._info) as result:
                yield from stream()
                result["status"] = answer.status
                result["details"] = {"subquery": piece.label, "matches": answer.matches,
                                     "capped": answer.capped}
        self._account(answer, answer.capped)

    def _account(self, answer: _Answer, is_capped: bool) -> None:
        self.services.bus.emit(FindMatched(self.archive, answer.matches, is_capped,
                                           self.cap or answer.matches, self._info))

    def _conclude(self, elapsed: float) -> int:
        fields = {"archive": self.archive, "level": self.level, "cap": self.cap,
                  "capped_responses": self.capped, "subqueries": self.subqueries,
                  "duration_ms": round(elapsed * 1000.0, 2)}
        if not self.problems:
            self.services.bus.emit(Noted("info", "find_recovered", fields, self._info,
                                         self._phi))
            return Status.SUCCESS
        reasons = list(dict.fromkeys(self.problems))
        self.services.bus.emit(Noted("warning", "find_incomplete", {
            **fields, "reasons": reasons,
            "hint": "narrow the query (e.g. a StudyDate range) or raise the archive's cap"},
            self._info, self._phi))
        return Status.REFUSED_OUT_OF_RESOURCES


def _hex(status: int | None) -> str:
    return "no status" if status is None else f"0x{status:04X}"


Finder = Callable[[ArchiveClient, Dataset, str, CancelToken, "Asker"], Iterator[Response]]


def make_finder(services: Services) -> Finder:
    """The ``find_query`` plug of ``proxy.query.search``: every archive request, recovered."""

    def find_query(client: ArchiveClient, identifier: Dataset, model: str,
                   token: CancelToken, asker: Asker) -> Iterator[Response]:
        # Read, not converted: the identifier goes upstream as the workstation's bytes.
        level = "\\".join(text_values(identifier, Tag("QueryRetrieveLevel"))).strip().upper()
        return Recovery(services, asker, client, model, level, token).run(identifier)

    return find_query
