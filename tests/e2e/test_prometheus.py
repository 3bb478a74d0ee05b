"""The dashboard and the alert rules against a REAL Prometheus scraping a real proxy.

Set-up: an Orthanc capped at 3 matches (max_results = 3), an archive that is
down, a storescp destination, the proxy in front (health C-ECHO every 0.5 s),
and Debian's /usr/bin/prometheus scraping it every second with
dashboards/alerts.yml loaded. Workstation traffic (echoscu, findscu, a
rejected association, a connection over the limit) goes through the proxy.

Then every query the dashboard and the alerts use must return data through
Prometheus's HTTP API (/api/v1/query): a panel naming a metric the proxy does
not export returns nothing, and fails here. Alerts whose condition the set-up
makes true (archive down, failure ratios, truncation) must evaluate to data
as written; the others must have data for each of the series they watch.
Synchronisation is by polling the API, never by sleeping.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard_queries import (
    ALERTS,
    alert_queries,
    dashboard_queries,
    for_prometheus,
    metric_names,
    signals,
    template_queries,
)
from tests.e2e.conftest import OrthancFactory, StoreSCPFactory
from tests.e2e.data import SyntheticSet
from tests.e2e.dcmtk import echoscu, findscu
from tests.e2e.ports import LOOPBACK, POLL_INTERVAL, free_port
from tests.e2e.processes import spawn, stop_process
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.tls_certs import make_pki

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
ProxyFactory = Callable[..., ProxyProcess]
# Alerts the set-up below makes fire (their full expression must return data).
TRIGGERED = ("DicomProxyArchiveDown", "DicomProxyUpstreamFailureRatio",
             "DicomProxyOperationFailureRatio", "DicomProxyFindTruncated")

pytestmark = pytest.mark.skipif(not PROMETHEUS.exists() or not PROMTOOL.exists(),
                                reason="Debian package prometheus not installed")


class Prometheus:
    """/usr/bin/prometheus on a free loopback port with a temp config and TSDB."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({   # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "dicom-proxy",
                                "static_configs": [{"targets": [target]}]}]}))
        self.log = workdir / "prometheus.log"
        self.proc = spawn([str(PROMETHEUS), f"--config.file={config}",
                           f"--storage.tsdb.path={workdir / 'tsdb'}",
                           f"--web.listen-address={LOOPBACK}:{self.port}",
                           "--log.level=warn"], log_path=self.log, cwd=workdir)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as rsp:
                    if rsp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready: {self.log.read_text()[-2000:]}")
            time.sleep(POLL_INTERVAL)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as rsp:
            body = json.loads(rsp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def wait_for_data(self, expr: str, timeout: float) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns at least one series (or the deadline passes)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    made: list[Prometheus] = []

    def make(target: str) -> Prometheus:
        workdir = tmp_path / f"prometheus{len(made)}"
        workdir.mkdir()
        prom = Prometheus(workdir, target)
        made.append(prom)
        prom.wait_ready()
        return prom

    yield make
    for prom in made:
        prom.stop()


def test_promtool_accepts_the_alert_rules() -> None:
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_queries())} rules found" in proc.stdout


def _traffic(proxy: ProxyProcess) -> None:
    host, port = LOOPBACK, proxy.port
    assert echoscu(host, port, "RELAY", "VIEWER1").ok
    assert not echoscu(host, port, "DOWN", "VIEWER1").ok                # 0x0110, archive down
    assert echoscu(host, port, "RELAY", "INTRUDER").association_rejected  # not in allow
    capped = findscu(host, port, "RELAY", "VIEWER1", keys=["StudyInstanceUID"])
    assert len(capped.identifiers) >= 3           # the archive's cap (or more, recovered)
    narrow = findscu(host, port, "RELAY", "VIEWER1", keys=["StudyDate=20200102",
                                                           "StudyInstanceUID"])
    assert narrow.final_status == 0x0000 and len(narrow.identifiers) == 1
    assert findscu(host, port, "DOWN", "VIEWER1", keys=["StudyInstanceUID"]).identifiers == []
    findscu(host, port, "FED", "VIEWER1", keys=["StudyDate=20200103", "StudyInstanceUID"])
    qido = f"http://{host}:{proxy.dicomweb_port}/dicomweb/RELAY/studies?StudyDate=20200102"
    with urllib.request.urlopen(qido, timeout=30) as answer:
        assert answer.status == 200 and len(json.loads(answer.read())) == 1
    # Over the connection limit (2): the third TCP connection is closed at accept().
    held = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
    try:
        extra = socket.create_connection((host, port), timeout=5)
        extra.close()
        proxy.wait_event("connection_refused")
    finally:
        for sock in held:
            sock.close()


