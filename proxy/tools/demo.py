"""``dicom-proxy demo``: two sandbox archives, the proxy in front, commands to paste.

Rule 1: everything runs on 127.0.0.1 and needs nothing beyond ``pip install -e .``:
        the archives are pynetdicom's own ``qrscp`` application (a real Q/R SCP
        with a SQLite index), filled over C-STORE with synthetic studies.
Rule 2: the two archives overlap (two studies live in both), so the federated
        route shows de-duplication; archive B knows the proxy under another
        calling AE title, so the route shows AE-title rewriting.
Rule 3: the demo checks itself through the proxy (C-ECHO and a federated
        C-FIND) before it prints anything to paste, and says so if that failed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from proxy.config import parse
from proxy.tools.synthetic import make_studies

LOOPBACK = "127.0.0.1"

QRSCP_INI = """[DEFAULT]
    ae_title: {aet}
    port: {port}
    max_pdu: 16382
    acse_timeout: 30
    dimse_timeout: 30
    network_timeout: 30
    bind_address: 127.0.0.1
    instance_location: {instances}
    database_location: {database}
    log_identifier: False

[QR_PROXY]
    address: 127.0.0.1
    port: {proxy_port}
"""

RULES = """# Written by `dicom-proxy demo` — the rules the demo proxy runs with.
[proxy]
ae_title = "QR_PROXY"
host = "127.0.0.1"
port = {port}

[metrics]
host = "127.0.0.1"
port = {metrics_port}

[log]
format = "json"
phi = "hash"

[spool]
dir = "{spool}"

[archives.site_a]
ae_title = "ARCHIVE_A"
host = "127.0.0.1"
port = {port_a}
calling_ae = "QR_PROXY"
retrieve = "get"

[archives.site_b]
ae_title = "ARCHIVE_B"
host = "127.0.0.1"
port = {port_b}
calling_ae = "PROXY_AT_B"
retrieve = "get"

[destinations.ws1]
ae_title = "WS1"
host = "127.0.0.1"
port = {dest_port}

[[routes]]
called_ae = "ARCHIVE_A_PROXY"
archives = ["site_a"]
destinations = ["ws1"]

[[routes]]
called_ae = "FEDERATION"
archives = ["site_a", "site_b"]
store_to = ["site_a"]
destinations = ["ws1"]
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sandbox archive exited with status {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


class SandboxArchive:
    """One pynetdicom ``qrscp`` subprocess with its own database and files."""

    def __init__(self, workdir: Path, aet: str, proxy_port: int) -> None:
        self.aet = aet
        self.port = free_port()
        self.dir = workdir / aet.lower()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ini = self.dir / "qrscp.ini"
        self.ini.write_text(QRSCP_INI.format(
            aet=aet, port=self.port, instances=self.dir / "instances",
            database=self.dir / "instances.sqlite", proxy_port=proxy_port))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "qrscp.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(self.ini)],
            cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
        wait_port(self.port, self.proc)

    def store(self, datasets: list[Dataset]) -> int:
        ae = AE(ae_title="DEMO_LOADER")
        ae.requested_contexts = StoragePresentationContexts[:120]
        assoc = ae.associate(LOOPBACK, self.port, ae_title=self.aet)
        if not assoc.is_established:
            raise RuntimeError(f"could not associate with sandbox archive {self.aet}")
        stored = 0
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                stored += int(status is not None and status.Status == 0x0000)
        finally:
            assoc.release()
        return stored

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _studies(n: int) -> tuple[list[Dataset], list[Dataset]]:
    """Two overlapping sets: A gets studies 0..n-1, B gets n-2..2n-3 (two shared).

    One instance per study: pynetdicom's qrscp answers a STUDY-level C-FIND once per
    instance it holds, and the proxy relays an archive's answer as it is (it never
    de-duplicates one archive's own matches), so more would show each study twice.
    """
    everything = list(make_studies(2 * n - 2, series_per_study=1, instances_per_series=1,
                                   seed="dicom-proxy-demo", rows=32, cols=32))
    per_study: dict[str, list[Dataset]] = {}
    for ds in everything:
        per_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    groups = list(per_study.values())
    a = [ds for g in groups[:n] for ds in g]
    b = [ds for g in groups[n - 2:] for ds in g]
    return a, b


def _self_check(port: int) -> tuple[bool, str, list[Dataset]]:
    ae = AE(ae_title="DEMO_CHECK")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOOPBACK, port, ae_title="FEDERATION")
    if not assoc.is_established:
        return False, "could not associate with the proxy", []
    try:
        echo = assoc.send_c_echo()
        if echo is None or echo.Status != 0x0000:
            return False, "C-ECHO through the proxy failed", []
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientName = ""
        query.StudyDate = ""
        query.StudyDescription = ""
        matches: list[Dataset] = []
        final = None
        for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is not None and status.Status in (0xFF00, 0xFF01) and ds is not None:
                matches.append(ds)
            elif status is not None:
                final = int(status.Status)
        ok = final == 0x0000
        summary = f"C-ECHO ok; federated C-FIND: {len(matches)} studies, status 0x{final or 0:04X}"
    finally:
        assoc.release()
    if not ok or not matches:
        return ok, summary, matches
    got, status = _self_check_get(port, str(matches[0].StudyInstanceUID))
    summary += f"; C-GET of one study: {got} instance(s), status 0x{status:04X}"
    return ok and got > 0 and status == 0x0000, summary, matches


