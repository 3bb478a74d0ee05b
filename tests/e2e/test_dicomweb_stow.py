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
