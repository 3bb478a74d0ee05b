"""Self-tests of the e2e harness against the real peers directly (no proxy).

Each test pins one behaviour of Orthanc 1.10.1 or DCMTK 3.6.7 that the proxy
tests rely on; if a peer upgrade changes it, it fails here first, with a name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import OrthancFactory, StoreSCPFactory
from tests.e2e.data import SyntheticSet
from tests.e2e.dcmtk import SUCCESS, echoscu, findscu, getscu, movescu, storescu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import free_port, port_is_open, wait_for_line, wait_for_port

CANCEL = 0xFE00  # PS3.4 C.4.1.1.4: matching terminated due to cancel
UNABLE_TO_PROCESS = 0xC000  # PS3.4 C.4.2.1.5
WORKSTATION = "WORKSTATION"


@pytest.fixture
def archive(orthanc_factory: OrthancFactory, synthetic_studies: SyntheticSet) -> OrthancArchive:
    """An open Orthanc holding the session's five studies."""
    archive = orthanc_factory("PACS")
    archive.upload(synthetic_studies.paths)
    return archive


def find_studies(archive: OrthancArchive, *keys: str, calling_ae: str = WORKSTATION) -> list[str]:
    result = findscu(
        archive.host, archive.dicom_port, archive.aet, calling_ae, keys=["StudyInstanceUID", *keys]
    )
    assert result.final_status == SUCCESS, result.output[-2000:]
    return result.values("StudyInstanceUID")


def test_upload_is_visible_over_rest(
    archive: OrthancArchive, synthetic_studies: SyntheticSet
) -> None:
    assert archive.study_uids() == set(synthetic_studies.study_uids)
    assert archive.instance_uids() == synthetic_studies.sop_uids


def test_find_at_study_level_returns_exactly_the_uploaded_studies(
    archive: OrthancArchive, synthetic_studies: SyntheticSet
) -> None:
    found = find_studies(archive)
    assert sorted(found) == sorted(synthetic_studies.study_uids)


def test_find_returns_requested_attributes(
    archive: OrthancArchive, synthetic_studies: SyntheticSet
) -> None:
    result = findscu(
        archive.host,
        archive.dicom_port,
        archive.aet,
        WORKSTATION,
        keys=["PatientID=PAT0002", "StudyInstanceUID", "StudyDate", "AccessionNumber"],
    )
    study = synthetic_studies.studies[1]
    assert result.ok
    [identifier] = result.identifiers
    assert identifier.StudyInstanceUID == study.study_uid
    assert identifier.StudyDate == study.study_date
    assert identifier.AccessionNumber == study.accession


def test_date_range_query_returns_the_subset(
    archive: OrthancArchive, synthetic_studies: SyntheticSet
) -> None:
    expected = synthetic_studies.studies_between("20200102", "20200104")
    assert len(expected) == 3
    found = find_studies(archive, "StudyDate=20200102-20200104")
    assert sorted(found) == sorted(s.study_uid for s in expected)


def test_limit_find_results_caps_matches_and_ends_with_cancel(
    orthanc_factory: OrthancFactory, synthetic_studies: SyntheticSet
) -> None:
    capped = orthanc_factory("CAPPED", limit_find_results=3)
    capped.upload(synthetic_studies.paths)
    result = findscu(
        capped.host, capped.dicom_port, capped.aet, WORKSTATION, keys=["StudyInstanceUID"]
    )
    assert len(result.identifiers) == 3
    # Orthanc 1.10.1 does not truncate silently: the final status is Cancel.
    assert result.final_status == CANCEL
    assert result.returncode == 0


def test_only_known_calling_aets_rejects_strangers_and_answers_known(
    orthanc_factory: OrthancFactory, synthetic_studies: SyntheticSet
) -> None:
    strict = orthanc_factory(
        "STRICT",
        only_known_calling_aets=True,
        known_modalities={"proxy": ("KNOWN_AE", "127.0.0.1", 1)},
    )
    strict.upload(synthetic_studies.paths)
    host, port, aet = strict.host, strict.dicom_port, strict.aet

    refused = findscu(host, port, aet, "STRANGER", keys=["StudyInstanceUID"])
    assert refused.association_rejected
    assert refused.rejection_reason == "Calling AE Title Not Recognized"
    assert refused.identifiers == []
    assert echoscu(host, port, aet, "STRANGER").association_rejected
    assert getscu(host, port, aet, "STRANGER", keys=["StudyInstanceUID=1.2.3"]).association_rejected

    assert sorted(find_studies(strict, calling_ae="KNOWN_AE")) == sorted(
        synthetic_studies.study_uids
    )
    assert echoscu(host, port, aet, "KNOWN_AE").ok
    assert strict.rejected_calling_aets() == ["STRANGER"] * 3
    assert "KNOWN_AE" in strict.calling_aets()


def test_operation_not_allowed_for_an_accepted_stranger_is_aborted(
    orthanc_factory: OrthancFactory,
) -> None:
    mixed = orthanc_factory(
        "MIXED", only_known_calling_aets=True, extra_config={"DicomAlwaysAllowEcho": True}
    )
    assert echoscu(mixed.host, mixed.dicom_port, mixed.aet, "STRANGER").ok
    found = findscu(mixed.host, mixed.dicom_port, mixed.aet, "STRANGER", keys=["StudyInstanceUID"])
    assert found.association_aborted and found.statuses == []
    assert found.returncode == 0  # findscu does not treat the abort as an error


