"""STOW-RS end to end: ``dicomweb-client`` stores through the proxy into a REAL Orthanc.

What arrives at the archive is compared with what the same client's same request stores
when sent DIRECTLY to the archive's own STOW-RS (Orthanc's DICOMweb plugin, Debian
``orthanc-dicomweb``) and with the instance as sent: the store routing of the route decides
(spool or relay), the answer lists each instance as PS3.18 10.5 says.
"""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from requests import HTTPError

from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

FILES = ["CT_small.dcm", "MR_small.dcm"]


def _path(name: str) -> Path:
    found = get_testdata_file(name)
    assert found, name
    return Path(str(found))


PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")   # Debian orthanc-dicomweb


@pytest.fixture
def target() -> Iterator[OrthancArchive]:
    config = {"Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with OrthancArchive("STOW_TARGET", extra_config=config) as pacs:
        yield pacs


def proxy_for(target: OrthancArchive, tmp_path: Path) -> ProxyProcess:
    return ProxyProcess({
        "archives": {"target": archive_entry(target),
                     "gone": {"ae_title": "GONE", "host": LOOPBACK, "port": free_port(),
                              "timeout": 3}},
        "routes": [{"called_ae": "SPOOLED", "archives": ["target"], "store_to": ["target"],
                    "dicomweb": True},
                   {"called_ae": "RELAYED", "archives": ["target"], "store_to": ["target"],
                    "store": "relay", "dicomweb": True},
                   {"called_ae": "DOWN", "archives": ["gone"], "store_to": ["gone"],
                    "store": "relay", "dicomweb": True},
                   {"called_ae": "NOSTORE", "archives": ["target"], "dicomweb": True}],
        "dicomweb": {"host": LOOPBACK, "port": 0},
    }, tmp_path).start()


def client(proxy: ProxyProcess, route: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/{route}")


def kept(archive: OrthancArchive, uid: str, timeout: float = 30) -> Dataset:
    deadline = time.monotonic() + timeout
    while True:
        found = archive.rest("POST", "/tools/lookup", uid.encode())
        if found:
            data: bytes = archive.rest("GET", f"/instances/{found[0]['ID']}/file")
            return dcmread(io.BytesIO(data))
        assert time.monotonic() < deadline, f"{uid} never reached the archive"
        time.sleep(0.1)


def direct(archive: OrthancArchive, original: Dataset) -> tuple[Dataset, Dataset]:
    """The same request to the archive's own STOW-RS: its answer and what it kept."""
    answer = DICOMwebClient(url=f"{archive.base_url}/dicom-web").store_instances([original])
    return answer, kept(archive, str(original.SOPInstanceUID))


@pytest.mark.parametrize("route", ["SPOOLED", "RELAYED"])
def test_stored_instances_arrive_as_a_direct_store_leaves_them(
        target: OrthancArchive, tmp_path: Path, route: str) -> None:
    proxy = proxy_for(target, tmp_path)
    try:
        originals = [dcmread(_path(name)) for name in FILES]
        answer = client(proxy, route).store_instances(originals)
        referenced = {str(item.ReferencedSOPInstanceUID) for item in
                      answer.ReferencedSOPSequence}
        assert referenced == {str(ds.SOPInstanceUID) for ds in originals}
        assert "FailedSOPSequence" not in answer
        studies = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID) for ds in originals}
        for item in answer.ReferencedSOPSequence:                 # PS3.18 10.5.3.1
            assert item.RetrieveURL == (f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/"
                                        f"{route}/studies/{studies[item.ReferencedSOPInstanceUID]}")
        through = {uid: kept(target, uid) for uid in referenced}
        target.delete_all()
        for original in originals:
            uid = str(original.SOPInstanceUID)
            their_answer, directly = direct(target, original)
            assert through[uid] == directly == original          # element for element
            assert through[uid].PixelData == original.PixelData
            assert [str(i.ReferencedSOPInstanceUID) for i in
                    their_answer.ReferencedSOPSequence] == [uid]
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "STOW-RS")
        assert (line["status"], line["stored"], line["failed"]) == (200, 2, 0)
        assert proxy.metric("dicom_proxy_http_requests_total", route=route,
                            service="STOW-RS", code="200") == 1
    finally:
        proxy.stop()


