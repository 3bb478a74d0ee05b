"""QIDO-RS end to end: dicomweb-client → the proxy's DICOMweb front door → two Orthancs.

Every search is also sent DIRECTLY to each archive as a C-FIND (pynetdicom, Study Root,
the PS3.18 default return keys written out here from Tables 10.6.3-3/-4/-5): the proxy's
answer must be the union of the archives' answers, entity by entity and attribute by
attribute (the archives' own DICOM JSON, per pydicom), with the proxy's Retrieve URL.

Data: pydicom's test files — several patients and studies, one study in both archives,
character sets from Latin-1 to ISO 2022 Japanese — plus synthetic studies for paging.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.datadict import dictionary_VR
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from requests import HTTPError

from proxy.tools.synthetic import make_studies
from tests.e2e.fault_peers import ScriptedArchive, gated_stream, never_answers, study_match
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

TOKEN = "s3cret-token"
ROUTE = "FEDWEB"
ORIGIN = "http://viewer.example"

# PS3.18 Tables 10.6.3-3, -4, -5 (Retrieve URL is the proxy's, not the archive's).
STUDY = ["StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
         "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
         "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
         "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
SERIES = ["Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID",
          "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
          "PerformedProcedureStepStartTime", "RequestAttributesSequence"]
INSTANCE = ["SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
            "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"]
NOT_COMPARED = {"00081190", "00080054", "00080052"}   # Retrieve URL/AE (the proxy's), Q/R Level


def _files(*names: str) -> list[Path]:
    out = []
    for name in names:
        found = get_testdata_file(name) or (get_charset_files(name) or [None])[0]
        assert found, name
        out.append(Path(str(found)))
    return out


A_FILES = _files("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "chrGerm.dcm", "chrFren.dcm",
                 "chrH31.dcm")
B_FILES = _files("MR_small.dcm", "rtdose.dcm", "chrRuss.dcm", "chrX1.dcm", "chrGreek.dcm",
                 "chrH31.dcm")


@pytest.fixture(scope="module")
def archives() -> Iterator[tuple[OrthancArchive, OrthancArchive]]:
    # Orthanc answers C-FINDs in its DefaultEncoding (Latin-1 unless told): UTF-8 keeps
    # the Japanese, Cyrillic and Chinese names whole, in the direct answers as through the proxy.
    utf8 = {"DefaultEncoding": "Utf8"}
    a, b = OrthancArchive("SITE_A", extra_config=utf8), OrthancArchive("SITE_B", extra_config=utf8)
    try:
        a.start()
        b.start()
        synthetic = list(make_studies(8, series_per_study=2, instances_per_series=1,
                                      seed="qido", rows=8, cols=8))
        half = len(synthetic) // 2
        a.upload([*A_FILES, *synthetic[:half + 2]])      # two synthetic studies in both
        b.upload([*B_FILES, *synthetic[half - 2:]])
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def proxy(archives: tuple[OrthancArchive, OrthancArchive],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    a, b = archives
    workdir = tmp_path_factory.mktemp("qido-proxy")
    tokens = workdir / "tokens"
    tokens.write_text(f"# viewers\n{TOKEN}\n")
    process = ProxyProcess({
        "archives": {"site_a": archive_entry(a), "site_b": archive_entry(b)},
        "routes": [{"called_ae": ROUTE, "archives": ["site_a", "site_b"], "dicomweb": True},
                   {"called_ae": "DIMSE_ONLY", "archives": ["site_a"]}],
        "dicomweb": {"host": LOOPBACK, "port": 0, "tokens_file": str(tokens),
                     "cors_origins": [ORIGIN]},
    }, workdir)
    process.start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.stderr()[-2000:]


def _root(proxy: ProxyProcess, route: str = ROUTE) -> str:
    return f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/{route}"


def _client(proxy: ProxyProcess) -> DICOMwebClient:
    return DICOMwebClient(url=_root(proxy), headers={"Authorization": f"Bearer {TOKEN}"})


def direct(archive: OrthancArchive, level: str, keys: list[str], **match: Any) -> list[Dataset]:
    """The same query as a C-FIND straight to ``archive`` (pynetdicom, Study Root)."""
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = level
    for keyword in keys:
        if keyword.endswith("Sequence"):
            setattr(query, keyword, [])
        else:
            query.add_new(keyword, dictionary_VR(keyword), None)
    for keyword, value in match.items():
        setattr(query, keyword, value)
    ae = AE(ae_title="DIRECT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOOPBACK, archive.dicom_port, ae_title=archive.aet)
    assert assoc.is_established
    try:
        found = []
        for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01) and ds is not None:
                found.append(ds)
            else:
                assert status and status.Status == 0x0000, status
        return found
    finally:
        assoc.release()


def expected(archives: tuple[OrthancArchive, ...], level: str, keys: list[str],
             unique: str, **match: Any) -> dict[str, dict[str, Any]]:
    """The union of the archives' direct answers as DICOM JSON, by unique key."""
    union: dict[str, dict[str, Any]] = {}
    for archive in archives:
        for ds in direct(archive, level, keys, **match):
            obj = {k: _f25(v) for k, v in ds.to_json_dict().items() if k not in NOT_COMPARED}
            uid = str(ds[unique].value)
            if uid in union:           # in both archives: the same files, the same answer
                assert union[uid] == obj, uid
            union.setdefault(uid, obj)
    return union


