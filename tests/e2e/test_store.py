"""C-STORE store-and-forward against real peers: DCMTK storescu in, Orthanc archives out.

What is proved here, each against what the archive actually keeps:
- every encoding arrives byte-identical to what the archive keeps when sent directly;
- an archive that is down gets every instance once it is back, exactly once, in order,
  over one association;
- SIGKILL of the proxy mid-send loses nothing the modality saw acknowledged;
- permanent refusals go to the dead-letter folder with the reason, and don't block;
- a full spool answers 0xA700; a route that does not store answers 0x0124 with a hint;
- store_filter sends each archive only what it should get;
- no temp file outlives its association, even when the modality dies mid-transfer.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from proxy.tools.synthetic import make_studies, write_studies
from tests.e2e.conftest import OrthancFactory
from tests.e2e.dcmtk import tool
from tests.e2e.long_link import long_link
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

MODALITY = "MODALITY"
SUCCESS, NOT_AUTHORIZED, OUT_OF_RESOURCES = 0x0000, 0x0124, 0xA700
FAST_RETRY = {"retry_initial": 0.2, "retry_max": 1.0}
ProxyFactory = Callable[..., ProxyProcess]


# -- helpers ---------------------------------------------------------------------------


@dataclass
class Sent:
    """One storescu run: the status the modality got for each file, in order."""

    statuses: dict[str, int | None]
    output: str

    @property
    def acknowledged(self) -> list[str]:
        return [f for f, s in self.statuses.items() if s == SUCCESS]


def storescu(port: int, called_ae: str, files: Sequence[Path | str], *flags: str,
             calling_ae: str = MODALITY, timeout: float = 90) -> Sent:
    """storescu -d -R: one association, the files' own SOP classes, statuses per file."""
    argv = [tool("storescu"), "-d", "-R", *flags, "-aet", calling_ae, "-aec", called_ae,
            "-to", "10", "-ta", "10", "-td", "30", LOOPBACK, str(port), *map(str, files)]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return parse_storescu(proc.stdout + proc.stderr, files)


def parse_storescu(output: str, files: Sequence[Path | str]) -> Sent:
    statuses: dict[str, int | None] = {str(f): None for f in files}
    current: str | None = None
    in_rsp = False
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("D: Message Type"):
            in_rsp = "C-STORE RSP" in line
        elif in_rsp and current and line.startswith("D: DIMSE Status"):
            statuses[current] = int(line.split(":")[2].strip()[2:], 16)
    return Sent(statuses, output)


def instances(n: int, seed: str, directory: Path, **options: Any) -> list[Path]:
    return write_studies(directory, make_studies(1, instances_per_series=n, seed=seed,
                                                 **options))


def sop_uid(path: Path | str) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def body(data: bytes) -> bytes:
    """A Part-10 file's data set as encoded (after preamble and file meta)."""
    f = io.BytesIO(data)
    read_preamble(f, False)
    _read_file_meta_info(f)
    return data[f.tell():]


def unpadded(name: str, path: Path) -> Path:
    """A pydicom test file without Data Set Trailing Padding (DCMTK drops it when sending)."""
    ds = dcmread(get_testdata_file(name))
    if (0xFFFC, 0xFFFC) in ds:
        del ds[0xFFFC, 0xFFFC]
    ds.save_as(path, enforce_file_format=True)
    return path


def count(archive: OrthancArchive) -> int:
    return int(archive.rest("GET", "/statistics")["CountInstances"])


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.1)


def stored_file(archive: OrthancArchive, uid: str) -> bytes:
    [found] = archive.rest("POST", "/tools/lookup", uid.encode())
    data: bytes = archive.rest("GET", f"/instances/{found['ID']}/file")
    return data


def forwarded(proxy: ProxyProcess, archive: str) -> list[str]:
    """SOP Instance UIDs the proxy forwarded with Success, in order (from its log)."""
    return [e["sop_instance_uid"] for e in proxy.events("upstream")
            if e["archive"] == archive and e["operation"] == "C-STORE"
            and e["status"] == "0x0000"]


