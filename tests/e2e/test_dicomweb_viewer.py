"""A zero-footprint viewer displays a study through the proxy: dwv, the DICOM Web Viewer
(npm package ``dwv``, installed from the npm registry by the test), runs in REAL headless
Chromium on a page from another origin, fetches an instance by WADO-RS through the proxy
in front of a REAL Orthanc, and draws it; the test reads back the image it decoded (its
size and SOP Instance UID, equal to the archive's) and that its canvas is not blank.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.e2e.data import SyntheticSet
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

DWV = "dwv@0.33.1"
PAGE = Path(__file__).with_name("viewer") / "dwv.html"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NPM = shutil.which("npm")


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dwv and its dependencies, from the npm registry."""
    assert NPM is not None, "npm is needed (Debian npm)"
    folder = tmp_path_factory.mktemp("dwv")
    subprocess.run([NPM, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                    str(folder), DWV], check=True, timeout=600, capture_output=True)
    modules = folder / "node_modules"
    assert (modules / "dwv" / "dist" / "dwv.min.js").exists()
    return modules


class Site:
    """The viewer's origin: the page and dwv's files, on their own port."""

    def __init__(self, modules: Path) -> None:
        self.port = free_port()
        self.page = ""                     # set once the proxy's URL is known
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/viewer.html":
                    body = site.page.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def translate_path(self, path: str) -> str:
                rel = path.split("?", 1)[0].removeprefix("/nm/")
                return str(modules / rel)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port),
                                                      functools.partial(Handler))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS_VIEWER") as pacs:
        pacs.upload(synthetic_studies.paths[:2])
        yield pacs


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_dwv_shows_an_instance_fetched_by_wado_rs_through_the_proxy(
        modules: Path, archive: OrthancArchive, synthetic_studies: SyntheticSet,
        tmp_path: Path) -> None:
    original = dcmread(synthetic_studies.paths[0])
    site = Site(modules)                     # the viewer's origin, allowed by CORS
    proxy = ProxyProcess({
        "archives": {"pacs": archive_entry(archive)},
        "routes": [{"called_ae": "VIEW", "archives": ["pacs"], "dicomweb": True}],
        "dicomweb": {"host": LOOPBACK, "port": 0,
                     "cors_origins": [f"http://{LOOPBACK}:{site.port}"]},
    }, tmp_path).start()
    url = (f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/VIEW/studies/"
           f"{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}/instances/"
           f"{original.SOPInstanceUID}")
    site.page = PAGE.read_text().replace("__URL__", repr(url))
    try:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                               "--no-first-run", "--virtual-time-budget=20000", "--dump-dom",
                               f"http://{LOOPBACK}:{site.port}/viewer.html"],
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        shown = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
        assert shown, done.stdout[-2000:] + done.stderr[-2000:]
        found = re.fullmatch(r"SHOWN (\d+)x(\d+) uid=(\S+) lit=(\d+)", shown.group(1))
        assert found, shown.group(1)
        columns, rows, uid, lit = found.groups()
        assert (int(columns), int(rows)) == (original.Columns, original.Rows)
        assert uid == str(original.SOPInstanceUID)
        assert int(lit) > 0                   # the canvas shows the image, not black
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "WADO-RS")
        assert line["status"] == 200 and line["completed"] == 1
    finally:
        site.close()
        proxy.stop()
