"""What every DICOMweb request goes through, outermost first: observe, CORS, errors, auth.

Rule 1: every request produces exactly one ``HttpRequestCompleted`` (the ``operation`` log
        line, ``dicom_proxy_http_requests_total``), whatever its answer: the service and
        route a handler sets in its ``WebRecord``, the HTTP code sent (499 when the client
        hung up first), the client address.
        The URL's query is never logged (it may hold a patient's name): the handler logs
        its parsed summary, whose identifiers the log observer hashes.
Rule 2: CORS (Fetch standard): a request from an origin in ``cors_origins`` (or any, with
        ``"*"``) gets ``Access-Control-Allow-Origin`` (that origin, ``Vary: Origin``) and
        ``Access-Control-Expose-Headers: Warning``; a preflight (``OPTIONS`` with
        ``Access-Control-Request-Method``) is answered here, before authentication (a
        browser sends no token with it): 204 with the methods and headers allowed, or 403
        for an origin not listed; its line's service is ``CORS-preflight``.
Rule 3: bearer tokens (RFC 6750): with ``tokens_file`` set, a request without a token
        listed there gets 401 with ``WWW-Authenticate: Bearer``. The file is read again when
        it changes, so tokens are added and revoked without a restart.
Rule 4: errors are answers, never a dropped connection: an ``aiohttp`` HTTP exception
        becomes its status with a one-line text body saying what is wrong; anything else
        is 500 with its type named (and logged); CORS headers are added to them too.
Rule 5: JSON is gzipped when the client accepts it (``Accept-Encoding: gzip``).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from proxy.config import Config, DicomwebConfig, RouteConfig
from proxy.observe import events as ev

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ALLOWED_METHODS = "GET, POST, OPTIONS"
CLIENT_CLOSED = 499                  # logged and counted only (nginx's "client closed request")
PREFLIGHT = "CORS-preflight"         # the service a browser's preflight is logged as (Rule 2)
_ALLOWED_HEADERS = "Authorization, Accept, Accept-Encoding, Content-Type"


@dataclass
class WebRecord:
    """Filled in while a request is answered; reported once (Rule 1)."""

    service: str = "unknown"
    route: str = "unknown"
    archives: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None
    phi: list[str] = field(default_factory=list)


# Where a request keeps its WebRecord: a typed key where aiohttp has them (3.12+).
_RECORD: Any = (web.RequestKey("dicomweb_record", WebRecord) if hasattr(web, "RequestKey")
                else "dicomweb_record")


def record_of(request: web.Request) -> WebRecord:
    record = request.get(_RECORD)
    if not isinstance(record, WebRecord):      # the first middleware to ask makes it
        record = WebRecord()
        request[_RECORD] = record
    return record


def route_of(request: web.Request, config: Config) -> RouteConfig:
    """The route named in the URL, if it is served over DICOMweb; else 404."""
    called = request.match_info.get("route", "")
    route = config.route_for(called) if called else None
    if route is None or not route.dicomweb:
        raise web.HTTPNotFound(text=f"no DICOMweb route {called!r} (a route's called_ae "
                                    "with dicomweb = true)")
    record_of(request).route = route.called_ae
    return route


def observe(bus: ev.EventBus) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        record = record_of(request)
        peer = peer_of(request)
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:           # the client hung up (server Rule 4)
            code = CLIENT_CLOSED
            record.hint = "the client closed the connection before the answer"
            raise
        finally:
            bus.emit(ev.HttpRequestCompleted(
                record.service, record.route, code, time.monotonic() - started,
                peer, request.method, request.path, list(record.archives),
                dict(record.details), record.hint, list(record.phi)))
    return middleware


def cors(settings: DicomwebConfig) -> Any:
    origins = frozenset(settings.cors_origins)
    any_origin = "*" in origins

    def allowed(origin: str | None) -> bool:
        return origin is not None and (any_origin or origin in origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            record = record_of(request)
            record.service = PREFLIGHT
            record.details["origin"] = origin
            if not allowed(origin):
                record.hint = "add the page's origin to [dicomweb] cors_origins"
                return web.Response(status=403, text=f"origin {origin!r} is not in "
                                                     "[dicomweb] cors_origins")
            return web.Response(status=204, headers={
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: str(origin), hdrs.VARY: "Origin",
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: _ALLOWED_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: request.headers.get(
                    hdrs.ACCESS_CONTROL_REQUEST_HEADERS, _ALLOWED_HEADERS),
                hdrs.ACCESS_CONTROL_MAX_AGE: "600"})
        return await handler(request)
    return middleware


def application(settings: DicomwebConfig, tokens: Tokens | None,
                bus: ev.EventBus) -> web.Application:
    """The app with this module's middlewares, outermost first, and the CORS headers hook:
    the one composition the server and the tests use."""
    app = web.Application(middlewares=[observe(bus), cors(settings), errors(bus),
                                       auth(tokens)])
    app.on_response_prepare.append(cors_headers(settings))
    return app


def cors_headers(settings: DicomwebConfig) -> Any:
    """The CORS headers of an answer, added as it is prepared (``on_response_prepare``):
    a streamed WADO-RS answer sends its headers before its handler returns."""
    origins = frozenset(settings.cors_origins)
    any_origin = "*" in origins

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not (any_origin or origin in origins):
            return
        if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
            return                                  # a preflight's own answer
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "Warning"
        response.headers.add(hdrs.VARY, "Origin")
    return on_prepare


def errors(bus: ev.EventBus) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.text == f"{exc.status}: {exc.reason}":      # the router's own words
                exc.text = (f"{request.method} {request.path}: not a DICOMweb resource of "
                            "this proxy (/dicomweb/<route>/studies, /series, /instances...)")
            record_of(request).hint = exc.text
            return web.Response(status=exc.status, text=exc.text or exc.reason,
                                headers={k: v for k, v in exc.headers.items()
                                         if k != hdrs.CONTENT_TYPE})
        except Exception as exc:  # Rule 4: an answer, never a dropped connection
            record = record_of(request)
            record.details["error"] = f"{type(exc).__name__}: {exc}"
            record.hint = "an internal error of the proxy; see its error field"
            return web.Response(status=500, text=f"internal error ({type(exc).__name__})")
        if (response.content_type.endswith("json") and not response.prepared
                and "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "")
                and isinstance(response, web.Response)):
            response.enable_compression(web.ContentCoding.gzip)    # Rule 5
        return response
    return middleware


class Tokens:
    """The bearer tokens of ``tokens_file``, one a line, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._tokens: list[bytes] = []

    def accepts(self, token: str) -> bool:
        tokens = self._current()
        given = token.encode()
        return any(hmac.compare_digest(given, t) for t in tokens)   # constant time

    def _current(self) -> list[bytes]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                lines = self.path.read_text(encoding="utf-8").splitlines()
                self._tokens = [s.encode() for line in lines
                                if (s := line.strip()) and not s.startswith("#")]
                self._stamp = stamp
        except OSError:
            pass    # unreadable now: keep the tokens last read rather than lock all out
        return self._tokens


def auth(tokens: Tokens | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens is not None:
            scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise web.HTTPUnauthorized(
                    text="a bearer token is required (Authorization: Bearer <token>)",
                    headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="dicom-proxy"'})
            if not tokens.accepts(token.strip()):
                raise web.HTTPUnauthorized(
                    text="the bearer token is not valid",
                    headers={hdrs.WWW_AUTHENTICATE:
                             'Bearer realm="dicom-proxy", error="invalid_token"'})
        return await handler(request)
    return middleware


def peer_of(request: web.Request) -> str:
    """The client's ip:port, as the log lines name it."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return request.remote or "unknown"
