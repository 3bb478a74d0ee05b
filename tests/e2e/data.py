"""The synthetic study set the end-to-end tests share, written once per session.

Rule 1: what a test may assert on (UIDs, dates, files per study) is recorded
        here while the files are written, so no test re-derives it by hand.
Rule 2: the set is read-only; a test needing other data builds its own with
        ``build_synthetic_set`` under its ``tmp_path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset

from proxy.tools.synthetic import make_studies, write_studies

SESSION_STUDIES = 5
SESSION_SERIES_PER_STUDY = 2
SESSION_INSTANCES_PER_SERIES = 2
SESSION_SEED = "e2e"
SESSION_START_DATE = date(2020, 1, 1)  # study k is dated 2020-01-01 + k days


@dataclass(frozen=True)
class SyntheticStudy:
    study_uid: str
    study_date: str
    patient_id: str
    accession: str
    paths: tuple[Path, ...]
    sop_uids: frozenset[str]


@dataclass(frozen=True)
class SyntheticSet:
    """Part-10 files in ``directory``, plus what each study contains (in study order)."""

    directory: Path
    studies: tuple[SyntheticStudy, ...]
    paths: tuple[Path, ...] = field(default=())

    @property
    def study_uids(self) -> list[str]:
        return [s.study_uid for s in self.studies]

    @property
    def sop_uids(self) -> set[str]:
        return {uid for s in self.studies for uid in s.sop_uids}

    def studies_between(self, first: str, last: str) -> list[SyntheticStudy]:
        """Studies whose StudyDate lies in the inclusive ``YYYYMMDD`` range."""
        return [s for s in self.studies if first <= s.study_date <= last]


def build_synthetic_set(
    directory: Path,
    n_studies: int = SESSION_STUDIES,
    *,
    series_per_study: int = SESSION_SERIES_PER_STUDY,
    instances_per_series: int = SESSION_INSTANCES_PER_SERIES,
    seed: str = SESSION_SEED,
    start_date: date = SESSION_START_DATE,
) -> SyntheticSet:
    """Write ``make_studies(...)`` into ``directory`` and index the result by study."""
    datasets = list(
        make_studies(
            n_studies,
            series_per_study=series_per_study,
            instances_per_series=instances_per_series,
            seed=seed,
            start_date=start_date,
        )
    )
    paths = write_studies(directory, datasets)
    by_study: dict[str, list[tuple[Dataset, Path]]] = {}
    for ds, path in zip(datasets, paths, strict=True):
        by_study.setdefault(str(ds.StudyInstanceUID), []).append((ds, path))
    studies = tuple(
        SyntheticStudy(
            study_uid=uid,
            study_date=str(members[0][0].StudyDate),
            patient_id=str(members[0][0].PatientID),
            accession=str(members[0][0].AccessionNumber),
            paths=tuple(path for _, path in members),
            sop_uids=frozenset(str(ds.SOPInstanceUID) for ds, _ in members),
        )
        for uid, members in by_study.items()
    )
    return SyntheticSet(directory=directory, studies=studies, paths=tuple(paths))