def spool_files(spool: Path, kind: str) -> list[Path]:
    return sorted(p for p in (spool / "store" / kind).rglob("*") if p.is_file())


def rules_for(spool: Path, archives: dict[str, Any], *routes: dict[str, Any],
              **spool_options: Any) -> dict[str, Any]:
    return {"archives": archives, "routes": list(routes),
            "spool": {"dir": str(spool), **FAST_RETRY, **spool_options}}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def archive(orthanc_factory: OrthancFactory) -> OrthancArchive:
    return orthanc_factory("PACS")


# -- encodings ---------------------------------------------------------------------------

# (pydicom test file, storescu option proposing its transfer syntax)
ENCODINGS = [
    ("CT_small.dcm", "-x="),                   # Explicit VR Little Endian
    ("rtdose.dcm", "-xi"),                     # Implicit VR Little Endian
    ("MR_small_bigendian.dcm", "-xb"),         # Explicit VR Big Endian
    ("MR_small_RLE.dcm", "-xr"),               # RLE Lossless
    ("SC_rgb_rle.dcm", "-xr"),
    ("MR_small_jp2klossless.dcm", "-xv"),      # JPEG 2000 Lossless
    ("JPEG2000.dcm", "-xw"),                   # JPEG 2000
]


def test_every_encoding_arrives_as_the_archive_keeps_it_when_sent_directly(
        proxy_factory: ProxyFactory, archive: OrthancArchive, spool: Path,
        tmp_path: Path) -> None:
    proxy = proxy_factory(rules_for(spool, {"pacs": archive_entry(archive)},
                                    {"called_ae": "STORE", "archives": ["pacs"],
                                     "store_to": ["pacs"]}))
    for name, flag in ENCODINGS:
        path = Path(get_testdata_file(name))
        original = dcmread(path)
        uid = str(original.SOPInstanceUID)
        sent = storescu(proxy.port, "STORE", [path], flag)
        assert sent.statuses == {str(path): SUCCESS}, sent.output[-1500:]
        wait_for(lambda u=uid: bool(archive.rest("POST", "/tools/lookup", u.encode())),
                 f"{name} at the archive")
        via_proxy = stored_file(archive, uid)
        archive.delete_all()
        direct = storescu(archive.dicom_port, archive.aet, [path], flag)
        assert direct.acknowledged == [str(path)]
        assert body(via_proxy) == body(stored_file(archive, uid)), name
        archive.delete_all()
        kept = dcmread(io.BytesIO(via_proxy))
        assert kept.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert kept.PixelData == original.PixelData, name
    raw = [e["raw"] for e in proxy.events("upstream") if e["operation"] == "C-STORE"]
    assert raw == [True] * len(ENCODINGS)               # sent from the spool file, undecoded
    assert spool_files(spool, "pending") == spool_files(spool, "tmp") == []


# -- an archive down, then back --------------------------------------------------------------


def stored_while_down(proxy_factory: ProxyFactory, archive: OrthancArchive, spool: Path,
                      files: list[Path]) -> ProxyProcess:
    """A proxy spooling route STORE for ``archive``, which is stopped; ``files`` sent to it
    and every one acknowledged."""
    proxy = proxy_factory(rules_for(spool, {"pacs": archive_entry(archive)},
                                    {"called_ae": "STORE", "archives": ["pacs"],
                                     "store_to": ["pacs"]}))
    archive.stop()
    sent = storescu(proxy.port, "STORE", files)
    assert sent.acknowledged == list(map(str, files)), sent.output[-1500:]
    return proxy


