"""WADO-RS end to end: ``dicomweb-client`` → the proxy's DICOMweb front door → a REAL Orthanc.

Every answer is compared with the same data fetched DIRECTLY from the archive (a pynetdicom
C-GET, which is what WADO-RS maps to) or with the files Orthanc was given: studies
data set for data set, pixel data byte for byte; metadata element for element minus
bulk data (served from the cache the second time, no archive traffic); frames equal the
frames pydicom cuts from the original (native and RLE multi-frame); BulkDataURIs resolve.
"""

from __future__ import annotations

import copy
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian
from requests import HTTPError

from tests.e2e.data import SyntheticSet
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.e2e.retrieve_peers import direct_get

ROUTE = "WADO"
ORIGIN = "http://viewer.example"
NATIVE_MULTIFRAME = "rtdose.dcm"                 # 15 frames, Implicit VR Little Endian
RLE_MULTIFRAME = "SC_rgb_rle_2frame.dcm"          # 2 frames, RLE Lossless
JPEG_MULTIFRAME = "examples_ybr_color.dcm"       # 30 frames, JPEG Baseline (second archive)
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")   # Debian orthanc-dicomweb
SUCCESS = 0x0000


def _testdata(name: str) -> Path:
    found = get_testdata_file(name)
    assert found, name
    return Path(str(found))


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS_WADO") as pacs:
        pacs.upload([*synthetic_studies.paths, _testdata(NATIVE_MULTIFRAME),
                     _testdata(RLE_MULTIFRAME)])
        yield pacs


