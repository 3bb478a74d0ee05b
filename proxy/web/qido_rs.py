"""QIDO-RS (PS3.18 10.6): a search over a route's archives, answered in DICOM JSON.

Job: the HTTP side of a search. ``qido.parse`` makes the C-FIND identifier;
``proxy.query.search`` runs it over the route's archives exactly as for a C-FIND (fan-out,
cap recovery, de-duplication, merge, recheck, final status); the merged answer is sorted,
paged and written as DICOM JSON (``dicomjson``).

Rule 1: the search is blocking work (threads, sockets): it runs in the server's worker pool
        (``run_in_executor``), never on the HTTP event loop; the JSON is built there too.
        At most ``[dicomweb] max_requests`` searches run at once: one more is answered 503
        with ``Retry-After`` at once rather than queued behind slow archives.
Rule 2: paging (``limit``, ``offset``) applies to the whole merged answer, sorted by the
        level's unique key: pages asked one after another concatenate to the full answer,
        without duplicates; only the page is held and converted (``qido.Pager``). When a
        page leaves results behind, a ``Warning: 299`` says so (PS3.18 10.6.3.3.1).
Rule 3: a partial answer says so: each archive whose share is missing (down, slow, refused)
        is named in ``Warning: 299 dicom-proxy "archives missing: site_b"``, and each whose
        share is partial (its cap could not be fully recovered, it ended early) in
        ``... "archives incomplete: site_a (capped, partly recovered)"``. The answer is 200.
Rule 4: no answer at all: every archive failed and nothing matched → 504 when every
        failure was a timeout, else 502, the text naming each archive and why. One archive
        refusing the query (a failure status, no match) is 502 with its status.
Rule 5: each match's Retrieve URL (0008,1190) is the proxy's own WADO-RS URL for it (the
        route's root), Retrieve AE Title (0008,0054), when asked, the route's AE title (as
        for C-FIND: retrieves come back through the proxy); Query/Retrieve Level (0008,0052),
        a C-FIND artefact, is left out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from pydicom import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from proxy.cancel import CancelToken
from proxy.config import RouteConfig
from proxy.observe.events import AssocInfo
from proxy.operations.find import query_summary
from proxy.query.fanout import Outcome
from proxy.query.search import Asker, incomplete, search, shortfall
from proxy.rawtext import set_text, text_values
from proxy.services import OperationRecord, Services
from proxy.status import Status
from proxy.web import dicomjson, qido
from proxy.web.http import peer_of, record_of, route_of

SERVICE = "QIDO-RS"
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")   # PS3.4 C.6.2: Study Root, FIND
MEDIA_TYPES = ("application/dicom+json", "application/json")
MORE_RESULTS = ("299 dicom-proxy \"There are additional results that can be requested "
                "(use offset)\"")
_RETRIEVE_AE = Tag(0x00080054)
_LEVEL = Tag(0x00080052)
_SERIAL = itertools.count(1)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class Answer:
    """A search's result, built off the event loop (Rule 1)."""

    body: bytes = b"[]"
    status: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    matches: int = 0
    returned: int = 0
    more: bool = False
    skipped: list[str] = field(default_factory=list)


class QidoRs:
    """The QIDO-RS handler of one server: its pool, its limit, its running searches."""

    def __init__(self, services: Services, pool: Executor, max_requests: int,
                 public_url: str = "") -> None:
        self.services = services
        self.pool = pool
        self.max_requests = max_requests
        self.public_url = public_url
        self.running: set[CancelToken] = set()

    def cancel_all(self) -> None:
        for token in list(self.running):
            token.cancel()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = record_of(request)
        record.service = SERVICE
        route = route_of(request, self.services.config)
        record.archives = list(route.archives)
        acceptable(request.headers.get(hdrs.ACCEPT, ""))
        parts = request.rel_url.parts[3:]                  # after /dicomweb/<route>/
        try:
            params = qido.parse_query_string(request.rel_url.raw_query_string)
            record.phi = qido.phi_values(params)            # a 400's text may quote them
            query = qido.parse(parts, params)
        except qido.NotFound as exc:
            raise web.HTTPNotFound(text=f"no QIDO-RS resource {exc}") from None
        except qido.QidoError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        op = OperationRecord(SERVICE)
        op.protect(query.identifier)
        record.phi = op.phi
        record.details.update(level=query.level, query=query_summary(query.identifier),
                              offset=query.offset, limit=query.limit)
        if len(self.running) >= self.max_requests:
            raise web.HTTPServiceUnavailable(
                text=f"the proxy is answering {self.max_requests} DICOMweb searches already "
                     "([dicomweb] max_requests); try again", headers={hdrs.RETRY_AFTER: "1"})
        token = CancelToken()
        asker = Asker(AssocInfo(f"http-{next(_SERIAL)}", "", route.called_ae,
                                peer_of(request), route.called_ae), token,
                      gone="the HTTP request ended before the answer was complete")
        base = f"{self.public_url or origin_of(request)}/dicomweb/{route.called_ae}"
        self.running.add(token)
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self.pool, run, self.services, route, query, asker, op, base)
        except asyncio.CancelledError:
            token.cancel()
            raise
        finally:
            self.running.discard(token)
        record.details.update({k: v for k, v in op.details.items()
                               if k in ("duplicates", "archives_failed", "recheck_dropped",
                                        "error")})
        record.details.update(matches=answer.matches, returned=answer.returned)
        if answer.skipped:
            record.details["elements_skipped"] = answer.skipped
        return respond(answer, query, op.hint)


def run(services: Services, route: RouteConfig, query: qido.QidoQuery, asker: Asker,
        op: OperationRecord, base: str) -> Answer:
    """The search, sorted, paged and written as JSON (on a worker thread, Rule 1)."""
    clients = {name: services.archive(name, None) for name in route.archives}
    pager: qido.Pager[Dataset] = qido.Pager(query.offset, query.limit)
    unique = Tag(query.unique_key)

    def keep(ds: Dataset) -> None:      # read, never convert: only the page is converted
        pager.add("\\".join(text_values(ds, unique)).strip(" \0"), ds)

    outcomes = yield_all(search(services, clients, query.identifier, STUDY_ROOT_FIND,
                                query.level, asker, op, merge=route.merge,
                                recheck=route.recheck_matches), keep)
    shown, more = pager.page()
    answer = Answer(status=op.status, outcomes=outcomes, matches=pager.total,
                    returned=len(shown), more=more)
    objects = []
    for ds in shown:
        if _RETRIEVE_AE in ds:
            set_text(ds, _RETRIEVE_AE, "AE", route.called_ae)
        if _LEVEL in ds:
            del ds[_LEVEL]
        converted = dicomjson.to_json(ds)
        answer.skipped.extend(converted.skipped)
        if "RetrieveURL" in query.return_keys:
            converted.json["00081190"] = {"vr": "UR", "Value": [retrieve_url(base, ds,
                                                                               query.level)]}
            converted.json = dict(sorted(converted.json.items()))
        objects.append(converted.json)
    answer.body = json.dumps(objects, ensure_ascii=False, separators=(",", ":")).encode()
    return answer


def yield_all(matches: Iterator[tuple[int, Dataset]],
              into: Callable[[Dataset], None]) -> list[Outcome]:
    """Every match of a ``search`` handed to ``into``; its return value (the outcomes)."""
    while True:
        try:
            _status, ds = next(matches)
        except StopIteration as done:
            return list(done.value or [])
        into(ds)


def respond(answer: Answer, query: qido.QidoQuery, hint: str | None) -> web.Response:
    """Rules 2-4: the HTTP answer for a finished search."""
    outcomes = answer.outcomes
    if answer.status is None or answer.status == Status.CANCEL:   # server Rule 5
        raise web.HTTPServiceUnavailable(text="the search was stopped (the proxy is stopping)")
    bad = incomplete(outcomes)
    if not answer.matches and bad and len(bad) == len(outcomes):
        why = "; ".join(f"{o.archive}: {o.error.reason if o.error else shortfall(o)}"
                        for o in bad)
        if all(o.error is not None and o.error.kind == "timeout" for o in bad):
            raise web.HTTPGatewayTimeout(text=f"no archive answered in time: {why}")
        if all(o.error is None for o in bad):
            raise web.HTTPBadGateway(text=f"refused by the archive: {why}")
        raise web.HTTPBadGateway(text=f"no archive answered: {why}")
    headers: list[tuple[str, str]] = []
    missing = [o.archive for o in bad if o.error is not None]
    partial = [f"{o.archive} ({shortfall(o)})" for o in bad if o.error is None]
    if missing:
        headers.append((hdrs.WARNING, f'299 dicom-proxy "archives missing: '
                                      f'{", ".join(missing)}"'))
    if partial:
        headers.append((hdrs.WARNING, f'299 dicom-proxy "archives incomplete: '
                                      f'{", ".join(partial)}"'))
    if answer.more:
        headers.append((hdrs.WARNING, MORE_RESULTS))
    headers += [(hdrs.WARNING, w) for w in query.warnings]
    response = web.Response(body=answer.body, content_type="application/dicom+json",
                            charset="utf-8")
    for name, value in headers:
        response.headers.add(name, value)
    return response


def acceptable(accept: str) -> None:
    """406 unless ``Accept`` allows DICOM JSON (absent, ``*/*``, ``application/*``...)."""
    if not accept.strip():
        return
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if any(_refused(p) for p in params):
            continue                                   # q=0: "not acceptable" (RFC 9110)
        if media.lower() in (*MEDIA_TYPES, "*/*", "application/*"):
            return
    raise web.HTTPNotAcceptable(text=f"QIDO-RS answers {' or '.join(MEDIA_TYPES)}; the "
                                     f"request accepts only {accept}")


def _refused(param: str) -> bool:
    name, _, value = param.partition("=")
    try:
        return name.strip().lower() == "q" and float(value) == 0.0
    except ValueError:
        return False


def retrieve_url(base: str, ds: Dataset, level: str) -> str:
    """The proxy's WADO-RS URL of a match (Rule 5)."""
    def uid(keyword: str) -> str:
        return "\\".join(text_values(ds, Tag(keyword))).strip(" \0")

    url = f"{base}/studies/{uid('StudyInstanceUID')}"
    if level in (qido.SERIES, qido.IMAGE):
        url += f"/series/{uid('SeriesInstanceUID')}"
    if level == qido.IMAGE:
        url += f"/instances/{uid('SOPInstanceUID')}"
    return url


def origin_of(request: web.Request) -> str:
    """scheme://host:port as the client addressed the proxy: the Host header's name, and
    its port, or the port the client connected to when Host names none (dicomweb-client
    sends the bare host name)."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = sock if isinstance(sock, tuple) else ("localhost", 0)
    host = request.headers.get(hdrs.HOST) or str(local[0])
    if not re.search(r":[0-9]+$", host) and local[1] not in (0, _DEFAULT_PORTS[request.scheme]):
        host = f"{host}:{local[1]}"
    return f"{request.scheme}://{host}"