def test_check_called_aet_rejects_a_wrong_called_ae(orthanc_factory: OrthancFactory) -> None:
    checked = orthanc_factory("CHECKED", check_called_aet=True)
    assert echoscu(checked.host, checked.dicom_port, "CHECKED", WORKSTATION).ok
    wrong = echoscu(checked.host, checked.dicom_port, "SOMEONE_ELSE", WORKSTATION)
    assert wrong.association_rejected
    assert wrong.rejection_reason == "Called AE Title Not Recognized"


def test_getscu_retrieves_a_study(archive: OrthancArchive, synthetic_studies: SyntheticSet) -> None:
    study = synthetic_studies.studies[2]
    result = getscu(
        archive.host,
        archive.dicom_port,
        archive.aet,
        "UNLISTED_WS",  # C-GET needs no DicomModalities entry when DicomAlwaysAllowGet is true
        keys=[f"StudyInstanceUID={study.study_uid}"],
    )
    assert result.ok, result.output[-2000:]
    assert (result.completed, result.failed, result.warning) == (4, 0, 0)
    assert {str(ds.SOPInstanceUID) for ds in result.datasets} == study.sop_uids


def test_getscu_writes_files_to_output_dir(
    archive: OrthancArchive, synthetic_studies: SyntheticSet, tmp_path: Path
) -> None:
    study = synthetic_studies.studies[0]
    result = getscu(
        archive.host,
        archive.dicom_port,
        archive.aet,
        WORKSTATION,
        keys=[f"StudyInstanceUID={study.study_uid}"],
        output_dir=tmp_path,
    )
    assert result.ok
    assert len(result.files) == 4
    assert all(path.parent == tmp_path for path in result.files)


def test_movescu_to_a_known_store_scp(
    orthanc_factory: OrthancFactory,
    store_scp_factory: StoreSCPFactory,
    synthetic_studies: SyntheticSet,
) -> None:
    scp = store_scp_factory("WS_STORE")
    pacs = orthanc_factory("MOVER", known_modalities={"ws": scp.modality})
    pacs.upload(synthetic_studies.paths)
    study = synthetic_studies.studies[3]
    keys = [f"StudyInstanceUID={study.study_uid}"]

    result = movescu(
        pacs.host, pacs.dicom_port, pacs.aet, WORKSTATION, move_destination="WS_STORE", keys=keys
    )
    assert result.ok, result.output[-2000:]
    assert (result.completed, result.failed, result.warning) == (4, 0, 0)
    assert scp.received_sop_uids() == study.sop_uids
    assert scp.associations() == [("MOVER", "WS_STORE")]

    unknown = movescu(
        pacs.host, pacs.dicom_port, pacs.aet, WORKSTATION, move_destination="NOWHERE", keys=keys
    )
    # Orthanc 1.10.1 answers an unknown destination with 0xC000, not 0xA801.
    assert unknown.final_status == UNABLE_TO_PROCESS


def test_storescu_stores_and_orthanc_records_the_calling_ae(
    orthanc_factory: OrthancFactory, synthetic_studies: SyntheticSet
) -> None:
    pacs = orthanc_factory("STORE_DEST")
    study = synthetic_studies.studies[4]
    result = storescu(pacs.host, pacs.dicom_port, pacs.aet, "SENDER_AE", study.paths)
    assert result.returncode == 0
    assert result.statuses == [SUCCESS] * len(study.paths)
    assert pacs.instance_uids() == study.sop_uids
    assert set(pacs.remote_aets().values()) == {"SENDER_AE"}


def test_stop_then_start_keeps_data_and_ports(
    archive: OrthancArchive, synthetic_studies: SyntheticSet
) -> None:
    ports = (archive.dicom_port, archive.http_port)
    assert echoscu(archive.host, archive.dicom_port, archive.aet, WORKSTATION).ok
    archive.stop()
    assert not archive.running
    down = echoscu(archive.host, archive.dicom_port, archive.aet, WORKSTATION)
    assert down.connection_failed and not down.ok
    archive.start()
    assert (archive.dicom_port, archive.http_port) == ports
    assert sorted(find_studies(archive)) == sorted(synthetic_studies.study_uids)


def test_graceful_stop_also_keeps_data(
    orthanc_factory: OrthancFactory, synthetic_studies: SyntheticSet
) -> None:
    pacs = orthanc_factory("GRACEFUL")
    pacs.upload(synthetic_studies.studies[0].paths)
    pacs.stop(graceful=True)
    assert not port_is_open(pacs.dicom_port)
    pacs.start()
    assert pacs.instance_uids() == synthetic_studies.studies[0].sop_uids


def test_find_cancel_after_one_response(archive: OrthancArchive) -> None:
    result = findscu(
        archive.host,
        archive.dicom_port,
        archive.aet,
        WORKSTATION,
        keys=["StudyInstanceUID"],
        cancel_after=1,
    )
    assert result.returncode == 0
    assert 1 <= len(result.identifiers) <= 5
    assert result.final_status in (CANCEL, SUCCESS)


def test_port_helpers() -> None:
    port = free_port()
    assert not port_is_open(port)
    with pytest.raises(TimeoutError):
        wait_for_port(port, timeout=0.2)


def test_wait_for_line_reads_a_subprocess_without_blocking() -> None:
    script = (
        "import time; print('starting', flush=True); print('ready 42', flush=True); time.sleep(30)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            line = wait_for_line(proc, lambda text: text.startswith("ready"), timeout=10)
            assert line == "ready 42"
            with pytest.raises(TimeoutError):
                wait_for_line(proc, lambda text: "never" in text, timeout=0.3)
        finally:
            proc.kill()
    with pytest.raises(EOFError):
        wait_for_line(proc, lambda text: "never" in text, timeout=5)