@pytest.fixture(scope="module")
def second(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    """The federation's other archive, with Orthanc's own DICOMweb plugin to compare with."""
    config = {"Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with OrthancArchive("PACS_WADO_B", extra_config=config) as pacs:
        pacs.upload([_testdata(JPEG_MULTIFRAME)])
        yield pacs


@pytest.fixture(scope="module")
def proxy(archive: OrthancArchive, second: OrthancArchive,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    process = ProxyProcess({
        "archives": {"pacs": archive_entry(archive), "pacs_b": archive_entry(second)},
        "routes": [{"called_ae": ROUTE, "archives": ["pacs", "pacs_b"], "dicomweb": True}],
        "dicomweb": {"host": LOOPBACK, "port": 0, "cors_origins": [ORIGIN]},
    }, tmp_path_factory.mktemp("wado-proxy")).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.stderr()[-2000:]


def root(proxy: ProxyProcess) -> str:
    return f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/{ROUTE}"


def client(proxy: ProxyProcess) -> DICOMwebClient:
    return DICOMwebClient(url=root(proxy))


def test_a_study_is_what_a_direct_c_get_brings(proxy: ProxyProcess, archive: OrthancArchive,
                                              synthetic_studies: SyntheticSet) -> None:
    study = synthetic_studies.studies[0]
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in study.paths}
    through = {str(ds.SOPInstanceUID): ds for ds in client(proxy).retrieve_study(study.study_uid)}
    direct = direct_get(archive.dicom_port, archive.aet, study.study_uid, classes)
    assert set(through) == set(direct) == set(study.sop_uids)
    for uid, ds in through.items():
        assert ds.file_meta.TransferSyntaxUID == direct[uid].file_meta.TransferSyntaxUID
        assert ds == direct[uid]
        assert ds.PixelData == direct[uid].PixelData
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "WADO-RS")
    assert line["status"] == 200 and line["completed"] == len(study.sop_uids)
    series = str(next(iter(through.values())).SeriesInstanceUID)
    one = client(proxy).retrieve_series(study.study_uid, series)
    assert {str(ds.SeriesInstanceUID) for ds in one} == {series}
    assert {str(ds.SOPInstanceUID) for ds in one} == {
        uid for uid, ds in direct.items() if str(ds.SeriesInstanceUID) == series}


def test_an_rle_instance_original_or_explicit_little_endian(proxy: ProxyProcess) -> None:
    original = dcmread(_testdata(RLE_MULTIFRAME))
    uids = (str(original.StudyInstanceUID), str(original.SeriesInstanceUID),
            str(original.SOPInstanceUID))
    kept = client(proxy).retrieve_instance(*uids)
    assert kept.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert kept.PixelData == original.PixelData
    plain = client(proxy).retrieve_instance(
        *uids, media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (plain.pixel_array == original.pixel_array).all()


def test_metadata_is_the_instances_without_bulk_data_and_cached(
        proxy: ProxyProcess, archive: OrthancArchive) -> None:
    original = dcmread(_testdata(NATIVE_MULTIFRAME))
    study, series = str(original.StudyInstanceUID), str(original.SeriesInstanceUID)
    uploads_before = len([e for e in proxy.events("upstream") if e["operation"] == "C-GET"])
    [meta] = client(proxy).retrieve_series_metadata(study, series)
    got = Dataset.from_json(meta, lambda uri: b"")          # bulk data left as URIs
    for keyword in ("SOPInstanceUID", "PatientName", "NumberOfFrames", "Rows", "Columns",
                    "DoseGridScaling", "GridFrameOffsetVector"):
        assert got[keyword].value == original[keyword].value, keyword
    pixel_uri = meta["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(root(proxy)) and "Value" not in meta["7FE00010"]
    fetched = len([e for e in proxy.events("upstream") if e["operation"] == "C-GET"])
    assert fetched > uploads_before                        # the first answer needed the archive
    again = client(proxy).retrieve_series_metadata(study, series)
    assert again == [meta]
    assert len([e for e in proxy.events("upstream") if e["operation"] == "C-GET"]) == fetched
    [bulk] = client(proxy).retrieve_bulkdata(pixel_uri)
    assert bulk == original.PixelData                      # the URI resolves


@pytest.mark.parametrize(("name", "wanted"), [(NATIVE_MULTIFRAME, [1, 7, 15]),
                                              (RLE_MULTIFRAME, [2])])
def test_frames_are_the_originals(proxy: ProxyProcess, name: str, wanted: list[int]) -> None:
    original = dcmread(_testdata(name))
    frames = client(proxy).retrieve_instance_frames(
        str(original.StudyInstanceUID), str(original.SeriesInstanceUID),
        str(original.SOPInstanceUID), wanted,
        media_types=("application/octet-stream", "image/x-dicom-rle"))
    count = int(original.NumberOfFrames)
    if original.file_meta.TransferSyntaxUID.is_compressed:
        expected = list(generate_frames(original.PixelData, number_of_frames=count))
    else:
        size = len(original.PixelData) // count
        expected = [original.PixelData[i * size:(i + 1) * size] for i in range(count)]
    assert frames == [expected[n - 1] for n in wanted]


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def counted(proxy: ProxyProcess, code: int) -> float:
    return proxy.metric("dicom_proxy_http_requests_total", route=ROUTE, service="WADO-RS",
                        code=str(code))


def test_unknown_unacceptable_and_cors(proxy: ProxyProcess,
                                      synthetic_studies: SyntheticSet) -> None:
    before = {code: counted(proxy, code) for code in (200, 400, 404, 406)}
    with pytest.raises(HTTPError) as info:
        client(proxy).retrieve_study("1.2.3.4.5.6.7.8.9")
    assert info.value.response.status_code == 404
    study = synthetic_studies.studies[1].study_uid
    code, _, body = _get(f"{root(proxy)}/studies/{study}", Accept="image/png")
    assert code == 406 and b"multipart/related" in body
    code, _, _ = _get(f"{root(proxy)}/studies/{study}/series/1/instances/2/frames/0")
    assert code == 400
    # A streamed answer carries the CORS headers for an allowed origin.
    code, headers, body = _get(f"{root(proxy)}/studies/{study}", Origin=ORIGIN)
    assert code == 200 and headers.get("Access-Control-Allow-Origin") == ORIGIN
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert body.rstrip().endswith(b"--")
    # A streamed answer is counted once its last byte is written, which the client may
    # read first: wait for the count (or the deadline), then compare.
    wanted = {200: 1, 400: 1, 404: 1, 406: 1}
    deadline = time.monotonic() + 10
    while (seen := {code: counted(proxy, code) - before[code] for code in before}) != wanted \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == wanted


def test_an_archive_that_is_down_is_a_502_naming_it_a_silent_one_504(tmp_path: Path) -> None:
    from tests.e2e.fault_peers import ScriptedArchive, never_answers
    from tests.e2e.ports import free_port
    silent = ScriptedArchive(never_answers, aet="SILENT")
    proxy = ProxyProcess({
        "archives": {"gone": {"ae_title": "GONE", "host": LOOPBACK, "port": free_port(),
                              "timeout": 3},
                     "silent": {"ae_title": "SILENT", "host": LOOPBACK,
                                "port": silent.dicom_port, "timeout": 1}},
        "routes": [{"called_ae": ROUTE, "archives": ["gone"], "dicomweb": True},
                   {"called_ae": "SLOW", "archives": ["silent"], "dicomweb": True}],
        "dicomweb": {"host": LOOPBACK, "port": 0},
    }, tmp_path).start()
    try:
        code, _, body = _get(f"{root(proxy)}/studies/1.2.3")
        assert code == 502 and b"GONE is running and reachable" in body, body
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "WADO-RS")
        assert line["status"] == 502 and line["archives"] == ["gone"]
        slow = root(proxy).replace(f"/{ROUTE}", "/SLOW")
        code, _, body = _get(f"{slow}/studies/1.2.3")
        assert code == 504 and b"no archive answered in time" in body, body
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "WADO-RS"
                                and e.get("status") == 504)
        assert line["archives"] == ["silent"] and line["timed_out"] == ["silent"]
        code, _, body = _get(f"{slow}/studies/1.2.3/series/4.5/metadata")
        assert code == 504, body
    finally:
        silent.close()
        assert proxy.stop() == 0


def test_a_byte_range_of_bulk_data(proxy: ProxyProcess) -> None:
    original = dcmread(_testdata(NATIVE_MULTIFRAME))
    uri = (f"{root(proxy)}/studies/{original.StudyInstanceUID}/series/"
           f"{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}/bulkdata/7FE00010")
    [part] = client(proxy).retrieve_bulkdata(uri, byte_range=(100, 199))
    assert part == original.PixelData[100:200]
    code, headers, _ = _get(uri, Range=f"bytes={len(original.PixelData)}-")
    assert code == 416 and headers["Content-Range"] == f"bytes */{len(original.PixelData)}"


# -- a federation, and Orthanc's own WADO-RS over the same data ---------------------------

def test_a_federated_study_and_orthancs_own_wado_rs(synthetic_studies: SyntheticSet,
                                                    tmp_path: Path) -> None:
    """Two archives, each holding part of one study (a study split across sites): the
    proxy's answer is the whole study, equal to what each archive's own WADO-RS (Orthanc's
    DICOMweb plugin) gives for its part; the metadata likewise, minus bulk data."""
    study = synthetic_studies.studies[2]
    paths = sorted(study.paths)
    half = len(paths) // 2
    plugin = {"Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with OrthancArchive("SITE_A", extra_config=plugin) as a, \
            OrthancArchive("SITE_B", extra_config=plugin) as b:
        a.upload(paths[:half])
        b.upload(paths[half:])
        proxy = ProxyProcess({
            "archives": {"site_a": archive_entry(a), "site_b": archive_entry(b)},
            "routes": [{"called_ae": ROUTE, "archives": ["site_a", "site_b"],
                        "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0},
        }, tmp_path).start()
        try:
            through = {str(ds.SOPInstanceUID): ds
                       for ds in client(proxy).retrieve_study(study.study_uid)}
            theirs: dict[str, Dataset] = {}
            for site in (a, b):
                own = DICOMwebClient(url=f"{site.base_url}/dicom-web")
                theirs.update({str(ds.SOPInstanceUID): ds
                               for ds in own.retrieve_study(study.study_uid)})
            assert set(through) == set(theirs) == set(study.sop_uids)
            for uid, ds in through.items():
                assert ds == theirs[uid] and ds.PixelData == theirs[uid].PixelData
            ours_meta = {m["00080018"]["Value"][0]: m for m in
                         client(proxy).retrieve_study_metadata(study.study_uid)}
            their_meta = {}
            for site in (a, b):
                own = DICOMwebClient(url=f"{site.base_url}/dicom-web")
                their_meta.update({m["00080018"]["Value"][0]: m for m in
                                   own.retrieve_study_metadata(study.study_uid)})
            assert set(ours_meta) == set(their_meta)
            for uid, mine in ours_meta.items():
                other = their_meta[uid]
                for key, attribute in mine.items():
                    if "BulkDataURI" in attribute or "InlineBinary" in attribute:
                        continue                       # URIs are each server's own
                    if key in other and "BulkDataURI" not in other[key]:
                        assert attribute == other[key], (uid, key)
        finally:
            assert proxy.stop() == 0


def test_a_jpeg_multiframe_from_the_other_archive_of_the_federation(
        proxy: ProxyProcess, second: OrthancArchive) -> None:
    """The instance lives on the federation's second archive: the study equals a direct
    C-GET from it and what Orthanc's own WADO-RS (its DICOMweb plugin) sends for the same
    request; its frames are the original's JPEG fragments, never decoded."""
    original = dcmread(_testdata(JPEG_MULTIFRAME))
    study = str(original.StudyInstanceUID)
    uids = (study, str(original.SeriesInstanceUID), str(original.SOPInstanceUID))
    [through] = client(proxy).retrieve_study(study)
    direct = direct_get(second.dicom_port, second.aet, study, {str(original.SOPClassUID)})
    [plugin] = DICOMwebClient(url=f"{second.base_url}/dicom-web").retrieve_study(
        study, media_types=(("application/dicom", "*"),))
    for name, other in (("direct", direct[uids[2]]), ("plugin", plugin), ("file", original)):
        assert through.file_meta.TransferSyntaxUID == other.file_meta.TransferSyntaxUID, name
        assert through.file_meta.TransferSyntaxUID == other.file_meta.TransferSyntaxUID
        assert through == other
        assert through.PixelData == other.PixelData
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "WADO-RS"
                            and e.get("completed") == 1 and "pacs_b" in e.get("archives", []))
    assert line["status"] == 200
    wanted = [1, 15, 30]
    frames = client(proxy).retrieve_instance_frames(*uids, wanted, media_types=("image/jpeg",))
    expected = list(generate_frames(original.PixelData,
                                    number_of_frames=int(original.NumberOfFrames)))
    assert frames == [expected[n - 1] for n in wanted]
    assert all(frame.startswith(b"\xff\xd8") for frame in frames)   # JPEG SOI: as stored
    code, _, body = _get(f"{root(proxy)}/studies/{study}/series/{uids[1]}/instances/"
                         f"{uids[2]}/frames/1", Accept="multipart/related; "
                         "type=\"application/octet-stream\"")
    assert code == 406, body                        # it would have to decode: refused


def test_series_metadata_is_every_data_set_minus_its_bulk_data(
        proxy: ProxyProcess, archive: OrthancArchive, synthetic_studies: SyntheticSet) -> None:
    study = synthetic_studies.studies[2]
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in study.paths}
    direct = direct_get(archive.dicom_port, archive.aet, study.study_uid, classes)
    series = str(next(iter(direct.values())).SeriesInstanceUID)
    expected = {uid: ds for uid, ds in direct.items() if str(ds.SeriesInstanceUID) == series}
    metadata = client(proxy).retrieve_series_metadata(study.study_uid, series)
    assert {m["00080018"]["Value"][0] for m in metadata} == set(expected)
    for meta in metadata:
        original = expected[meta["00080018"]["Value"][0]]
        assert set(meta) == {f"{int(e.tag):08X}" for e in original}     # nothing left out
        bulk = {tag for tag, value in meta.items() if "BulkDataURI" in value}
        assert "7FE00010" in bulk
        assert meta["7FE00010"]["vr"] == original["PixelData"].VR      # OB/OW as stored
        got = Dataset.from_json({t: v for t, v in meta.items() if t not in bulk})
        for elem in original:
            if f"{int(elem.tag):08X}" not in bulk:
                assert got[elem.tag] == elem, elem.tag                 # element for element


def _big_study(count: int, pixel_bytes: int) -> list[Dataset]:
    """``count`` instances of one new study, each with ``pixel_bytes`` of native pixel data."""
    from pydicom.uid import generate_uid
    template = dcmread(_testdata("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    side = int((pixel_bytes // 2) ** 0.5)
    out = []
    for n in range(count):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.Rows = ds.Columns = side
        ds.PixelData = bytes([n % 256]) * (side * side * 2)
        out.append(ds)
    return out


def test_a_client_that_hangs_up_cancels_the_retrieve(tmp_path: Path) -> None:
    """The client stops reading then closes: the proxy's write waits (back-pressure), the
    retrieve window fills, the C-GET waits; the hang-up cancels it all (499, C-CANCEL
    upstream, no buffer file left)."""
    import socket
    big = _big_study(24, 1 << 20)                        # 24 MB: more than socket buffers
    with OrthancArchive("PACS_BIG") as pacs:
        pacs.upload(big)
        assert len(pacs.instance_uids()) == len(big)
        spool = tmp_path / "spool"
        proxy = ProxyProcess({
            "archives": {"pacs": archive_entry(pacs)},
            "routes": [{"called_ae": ROUTE, "archives": ["pacs"], "dicomweb": True}],
            "spool": {"dir": str(spool), "retrieve_memory_bytes": 1 << 20,
                      "retrieve_max_bytes": 2 << 20},
            "dicomweb": {"host": LOOPBACK, "port": 0},
        }, tmp_path).start()
        try:
            study = str(big[0].StudyInstanceUID)
            with socket.create_connection((LOOPBACK, proxy.dicomweb_port), timeout=30) as sock:
                sock.sendall(f"GET /dicomweb/{ROUTE}/studies/{study} HTTP/1.1\r\n"
                             f"Host: {LOOPBACK}\r\nAccept: multipart/related; "
                             f"type=\"application/dicom\"\r\n\r\n".encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")     # close = RST
            line = proxy.wait_event("operation", lambda e: e.get("operation") == "WADO-RS")
            assert line["status"] == 499, line
            assert line["completed"] < len(big), line
            [get] = [e for e in proxy.events("upstream") if e["operation"] == "C-GET"]
            assert get["status"] == "0xFE00" and get["received"] < len(big), get   # C-CANCEL
            assert not list((spool / "retrieve").rglob("*.dcm"))
        finally:
            assert proxy.stop() == 0
