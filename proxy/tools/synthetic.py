"""Deterministic synthetic DICOM studies for tests, benchmarks and the demo.

No network, no randomness: the same arguments always give byte-identical datasets.

Rule 1: every UID is ``2.25.<uuid-int>`` hashed from the seed and the object's
        position, so the same seed gives the same UIDs and different seeds
        don't collide. (pydicom's ``generate_uid(prefix=None, entropy_srcs=…)``
        ignores ``entropy_srcs`` and returns a random UUID, so it is not used.)
Rule 2: the k-th study (0-based) is dated ``start_date + k // studies_per_day``
        days; within a day studies are 17 minutes apart from 08:00. With the
        default ``studies_per_day=1`` study k is simply ``start_date + k days``,
        so date-range queries and date bisection select predictable subsets.
Rule 3: patients are numbered from 1: ``PAT0003`` / ``DOE^JOHN3`` (odd numbers,
        sex M) or ``DOE^JANE4`` (even numbers, sex F). ``patients=None`` gives
        every study its own patient; ``patients=n`` cycles studies over n patients.
        Patient identity does not depend on the seed, so two archives filled with
        different seeds share patients (as real federated archives do).
Rule 4: accession numbers carry a 4-hex-digit tag of the seed plus the study
        index (``ACC1A2B000003``), so they stay unique across seeds.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

SOP_CLASS_BY_MODALITY: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
}
"""Storage SOP class per modality; any other modality is stored as Secondary Capture."""

_BODY_PART_BY_MODALITY = {"CT": "CHEST", "MR": "HEAD", "CR": "CHEST"}
_MINUTES_BETWEEN_STUDIES = 17


def make_instance(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    study_date: str,
    study_time: str,
    modality: str,
    accession: str,
    study_description: str,
    series_number: int,
    instance_number: int,
    rows: int = 64,
    cols: int = 64,
    patient_sex: str = "O",
    study_id: str = "1",
    series_description: str = "",
    frame_of_reference_uid: str | None = None,
) -> Dataset:
    """One image instance with file meta (Explicit VR Little Endian) and uint16 pixels.

    The SOP class follows ``modality`` (see ``SOP_CLASS_BY_MODALITY``). Dates are
    DICOM ``YYYYMMDD`` strings, times ``HHMMSS``. The pixel pattern depends only on
    the geometry and ``instance_number``.
    """
    sop_class = SOP_CLASS_BY_MODALITY.get(modality, SecondaryCaptureImageStorage)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMPROXY_SYN"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"]
        if modality in ("CT", "MR")
        else [
            "ORIGINAL",
            "PRIMARY",
        ]
    )
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = study_time

    # Patient level
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = patient_sex

    # Study level
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = study_id
    ds.StudyDescription = study_description
    ds.ReferringPhysicianName = "REFERRER^RITA"

    # Series level
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description or f"{modality} series {series_number}"
    ds.SeriesDate = study_date
    ds.SeriesTime = study_time
    ds.BodyPartExamined = _BODY_PART_BY_MODALITY.get(modality, "")
    ds.Manufacturer = "dicom-proxy synthetic"
    ds.InstitutionName = "Synthetic Hospital"
    if modality in ("CT", "MR"):
        ds.PatientPosition = "HFS"

    # Instance level
    ds.InstanceNumber = instance_number
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.AcquisitionNumber = 1
    if sop_class == SecondaryCaptureImageStorage:
        ds.ConversionType = "WSD"
    if modality in ("CT", "MR"):
        _add_image_plane(ds, instance_number, frame_of_reference_uid or series_uid)
    if modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    elif modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "20"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "1.5"
    elif modality == "CR":
        ds.ViewPosition = "PA"

    _add_pixels(ds, rows, cols, instance_number)
    return ds


def _add_image_plane(ds: Dataset, instance_number: int, frame_of_reference_uid: str) -> None:
    """Image Plane + Frame of Reference modules: 1 mm pixels, slices 1 mm apart."""
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = ["1", "1"]
    ds.SliceThickness = "1"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["0", "0", str(instance_number)]
    ds.SliceLocation = str(instance_number)


def _add_pixels(ds: Dataset, rows: int, cols: int, instance_number: int) -> None:
    """A 12-bit diagonal ramp shifted by the instance number (so frames differ)."""
    y, x = np.mgrid[0:rows, 0:cols]
    pixels = ((x + 2 * y + 37 * instance_number) * 16 % 4096).astype("<u2")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def synthetic_uid(seed: str, *parts: object) -> str:
    """The deterministic ``2.25.<int>`` UID of the object at ``parts`` under ``seed``.

    The integer is a name-based (version 5 style) UUID: the first 128 bits of
    SHA-256 over the seed and parts, so it is at most 39 digits (PS3.5 B.2).
    """
    name = "\x1f".join(["dicom-proxy", seed, *map(str, parts)])
    digest = hashlib.sha256(name.encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=5).int}"


def seed_tag(seed: str) -> str:
    """Four upper-case hex digits identifying a seed (used in accession numbers)."""
    return hashlib.sha256(seed.encode()).hexdigest()[:4].upper()


def study_date_for(
    index: int, start_date: date = date(2020, 1, 1), studies_per_day: int = 1
) -> str:
    """The StudyDate (``YYYYMMDD``) ``make_studies`` gives the study at ``index``."""
    return (start_date + timedelta(days=index // studies_per_day)).strftime("%Y%m%d")


def make_studies(
    n_studies: int,
    *,
    series_per_study: int = 1,
    instances_per_series: int = 1,
    seed: str = "demo",
    patients: int | None = None,
    start_date: date = date(2020, 1, 1),
    studies_per_day: int = 1,
    modalities: Sequence[str] = ("CT",),
    rows: int = 64,
    cols: int = 64,
) -> Iterator[Dataset]:
    """Yield ``n_studies * series_per_study * instances_per_series`` instances, study by study.

    Study k uses ``modalities[k % len(modalities)]``; see the module rules for
    dates, patients, UIDs and accession numbers.
    """
    if n_studies < 0 or series_per_study < 1 or instances_per_series < 1:
        raise ValueError("n_studies must be >= 0, series/instances per parent >= 1")
    if studies_per_day < 1 or (patients is not None and patients < 1) or not modalities:
        raise ValueError("studies_per_day and patients must be >= 1, modalities non-empty")
    tag = seed_tag(seed)
    for k in range(n_studies):
        patient_no = (k if patients is None else k % patients) + 1
        male = patient_no % 2 == 1
        minutes = 8 * 60 + (k % studies_per_day) * _MINUTES_BETWEEN_STUDIES
        study_uid = synthetic_uid(seed, "study", k)
        modality = modalities[k % len(modalities)]
        for s in range(series_per_study):
            series_uid = synthetic_uid(seed, "series", k, s)
            for i in range(instances_per_series):
                yield make_instance(
                    patient_id=f"PAT{patient_no:04d}",
                    patient_name=f"DOE^{'JOHN' if male else 'JANE'}{patient_no}",
                    birth_date=(date(1950, 1, 1) + timedelta(days=97 * patient_no)).strftime(
                        "%Y%m%d"
                    ),
                    patient_sex="M" if male else "F",
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=synthetic_uid(seed, "instance", k, s, i),
                    study_date=study_date_for(k, start_date, studies_per_day),
                    study_time=f"{minutes // 60 % 24:02d}{minutes % 60:02d}00",
                    modality=modality,
                    accession=f"ACC{tag}{k:06d}",
                    study_description=f"Synthetic {modality} study {k}",
                    study_id=str(k + 1),
                    series_number=s + 1,
                    instance_number=i + 1,
                    frame_of_reference_uid=synthetic_uid(seed, "frame", k),
                    rows=rows,
                    cols=cols,
                )


def write_studies(directory: str | Path, datasets: Iterable[Dataset]) -> list[Path]:
    """Write each dataset as a Part-10 file ``<SOPInstanceUID>.dcm`` in ``directory``.

    The directory is created if needed; the paths are returned in input order.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in datasets:
        path = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