def direct_c_store(archive: OrthancArchive, ds: Dataset) -> int:
    ae = AE("WS_DIRECT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(LOOPBACK, archive.dicom_port, ae_title=archive.aet)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_a_relay_route_answers_with_the_archives_own_refusal(tmp_path: Path) -> None:
    """The archive refuses the instance (its Lua filter fails: Orthanc answers 0xA700):
    the STOW-RS answer's Failure Reason is the status a direct C-STORE gets."""
    script = tmp_path / "refuse.lua"
    script.write_text('function ReceivedInstanceFilter(dicom, origin, info)\n'
                      '  error("refused by policy")\nend\n')
    ct = dcmread(_path("CT_small.dcm"))
    with OrthancArchive("REFUSER", extra_config={"LuaScripts": [str(script)]}) as refuser:
        directly = direct_c_store(refuser, ct)
        assert directly != 0x0000
        associations = len(refuser.calling_aets())
        proxy = ProxyProcess({
            "archives": {"refuser": archive_entry(refuser)},
            "routes": [{"called_ae": "RELAYED", "archives": ["refuser"],
                        "store_to": ["refuser"], "store": "relay", "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0},
        }, tmp_path).start()
        try:
            with pytest.raises(HTTPError) as info:
                client(proxy, "RELAYED").store_instances([ct])
            assert info.value.response.status_code == 409
            [failed] = info.value.response.json()["00081198"]["Value"]
            assert failed["00081155"]["Value"] == [str(ct.SOPInstanceUID)]
            assert failed["00081197"]["Value"] == [directly]
            assert len(refuser.calling_aets()) > associations   # the archive's own answer
            assert not refuser.instance_uids()
            line = proxy.wait_event("operation", lambda e: e.get("operation") == "STOW-RS")
            assert (line["status"], line["stored"], line["failed"]) == (409, 0, 1)
        finally:
            proxy.stop()


def test_refusals_are_failed_sop_items(target: OrthancArchive, tmp_path: Path) -> None:
    proxy = proxy_for(target, tmp_path)
    try:
        ct = dcmread(_path("CT_small.dcm"))
        # A relay route whose archive is down: nothing stored, 409, Out of Resources.
        with pytest.raises(HTTPError) as info:
            client(proxy, "DOWN").store_instances([ct])
        assert info.value.response.status_code == 409
        failed = info.value.response.json()["00081198"]["Value"][0]
        assert failed["00081155"]["Value"] == [str(ct.SOPInstanceUID)]
        assert failed["00081197"]["Value"] == [0xA700]
        # A study in the URL the instance is not of: 0xA900, and nothing stored.
        with pytest.raises(HTTPError) as info:
            client(proxy, "SPOOLED").store_instances([ct], study_instance_uid="1.2.3.4")
        assert info.value.response.status_code == 409
        assert info.value.response.json()["00081198"]["Value"][0]["00081197"]["Value"] \
            == [0xA900]
        # A route that stores nothing: Not Authorized (0x0124), as a C-STORE would get.
        with pytest.raises(HTTPError) as info:
            client(proxy, "NOSTORE").store_instances([ct])
        assert info.value.response.json()["00081198"]["Value"][0]["00081197"]["Value"] \
            == [0x0124]
        assert not target.rest("POST", "/tools/lookup", str(ct.SOPInstanceUID).encode())
        # Not a multipart of DICOM instances: 415.
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/SPOOLED/studies",
            data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=30)
        assert error.value.code == 415
    finally:
        proxy.stop()