def test_archive_down_then_back_gets_everything_exactly_once_in_order(
        proxy_factory: ProxyFactory, archive: OrthancArchive, spool: Path,
        tmp_path: Path) -> None:
    files = instances(30, "down", tmp_path / "data")
    proxy = stored_while_down(proxy_factory, archive, spool, files)
    assert len(spool_files(spool, "pending")) == 30
    proxy.wait_event("upstream", lambda e: e["operation"] == "C-STORE" and e.get("error"))
    assert proxy.metric("dicom_proxy_spool_pending") == 30
    assert proxy.metric("dicom_proxy_spool_pending_bytes") == sum(
        p.stat().st_size for p in spool_files(spool, "pending"))

    archive.start()
    wait_for(lambda: count(archive) == 30, "30 instances at the archive")
    wait_for(lambda: len(forwarded(proxy, "pacs")) == 30, "30 forward log lines")
    assert forwarded(proxy, "pacs") == [sop_uid(f) for f in files]       # once each, in order
    for path in files:
        assert body(stored_file(archive, sop_uid(path))) == body(path.read_bytes())
    # One association carried all of them (the failed attempts never reached Orthanc).
    assert archive.calling_aets().count("QR_PROXY") == 1
    wait_for(lambda: proxy.metric("dicom_proxy_spool_pending") == 0, "pending gauge at 0")
    assert proxy.metric("dicom_proxy_suboperations_total", operation="C-STORE-forward",
                        result="completed") == 30
    assert spool_files(spool, "pending") == spool_files(spool, "tmp") == []
    ops = proxy.operations("C-STORE")
    assert len(ops) == 30 and {o["status"] for o in ops} == {"0x0000"}
    assert not any("DOE^" in json.dumps(o) for o in ops)                 # PHI hashed


def test_a_backlog_of_small_and_large_instances_arrives_once_in_order_as_sent(
        proxy_factory: ProxyFactory, archive: OrthancArchive, spool: Path,
        tmp_path: Path) -> None:
    """While the archive stores one instance, the lane takes the next entries and reads
    the next data set into memory up to 4 MiB; a larger one goes from its file (drain
    Rule 2). Across chunks, and both ways, each instance arrives once, in spool order,
    byte for byte, over one association."""
    small = instances(10, "mixed-small", tmp_path / "small", rows=64, cols=64)
    large = instances(2, "mixed-large", tmp_path / "large", rows=1500, cols=1500)
    assert all(p.stat().st_size > 4 << 20 for p in large)
    files = [*small[:5], large[0], *small[5:9], large[1], small[9]]
    proxy = stored_while_down(proxy_factory, archive, spool, files)
    archive.start()
    wait_for(lambda: len(forwarded(proxy, "pacs")) == len(files), "every forward log line")
    assert forwarded(proxy, "pacs") == [sop_uid(f) for f in files]       # once each, in order
    for path in files:
        assert body(stored_file(archive, sop_uid(path))) == body(path.read_bytes())
    assert archive.calling_aets().count("QR_PROXY") == 1
    assert count(archive) == len(files)


def test_a_backlog_to_a_remote_site_goes_over_several_associations(
        proxy_factory: ProxyFactory, archive: OrthancArchive, spool: Path,
        tmp_path: Path) -> None:
    """forward_associations = 3 across a 40 ms round trip: the backlog is sent over three
    associations at once, each instance exactly once, byte for byte; one lane (the
    default) stays strictly in order (the test above)."""
    files = instances(24, "lanes", tmp_path / "data")
    with long_link(archive.dicom_port, 0.02) as link:
        remote = {**archive_entry(archive), "port": link.port, "forward_associations": 3}
        rules = rules_for(spool, {"pacs": remote}, {"called_ae": "STORE", "archives": ["pacs"],
                                                    "store_to": ["pacs"]})
        rules["health"] = {"enabled": False}        # only the lanes cross the link
        proxy = proxy_factory(rules)
        sent = storescu(proxy.port, "STORE", files)
        assert sent.acknowledged == list(map(str, files)), sent.output[-1500:]
        wait_for(lambda: len(forwarded(proxy, "pacs")) == 24, "24 forward log lines")
        assert sorted(forwarded(proxy, "pacs")) == sorted(sop_uid(f) for f in files)
        lines = [e for e in proxy.events("upstream") if e["operation"] == "C-STORE"]
        assert {e["lane"] for e in lines} == {1, 2, 3}
        assert link.most_open == 3                  # three associations at once, not more
    assert count(archive) == 24
    for path in files:
        assert body(stored_file(archive, sop_uid(path))) == body(path.read_bytes())
    wait_for(lambda: proxy.metric("dicom_proxy_spool_pending") == 0, "pending gauge at 0")
    assert spool_files(spool, "pending") == []


