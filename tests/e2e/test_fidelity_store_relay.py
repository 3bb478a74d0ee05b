"""``store = "relay"`` against real peers: DCMTK storescu as the workstation, Orthanc archives.

Every test sends the same files DIRECTLY to one Orthanc and THROUGH THE PROXY to a
second one configured the same way, and asserts the two are equal:
- the presentation contexts accepted and refused (and why), as storescu saw them;
- the status of every C-STORE;
- what each archive holds: the data set bytes (after the file meta, which names the
  sender) and the transfer syntax.
And: nothing is spooled; an archive that is down gets the workstation's association
rejected (transient) with the reason in the log, never a Success; the archive association
is released or aborted with the workstation's; an archive gone mid-association fails the
C-STOREs that follow with 0xA700.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage

from proxy.tools.synthetic import make_studies, write_studies
from tests.e2e.conftest import OrthancFactory
from tests.e2e.dcmtk import tool
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.e2e.test_store import body, parse_storescu

ProxyFactory = Callable[..., ProxyProcess]
MODALITY = "MODALITY"
ROUTE = "RELAY_STORE"
_CONTEXT = re.compile(r"D:\s+Context ID:\s+(\d+) \((.+)\)")
# One file per encoding: (pydicom test file, SOP Instance UID to give it). The MR files
# share one instance UID; an equal-length byte patch gives each its own without
# re-encoding anything.
ENCODINGS = {
    "SC_rgb_jpeg_dcmtk.dcm": None,          # JPEG Baseline
    "JPEG2000.dcm": None,                   # JPEG 2000
    "SC_rgb_rle.dcm": None,                 # RLE Lossless
    "CT_small.dcm": None,                   # Explicit VR Little Endian
    "MR_small_implicit.dcm": None,          # Implicit VR Little Endian
    "MR_small_bigendian.dcm": "1",          # Explicit VR Big Endian
    "MR_small_jp2klossless.dcm": "2",       # JPEG 2000 Lossless
}
_MR_UID = b"1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
# CT_small.dcm as a SOP class no archive knows (same length: an equal-length byte patch).
_CT_CLASS, _UNKNOWN_CLASS = b"1.2.840.10008.5.1.4.1.1.2\0", b"1.2.3.4.5.6.7.8.9.10.11.1\0"
_CT_UID = b"1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
UNKNOWN = _UNKNOWN_CLASS.decode().rstrip("\0")


@dataclass
class Seen:
    """What storescu saw: each context's negotiation result and each file's status."""

    contexts: list[tuple[str, ...]]
    statuses: dict[str, int | None]
    output: str
    rejected: bool


def storescu(port: int, called_ae: str, files: Sequence[Path], *flags: str) -> Seen:
    argv = [tool("storescu"), "-d", "-nh", *flags, "-aet", MODALITY, "-aec", called_ae,
            "-to", "10", "-ta", "10", "-td", "30", LOOPBACK, str(port), *map(str, files)]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=120,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    return Seen(negotiated(output), parse_storescu(output, files).statuses, output,
                "Association Rejected" in output)


def negotiated(output: str) -> list[tuple[str, ...]]:
    """(context ID, result, abstract syntax, accepted transfer syntax) from the -d log of
    the A-ASSOCIATE-AC storescu received."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "BEGIN A-ASSOCIATE-AC" in line)
    except StopIteration:
        return []
    out: list[tuple[str, ...]] = []
    current: list[str] | None = None
    for line in lines[start:]:
        if "END A-ASSOCIATE-AC" in line:
            break
        if match := _CONTEXT.match(line):
            current = [match.group(1), match.group(2)]
            out.append(())
        elif current is not None and ("Abstract Syntax:" in line
                                      or "Accepted Transfer Syntax:" in line):
            current.append(line.split(":", 2)[2].strip())
        if current is not None:
            out[-1] = tuple(current)
    return out


def encodings(directory: Path) -> list[Path]:
    out = []
    for name, suffix in ENCODINGS.items():
        data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
        if suffix is not None:
            data = data.replace(_MR_UID, _MR_UID[:-1] + suffix.encode())
        path = directory / name
        path.write_bytes(data)
        out.append(path)
    return out


