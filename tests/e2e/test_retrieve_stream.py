"""``proxy.retrieve.stream``: a study pulled through the retrieve path for a reader with no
DIMSE association (what WADO-RS serves), against a REAL Orthanc.

Every instance handed out is compared with what a DIRECT C-GET from the archive
(pynetdicom as the workstation) brings: the same Part-10 data set bytes in the original
transfer syntax, or, when the reader asks for Explicit VR Little Endian, the same pixel
values decoded. A reader that leaves mid-study stops the retrieve and leaves no files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from proxy.app import Proxy
from proxy.config import parse
from proxy.retrieve.stream import InstanceStream
from tests.e2e.data import SyntheticSet
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import archive_entry
from tests.e2e.retrieve_peers import direct_get

COMPRESSED = ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"]
SUCCESS, CANCEL = 0x0000, 0xFE00


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS_STREAM") as pacs:
        pacs.upload([*synthetic_studies.paths,
                     *(Path(get_testdata_file(name)) for name in COMPRESSED)])
        yield pacs


@pytest.fixture
def proxy(archive: OrthancArchive, tmp_path: Path) -> Iterator[Proxy]:
    config = parse({
        "proxy": {"ae_title": "QR_PROXY", "host": LOOPBACK, "port": 0},
        "metrics": {"enabled": False},
        "spool": {"dir": str(tmp_path / "spool")},
        "archives": {"pacs": archive_entry(archive, retrieve="get")},
        "routes": [{"called_ae": "WEB", "archives": ["pacs"]}],
    })
    with open(os.devnull, "w") as sink:
        running = Proxy(config, stream=sink)
        running.start()
        try:
            yield running
        finally:
            running.stop(grace=2)


def read_all(stream: InstanceStream) -> dict[str, tuple[str, bytes]]:
    out = {}
    for part in stream:
        data = b"".join(part.chunks(size=4096))
        part.done()
        out[part.sop_instance_uid] = (part.transfer_syntax, data)
    return out


def test_a_study_streams_as_a_direct_c_get_brings_it(proxy: Proxy, archive: OrthancArchive,
                                                    synthetic_studies: SyntheticSet) -> None:
    study = synthetic_studies.studies[0]
    route = proxy.config.routes[0]
    stream = InstanceStream(proxy.services, route, {"StudyInstanceUID": study.study_uid},
                            "WADO-TEST", "127.0.0.1:1")
    got = read_all(stream)
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in study.paths}
    direct = direct_get(archive.dicom_port, archive.aet, study.study_uid, classes)
    assert set(got) == set(direct) == set(study.sop_uids)
    for uid, (syntax, data) in got.items():
        ds = dcmread(io.BytesIO(data))           # a valid Part-10 file
        assert syntax == ds.file_meta.TransferSyntaxUID == direct[uid].file_meta.TransferSyntaxUID
        assert ds == direct[uid]
    assert stream.status == SUCCESS
    assert stream.record.details["completed"] == len(study.sop_uids)


@pytest.mark.parametrize("name", COMPRESSED)
def test_an_instance_in_its_original_syntax_or_explicit_little_endian(
        proxy: Proxy, name: str) -> None:
    original = dcmread(get_testdata_file(name))
    keys = {"StudyInstanceUID": str(original.StudyInstanceUID),
            "SeriesInstanceUID": str(original.SeriesInstanceUID),
            "SOPInstanceUID": str(original.SOPInstanceUID)}
    route = proxy.config.routes[0]
    [(syntax, data)] = read_all(InstanceStream(proxy.services, route, keys, "W", "p")).values()
    kept = dcmread(io.BytesIO(data))
    assert syntax == original.file_meta.TransferSyntaxUID
    assert kept.PixelData == original.PixelData
    stream = InstanceStream(proxy.services, route, keys, "W", "p",
                            syntaxes=(ExplicitVRLittleEndian,))
    [(syntax, data)] = read_all(stream).values()
    plain = dcmread(io.BytesIO(data))
    assert syntax == plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (plain.pixel_array == original.pixel_array).all()
    assert stream.status == SUCCESS


def test_a_reader_that_leaves_stops_the_retrieve_and_leaves_no_files(
        proxy: Proxy, synthetic_studies: SyntheticSet) -> None:
    study = synthetic_studies.studies[1]
    stream = InstanceStream(proxy.services, proxy.config.routes[0],
                            {"StudyInstanceUID": study.study_uid}, "W", "p")
    first = stream.next_part()
    assert first is not None
    stream.close()
    assert not stream._thread.is_alive()
    assert stream.record.details["completed"] < len(study.sop_uids)
    leftovers = list((proxy.config.spool.dir / "retrieve").rglob("*.dcm"))
    assert leftovers == []