def test_every_dashboard_and_alert_query_returns_data_from_a_real_prometheus(
    orthanc_factory: OrthancFactory, store_scp_factory: StoreSCPFactory,
    proxy_factory: ProxyFactory, prometheus_factory: Callable[[str], Prometheus],
    synthetic_studies: SyntheticSet, tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")        # the certificate-expiry series exist with [tls]
    capped = orthanc_factory("PACS_CAP", limit_find_results=3)
    capped.upload(synthetic_studies.paths)
    ws1 = store_scp_factory("WS1")
    proxy = proxy_factory({
        "proxy": {"max_connections": 2},
        "tls": {"cert": str(pki.proxy.cert), "key": str(pki.proxy.key), "ca": str(pki.ca.path)},
        "health": {"enabled": True, "interval": 0.5, "timeout": 2},
        "archives": {"capped": archive_entry(capped, max_results=3),
                     "down": {"ae_title": "PACS_DOWN", "host": LOOPBACK, "port": free_port(),
                              "timeout": 5}},
        "destinations": {"ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": ws1.port}},
        # DICOMweb, MPPS and Storage Commitment on RELAY: their panels have series too.
        "dicomweb": {"host": LOOPBACK, "port": 0},
        "routes": [{"called_ae": "RELAY", "archives": ["capped"], "allow": ["VIEWER1"],
                    "dicomweb": True, "store_to": ["capped"], "mpps_to": ["capped"]},
                   {"called_ae": "DOWN", "archives": ["down"]},
                   {"called_ae": "FED", "archives": ["capped", "down"]}],
    })
    prom = prometheus_factory(f"{LOOPBACK}:{proxy.metrics_port}")
    # Counters must be seen before the traffic moves them, or increase() has no step.
    assert prom.wait_for_data('up{job="dicom-proxy"} == 1', timeout=30), "never scraped"
    assert prom.wait_for_data("dicom_proxy_find_truncated_total", timeout=30)
    proxy.wait_event("archive_down", lambda e: e.get("archive") == "down")
    _traffic(proxy)

    scraped = set(prom.api("label/__name__/values"))
    missing: list[str] = []
    for query in dashboard_queries():
        expr = for_prometheus(query.expr)
        if not prom.wait_for_data(expr, timeout=20):
            absent = sorted(metric_names(query.expr) - scraped)
            missing.append(f"{query.where}: {expr!r} returned no data (not scraped: {absent})")
    for query in alert_queries():
        name = query.where.removeprefix("alert ")
        exprs = [query.expr] if name in TRIGGERED else signals(query.expr)
        for expr in exprs:
            if not prom.wait_for_data(expr, timeout=20):
                missing.append(f"{query.where}: {expr!r} returned no data")
    for variable, metric, label in template_queries():
        series = prom.api("series", **{"match[]": metric})
        if not any(label in s for s in series):
            missing.append(f"variable {variable}: no {metric} series with label {label}")
    assert missing == []

    # Prometheus loaded every rule and evaluates it without error…
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(alert_queries())
    assert [r["name"] for r in rules if r.get("health") != "ok"] == [], rules
    # …and the archive that is down is on its way to paging someone (for: 2m).
    alerts = prom.api("alerts")["alerts"]
    down = [a for a in alerts if a["labels"]["alertname"] == "DicomProxyArchiveDown"]
    assert [a["labels"]["archive"] for a in down] == ["down"]
    assert down[0]["state"] in ("pending", "firing")
    # The values behind the panels are the proxy's own.
    [cap] = prom.query('dicom_proxy_find_truncated_total{archive="capped"}')
    assert float(cap["value"][1]) >= 1
    up = {r["metric"]["archive"]: float(r["value"][1])
          for r in prom.query("dicom_proxy_archive_up")}
    assert up == {"capped": 1.0, "down": 0.0}