def unknown_class(directory: Path) -> Path:
    """CT_small.dcm as a SOP class no DCMTK tool knows (storescu will not send it)."""
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    assert data.count(_CT_CLASS) == 2 and data.count(_CT_UID) == 2
    path = directory / "unknown_sop_class.dcm"
    path.write_bytes(data.replace(_CT_CLASS, _UNKNOWN_CLASS).replace(_CT_UID, _CT_UID[:-1] + b"9"))
    return path


def held(archive: OrthancArchive) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID → (transfer syntax, data set bytes) of everything the archive holds."""
    out = {}
    for orthanc_id in archive.rest("GET", "/instances"):
        data: bytes = archive.rest("GET", f"/instances/{orthanc_id}/file")
        meta = archive.rest("GET", f"/instances/{orthanc_id}/metadata?expand")
        uid = archive.rest("GET", f"/instances/{orthanc_id}")["MainDicomTags"]["SOPInstanceUID"]
        out[uid] = (meta["TransferSyntax"], body(data))
    return out


def relay_rules(archive: OrthancArchive | Any, **route: Any) -> dict[str, Any]:
    return {"archives": {"pacs": archive_entry(archive)},
            "routes": [{"called_ae": ROUTE, "archives": ["pacs"], "store_to": ["pacs"],
                        "store": "relay", **route}]}


def spooled(proxy: ProxyProcess) -> list[Path]:
    root = proxy.workdir / "spool"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"
                  and "tmp" not in p.parts) if root.exists() else []


def pair(orthanc_factory: OrthancFactory, **options: Any) -> tuple[OrthancArchive, OrthancArchive]:
    """Two archives configured alike: one stored to directly, one through the proxy."""
    return orthanc_factory("DIRECT", **options), orthanc_factory("PROXIED", **options)


def assert_same(direct: Seen, proxied: Seen) -> None:
    assert proxied.rejected == direct.rejected, proxied.output
    assert proxied.contexts == direct.contexts, proxied.output
    assert proxied.statuses == direct.statuses, proxied.output


# -- the tests ----------------------------------------------------------------------------

# storescu proposes one chosen syntax (plus the uncompressed ones) per SOP class; -R: only
# the files' SOP classes, +C: all syntaxes in one context; -nh: go on after a failure.
PROPOSALS = {
    "required-uncompressed": ["-R"],
    "all-sop-classes-uncompressed": [],
    "required-jpeg8": ["-R", "-xy"],
    "required-jpeg-lossless": ["-R", "-xs"],
    "required-j2k-lossless": ["-R", "-xv"],
    "required-j2k-lossy": ["-R", "-xw"],
    "required-rle": ["-R", "-xr"],
    "required-rle-combined": ["-R", "+C", "-xr"],
    "required-big-endian": ["-R", "-xb"],
    "required-implicit-only": ["-R", "-xi"],
}


@pytest.mark.parametrize("flags", list(PROPOSALS.values()), ids=list(PROPOSALS))
def test_each_encoding_and_proposal_is_negotiated_answered_and_kept_as_direct(
        flags: list[str], orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory,
        tmp_path: Path) -> None:
    files = encodings(tmp_path)
    direct_archive, proxied_archive = pair(orthanc_factory)
    proxy = proxy_factory(relay_rules(proxied_archive))
    direct = storescu(direct_archive.dicom_port, direct_archive.aet, files, *flags)
    proxied = storescu(proxy.port, ROUTE, files, *flags)
    assert direct.contexts, direct.output          # the comparison compares something
    assert_same(direct, proxied)
    assert held(proxied_archive) == held(direct_archive)
    stores = proxy.operations("C-STORE")
    assert [e["status"] for e in stores] == [f"0x{s:04X}" for s in direct.statuses.values()
                                             if s is not None]
    assert len([e for e in proxy.events("upstream") if e["operation"] == "C-STORE"]) == len(stores)
    successes = sum(1 for s in direct.statuses.values() if s == 0)
    assert proxy.metric("dicom_proxy_operations_total", operation="C-STORE", called_ae=ROUTE,
                        status="success") == successes
    assert spooled(proxy) == []


def test_syntaxes_the_archive_refuses_are_refused_at_negotiation_as_direct(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    files = encodings(tmp_path)
    direct_archive, proxied_archive = pair(orthanc_factory, extra_config={
        "JpegTransferSyntaxAccepted": False, "RleTransferSyntaxAccepted": False,
        "Jpeg2000TransferSyntaxAccepted": False, "UnknownSopClassAccepted": False})
    proxy = proxy_factory(relay_rules(proxied_archive))
    reasons: set[str] = set()
    for flags in (["-R", "-xy"], ["-xr"], ["-R", "+C", "-xv"], ["-R", "-xw"]):
        direct = storescu(direct_archive.dicom_port, direct_archive.aet, files, *flags)
        proxied = storescu(proxy.port, ROUTE, files, *flags)
        reasons |= {cx[1] for cx in direct.contexts if cx[1] != "Accepted"}
        assert_same(direct, proxied)
    assert reasons, "the archive refused nothing: the test would prove nothing"
    assert all("inexact" not in e for e in proxy.events("association_mirrored"))
    assert held(proxied_archive) == held(direct_archive)
    assert spooled(proxy) == []


@pytest.mark.parametrize("accepted", [True, False], ids=["archive-accepts", "archive-refuses"])
def test_a_sop_class_only_the_archive_judges_is_negotiated_and_stored_as_direct(
        accepted: bool, orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory,
        tmp_path: Path) -> None:
    # storescu refuses to send a SOP class DCMTK does not know: pynetdicom proposes it.
    unknown = dcmread(unknown_class(tmp_path))
    direct_archive, proxied_archive = pair(
        orthanc_factory, extra_config={"UnknownSopClassAccepted": accepted})
    proxy = proxy_factory(relay_rules(proxied_archive))
    seen = []
    for port, called in ((direct_archive.dicom_port, direct_archive.aet), (proxy.port, ROUTE)):
        ae = AE(MODALITY)
        ae.add_requested_context(UNKNOWN, [str(unknown.file_meta.TransferSyntaxUID)])
        ae.add_requested_context(CTImageStorage, [str(unknown.file_meta.TransferSyntaxUID)])
        assoc = ae.associate(LOOPBACK, port, ae_title=called)
        assert assoc.is_established
        contexts = sorted((cx.context_id, str(cx.abstract_syntax), cx.result)
                          for cx in [*assoc.accepted_contexts, *assoc.rejected_contexts])
        rsp = assoc.send_c_store(unknown) if accepted else None
        status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        assoc.release()
        seen.append((contexts, status))
    assert seen[1] == seen[0]
    assert seen[0][0][0][2] == (0x00 if accepted else 0x03)   # the archive's own answer
    assert held(proxied_archive) == held(direct_archive)
    assert len(held(direct_archive)) == (1 if accepted else 0)


def test_a_store_the_archive_fails_gets_the_archives_status_and_nothing_is_kept(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    script = tmp_path / "filter.lua"
    # Orthanc 1.10.1 answers Success when the filter returns false (the instance is
    # silently dropped); an error in the filter is answered with a failure status.
    script.write_text("function ReceivedInstanceFilter(dicom, origin, info)\n"
                      "  if dicom.Modality == 'MR' then error('no MR here') end\n"
                      "  return true\nend\n")
    files = encodings(tmp_path)
    direct_archive, proxied_archive = pair(orthanc_factory,
                                           extra_config={"LuaScripts": [str(script)]})
    proxy = proxy_factory(relay_rules(proxied_archive))
    direct = storescu(direct_archive.dicom_port, direct_archive.aet, files, "-R")
    proxied = storescu(proxy.port, ROUTE, files, "-R")
    failed = {f: s for f, s in direct.statuses.items() if s not in (None, 0)}
    assert failed, direct.output                      # the filter did refuse the MR files
    assert_same(direct, proxied)
    assert held(proxied_archive) == held(direct_archive)
    stores = {e["sop_instance_uid"]: e for e in proxy.operations("C-STORE")}
    for path, status in failed.items():
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert stores[uid]["status"] == stores[uid]["archive_status"] == f"0x{status:04X}"
    assert proxy.metric("dicom_proxy_operations_total", operation="C-STORE", called_ae=ROUTE,
                        status="failure") == len(failed)
    assert spooled(proxy) == []


@pytest.mark.parametrize("archive_state", ["down", "rejecting"])
def test_an_archive_that_is_down_or_rejects_gets_the_association_rejected_never_a_success(
        archive_state: str, orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory,
        tmp_path: Path) -> None:
    @dataclass
    class Down:
        aet: str = "PACS_DOWN"
        dicom_port: int = free_port()

    # "rejecting": Orthanc answers A-ASSOCIATE-RJ to the proxy's AE title it does not know
    archive: Any = (Down() if archive_state == "down"
                    else orthanc_factory("PROXIED", only_known_calling_aets=True))
    files = encodings(tmp_path)[:2]
    proxy = proxy_factory(relay_rules(archive))
    proxied = storescu(proxy.port, ROUTE, files, "-R")
    assert proxied.rejected, proxied.output
    assert "Rejected Transient" in proxied.output or "transient" in proxied.output.lower()
    assert all(s is None for s in proxied.statuses.values())
    [rejected] = proxy.events("association_rejected")
    assert "pacs" in rejected["reason"] and rejected.get("hint")
    if archive_state == "rejecting":
        assert "rejected" in rejected["reason"] and "QR_PROXY" in rejected["hint"]
        assert len(held(archive)) == 0
    [upstream] = [e for e in proxy.events("upstream") if e["operation"] == "C-STORE"]
    assert upstream["archive"] == "pacs" and upstream["status"] == "none"
    assert proxy.operations("C-STORE") == [] and spooled(proxy) == []


def _workstation(port: int, syntax: str, called: str = ROUTE) -> Any:
    """A pynetdicom workstation association (CT in ``syntax``), to the relay route by default."""
    ae = AE(MODALITY)
    ae.add_requested_context(CTImageStorage, [syntax])
    return ae.associate(LOOPBACK, port, ae_title=called)


def _ct(directory: Path, n: int, seed: str | None = None) -> list[Any]:
    return [dcmread(p) for p in write_studies(directory / "ct", make_studies(
        1, instances_per_series=n, seed=seed or str(directory)))]


def test_the_archive_association_lives_and_ends_with_the_workstations(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    archive = orthanc_factory("PROXIED")
    proxy = proxy_factory(relay_rules(archive))
    released, aborted = "Association Release with AET QR_PROXY", "Peer aborted Association"
    for end in ("release", "abort"):
        datasets = _ct(tmp_path / end, 2)
        assoc = _workstation(proxy.port, str(datasets[0].file_meta.TransferSyntaxUID))
        assert assoc.is_established
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0, 0]
        before = archive.log_text()
        assoc.release() if end == "release" else assoc.abort()
        proxy.wait_event("association_released" if end == "release"
                         else "association_aborted")
        deadline = time.monotonic() + 10
        wanted = released if end == "release" else aborted
        while archive.log_text().count(wanted) <= before.count(wanted):
            assert time.monotonic() < deadline, archive.log_tail()
            time.sleep(0.1)
    assert len(archive.instance_uids()) == 4


def test_an_archive_ending_an_idle_association_ends_the_workstations_as_direct(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    # Orthanc closes an association idle for DicomScpTimeout seconds.
    direct_archive, proxied_archive = pair(orthanc_factory, extra_config={"DicomScpTimeout": 1})
    proxy = proxy_factory(relay_rules(proxied_archive))
    ended = []
    for port, called in ((direct_archive.dicom_port, direct_archive.aet), (proxy.port, ROUTE)):
        [ds] = _ct(tmp_path / called, 1, seed="idle")
        assoc = _workstation(port, str(ds.file_meta.TransferSyntaxUID), called)
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.join(timeout=20)                 # the association thread ends with it
        ended.append(not assoc.is_alive() and not assoc.is_established)
    assert ended == [True, True]
    # The proxy logs the abort once it has sent it: the workstation may see it first.
    aborted = proxy.wait_event("association_aborted")
    assert len(proxy.events("association_aborted")) == 1
    assert "ended its association" in aborted["reason"], aborted
    assert held(proxied_archive) == held(direct_archive) != {}


def test_an_archive_dying_mid_association_ends_the_workstations_as_direct(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    direct_archive, proxied_archive = pair(orthanc_factory)
    proxy = proxy_factory(relay_rules(proxied_archive))
    [first] = _ct(tmp_path, 1)
    outcomes = []
    for archive, port, called in ((direct_archive, direct_archive.dicom_port, direct_archive.aet),
                                  (proxied_archive, proxy.port, ROUTE)):
        assoc = _workstation(port, str(first.file_meta.TransferSyntaxUID), called)
        assert int(assoc.send_c_store(first).Status) == 0
        archive.stop()                                  # SIGKILL: a crash, mid-association
        assoc.join(timeout=20)
        outcomes.append((assoc.is_aborted, assoc.is_established))
    assert outcomes == [(True, False), (True, False)]
    # The proxy logs the abort once it has sent it: the workstation may see it first.
    aborted = proxy.wait_event("association_aborted")
    assert len(proxy.events("association_aborted")) == 1
    assert "ended its association" in aborted["reason"], aborted
    assert [e["status"] for e in proxy.operations("C-STORE")] == ["0x0000"]
    assert spooled(proxy) == []


class CommentingArchive:
    """A pynetdicom storage SCP answering every C-STORE with ``status``, an Error Comment and
    an Offending Element (fault injection: Orthanc sends neither), recording what each
    request carried."""

    def __init__(self, status: int, comment: str) -> None:
        self.aet = "COMMENTING"
        self.received: list[tuple[int, int, str, bytes]] = []
        answer = Dataset()
        answer.Status, answer.ErrorComment = status, comment
        answer.OffendingElement = [0x00100010, 0x00100020]   # optional, PS3.7 C.4.2

        def on_store(event: Any) -> Any:
            rq = event.request
            self.received.append((int(rq.MessageID), int(rq.Priority),
                                  str(event.context.transfer_syntax),
                                  event.encoded_dataset(include_meta=False)))
            return answer

        ae = AE(self.aet)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes)
        self._ae = ae
        self._server = ae.start_server((LOOPBACK, 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.dicom_port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._ae.shutdown()


@pytest.mark.parametrize("status", [0xB007, 0xA900], ids=["warning", "failure"])
def test_the_archives_status_error_comment_and_offending_element_reach_the_workstation(
        status: int, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    direct_archive = CommentingArchive(status, "REFUSED BY POLICY 42")
    proxied_archive = CommentingArchive(status, "REFUSED BY POLICY 42")
    try:
        proxy = proxy_factory(relay_rules(proxied_archive))
        files = encodings(tmp_path)
        direct = storescu(direct_archive.dicom_port, direct_archive.aet, files, "-R", "-xr")
        proxied = storescu(proxy.port, ROUTE, files, "-R", "-xr")
        assert_same(direct, proxied)
        answered = [s for s in direct.statuses.values() if s is not None]
        assert set(answered) == {status} and len(answered) >= 4
        comments = [[line for line in seen.output.splitlines()
                     if any(k in line for k in ("ErrorComment", "OffendingElement"))]
                    for seen in (direct, proxied)]
        for keyword in ("ErrorComment", "OffendingElement"):
            assert any(keyword in line for line in comments[0]), (keyword, direct.output[-2000:])
        assert comments[1] == comments[0]
        # what the archive got: Message ID, priority, transfer syntax, data set bytes
        assert proxied_archive.received == direct_archive.received
        assert len(proxied_archive.received) == len(answered)
    finally:
        direct_archive.close()
        proxied_archive.close()
