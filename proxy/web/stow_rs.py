"""STOW-RS (PS3.18 10.5): instances POSTed to a route go where its C-STOREs go.

Rule 1: ``POST …/studies[/{study}]`` takes ``multipart/related; type="application/dicom"``
        (else 415); each part is read in chunks straight into a Part-10 file in the spool's
        receiving directory (memory bounded whatever the instance size); a part that is
        not a Part-10 file with File Meta Information fails alone (reason 0xC000).
Rule 2: each instance then takes the route's store routing exactly as a C-STORE does
        (``proxy.operations.store``: ``store_to`` and ``store_filter`` choose the archives;
        ``store = "spool"``: durable in the spool before it counts as stored, forwarded
        later; ``store = "relay"``: sent to the archive now, its status decides,
        ``store_relay.forward_file``). The sender named in the spool file is the route's
        (there is no calling AE title over HTTP).
Rule 3: with a study in the URL, an instance of another study is not stored: failure
        reason 0xA900 (Data Set does not match SOP Class — PS3.18 10.5.3.2's "different
        Study Instance UID" case, which the standard answers this way).
Rule 4 (answer, PS3.18 10.5.3, built by the pure ``proxy.web.stow``): DICOM JSON with
        Referenced SOP Sequence (0008,1199) — SOP Class/Instance UID and the proxy's
        Retrieve URL (0008,1190) of each stored instance — and Failed SOP Sequence
        (0008,1198) with each Failure Reason (0008,1197: the status it got). 200 when all
        were stored, 202 when some were, 409 when none was; 400 for a body that is not a
        multipart of DICOM instances.
Rule 5: blocking work (writing the files, the spool's fsyncs, the archive) runs in the
        server's worker pool; one ``operation`` line per request counts stored/failed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import IO

from aiohttp import BodyPartReader, hdrs, web
from pydicom.filereader import read_file_meta_info

from proxy.config import RouteConfig
from proxy.operations import store, store_relay
from proxy.services import OperationRecord, Services
from proxy.status import Status
from proxy.web import stow
from proxy.web.http import record_of, route_of
from proxy.web.qido_rs import origin_of

SERVICE = "STOW-RS"
CHUNK = 1 << 20
MISMATCH = 0xA900               # PS3.18 10.5.3.2 / PS3.4 B.2.3: the study does not match
_ids = itertools.count(1)


class StowRs:
    """The STOW-RS handler of one server (Rules 1-5)."""

    def __init__(self, services: Services, pool: Executor, public_url: str = "") -> None:
        self.services = services
        self.pool = pool
        self.public_url = public_url

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = record_of(request)
        record.service = SERVICE
        route = route_of(request, self.services.config)
        record.archives = list(route.store_to)
        content = request.headers.get(hdrs.CONTENT_TYPE, "")
        if not content.lower().startswith("multipart/related") or \
                "application/dicom" not in content.lower():
            raise web.HTTPUnsupportedMediaType(
                text='STOW-RS takes multipart/related; type="application/dicom"')
        study = request.match_info.get("study")
        loop = asyncio.get_running_loop()
        received: list[Path] = []
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise web.HTTPBadRequest(text="a nested multipart is not a DICOM instance")
                received.append(await self._receive(part, loop))
            if not received:
                raise web.HTTPBadRequest(text="the request holds no instance")
            base = f"{self.public_url or origin_of(request)}/dicomweb/{route.called_ae}"
            outcomes = await loop.run_in_executor(
                self.pool, self._store_all, route, received, study)
        except ValueError as exc:             # aiohttp: a body that is not a multipart
            raise web.HTTPBadRequest(text=f"not a multipart body: {exc}") from None
        finally:
            for path in received:
                path.unlink(missing_ok=True)   # stored ones were moved into the spool
        code, answer = stow.answer(outcomes, base)
        stored = sum(stow.stored(o.status) for o in outcomes)
        record.details.update(stored=stored, failed=len(outcomes) - stored)
        # The media type alone, no charset parameter (JSON is UTF-8, RFC 8259): clients such
        # as dicomweb-client compare the Content-Type as a whole.
        return web.Response(body=json.dumps(answer).encode(), status=code,
                            headers={hdrs.CONTENT_TYPE: "application/dicom+json"})

    async def _receive(self, part: BodyPartReader, loop: asyncio.AbstractEventLoop) -> Path:
        """Rule 1: one part into a file of its own, chunk by chunk."""
        spool = self.services.plugins.spool
        folder = spool.tmp if spool is not None else Path(tempfile.gettempdir())
        path = folder / f"stow-{next(_ids)}.dcm"
        sink: IO[bytes] = await loop.run_in_executor(self.pool, path.open, "wb")
        try:
            while chunk := await part.read_chunk(CHUNK):
                await loop.run_in_executor(self.pool, sink.write, chunk)
        finally:
            await loop.run_in_executor(self.pool, sink.close)
        return path

    def _store_all(self, route: RouteConfig, paths: list[Path],
                   study: str | None) -> list[stow.Outcome]:
        """Rules 2-3, on a worker thread: each file through the route's store routing."""
        outcomes: list[stow.Outcome] = []
        for path in paths:
            sop_class = sop_instance = ""
            try:
                meta = read_file_meta_info(path)
                sop_class = str(meta.MediaStorageSOPClassUID)
                sop_instance = str(meta.MediaStorageSOPInstanceUID)
                syntax = str(meta.TransferSyntaxUID)
            except Exception:
                outcomes.append(stow.Outcome(sop_class, sop_instance, Status.UNABLE_TO_PROCESS))
                continue
            of_study = self._study_of(path)    # read before the spool takes the file away
            status = self._store_one(route, path, sop_class, sop_instance, syntax,
                                     study, of_study)
            outcomes.append(stow.Outcome(sop_class, sop_instance, status,
                                         of_study or study or ""))
        return outcomes

    def _store_one(self, route: RouteConfig, path: Path, sop_class: str, sop_instance: str,
                   syntax: str, study: str | None, of_study: str) -> int:
        record = OperationRecord(SERVICE)
        if study is not None and of_study != study:
            return MISMATCH
        if not route.store_to:
            return store.not_stored(route.called_ae, record)[0]
        meta = store.InstanceMeta(sop_class, sop_instance, syntax, route.called_ae,
                                  route.called_ae)
        targets = store.archives_for_instance(route, meta, path, record)
        if isinstance(targets, tuple):
            return targets[0]
        if route.store == "relay":
            return store_relay.forward_file(self.services, targets[0], record, path,
                                            sop_class, sop_instance, syntax)[0]
        if self.services.plugins.spool is None:
            return Status.PROCESSING_FAILURE
        return store.spool_it(self.services, record, targets, meta, path)[0]

    @staticmethod
    def _study_of(path: Path) -> str:
        from pydicom import dcmread
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            return str(ds.StudyInstanceUID)
        except Exception:
            return ""