def _f25(attribute: dict[str, Any]) -> dict[str, Any]:
    """PS3.18 F.2.5: an empty attribute (an empty sequence too) has no "Value" at all;
    pydicom writes an empty sequence as "Value": []."""
    return {k: v for k, v in attribute.items() if not (k == "Value" and v == [])}


def by_uid(answer: list[dict[str, Any]], tag: str) -> dict[str, dict[str, Any]]:
    out = {obj[tag]["Value"][0]: obj for obj in answer}
    assert len(out) == len(answer), "duplicates in the answer"
    return out


def assert_same(got: list[dict[str, Any]], want: dict[str, dict[str, Any]], tag: str,
                url_of: Any) -> None:
    answered = by_uid(got, tag)
    assert set(answered) == set(want)
    for uid, obj in answered.items():
        assert obj["00081190"]["Value"] == [url_of(obj)]
        assert "00080052" not in obj                     # a C-FIND artefact, not QIDO's
        assert {k: v for k, v in obj.items() if k not in NOT_COMPARED} == want[uid], uid


def study_url(proxy: ProxyProcess) -> Any:
    return lambda obj: f"{_root(proxy)}/studies/{obj['0020000D']['Value'][0]}"


# -- searches compared with the archives' own answers --------------------------------------


def test_studies_by_patient_name_wildcard_are_the_union_of_the_archives(
        proxy: ProxyProcess, archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    got = _client(proxy).search_for_studies(search_filters={"PatientName": "Compressed*"})
    want = expected(archives, "STUDY", STUDY, "StudyInstanceUID", PatientName="Compressed*")
    assert len(want) == 2                                  # CT_small, MR_small (in both)
    assert_same(got, want, "0020000D", study_url(proxy))


def test_a_percent_encoded_wildcard_is_decoded(proxy: ProxyProcess) -> None:
    # Orthanc's plugin 1.7 answers this with nothing (issue 13).
    raw = _get(f"{_root(proxy)}/studies?PatientName=Compressed%2A")
    assert raw.status == 200
    assert len(json.loads(raw.read())) == 2


def test_all_studies_and_a_study_date_range(
        proxy: ProxyProcess, archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    client = _client(proxy)
    everything = client.search_for_studies()
    assert_same(everything, expected(archives, "STUDY", STUDY, "StudyInstanceUID"),
                "0020000D", study_url(proxy))
    ranged = client.search_for_studies(search_filters={"StudyDate": "20030101-20041231"})
    want = expected(archives, "STUDY", STUDY, "StudyInstanceUID",
                    StudyDate="20030101-20041231")
    assert 2 <= len(want) < len(everything)
    assert_same(ranged, want, "0020000D", study_url(proxy))


def test_modalities_in_study(proxy: ProxyProcess,
                             archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    got = _client(proxy).search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    want = expected(archives, "STUDY", STUDY, "StudyInstanceUID", ModalitiesInStudy="MR")
    assert want
    assert_same(got, want, "0020000D", study_url(proxy))


def test_a_non_ascii_name_matches_and_every_character_set_comes_back_as_the_archive_says(
        proxy: ProxyProcess, archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    client = _client(proxy)
    got = client.search_for_studies(search_filters={"PatientName": "Äneas*"})
    want = expected(archives, "STUDY", STUDY, "StudyInstanceUID", PatientName="Äneas*")
    assert len(want) == 1
    assert_same(got, want, "0020000D", study_url(proxy))
    [obj] = got
    assert obj["00100010"]["Value"][0]["Alphabetic"] == "Äneas^Rüdiger"
    names = {json.dumps(o["00100010"].get("Value"), ensure_ascii=False)
             for o in client.search_for_studies()}
    cyrillic = "\u041b\u044e\u043a"                       # chrRuss's name starts so
    assert any("山田^太郎" in n for n in names) and any(cyrillic in n for n in names)


def test_series_of_a_study_all_series_and_instances(
        proxy: ProxyProcess, archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    client = _client(proxy)
    study = str(dcmread(A_FILES[0], stop_before_pixels=True).StudyInstanceUID)
    root = _root(proxy)

    def series_url(obj: dict[str, Any]) -> str:
        return f"{root}/studies/{obj['0020000D']['Value'][0]}/series/" \
               f"{obj['0020000E']['Value'][0]}"

    def instance_url(obj: dict[str, Any]) -> str:
        return f"{series_url(obj)}/instances/{obj['00080018']['Value'][0]}"

    got = client.search_for_series(study_instance_uid=study)
    want = expected(archives, "SERIES", SERIES, "SeriesInstanceUID", StudyInstanceUID=study)
    assert len(want) == 1
    assert_same(got, want, "0020000E", series_url)
    every = client.search_for_series(search_filters={"Modality": "OT"})
    want = expected(archives, "SERIES", [*STUDY, *SERIES], "SeriesInstanceUID", Modality="OT")
    assert len(want) >= 5
    assert_same(every, want, "0020000E", series_url)
    instances = client.search_for_instances(study_instance_uid=study)
    want = expected(archives, "IMAGE", [*SERIES, *INSTANCE], "SOPInstanceUID",
                    StudyInstanceUID=study)
    assert_same(instances, want, "00080018", instance_url)
    series = next(iter(want.values()))["0020000E"]["Value"][0]
    nested = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    want = expected(archives, "IMAGE", INSTANCE, "SOPInstanceUID", StudyInstanceUID=study,
                    SeriesInstanceUID=series)
    assert_same(nested, want, "00080018", instance_url)
    all_ct = client.search_for_instances(search_filters={"Modality": "CT"})
    want = expected(archives, "IMAGE", [*STUDY, *SERIES, *INSTANCE], "SOPInstanceUID",
                    Modality="CT")
    assert want
    assert_same(all_ct, want, "00080018", instance_url)


def test_pages_concatenate_to_the_full_answer(
        proxy: ProxyProcess, archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    client = _client(proxy)
    full = client.search_for_studies()
    pages: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = client.search_for_studies(limit=3, offset=offset)
        if not page:
            break
        assert len(page) <= 3
        pages.extend(page)
        offset += len(page)
    uids = [o["0020000D"]["Value"][0] for o in pages]
    assert len(uids) == len(set(uids)) == len(full)
    assert uids == sorted(uids)                          # stable: sorted by the unique key
    assert pages == sorted(full, key=lambda o: o["0020000D"]["Value"][0])
    assert set(uids) == set(expected(archives, "STUDY", STUDY, "StudyInstanceUID"))
    # dicomweb-client's own paging (offset += what came back, until an empty page).
    assert client.search_for_studies(limit=4, get_remaining=True) == pages
    more = _get(f"{_root(proxy)}/studies?limit=2")
    assert any("additional results" in w for w in more.headers.get_all("Warning") or [])


def test_includefield_adds_attributes(proxy: ProxyProcess,
                                      archives: tuple[OrthancArchive, OrthancArchive]) -> None:
    fields = ["StudyDescription", "00101010"]           # by keyword and by tag (PatientAge)
    got = _client(proxy).search_for_studies(fields=fields,
                                            search_filters={"PatientName": "Compressed*"})
    want = expected(archives, "STUDY", [*STUDY, "StudyDescription", "PatientAge"],
                    "StudyInstanceUID", PatientName="Compressed*")
    assert any("00081030" in o for o in want.values())
    assert_same(got, want, "0020000D", study_url(proxy))
    every = _client(proxy).search_for_studies(fields=["all"],
                                              search_filters={"PatientName": "Compressed*"})
    assert all("00081030" in o for o in every)


# -- HTTP as a viewer expects it ---------------------------------------------------------


class _Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def read(self) -> bytes:
        return self.body


def _get(url: str, token: str | None = TOKEN, method: str = "GET",
         **headers: str) -> _Answer:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=30) as rsp:
            return _Answer(rsp.status, rsp.headers, rsp.read())
    except urllib.error.HTTPError as err:
        return _Answer(err.code, err.headers, err.read())


def test_http_errors_are_clear(proxy: ProxyProcess) -> None:
    root = _root(proxy)
    missing = _get(f"{root}/studies", token=None)
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = _get(f"{root}/studies", token="nope")
    assert wrong.status == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]
    with pytest.raises(HTTPError) as refused:
        DICOMwebClient(url=root).search_for_studies()
    assert refused.value.response.status_code == 401
    assert _get(f"{_root(proxy, 'NOPE')}/studies").status == 404
    assert _get(f"{_root(proxy, 'DIMSE_ONLY')}/studies").status == 404   # dicomweb = false
    assert _get(f"{root}/patients").status == 404
    bad = _get(f"{root}/studies?StudyDate=20201345")
    assert bad.status == 400 and b"StudyDate" in bad.body
    assert _get(f"{root}/studies?StudyDate=20200301-20200101").status == 400
    assert _get(f"{root}/studies?NoSuchKeyword=1").status == 400
    assert _get(f"{root}/studies?limit=-1").status == 400
    assert _get(f"{root}/studies", Accept="multipart/related; type=\"application/dicom+xml\"",
                ).status == 406
    nothing = _get(f"{root}/studies?PatientID=NOBODY")
    assert (nothing.status, nothing.body) == (200, b"[]")


def test_cors_preflight_and_exposed_warning(proxy: ProxyProcess) -> None:
    root = _root(proxy)
    pre = _get(f"{root}/studies", token=None, method="OPTIONS", Origin=ORIGIN,
               Access_Control_Request_Method="GET",
               Access_Control_Request_Headers="authorization")
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "GET" in pre.headers["Access-Control-Allow-Methods"]
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    stranger = _get(f"{root}/studies", token=None, method="OPTIONS",
                    Origin="http://evil.example", Access_Control_Request_Method="GET")
    assert stranger.status == 403 and "Access-Control-Allow-Origin" not in stranger.headers
    got = _get(f"{root}/studies", Origin=ORIGIN)
    assert got.status == 200 and got.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Warning" in got.headers["Access-Control-Expose-Headers"]
    denied = _get(f"{root}/studies", token=None, Origin=ORIGIN)   # a 401 a page can read
    assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_json_is_gzipped_when_accepted(proxy: ProxyProcess) -> None:
    plain = _get(f"{_root(proxy)}/studies")
    zipped = _get(f"{_root(proxy)}/studies", Accept_Encoding="gzip")
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.body)) == json.loads(plain.body)
    assert plain.headers["Content-Type"].startswith("application/dicom+json")


def test_each_request_is_one_operation_line_and_counted(proxy: ProxyProcess) -> None:
    before = proxy.metric("dicom_proxy_http_requests_total", route=ROUTE, service="QIDO-RS",
                          code="200")
    bad = proxy.metric("dicom_proxy_http_requests_total", route=ROUTE, service="QIDO-RS",
                       code="400")
    seen = len(proxy.operations("QIDO-RS"))
    assert _get(f"{_root(proxy)}/studies?PatientName=Compressed%2A").status == 200
    assert _get(f"{_root(proxy)}/studies?PatientBirthDate=19601301").status == 400
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "QIDO-RS"
                            and e.get("status") == 400 and e.get("path", "").endswith("studies")
                            and len(proxy.operations("QIDO-RS")) >= seen + 2)
    ops = proxy.operations("QIDO-RS")[seen:]
    ok = next(o for o in ops if o["status"] == 200)
    assert ok["archives"] == ["site_a", "site_b"] and ok["called_ae"] == ROUTE
    assert ok["calling"].startswith(f"{LOOPBACK}:") and ok["duration_ms"] >= 0
    assert ok["matches"] == 2 and ok["query_level"] == "STUDY"
    assert "Compressed" not in json.dumps(ok)          # the patient's name is hashed
    assert line["status"] == 400 and "no such date" in line["hint"]
    assert "19601301" not in json.dumps(line)          # a birth date, quoted by the error
    assert proxy.metric("dicom_proxy_http_requests_total", route=ROUTE, service="QIDO-RS",
                        code="200") == before + 1
    assert proxy.metric("dicom_proxy_http_requests_total", route=ROUTE, service="QIDO-RS",
                        code="400") == bad + 1


def test_a_stopped_archive_is_named_in_a_warning(proxy_factory: Any) -> None:
    with OrthancArchive("UP") as up, OrthancArchive("DOWN") as down:
        up.upload(A_FILES[:2])
        down.upload(B_FILES[1:3])
        proxy = proxy_factory({
            "archives": {"site_a": archive_entry(up), "site_b": archive_entry(down,
                                                                              timeout=5)},
            "routes": [{"called_ae": "PARTIAL", "archives": ["site_a", "site_b"],
                        "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0}})
        down.stop()
        root = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/PARTIAL"
        got = _get(f"{root}/studies", token=None)
        assert got.status == 200
        assert got.headers.get_all("Warning") == [
            '299 dicom-proxy "archives missing: site_b"']
        assert {o["0020000D"]["Value"][0] for o in json.loads(got.body)} == up.study_uids()
        up.stop()
        none = _get(f"{root}/studies", token=None)
        assert none.status == 502 and b"site_a" in none.body and b"site_b" in none.body


# -- against Orthanc's own DICOMweb plugin over the same data ---------------------------

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")   # Debian orthanc-dicomweb


def _no_empty_groups(attribute: dict[str, Any]) -> dict[str, Any]:
    """The plugin writes a PN's absent component groups as "" ("Phonetic": ""); F.2.2
    leaves them out, as pydicom (and so the proxy) does: compare without them."""
    if attribute.get("vr") != "PN" or "Value" not in attribute:
        return attribute
    return {**attribute, "Value": [{k: v for k, v in name.items() if v} for name in
                                   attribute["Value"]]}


@pytest.mark.skipif(not PLUGIN.exists(), reason="Debian orthanc-dicomweb is not installed")
def test_answers_equal_orthancs_dicomweb_plugin_where_the_standard_agrees(
        proxy_factory: Any) -> None:
    config = {"DefaultEncoding": "Utf8", "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with OrthancArchive("PLUGIN", extra_config=config) as archive:
        archive.upload([*A_FILES, *B_FILES[2:]])
        proxy = proxy_factory({
            "archives": {"site": archive_entry(archive)},
            "routes": [{"called_ae": "PLUGGED", "archives": ["site"], "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0}})
        ours = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/PLUGGED"
        theirs = f"{archive.base_url}/dicom-web"
        ct = dcmread(A_FILES[0], stop_before_pixels=True)
        study, series = ct.StudyInstanceUID, ct.SeriesInstanceUID
        for query, unique in [
                ("studies", "0020000D"), ("studies?PatientName=Compressed*", "0020000D"),
                ("studies?StudyDate=20030101-20041231", "0020000D"),
                ("studies?ModalitiesInStudy=MR", "0020000D"),
                ("studies?includefield=all", "0020000D"), ("series", "0020000E"),
                ("series?Modality=OT", "0020000E"), (f"studies/{study}/series", "0020000E"),
                ("instances", "00080018"), (f"studies/{study}/instances", "00080018"),
                (f"studies/{study}/series/{series}/instances", "00080018")]:
            mine = by_uid(json.loads(_get(f"{ours}/{query}", token=None).body), unique)
            plugin = by_uid(json.loads(_get(f"{theirs}/{query}", token=None).body), unique)
            assert set(mine) == set(plugin), query
            for uid, obj in mine.items():
                other = plugin[uid]
                for key in set(obj) & set(other) - {"00081190"}:
                    assert _no_empty_groups(obj[key]) == _no_empty_groups(other[key]), \
                        (query, key)
                assert obj["00081190"]["Value"][0].removeprefix(ours) == \
                    other["00081190"]["Value"][0].removeprefix(theirs)
                # The plugin adds the study's attributes under /studies/{uid}/...: the
                # proxy answers those resources with Table 10.6.3-2's levels only.
                extra = set(other) - set(obj)
                assert not extra or query.startswith("studies/"), (query, extra)
        # Percent-encoded values: the plugin (1.7) matches the encoded text, finds nothing.
        for encoded in ("PatientName=Compressed%2A", "PatientName=%C3%84neas%2A"):
            assert json.loads(_get(f"{theirs}/studies?{encoded}", token=None).body) == []
            assert json.loads(_get(f"{ours}/studies?{encoded}", token=None).body) != []


# -- archives slow, silent, or more requests than the proxy serves at once ---------------


def _refuses(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
    yield 0xC000, None                                 # Unable to process (PS3.4 C.4.1.1.4)


def test_a_silent_archive_is_504_a_refusing_one_502_and_a_full_proxy_503(
        proxy_factory: Any) -> None:
    silent = ScriptedArchive(never_answers, aet="SILENT")
    gated = ScriptedArchive(gated_stream([study_match(1), study_match(2)]), aet="GATED")
    refusing = ScriptedArchive(_refuses, aet="REFUSING")
    try:
        proxy = proxy_factory({
            "archives": {"silent": {"ae_title": "SILENT", "host": LOOPBACK,
                                    "port": silent.dicom_port, "timeout": 1},
                         "gated": {"ae_title": "GATED", "host": LOOPBACK,
                                   "port": gated.dicom_port},
                         "refusing": {"ae_title": "REFUSING", "host": LOOPBACK,
                                      "port": refusing.dicom_port}},
            "routes": [{"called_ae": "SLOW", "archives": ["silent"], "dicomweb": True},
                       {"called_ae": "NO", "archives": ["refusing"], "dicomweb": True},
                       {"called_ae": "BUSY", "archives": ["gated"], "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0, "max_requests": 1}})
        root = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb"
        slow = _get(f"{root}/SLOW/studies", token=None)
        assert slow.status == 504 and b"silent" in slow.body, slow.body
        no = _get(f"{root}/NO/studies", token=None)
        assert no.status == 502 and b"refusing: status 0xC000" in no.body, no.body
        first: list[_Answer] = []
        waiting = threading.Thread(target=lambda: first.append(
            _get(f"{root}/BUSY/studies", token=None)))
        waiting.start()
        assert gated.first_sent.wait(30)               # the one allowed search is running
        busy = _get(f"{root}/BUSY/studies", token=None)
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        gated.gate.set()
        waiting.join(30)
        assert first[0].status == 200 and len(json.loads(first[0].body)) == 2
        proxy.wait_event("operation", lambda _: len(proxy.operations("QIDO-RS")) >= 4)
        codes = [o["status"] for o in proxy.operations("QIDO-RS")]
        assert sorted(codes) == [200, 502, 503, 504]
    finally:
        silent.close()
        gated.close()
        refusing.close()


def test_a_client_that_hangs_up_cancels_its_search_upstream(proxy_factory: Any) -> None:
    gated = ScriptedArchive(gated_stream([study_match(1), study_match(2)]), aet="GATED")
    try:
        proxy = proxy_factory({
            "archives": {"gated": {"ae_title": "GATED", "host": LOOPBACK,
                                   "port": gated.dicom_port}},
            "routes": [{"called_ae": "HANGUP", "archives": ["gated"], "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0}})
        with socket.create_connection((LOOPBACK, proxy.dicomweb_port), timeout=10) as sock:
            sock.sendall(b"GET /dicomweb/HANGUP/studies HTTP/1.1\r\nHost: x\r\n\r\n")
            assert gated.first_sent.wait(30)           # the search is under way upstream
        assert gated.cancelled.wait(30), "no C-CANCEL reached the archive"
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "QIDO-RS")
        assert line["status"] == 499 and "closed the connection" in line["hint"]
    finally:
        gated.close()


def test_a_capped_archive_is_recovered_and_paged_like_a_c_find(proxy_factory: Any) -> None:
    # Orthanc's LimitFindResults = 4: a C-FIND gets 4 matches and Cancel. With the cap
    # configured (max_results = 4) the federation splits the query, as for C-FIND.
    with OrthancArchive("CAPPED", limit_find_results=4) as capped, \
            OrthancArchive("OTHER") as other:
        capped.upload(make_studies(10, seed="qido-cap", rows=8, cols=8))
        other.upload(A_FILES[:2])
        proxy = proxy_factory({
            "archives": {"capped": archive_entry(capped, max_results=4),
                         "other": archive_entry(other)},
            "routes": [{"called_ae": "CAPFED", "archives": ["capped", "other"],
                        "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0}})
        root = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/CAPFED"
        whole = _get(f"{root}/studies", token=None)
        assert whole.status == 200 and whole.headers.get_all("Warning") is None
        uids = [o["0020000D"]["Value"][0] for o in json.loads(whole.body)]
        assert len(uids) == len(set(uids)) == 12
        assert set(uids) == capped.study_uids() | other.study_uids()
        paged: list[str] = []
        for offset in range(0, 15, 5):
            page = json.loads(_get(f"{root}/studies?limit=5&offset={offset}",
                                   token=None).body)
            paged += [o["0020000D"]["Value"][0] for o in page]
        assert paged == sorted(uids)
        assert proxy.metric("dicom_proxy_find_truncated_total", archive="capped") >= 1
