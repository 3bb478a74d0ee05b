"""proxy.web.http (middlewares) and the observers' view of a DICOMweb request.

The middlewares run in a real aiohttp server on loopback (aiohttp's own test server and
client); the end-to-end behaviour against real archives is tests/e2e/test_dicomweb_qido.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import DicomwebConfig
from proxy.observe import events as ev
from proxy.observe.logs import LogObserver, PhiFilter, make_logger
from proxy.observe.metrics import MetricsObserver
from proxy.web import http
from proxy.web.qido_rs import acceptable


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)


async def _fail(request: web.Request) -> web.StreamResponse:
    raise ValueError("boom")


async def _ok(request: web.Request) -> web.StreamResponse:
    record = http.record_of(request)
    record.service, record.route = "QIDO-RS", "R"
    return web.json_response([{"00100010": {"vr": "PN"}}] * 50,
                             content_type="application/dicom+json")


def _serve(settings: DicomwebConfig, tokens: http.Tokens | None, bus: ev.EventBus,
           requests: list[tuple[str, str, dict[str, str]]]) -> list[Any]:
    """Send ``requests`` (method, path, headers) through the middlewares; the answers."""
    async def main() -> list[Any]:
        app = http.application(settings, tokens, bus)
        app.router.add_get("/ok", _ok)
        app.router.add_get("/fail", _fail)
        async with TestClient(TestServer(app)) as client:
            out = []
            for method, path, headers in requests:
                rsp = await client.request(method, path, headers=headers)
                out.append((rsp.status, dict(rsp.headers), await rsp.read()))
            return out
    return asyncio.run(main())


def test_tokens_are_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# viewers\n  alpha  \n\nbeta\n")
    tokens = http.Tokens(path)
    assert tokens.accepts("alpha") and tokens.accepts("beta")
    assert not tokens.accepts("# viewers") and not tokens.accepts("") \
        and not tokens.accepts("alph")
    path.write_text("gamma\n")
    os.utime(path, (1, 1))                   # a change the (mtime, size) stamp sees
    assert tokens.accepts("gamma") and not tokens.accepts("alpha")
    path.unlink()
    assert tokens.accepts("gamma")           # unreadable now: the last tokens stay


def test_auth_cors_errors_and_one_event_per_request(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("tok\n")
    recorder = Recorder()
    settings = DicomwebConfig(cors_origins=("*",))
    answers = _serve(settings, http.Tokens(tmp_path / "t"), ev.EventBus([recorder]), [
        ("GET", "/ok", {}),
        ("GET", "/ok", {"Authorization": "Bearer nope", "Origin": "http://a.example"}),
        ("GET", "/ok", {"Authorization": "Bearer tok", "Origin": "http://a.example",
                        "Accept-Encoding": "gzip"}),
        ("OPTIONS", "/ok", {"Origin": "http://b.example",
                            "Access-Control-Request-Method": "GET"}),
        ("GET", "/fail", {"Authorization": "Bearer tok"}),
        ("GET", "/nowhere", {"Authorization": "Bearer tok"}),
    ])
    codes = [a[0] for a in answers]
    assert codes == [401, 401, 200, 204, 500, 404]
    assert answers[0][1]["WWW-Authenticate"] == 'Bearer realm="dicom-proxy"'
    assert b"bearer token is required" in answers[0][2]
    assert answers[1][1]["Access-Control-Allow-Origin"] == "http://a.example"   # on a 401 too
    assert answers[2][1]["Access-Control-Expose-Headers"] == "Warning"
    assert answers[2][1]["Content-Encoding"] == "gzip"
    assert answers[3][1]["Access-Control-Allow-Origin"] == "http://b.example"
    assert answers[4][2] == b"internal error (ValueError)"
    assert b"not a DICOMweb resource" in answers[5][2]
    done = [e for e in recorder.events if isinstance(e, ev.HttpRequestCompleted)]
    assert [e.code for e in done] == codes
    assert done[2].service == "QIDO-RS" and done[2].route == "R"
    assert done[3].service == "CORS-preflight"
    assert done[3].details["origin"] == "http://b.example"
    assert done[4].details["error"] == "ValueError: boom"
    assert all(e.peer.startswith("127.0.0.1:") for e in done)


def test_cors_lists_origins_and_refuses_others() -> None:
    settings = DicomwebConfig(cors_origins=("http://a.example",))
    answers = _serve(settings, None, ev.EventBus(), [
        ("OPTIONS", "/ok", {"Origin": "http://x.example", "Access-Control-Request-Method": "GET"}),
        ("GET", "/ok", {"Origin": "http://x.example"}),
        ("GET", "/ok", {}),
    ])
    assert answers[0][0] == 403
    assert "Access-Control-Allow-Origin" not in answers[1][1] and answers[1][0] == 200
    assert "Access-Control-Allow-Origin" not in answers[2][1]


@pytest.mark.parametrize("accept, ok", [
    ("", True), ("*/*", True), ("application/dicom+json", True), ("application/json", True),
    ("application/*;q=0.5", True), ("text/html, application/dicom+json;q=0.9", True),
    ("multipart/related; type=\"application/dicom+xml\"", False),
    ("application/dicom+json;q=0", False), ("text/html", False),
])
def test_accept(accept: str, ok: bool) -> None:
    if ok:
        acceptable(accept)
    else:
        with pytest.raises(web.HTTPNotAcceptable):
            acceptable(accept)


def _done(code: int = 200) -> ev.HttpRequestCompleted:
    return ev.HttpRequestCompleted(
        "QIDO-RS", "FED", code, 0.0123, "10.0.0.9:5000", "GET", "/dicomweb/FED/studies",
        ["site_a", "site_b"], {"level": "STUDY", "matches": 2,
                               "query": {"PatientName": "DOE^JANE"}}, None, ["DOE^JANE"])


def test_the_operation_line_of_a_dicomweb_request() -> None:
    stream = io.StringIO()
    LogObserver(make_logger("json", "info", stream), PhiFilter("hash"))(_done())
    line = json.loads(stream.getvalue())
    assert line["event"] == "operation" and line["operation"] == "QIDO-RS"
    assert line["status"] == 200 and line["duration_ms"] == 12.3
    assert line["archives"] == ["site_a", "site_b"] and line["called_ae"] == "FED"
    assert line["calling"] == "10.0.0.9:5000" and line["query_level"] == "STUDY"
    assert "DOE" not in stream.getvalue()                    # PHI hashed


def test_the_http_requests_counter() -> None:
    metrics = MetricsObserver(["site_a"], ["FED"])
    metrics(_done(200))
    metrics(_done(200))
    metrics(_done(400))
    value = metrics.registry.get_sample_value
    assert value("dicom_proxy_http_requests_total",
                 {"route": "FED", "service": "QIDO-RS", "code": "200"}) == 2
    assert value("dicom_proxy_http_requests_total",
                 {"route": "FED", "service": "QIDO-RS", "code": "400"}) == 1
