"""``dicom-proxy doctor`` against real peers set up broken on purpose.

Each peer below is broken the way sites break them: a port with nothing
listening, an Orthanc that does not know the proxy's AE title, an archive
(pynetdicom, since Orthanc always offers C-GET) without C-GET, an Orthanc
whose match cap equals ``max_results``, a destination that is gone. The
doctor must print exactly one actionable line for each, and exit 1; against
healthy peers it must say so and exit 0.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from tests.e2e.conftest import OrthancFactory, StoreSCPFactory
from tests.e2e.data import SyntheticSet
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import REPO, archive_entry, to_toml

PROXY_AE = "QR_PROXY"


def run_doctor(tmp_path: Path, rules: dict[str, Any]) -> tuple[int, list[str], str]:
    path = tmp_path / "rules.toml"
    path.write_text(to_toml(rules))
    proc = subprocess.run([sys.executable, "-m", "proxy.cli", "doctor", "--rules", str(path),
                           "--timeout", "5"], capture_output=True, text=True, timeout=90,
                          cwd=REPO, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def proxy_section() -> dict[str, Any]:
    # Port 0: the doctor never binds it, and no archive can collide with it.
    return {"ae_title": PROXY_AE, "host": LOOPBACK, "port": 0}


@pytest.fixture
def archive_without_c_get() -> Iterator[tuple[str, int]]:
    """A pynetdicom archive offering only C-ECHO and Study Root C-FIND (no matches)."""
    ae = AE(ae_title="NOGET")
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)

    def on_find(event: evt.Event) -> Iterator[tuple[int, Any]]:
        yield from ()

    server = ae.start_server((LOOPBACK, 0), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        yield "NOGET", int(server.server_address[1])
    finally:
        server.shutdown()


def test_doctor_names_every_broken_link(
    tmp_path: Path, orthanc_factory: OrthancFactory, store_scp_factory: StoreSCPFactory,
    synthetic_studies: SyntheticSet, archive_without_c_get: tuple[str, int],
) -> None:
    dead_port, gone_port = free_port(), free_port()
    strict = orthanc_factory("STRICT", only_known_calling_aets=True,
                             known_modalities={"other": ("SOMEONE", LOOPBACK, 104)})
    capped = orthanc_factory("CAPPED", limit_find_results=3)
    capped.upload(synthetic_studies.paths)          # 5 studies behind a cap of 3
    healthy = orthanc_factory("HEALTHY")
    ws1 = store_scp_factory("WS1")
    noget_ae, noget_port = archive_without_c_get
    rules = {
        "proxy": proxy_section(),
        "archives": {
            "dead": {"ae_title": "DEAD", "host": LOOPBACK, "port": dead_port},
            "strict": archive_entry(strict),
            "noget": {"ae_title": noget_ae, "host": LOOPBACK, "port": noget_port,
                      "retrieve": "get"},
            "capped": archive_entry(capped, max_results=3),
            "healthy": archive_entry(healthy),
        },
        "destinations": {
            "ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": ws1.port},
            "ws_gone": {"ae_title": "WS_GONE", "host": LOOPBACK, "port": gone_port},
        },
        "routes": [
            {"called_ae": "DEAD_ONLY", "archives": ["dead"], "destinations": ["ws1"]},
            {"called_ae": "FED", "archives": ["strict", "noget", "capped", "healthy"],
             "destinations": ["ws1", "ws_gone"]},
        ],
    }
    started = time.monotonic()
    code, lines, stderr = run_doctor(tmp_path, rules)
    elapsed = time.monotonic() - started

    refused = "TCP connection refused (nothing listening on that port, or a firewall rejects)"
    assert lines == [
        f"FAIL archive dead: DEAD at {LOOPBACK}:{dead_port} is not reachable from the proxy: "
        f"{refused}; queries and retrieves through it fail; fix: check that DEAD is running and "
        f"listening on {LOOPBACK}:{dead_port}, and that no firewall blocks the proxy's host",
        f"FAIL archive strict: archive STRICT at {LOOPBACK}:{strict.dicom_port} permanently "
        f"rejected calling AE {PROXY_AE}: calling AE title not recognised; fix: add {PROXY_AE} "
        "to the known AEs of STRICT (or set calling_ae for archives.strict)",
        f"FAIL archive noget: NOGET at {LOOPBACK}:{noget_port} did not accept C-GET (Study Root "
        'GET not negotiated); retrieves from it fail; fix: set retrieve = "move" for '
        "archives.noget (and make NOGET know the proxy as a C-MOVE destination)",
        f"WARN archive capped: CAPPED at {LOOPBACK}:{capped.dicom_port} answered a STUDY-level "
        "test query with exactly max_results = 3 matches: it caps its answers, so wider queries "
        "lose matches past 3; fix: narrow queries (date ranges), or raise the archive's limit "
        "and archives.capped.max_results together",
        f"ok   archive healthy: HEALTHY at {LOOPBACK}:{healthy.dicom_port} answers C-ECHO, "
        f"C-FIND (STUDY) and accepts C-GET from {PROXY_AE}",
        f"ok   destination ws1: WS1 at {LOOPBACK}:{ws1.port} answers C-ECHO from {PROXY_AE}",
        f"FAIL destination ws_gone: WS_GONE at {LOOPBACK}:{gone_port} is not reachable from the "
        f"proxy: {refused}; C-MOVEs to it fail; fix: check that WS_GONE is running and "
        f"listening on {LOOPBACK}:{gone_port}, and that no firewall blocks the proxy's host",
        "FAIL route DEAD_ONLY: every archive of this route is down (dead): workstations calling "
        "DEAD_ONLY get no answers; fix: see the archive lines above",
        "WARN route FED: strict of this federated route is down: answers miss its studies; "
        "fix: see the archive lines above",
        "summary: 5 broken, 2 warnings, 2 ok",
    ], stderr
    assert code == 1
    assert stderr == ""
    # The refusal is Orthanc's own, for the proxy's AE title, not a harness artefact.
    assert PROXY_AE in strict.rejected_calling_aets()
    assert elapsed < 30, f"doctor took {elapsed:.1f}s"


def test_doctor_is_quiet_and_exits_0_when_all_is_well(
    tmp_path: Path, orthanc_factory: OrthancFactory, store_scp_factory: StoreSCPFactory,
) -> None:
    healthy = orthanc_factory("HEALTHY")
    ws1 = store_scp_factory("WS1")
    rules = {"proxy": proxy_section(),
             "archives": {"healthy": archive_entry(healthy, retrieve="move")},
             "destinations": {"ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": ws1.port}},
             "routes": [{"called_ae": "PACS", "archives": ["healthy"], "destinations": ["ws1"]}]}
    code, lines, stderr = run_doctor(tmp_path, rules)
    assert lines == [
        f"ok   archive healthy: HEALTHY at {LOOPBACK}:{healthy.dicom_port} answers C-ECHO, "
        f"C-FIND (STUDY) and accepts C-MOVE from {PROXY_AE}",
        f"ok   destination ws1: WS1 at {LOOPBACK}:{ws1.port} answers C-ECHO from {PROXY_AE}",
        "summary: 0 broken, 0 warnings, 2 ok",
    ], stderr
    assert code == 0
    # The doctor calls as the proxy: that is the AE title the archive must know.
    assert healthy.calling_aets() == [PROXY_AE]
    assert ws1.associations() == [(PROXY_AE, "WS1")]


def test_doctor_on_an_invalid_rules_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    rules = {"proxy": proxy_section(),
             "archives": {"a": {"ae_title": "A", "host": LOOPBACK, "port": 104}},
             "routes": [{"called_ae": "R", "archives": ["nope"]}]}
    code, lines, stderr = run_doctor(tmp_path, rules)
    assert code == 2 and lines == []
    assert "routes[0].archives[0]: no archive named 'nope'" in stderr
