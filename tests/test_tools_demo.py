"""`dicom-proxy demo` works right after `pip install -e .`: sandbox archives, proxy, self-check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_starts_checks_itself_and_prints_commands(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "demo", "--port", "0", "--metrics-port", "0",
         "--dir", str(tmp_path), "--exit-after-ready"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    # The self-check went through the proxy to both archives and de-duplicated:
    # 6 studies each, 2 shared → 10.
    assert "federated C-FIND: 10 studies, status 0x0000" in out
    # …and retrieved one study back through the proxy (1 instance per demo study).
    assert "C-GET of one study: 1 instance(s), status 0x0000" in out
    assert "python -m pynetdicom findscu" in out and "-aec FEDERATION" in out
    assert "/metrics" in out
    log = (tmp_path / "proxy.log").read_text()
    assert '"event": "operation"' in log and '"operation": "C-FIND"' in log
    assert (tmp_path / "rules.toml").exists()
    # The rules the demo wrote are valid for `dicom-proxy check`.
    check = subprocess.run([sys.executable, "-m", "proxy.cli", "check", "--rules",
                            str(tmp_path / "rules.toml")], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr
