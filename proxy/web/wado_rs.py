"""WADO-RS (PS3.18 10.4): studies, series and instances of a route, as the archives hold them.

Job: the HTTP side of a retrieve. ``proxy.retrieve.stream.InstanceStream`` pulls the
instances through the same path a C-GET takes (survey, C-GET or C-MOVE-to-proxy, the
bounded buffer, federation, counts); this module writes what it hands out.

Rule 1 (retrieve): ``…/studies/{study}[/series/{series}[/instances/{sop}]]`` is a
        ``multipart/related; type="application/dicom"`` answer written part by part as the
        instances arrive, each read in 1 MB chunks from where the buffer holds it; a part
        is written before the next is taken, so a slow client paces the archive through
        the buffer (memory bounded whatever the study size). The transfer syntax: the
        original unless the Accept names one (``wado.instance_syntaxes``). A client that
        hangs up closes the stream: the retrieve is cancelled, the archive gets a C-CANCEL.
Rule 2 (status): nothing found anywhere → 404; no archive reachable → 502 naming them
        (504 when every one of them timed out, as QIDO-RS);
        once the first part is out the status is sent: an instance that fails later is
        left out, the multipart closed after what arrived, and the ``operation`` line
        says ``completed``/``failed`` (as a C-GET's counts would).
Rule 3 (metadata): ``…/metadata`` is DICOM JSON of every instance without its bulk data
        (Pixel Data and binary values over 1 KiB become ``BulkDataURI``s of this proxy:
        ``…/instances/{sop}/bulkdata/{tag}``), read from each instance's header (the
        pixel data is never parsed). Answers are kept, as the encoded JSON they were sent
        as, in an LRU keyed by route and the path's UIDs and bounded in bytes
        (``[dicomweb] metadata_cache_bytes``, default 256 MiB; 0 keeps none; an answer
        larger than the bound is sent but not kept): a viewer asks for metadata first
        and often; a second request is answered without the archive.
Rule 4 (frames, bulk data): ``…/instances/{sop}/frames/{list}`` and ``…/bulkdata/{tag}``
        fetch the one instance and answer its frames (``wado.frames``: native cut per
        frame, encapsulated as stored, in the frame's media type) or the element's value
        (``application/octet-stream``), each a part of a multipart/related answer.
Rule 5: blocking work (the stream's next part, reading a chunk, parsing a header) runs in
        the server's worker pool, never on the HTTP event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import OrderedDict
from concurrent.futures import Executor
from typing import Any

from aiohttp import hdrs, web
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from proxy.config import RouteConfig
from proxy.retrieve.stream import InstanceStream, Part
from proxy.retrieve.tally import NOTHING_TO_RETRIEVE
from proxy.services import Services
from proxy.web import dicomjson, wado
from proxy.web.http import WebRecord, peer_of, record_of, route_of
from proxy.web.qido_rs import origin_of

SERVICE = "WADO-RS"
METADATA_CACHE_BYTES = 256 << 20       # encoded /metadata answers kept (Rule 3)
BULK_THRESHOLD = 1024                  # binary values above this become BulkDataURIs
_HEAD = 4 * 1024 * 1024                # bytes read for a header before reading on
_PIXEL_DATA = 0x7FE00010


class MetadataCache:
    """Rule 3: (route, study, series, sop) → (encoded DICOM JSON, instances), LRU by bytes.

    The encoded answer, not the parsed objects: a Python dict of one CT's metadata takes
    about eight times its JSON's size, and the answer is sent as JSON anyway.
    """

    def __init__(self, max_bytes: int = METADATA_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, ...], tuple[bytes, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._size

    def get(self, key: tuple[str, ...]) -> tuple[bytes, int] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, ...], body: bytes, instances: int) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._size -= len(old[0]) if old else 0
            self._entries[key] = (body, instances)
            self._size += len(body)
            while self._size > self.max_bytes and self._entries:
                _key, (dropped, _count) = self._entries.popitem(last=False)
                self._size -= len(dropped)


def _keys(request: web.Request) -> dict[str, str]:
    info = request.match_info
    keys = {"StudyInstanceUID": info["study"]}
    if "series" in info:
        keys["SeriesInstanceUID"] = info["series"]
    if "sop" in info:
        keys["SOPInstanceUID"] = info["sop"]
    return keys


def read_part(part: Part) -> bytes:
    """The whole Part-10 file of one instance (frames, bulk data: Rule 4)."""
    return b"".join(part.chunks())


def header_of(part: Part) -> Dataset:
    """An instance's elements before its Pixel Data, from as little of it as parses."""
    chunks = part.chunks()
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) >= _HEAD:
            try:
                return dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True)
            except (InvalidDicomError, EOFError, ValueError, OSError):
                continue                       # an element runs past what was read
    return dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True)


def find_element(ds: Dataset, tag: int) -> DataElement | None:
    """The element ``tag`` at the top level, else the first in a sequence item."""
    if tag in ds:
        return ds[tag]
    for elem in ds.iterall():
        if elem.tag == tag:
            return elem
    return None


