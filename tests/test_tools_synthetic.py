"""Tests for proxy.tools.synthetic: determinism, hierarchy, dates, patients, valid Part-10 files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from proxy.tools.synthetic import make_instance, make_studies, study_date_for, write_studies

QR_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
)


def uids(seed: str, n: int = 3) -> list[tuple[str, str, str]]:
    return [
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        for ds in make_studies(n, series_per_study=2, instances_per_series=2, seed=seed)
    ]


def test_same_seed_gives_same_uids_and_other_seeds_differ() -> None:
    assert uids("alpha") == uids("alpha")
    assert not {u for t in uids("alpha") for u in t} & {u for t in uids("beta") for u in t}


def test_uids_are_valid_2_25_uids_and_unique() -> None:
    all_uids = [u for t in uids("demo", 4) for u in t]
    sop_uids = [t[2] for t in uids("demo", 4)]
    assert len(set(sop_uids)) == len(sop_uids) == 16
    for uid in all_uids:
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid.replace(".", "").isdigit()


def test_counts_and_hierarchy() -> None:
    datasets = list(make_studies(3, series_per_study=2, instances_per_series=4))
    assert len(datasets) == 24
    assert len({ds.StudyInstanceUID for ds in datasets}) == 3
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 6
    by_series: dict[str, set[str]] = {}
    for ds in datasets:
        by_series.setdefault(ds.SeriesInstanceUID, set()).add(ds.StudyInstanceUID)
    assert all(len(parents) == 1 for parents in by_series.values())
    assert [ds.InstanceNumber for ds in datasets[:4]] == [1, 2, 3, 4]


def test_study_k_is_dated_start_plus_k_days() -> None:
    datasets = list(make_studies(4, start_date=date(2021, 12, 30)))
    assert [ds.StudyDate for ds in datasets] == ["20211230", "20211231", "20220101", "20220102"]


def test_several_studies_per_day_get_increasing_times() -> None:
    datasets = list(make_studies(5, studies_per_day=2))
    assert [ds.StudyDate for ds in datasets] == [
        "20200101",
        "20200101",
        "20200102",
        "20200102",
        "20200103",
    ]
    assert [ds.StudyTime for ds in datasets[:2]] == ["080000", "081700"]
    assert study_date_for(4, date(2020, 1, 1), 2) == "20200103"


def test_patients_default_one_per_study() -> None:
    datasets = list(make_studies(3))
    assert [ds.PatientID for ds in datasets] == ["PAT0001", "PAT0002", "PAT0003"]
    assert [str(ds.PatientName) for ds in datasets] == ["DOE^JOHN1", "DOE^JANE2", "DOE^JOHN3"]
    assert [ds.PatientSex for ds in datasets] == ["M", "F", "M"]
    assert len({ds.PatientBirthDate for ds in datasets}) == 3


def test_patients_cycle_when_fewer_than_studies() -> None:
    datasets = list(make_studies(5, patients=2))
    assert [ds.PatientID for ds in datasets] == ["PAT0001", "PAT0002"] * 2 + ["PAT0001"]
    first = [ds for ds in datasets if ds.PatientID == "PAT0001"]
    assert len({ds.PatientBirthDate for ds in first}) == 1


def test_accession_numbers_are_unique_across_seeds() -> None:
    a = [ds.AccessionNumber for ds in make_studies(3, seed="a")]
    b = [ds.AccessionNumber for ds in make_studies(3, seed="b")]
    assert len(set(a)) == 3 and not set(a) & set(b)
    assert all(len(acc) <= 16 for acc in a + b)


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [
        ("CT", CTImageStorage),
        ("MR", MRImageStorage),
        ("CR", ComputedRadiographyImageStorage),
        ("OT", SecondaryCaptureImageStorage),
    ],
)
def test_sop_class_follows_modality(modality: str, sop_class: str) -> None:
    [ds] = make_studies(1, modalities=[modality])
    assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == modality


def test_modalities_cycle_over_studies() -> None:
    assert [ds.Modality for ds in make_studies(4, modalities=("CT", "MR"))] == [
        "CT",
        "MR",
        "CT",
        "MR",
    ]


def test_instance_has_every_qr_attribute_and_pixels() -> None:
    [ds] = make_studies(1, rows=16, cols=32)
    for keyword in QR_KEYWORDS:
        assert keyword in ds and str(getattr(ds, keyword)) != "", keyword
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    pixels = ds.pixel_array
    assert pixels.shape == (16, 32) and pixels.dtype == "uint16" and int(pixels.max()) < 4096


def test_pixels_are_deterministic_and_differ_between_instances() -> None:
    first = list(make_studies(1, instances_per_series=2))
    again = list(make_studies(1, instances_per_series=2))
    assert first[0].PixelData == again[0].PixelData
    assert first[0].PixelData != first[1].PixelData


def test_make_instance_uses_the_given_values() -> None:
    ds = make_instance(
        patient_id="P1",
        patient_name="TEST^ONE",
        birth_date="19800101",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        study_date="20240229",
        study_time="101500",
        modality="MR",
        accession="A1",
        study_description="Brain",
        series_number=7,
        instance_number=3,
        rows=8,
        cols=8,
    )
    assert (ds.PatientID, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber) == (
        "P1",
        "20240229",
        7,
        3,
    )
    assert (ds.Rows, ds.Columns) == (8, 8)


def test_write_studies_writes_readable_part10_files(tmp_path: Path) -> None:
    datasets = list(make_studies(2, instances_per_series=2))
    paths = write_studies(tmp_path / "out", datasets)
    assert [p.name for p in paths] == [f"{ds.SOPInstanceUID}.dcm" for ds in datasets]
    for path, original in zip(paths, datasets, strict=True):
        assert path.read_bytes()[128:132] == b"DICM"
        read = dcmread(path)
        assert read.SOPInstanceUID == original.SOPInstanceUID
        assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert read.PixelData == original.PixelData


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        list(make_studies(1, series_per_study=0))
    with pytest.raises(ValueError):
        list(make_studies(1, patients=0))
