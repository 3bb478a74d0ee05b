"""CORS proven in a REAL browser: headless Chromium loads a page served by the test from one
origin, and the page queries the proxy's QIDO-RS (another origin: another port) with
``fetch`` and a bearer token, so the browser itself sends the preflight and enforces the
answer. The studies it shows equal a DIRECT C-FIND to the archive; a page from an origin
the proxy does not list gets nothing.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from tests.e2e.data import SyntheticSet
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "browser-token"
PAGE = """<!doctype html><html><body><pre id="result">pending</pre><script>
fetch("{url}", {{headers: {{"Authorization": "Bearer {token}",
                             "Accept": "application/dicom+json"}}}})
  .then(r => r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status)))
  .then(studies => {{
    const uids = studies.map(s => s["0020000D"].Value[0]).sort();
    document.getElementById("result").textContent = "STUDIES " + uids.join(",");
  }})
  .catch(e => {{ document.getElementById("result").textContent = "ERROR " + e; }});
</script></body></html>"""


class Page:
    """An HTML page served on its own 127.0.0.1 port: its own origin. ``html`` may be set
    after the port is known (the proxy's allowed origins name it before the page exists)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.html = ""
        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def browse(url: str) -> str:
    """What the page shows once its fetch settled (Chromium's DOM after load)."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--virtual-time-budget=10000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    return found.group(1)


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS_WEB") as pacs:
        pacs.upload(synthetic_studies.paths)
        yield pacs


def direct_study_uids(archive: OrthancArchive) -> list[str]:
    ae = AE("DIRECT")
    ae.add_requested_context(FIND)
    assoc = ae.associate(LOOPBACK, archive.dicom_port, ae_title=archive.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    uids = [str(ds.StudyInstanceUID) for status, ds in assoc.send_c_find(query, FIND)
            if status and status.Status in (0xFF00, 0xFF01) and ds is not None]
    assoc.release()
    return sorted(uids)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_a_browser_page_from_an_allowed_origin_searches_through_the_proxy(
        archive: OrthancArchive, tmp_path: Path) -> None:
    allowed, other = Page(), Page()          # two origins: only the first is listed
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    proxy = ProxyProcess({
        "archives": {"pacs": archive_entry(archive)},
        "routes": [{"called_ae": "WEB", "archives": ["pacs"], "dicomweb": True}],
        "dicomweb": {"host": LOOPBACK, "port": 0, "tokens_file": str(tokens),
                     "cors_origins": [allowed.origin]},
    }, tmp_path).start()
    try:
        url = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/WEB/studies"
        allowed.html = other.html = PAGE.format(url=url, token=TOKEN)
        # The allowed origin: the browser's preflight (Authorization is not a simple
        # header) is answered, the search goes through, the page shows the archive's studies.
        shown = browse(f"{allowed.origin}/")
        assert shown == "STUDIES " + ",".join(direct_study_uids(archive)), shown
        served = proxy.wait_event("operation", lambda e: e.get("operation") == "QIDO-RS")
        assert served["status"] == 200
        # Another origin: the same page, the same token — the browser refuses the answer.
        shown = browse(f"{other.origin}/")
        assert shown.startswith("ERROR TypeError"), shown
    finally:
        allowed.close()
        other.close()
        assert proxy.stop() == 0