class WadoRs:
    """The WADO-RS handlers of one server (Rules 1-5)."""

    def __init__(self, services: Services, pool: Executor, public_url: str = "",
                 cache_bytes: int = METADATA_CACHE_BYTES) -> None:
        self.services = services
        self.pool = pool
        self.public_url = public_url
        self.cache = MetadataCache(cache_bytes)

    def _stream(self, request: web.Request, route: RouteConfig, keys: dict[str, str],
                syntaxes: tuple[str, ...] | None = None) -> InstanceStream:
        return InstanceStream(self.services, route, keys, SERVICE, peer_of(request), syntaxes)

    def _begin(self, request: web.Request) -> tuple[WebRecord, RouteConfig, dict[str, str]]:
        record = record_of(request)
        record.service = SERVICE
        route = route_of(request, self.services.config)
        record.archives = list(route.archives)
        keys = _keys(request)
        record.details["level"] = ("IMAGE" if "SOPInstanceUID" in keys else "SERIES"
                                   if "SeriesInstanceUID" in keys else "STUDY")
        return record, route, keys

    # -- Rule 1, 2: instances ---------------------------------------------------------------

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        record, route, keys = self._begin(request)
        try:
            syntaxes = wado.instance_syntaxes(request.headers.get(hdrs.ACCEPT, ""))
        except wado.NotAcceptable as exc:
            raise web.HTTPNotAcceptable(text=str(exc)) from None
        record.details["transfer_syntax"] = syntaxes[0] if syntaxes else "original"
        loop = asyncio.get_running_loop()
        stream = self._stream(request, route, keys, syntaxes)
        try:
            part = await loop.run_in_executor(self.pool, stream.next_part)
            if part is None:
                raise _nothing(stream, keys)
            framing = wado.Multipart.new(wado.DICOM)
            response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: framing.content_type})
            await response.prepare(request)
            while part is not None:
                await response.write(framing.head(
                    f"{wado.DICOM}; transfer-syntax={part.transfer_syntax}"))
                chunks = part.chunks()
                while (chunk := await loop.run_in_executor(self.pool, next, chunks,
                                                           None)) is not None:
                    await response.write(chunk)
                await response.write(b"\r\n")
                part.done()
                part = await loop.run_in_executor(self.pool, stream.next_part)
            await response.write(framing.end())
            await response.write_eof()
            # No await from here on: the client, having read the end, may hang up at once,
            # and that is not a request it abandoned (the line says 200, not 499).
            return response
        finally:
            if stream.running:       # abandoned or failed mid-way: stop the retrieve
                await loop.run_in_executor(self.pool, stream.close)
            _report(record, stream)

    # -- Rule 3: metadata ---------------------------------------------------------------------

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        record, route, keys = self._begin(request)
        try:
            wado.metadata_acceptable(request.headers.get(hdrs.ACCEPT, ""))
        except wado.NotAcceptable as exc:
            raise web.HTTPNotAcceptable(text=str(exc)) from None
        key = (route.called_ae, *keys.values())
        cached = self.cache.get(key)
        record.details["cache"] = "hit" if cached is not None else "miss"
        if cached is None:
            base = f"{self.public_url or origin_of(request)}/dicomweb/{route.called_ae}"
            stream = self._stream(request, route, keys)
            loop = asyncio.get_running_loop()
            try:
                objects = await loop.run_in_executor(self.pool, _metadata, stream, base)
            finally:
                await loop.run_in_executor(self.pool, stream.close)
                _report(record, stream)
            if not objects:
                raise _nothing(stream, keys)
            cached = (_dumps(objects).encode(), len(objects))
            self.cache.put(key, *cached)
        body, record.details["instances"] = cached
        # The media type alone (JSON is UTF-8, RFC 8259), as for QIDO-RS and STOW-RS.
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: "application/dicom+json"})

    # -- Rule 4: frames and bulk data -----------------------------------------------------------

    async def frames(self, request: web.Request) -> web.StreamResponse:
        record, route, keys = self._begin(request)
        try:
            wanted = wado.frame_numbers(request.match_info["frames"])
        except wado.BadFrames as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        record.details["frames"] = wanted
        ds, syntax = await self._instance(request, record, route, keys)
        try:
            media = wado.frame_media_type(syntax)
            wado.frames_acceptable(request.headers.get(hdrs.ACCEPT, ""), media)
            bodies = list(wado.frames(ds, syntax, wanted))
        except wado.NotAcceptable as exc:
            raise web.HTTPNotAcceptable(text=str(exc)) from None
        except wado.NoSuchFrame as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except AttributeError as exc:        # no Pixel Data, Rows...: not an image
            raise web.HTTPNotFound(text=f"the instance has no frames ({exc})") from None
        media_part = media if media == wado.OCTET else f"{media}; transfer-syntax={syntax}"
        return _multipart(wado.Multipart.new(media), [(media_part, body) for body in bodies])

    async def bulkdata(self, request: web.Request) -> web.StreamResponse:
        record, route, keys = self._begin(request)
        text = request.match_info["tag"]
        try:
            tag = int(text, 16)
            if len(text) != 8:
                raise ValueError(text)
        except ValueError:
            raise web.HTTPBadRequest(text=f"bulk data tag {text!r}: eight hex digits, "
                                          "as in the BulkDataURI") from None
        ds, _syntax = await self._instance(request, record, route, keys)
        elem = find_element(ds, tag)
        value = elem.value if elem is not None else None
        if not isinstance(value, bytes | bytearray):
            raise web.HTTPNotFound(text=f"the instance has no bulk data {text}")
        try:
            span = wado.byte_range(request.headers.get(hdrs.RANGE, ""), len(value))
        except wado.RangeNotSatisfiable as exc:
            raise web.HTTPRequestRangeNotSatisfiable(
                text=str(exc), headers={hdrs.CONTENT_RANGE: f"bytes */{len(value)}"}) from None
        if span is None:
            return _multipart(wado.Multipart.new(wado.OCTET), [(wado.OCTET, bytes(value))])
        first, last = span
        record.details["range"] = f"{first}-{last}"
        framing = wado.Multipart.new(wado.OCTET)
        body = (framing.head(wado.OCTET, content_range=f"bytes {first}-{last}/{len(value)}")
                + bytes(value[first:last + 1]) + b"\r\n" + framing.end())
        return web.Response(status=206, body=body,
                            headers={hdrs.CONTENT_TYPE: framing.content_type})

    async def _instance(self, request: web.Request, record: WebRecord, route: RouteConfig,
                        keys: dict[str, str]) -> tuple[Dataset, str]:
        """The one instance of ``keys``, whole, in its original syntax."""
        stream = self._stream(request, route, keys)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self.pool, _whole_instance, stream)
        finally:
            await loop.run_in_executor(self.pool, stream.close)
            _report(record, stream)
        if found is None:
            raise _nothing(stream, keys)
        return found


def _whole_instance(stream: InstanceStream) -> tuple[Dataset, str] | None:
    part = stream.next_part()
    if part is None:
        return None
    try:
        return dcmread(io.BytesIO(read_part(part))), part.transfer_syntax
    finally:
        part.done()


def _metadata(stream: InstanceStream, base: str) -> list[dicomjson.JsonObject]:
    objects = []
    while (part := stream.next_part()) is not None:
        try:
            ds = header_of(part)
        finally:
            part.done()
        instance = (f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}")

        def uri(elem: DataElement, instance: str = instance) -> str:
            return f"{instance}/bulkdata/{int(elem.tag):08X}"

        converted = dicomjson.to_json(ds, uri, BULK_THRESHOLD).json
        if "Rows" in ds and "Columns" in ds:      # an image: its Pixel Data, never read here
            converted[f"{_PIXEL_DATA:08X}"] = {
                "vr": _pixel_vr(ds, part.transfer_syntax),
                "BulkDataURI": f"{instance}/bulkdata/{_PIXEL_DATA:08X}"}
        objects.append(converted)
    return objects


def _pixel_vr(ds: Dataset, transfer_syntax: str) -> str:
    """Pixel Data's VR as the instance has it (PS3.5 A.1 / 8.2): OB when encapsulated or
    of 8 bits or less in an explicit syntax, OW otherwise."""
    if UID(transfer_syntax).is_encapsulated:
        return "OB"
    if transfer_syntax == "1.2.840.10008.1.2":      # implicit: OW by the data dictionary
        return "OW"
    return "OB" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"


def _nothing(stream: InstanceStream, keys: dict[str, str]) -> web.HTTPException:
    """Rule 2: why a retrieve handed out nothing."""
    details = stream.record.details
    what = ", ".join(f"{k} {v}" for k, v in keys.items())
    if stream.record.hint == NOTHING_TO_RETRIEVE:
        return web.HTTPNotFound(text=f"no instance found for {what}")
    why = stream.record.hint or "; ".join(details.get("failure_reasons", {})) or \
        f"status 0x{stream.status or 0:04X}"
    late = set(details.get("timed_out", ()))
    if late and late >= set(stream.record.archives):
        return web.HTTPGatewayTimeout(text=f"no archive answered in time for {what}: {why}")
    return web.HTTPBadGateway(text=f"the archives did not deliver {what}: {why}")


def _report(record: WebRecord, stream: InstanceStream) -> None:
    details = stream.record.details
    record.details.update({k: details[k] for k in ("expected", "completed", "failed",
                                                   "warning", "first_instance_ms", "timed_out")
                           if k in details})
    if stream.record.hint and record.hint is None:
        record.hint = stream.record.hint


def _multipart(framing: wado.Multipart, parts: list[tuple[str, bytes]]) -> web.Response:
    body = bytearray()
    for media, data in parts:
        body += framing.head(media) + data + b"\r\n"
    body += framing.end()
    return web.Response(body=bytes(body), headers={hdrs.CONTENT_TYPE: framing.content_type})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

