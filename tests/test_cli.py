"""``dicom-proxy check`` and ``run`` with good and broken rules files.

A broken file must give exit status 2 and exactly one line on stderr naming the
key path — no traceback — and ``run`` must then start nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.cli import main

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[proxy]
ae_title = "QR_PROXY"
host = "127.0.0.1"
port = {port}

[metrics]
host = "127.0.0.1"
port = {metrics_port}

[archives.site_a]
ae_title = "PACS_A"
host = "127.0.0.1"
port = 104

[[routes]]
called_ae = "RELAY"
archives = ["site_a"]
"""

# (replace this, with that) in GOOD, and the key path the error must name.
BROKEN = [
    ('called_ae = "RELAY"', 'called_ae = "RELAY\n', "invalid TOML"),
    ('[metrics]', '[metrics]\nprot = 1', "metrics.prot: unknown key"),
    ('archives = ["site_a"]', 'archives = ["site_a"]\nallow = ["WS"]\ncolour = "red"',
     "routes[0].colour: unknown key"),
    ('ae_title = "QR_PROXY"', 'ae_title = "QR_PROXY_IS_TOO_LONG"', "proxy.ae_title: invalid AE"),
    ('ae_title = "PACS_A"', 'ae_title = "PACS\\\\A"', "archives.site_a.ae_title: invalid AE"),
    ("port = 104", "port = 70000", "archives.site_a.port: port 70000 is out of range"),
    ('archives = ["site_a"]', 'archives = ["site_b"]', "routes[0].archives[0]: no archive named"),
    ('archives = ["site_a"]\n', 'archives = ["site_a"]\n[[routes]]\ncalled_ae = "RELAY"\n'
     'archives = ["site_a"]\n', "routes[1].called_ae: 'RELAY' is already used"),
]


def write_rules(tmp_path: Path, text: str | None = None, port: int = 0) -> Path:
    rules = tmp_path / "rules.toml"
    rules.write_text(text if text is not None else GOOD.format(port=port, metrics_port=0))
    return rules


def broken_rules(tmp_path: Path, old: str, new: str, port: int = 0) -> Path:
    text = GOOD.format(port=port, metrics_port=0)
    assert old in text
    return write_rules(tmp_path, text.replace(old, new, 1))


def cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--rules", str(write_rules(tmp_path))]) == 0
    out = capsys.readouterr()
    assert "valid (1 archives, 1 routes" in out.out and out.err == ""


def test_check_accepts_the_example_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--rules", str(REPO / "rules.toml")]) == 0


@pytest.mark.parametrize(("old", "new", "expected"), BROKEN,
                         ids=[expected.split(":")[0] for _, _, expected in BROKEN])
def test_check_names_the_broken_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    old: str, new: str, expected: str) -> None:
    rules = broken_rules(tmp_path, old, new)
    assert main(["check", "--rules", str(rules)]) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"dicom-proxy: {rules}: {expected}"), lines[0]
    assert out.out == ""


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--rules", str(tmp_path / "nope.toml")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "nope.toml: cannot read the rules file" in line


@pytest.mark.parametrize("command", ["check", "run"])
def test_as_a_process_broken_rules_exit_2_without_traceback(tmp_path: Path,
                                                             command: str) -> None:
    port = _free_port()
    rules = broken_rules(tmp_path, "port = 104", "port = 70000", port=port)
    started = time.monotonic()
    done = cli(command, "--rules", str(rules), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "archives.site_a.port" in done.stderr
    assert done.stdout == ""                 # run: no proxy_started, nothing logged
    assert time.monotonic() - started < 20   # and it did not sit there serving
    assert not _listening(port)


def test_run_reports_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = cli("run", "--rules", str(write_rules(tmp_path, port=port)), cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def test_run_serves_until_sigterm_then_exits_0(tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "run", "--rules", str(rules)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        while started["event"] != "proxy_started":   # subsystems may log first
            started = json.loads(proc.stdout.readline())
        assert started["routes"] == ["RELAY"]
        assert _listening(started["port"])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert "proxy_stopping" in events and events[-1] == "proxy_stopped"
    assert not _listening(started["port"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