def _self_check_get(port: int, study_uid: str) -> tuple[int, int]:
    """C-GET one study through the proxy, as a workstation would (storage SCP role)."""
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="DEMO_CHECK")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, port, ae_title="FEDERATION",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        return 0, 0xC000
    final = 0xC000
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if status is not None and status.Status not in (0xFF00, 0xFF01):
                final = int(status.Status)
    finally:
        assoc.release()
    return len(received), final


def _banner(port: int, metrics_port: int, dest_port: int, workdir: Path,
            matches: list[Dataset], check: str) -> Iterator[str]:
    uid = str(matches[0].StudyInstanceUID) if matches else "<StudyInstanceUID>"
    p = f"{LOOPBACK} {port}"
    yield ""
    yield "dicom-proxy demo is running (Ctrl-C to stop)"
    yield f"  self-check through the proxy: {check}"
    yield f"  proxy          QR_PROXY on {LOOPBACK}:{port}  (routes FEDERATION, ARCHIVE_A_PROXY)"
    yield f"  archives       ARCHIVE_A and ARCHIVE_B (pynetdicom qrscp) under {workdir}"
    yield f"  rules          {workdir / 'rules.toml'}"
    yield f"  proxy log      {workdir / 'proxy.log'}   (tail -f it: one JSON object per line)"
    yield f"  metrics        http://{LOOPBACK}:{metrics_port}/metrics"
    yield ""
    yield "Paste these in another terminal:"
    yield ""
    yield "# C-ECHO through the proxy (it echoes both archives)"
    yield f"python -m pynetdicom echoscu -aet WS1 -aec FEDERATION {p}"
    yield ""
    yield "# federated C-FIND: both archives, one de-duplicated answer"
    yield (f"python -m pynetdicom findscu -S -aet WS1 -aec FEDERATION {p} "
           "-k QueryRetrieveLevel=STUDY -k StudyInstanceUID= -k PatientName= -k StudyDate=")
    yield "# the same with DCMTK (apt-get install dcmtk):"
    yield (f"/usr/bin/findscu -S -aet WS1 -aec FEDERATION {p} "
           "-k QueryRetrieveLevel=STUDY -k StudyInstanceUID -k PatientName -k StudyDate")
    yield ""
    yield "# relay to one archive, a date-range query"
    yield (f"python -m pynetdicom findscu -S -aet WS1 -aec ARCHIVE_A_PROXY {p} "
           "-k QueryRetrieveLevel=STUDY -k StudyDate=20200101-20200103 -k StudyInstanceUID=")
    yield ""
    yield "# C-GET a study through the proxy into ./received"
    yield (f"python -m pynetdicom getscu -S -aet WS1 -aec FEDERATION {p} "
           f"-k QueryRetrieveLevel=STUDY -k StudyInstanceUID={uid} -od received")
    yield ""
    yield "# C-MOVE a study to a workstation (the proxy pulls with C-GET and C-STOREs to WS1)"
    yield f"python -m pynetdicom storescp -aet WS1 -od received {dest_port} &"
    yield (f"python -m pynetdicom movescu -S -aet WS1 -aec FEDERATION -aem WS1 {p} "
           f"-k QueryRetrieveLevel=STUDY -k StudyInstanceUID={uid}")
    yield ""
    yield "# what the proxy counted"
    yield f"curl -s http://{LOOPBACK}:{metrics_port}/metrics | grep '^dicom_proxy_'"
    yield ""


def run_demo(port: int = 11112, metrics_port: int = 9110, studies: int = 6,
             workdir: str | None = None, exit_after_ready: bool = False) -> int:
    from proxy.app import Proxy

    made_temp = workdir is None
    root = Path(workdir or tempfile.mkdtemp(prefix="dicom-proxy-demo-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    metrics_port = metrics_port or free_port()
    dest_port = free_port()
    archives = [SandboxArchive(root, "ARCHIVE_A", port), SandboxArchive(root, "ARCHIVE_B", port)]
    proxy: Proxy | None = None
    try:
        print(f"starting two sandbox archives and the proxy in {root} ...", flush=True)
        for archive in archives:
            archive.start()
        set_a, set_b = _studies(max(studies, 3))
        archives[0].store(set_a)
        archives[1].store(set_b)
        rules = RULES.format(port=port, metrics_port=metrics_port, spool=root / "spool",
                             port_a=archives[0].port, port_b=archives[1].port,
                             dest_port=dest_port)
        (root / "rules.toml").write_text(rules)
        import tomllib

        config = parse(tomllib.loads(rules))
        log = open(root / "proxy.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
        proxy = Proxy(config, stream=log)
        try:
            proxy.start()
        except OSError as exc:
            print(f"dicom-proxy demo: cannot listen on {LOOPBACK}:{port} or metrics port "
                  f"{metrics_port}: {exc.strerror or exc} (try --port 0 --metrics-port 0)",
                  file=sys.stderr)
            return 1
        ok, check, matches = _self_check(port)
        for line in _banner(port, metrics_port, dest_port, root, matches, check):
            print(line, flush=True)
        if not ok:
            print(f"dicom-proxy demo: self-check failed: {check}; see {root / 'proxy.log'}",
                  file=sys.stderr)
            return 1
        if exit_after_ready:
            return 0
        _wait_for_signal()
        return 0
    finally:
        if proxy is not None:
            proxy.stop(reason="demo stopped", grace=5)
        for archive in archives:
            archive.stop()
        if made_temp and exit_after_ready:
            shutil.rmtree(root, ignore_errors=True)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass
