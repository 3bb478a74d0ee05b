"""The proxy under test, run for real: ``dicom-proxy run --rules FILE`` in a subprocess.

Rule 1: the proxy listens on 127.0.0.1 port 0 (listener and metrics); the test
        reads the bound ports from its ``proxy_started`` log line — no races. With a
        ``[dicomweb]`` section, its port comes from ``dicomweb_started`` the same way.
Rule 2: every log line is parsed JSON; a line that is not JSON fails the test
        (the contract says one JSON object per line on stdout).
Rule 3: ``stop()`` sends SIGTERM and returns the exit status; the fixture
        asserts it is 0 (graceful shutdown is part of the contract).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ports import LOOPBACK, LineReader

REPO = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table, e.g. a route's store_filter
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(rules: Mapping[str, Any]) -> str:
    """Write the rules dict (sections, archives.*, destinations.*, routes[]) as TOML."""
    out: list[str] = []
    for section in ("proxy", "metrics", "log", "spool", "health", "tls", "dicomweb"):
        if section in rules:
            out.append(f"[{section}]")
            out += [f"{k} = {toml_value(v)}" for k, v in rules[section].items()]
    for group in ("archives", "destinations"):
        for name, body in rules.get(group, {}).items():
            out.append(f"[{group}.{name}]")
            out += [f"{k} = {toml_value(v)}" for k, v in body.items()]
    for route in rules.get("routes", []):
        out.append("[[routes]]")
        out += [f"{k} = {toml_value(v)}" for k, v in route.items()]
    return "\n".join(out) + "\n"


def archive_entry(archive: Any, **extra: Any) -> dict[str, Any]:
    """An ``[archives.X]`` body for an OrthancArchive (or anything with aet/host/dicom_port)."""
    return {"ae_title": archive.aet, "host": LOOPBACK, "port": archive.dicom_port, **extra}


class ProxyProcess:
    """One ``dicom-proxy run`` subprocess and its parsed log."""

    def __init__(self, rules: Mapping[str, Any], workdir: Path) -> None:
        rules = dict(rules)
        rules.setdefault("proxy", {})
        rules["proxy"] = {"ae_title": "QR_PROXY", "host": LOOPBACK, "port": 0, **rules["proxy"]}
        rules.setdefault("metrics", {"host": LOOPBACK, "port": 0})
        rules.setdefault("spool", {"dir": str(workdir / "spool")})
        # Health C-ECHOs would add associations the peers of other tests count;
        # tests of health itself pass a [health] section.
        rules.setdefault("health", {"enabled": False})
        self.rules = rules
        self.workdir = workdir
        self.rules_path = workdir / "rules.toml"
        self.rules_path.write_text(to_toml(rules))
        self.proc: subprocess.Popen[str] | None = None
        self.reader: LineReader | None = None
        self.port = 0
        self.tls_port = 0
        self.metrics_port = 0
        self.dicomweb_port = 0
        self.stderr_path = workdir / "proxy.stderr"

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "run", "--rules", str(self.rules_path)],
                cwd=self.workdir,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                start_new_session=True,
            )
        self.reader = LineReader.of(self.proc.stdout)  # type: ignore[arg-type]
        started = self.wait_event("proxy_started", timeout=timeout)
        self.port = int(started["port"])
        self.tls_port = int(started.get("tls_port") or 0)
        url = started.get("metrics_url")
        if url:
            self.metrics_port = int(url.rsplit(":", 1)[1].split("/")[0])
        if "dicomweb" in self.rules:      # logged before proxy_started (Rule 1)
            self.dicomweb_port = int(self.wait_event("dicomweb_started", timeout=1.0)["port"])
        return self

    # -- the log -------------------------------------------------------------------

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        assert self.reader is not None
        out = []
        for line in list(self.reader.lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"proxy printed a non-JSON line on stdout: {line!r}")
            if name is None or record.get("event") == name:
                out.append(record)
        return out

    def wait_event(
        self,
        name: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The first logged event named ``name`` (already logged or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.events(name):
                if where(record):
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"proxy exited ({self.proc.returncode}) before "
                    f"{name}; stderr: {self.stderr()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {name} event after {timeout}s; last lines: {self.events()[-5:]}"
                )
            time.sleep(0.02)

    def operations(self, operation: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events("operation")
            if operation is None or e.get("operation") == operation
        ]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def metrics(self) -> str:
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as rsp:
            return str(rsp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    # -- stopping --------------------------------------------------------------------

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.wait_reader()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_reader(self, timeout: float = 5.0) -> None:
        assert self.reader is not None
        self.reader._thread.join(timeout)


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start proxies from rules dicts; each is stopped (and must exit 0) at teardown."""
    started: list[ProxyProcess] = []

    def make(rules: Mapping[str, Any], *, check_exit: bool = True) -> ProxyProcess:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        proxy = ProxyProcess(rules, workdir)
        started.append(proxy)
        proxy.start()
        proxy.check_exit = check_exit  # type: ignore[attr-defined]
        return proxy

    yield make
    failures = []
    for proxy in started:
        code = proxy.stop()
        if getattr(proxy, "check_exit", True) and code != 0:
            failures.append(f"proxy exited {code}: {proxy.stderr()[-2000:]}")
    if failures:
        pytest.fail("; ".join(failures))