# -- kill -9 mid-send ------------------------------------------------------------------------


def test_sigkill_mid_send_then_restart_loses_nothing_acknowledged(
        proxy_factory: ProxyFactory, orthanc_factory: OrthancFactory, spool: Path,
        tmp_path: Path) -> None:
    up, down = orthanc_factory("PACS_UP"), orthanc_factory("PACS_DOWN")
    down.stop()
    files = instances(200, "kill", tmp_path / "data")
    rules = rules_for(spool, {"up": archive_entry(up), "down": archive_entry(down)},
                      {"called_ae": "STORE", "archives": ["up"], "store_to": ["up", "down"]})
    proxy = proxy_factory(rules, check_exit=False)

    argv = [tool("storescu"), "-d", "-aet", MODALITY, "-aec", "STORE", "-to", "10",
            "-ta", "10", "-td", "10", LOOPBACK, str(proxy.port), *map(str, files)]
    modality = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
    assert modality.stdout is not None
    lines: list[str] = []
    acks = 0
    for line in modality.stdout:
        lines.append(line)
        if line.startswith("D: DIMSE Status") and "0x0000" in line:
            acks += 1
            if acks == 60:
                proxy.kill()                                  # SIGKILL, mid-association
                break
    lines += modality.stdout.readlines()
    modality.wait(30)
    acknowledged = parse_storescu("".join(lines), files).acknowledged
    assert 60 <= len(acknowledged) < 200

    restarted = proxy_factory(rules)
    down.start()
    wanted = {sop_uid(f) for f in acknowledged}
    for archive in (up, down):
        wait_for(lambda a=archive: wanted <= a.instance_uids(), f"acknowledged at {archive}")
    # The modality resends what it was not told was stored; everything arrives once.
    rest = [f for f in files if str(f) not in acknowledged]
    assert storescu(restarted.port, "STORE", rest).acknowledged == list(map(str, rest))
    for archive in (up, down):
        wait_for(lambda a=archive: count(a) == 200, f"200 instances at {archive}")
        assert archive.instance_uids() == {sop_uid(f) for f in files}
    wait_for(lambda: spool_files(spool, "pending") == [], "an empty spool")
    assert spool_files(spool, "tmp") == []


# -- permanent refusals ----------------------------------------------------------------------


class CTOnlyArchive:
    """A pynetdicom archive: CT stored (Implicit VR only), MR answered 0x0122, nothing else."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.datasets: list[Dataset] = []
        ae = AE("CT_ONLY")
        ae.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
        ae.add_supported_context(MRImageStorage)
        self.server = ae.start_server((LOOPBACK, 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]
        self.aet = "CT_ONLY"
        self.dicom_port = self.port

    def _store(self, event: evt.Event) -> int:
        if event.request.AffectedSOPClassUID != CTImageStorage:
            return 0x0122                                 # Refused: SOP class not supported
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        self.datasets.append(event.dataset)
        return 0x0000


@pytest.fixture
def ct_only() -> Iterator[CTOnlyArchive]:
    peer = CTOnlyArchive()
    yield peer
    peer.server.shutdown()


def test_permanent_refusals_are_dead_lettered_with_the_reason_and_do_not_block(
        proxy_factory: ProxyFactory, ct_only: CTOnlyArchive, spool: Path,
        tmp_path: Path) -> None:
    proxy = proxy_factory(rules_for(spool, {"ct_only": archive_entry(ct_only)},
                                    {"called_ae": "STORE", "archives": ["ct_only"],
                                     "store_to": ["ct_only"]}))
    sc = Path(get_testdata_file("JPEG2000.dcm"))         # Secondary Capture: not negotiable
    assert storescu(proxy.port, "STORE", [sc], "-xw").acknowledged == [str(sc)]
    proxy.wait_event("forward_dead_lettered")            # alone: no context accepted at all
    mr = unpadded("MR_small.dcm", tmp_path / "mr.dcm")
    ct = unpadded("CT_small.dcm", tmp_path / "ct.dcm")
    assert storescu(proxy.port, "STORE", [mr, ct]).acknowledged == [str(mr), str(ct)]
    wait_for(lambda: ct_only.received == [sop_uid(ct)], "the CT behind the refused MR")
    wait_for(lambda: len(proxy.events("forward_dead_lettered")) == 2, "two dead letters")

    dead = {e["sop_instance_uid"]: e for e in proxy.events("forward_dead_lettered")}
    assert dead[sop_uid(mr)]["status"] == "0x0122"
    assert "SOP Class Not Supported" in dead[sop_uid(mr)]["reason"]
    assert "did not accept Secondary Capture Image Storage" in dead[sop_uid(sc)]["reason"]
    notes = [json.loads(p.read_text()) for p in spool_files(spool, "dead") if p.suffix == ".json"]
    assert {n["sop_instance"] for n in notes} == {sop_uid(mr), sop_uid(sc)}
    for note in notes:
        kept = Path(dead[note["sop_instance"]]["path"])
        assert kept.exists() and note["reason"] == dead[note["sop_instance"]]["reason"]
    assert body(Path(dead[sop_uid(mr)]["path"]).read_bytes()) == body(mr.read_bytes())
    # The CT was stored Explicit VR; this archive takes Implicit VR only: re-encoded, intact.
    [sent_ct] = [e for e in proxy.events("upstream") if e.get("sop_instance_uid") == sop_uid(ct)]
    assert sent_ct["raw"] is False and sent_ct["transfer_syntax"] == ImplicitVRLittleEndian
    assert ct_only.datasets[0] == dcmread(ct)
    assert proxy.metric("dicom_proxy_forward_dead_letters_total", archive="ct_only") == 2
    assert proxy.metric("dicom_proxy_suboperations_total", operation="C-STORE-forward",
                        result="failed") == 2
    wait_for(lambda: proxy.metric("dicom_proxy_spool_dead_letters") == 2, "dead gauge")
    assert spool_files(spool, "pending") == []


# -- refusals the modality sees ------------------------------------------------------------------


def test_full_spool_answers_out_of_resources(proxy_factory: ProxyFactory, spool: Path,
                                             tmp_path: Path) -> None:
    files = instances(5, "full", tmp_path / "data")
    size = files[0].stat().st_size
    nowhere = {"ae_title": "NOWHERE", "host": LOOPBACK, "port": free_port()}
    proxy = proxy_factory(rules_for(spool, {"nowhere": nowhere},
                                    {"called_ae": "STORE", "archives": ["nowhere"],
                                     "store_to": ["nowhere"]}, max_bytes=int(size * 2.5)))
    sent = storescu(proxy.port, "STORE", files, "--no-halt")
    assert list(sent.statuses.values()) == [SUCCESS] * 2 + [OUT_OF_RESOURCES] * 3
    refused = [o for o in proxy.operations("C-STORE") if o["status"] == "0xA700"]
    assert len(refused) == 3 and "spool full" in refused[0]["hint"]
    assert len(spool_files(spool, "pending")) == 2 and spool_files(spool, "tmp") == []


def test_a_route_without_store_to_refuses_with_a_hint(
        proxy_factory: ProxyFactory, archive: OrthancArchive, spool: Path) -> None:
    proxy = proxy_factory(rules_for(spool, {"pacs": archive_entry(archive)},
                                    {"called_ae": "QUERY", "archives": ["pacs"]}))
    ct = get_testdata_file("CT_small.dcm")
    assert storescu(proxy.port, "QUERY", [ct]).statuses == {ct: NOT_AUTHORIZED}
    [op] = proxy.operations("C-STORE")
    assert op["status"] == "0x0124" and "store_to" in op["hint"]
    assert count(archive) == 0 and spool_files(spool, "tmp") == []


def test_store_filter_routes_by_modality_and_calling_ae(
        proxy_factory: ProxyFactory, orthanc_factory: OrthancFactory, spool: Path,
        tmp_path: Path) -> None:
    everything, ct_only = orthanc_factory("ALL"), orthanc_factory("CTS")
    ct = instances(2, "filter-ct", tmp_path / "ct", modalities=("CT",))
    mr = instances(2, "filter-mr", tmp_path / "mr", modalities=("MR",))
    proxy = proxy_factory(rules_for(
        spool, {"all": archive_entry(everything), "cts": archive_entry(ct_only)},
        {"called_ae": "STORE", "archives": ["all"], "store_to": ["all", "cts"],
         "store_filter": {"cts": {"modality": ["CT"]}}},
        {"called_ae": "SCANNER_ONLY", "archives": ["all"], "store_to": ["all"],
         "store_filter": {"all": {"calling_ae": ["CT_SCANNER"]}}}))
    assert len(storescu(proxy.port, "STORE", [*ct, *mr]).acknowledged) == 4
    wait_for(lambda: count(everything) == 4 and count(ct_only) == 2, "filtered arrivals")
    assert ct_only.instance_uids() == {sop_uid(p) for p in ct}

    refused = storescu(proxy.port, "SCANNER_ONLY", ct[:1])
    assert list(refused.statuses.values()) == [NOT_AUTHORIZED]
    assert "store_filter" in proxy.operations("C-STORE")[-1]["hint"]
    accepted = storescu(proxy.port, "SCANNER_ONLY", mr[:1], calling_ae="CT_SCANNER")
    assert list(accepted.statuses.values()) == [SUCCESS]


# -- temp files --------------------------------------------------------------------------------


def test_a_modality_dying_mid_transfer_leaves_no_temp_file(
        proxy_factory: ProxyFactory, spool: Path, tmp_path: Path) -> None:
    [big] = instances(1, "big", tmp_path / "data", rows=4096, cols=4096)   # 32 MiB
    nowhere = {"ae_title": "NOWHERE", "host": LOOPBACK, "port": free_port()}
    proxy = proxy_factory(rules_for(spool, {"nowhere": nowhere},
                                    {"called_ae": "STORE", "archives": ["nowhere"],
                                     "store_to": ["nowhere"]}))
    tmp = spool / "store" / "tmp"
    argv = [tool("storescu"), "-aet", MODALITY, "-aec", "STORE", LOOPBACK, str(proxy.port),
            str(big)]
    modality = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in tmp.iterdir()):   # tight: 32 MiB is fast
            assert time.monotonic() < deadline, "no reception started"
            time.sleep(0.002)
        os.kill(modality.pid, signal.SIGKILL)
    finally:
        modality.wait(10)
    proxy.wait_event("association_aborted")
    wait_for(lambda: list(tmp.iterdir()) == [], "the temp dir emptied")
    assert spool_files(spool, "pending") == []
    assert proxy.operations("C-STORE") == []          # never answered: nothing to report

    assert storescu(proxy.port, "STORE", [big]).acknowledged == [str(big)]   # and it recovers
    assert list(tmp.iterdir()) == [] and len(spool_files(spool, "pending")) == 1
