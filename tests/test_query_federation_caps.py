"""Tests for proxy.query.federation.caps (cap detection, split plans) and the recovery loop.

The recovery tests run ``proxy.query.federation.recovery.Recovery`` against an in-memory archive
that matches with ``proxy.query.matching`` and caps like Orthanc (Cancel after N) or silently
(Success after N): the recovered answer must be exactly what the archive holds.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from proxy.cancel import CancelToken
from proxy.config import parse
from proxy.observe import events as ev
from proxy.query.federation import caps
from proxy.query.federation.recovery import Recovery
from proxy.query.matching import matches
from proxy.services import Services
from proxy.status import Status
from proxy.upstream import UpstreamError
from tests.recording import Recorder

STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"


def _query(level: str = "STUDY", **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        caps._set(ds, keyword, value)
    return ds


def _sample(level: str, query: Dataset, answers: list[dict[str, str]]) -> caps.Sample:
    sample = caps.Sample.for_query(level, query)
    for answer in answers:
        sample.add(_query(level, **answer))
    return sample


def _labels(planned: caps.Plan) -> list[str]:
    assert isinstance(planned, caps.Split), planned
    return [p.label for p in planned.pieces]


# -- detection (rule 1) --------------------------------------------------------------------

@pytest.mark.parametrize(("matches_", "cap", "status", "by_us", "expected"), [
    (500, 500, Status.SUCCESS, False, True),     # silent cap: N matches, Success
    (499, 500, Status.SUCCESS, False, False),
    (700, 500, Status.SUCCESS, False, True),
    (500, 0, Status.CANCEL, False, True),         # Orthanc: Cancel nobody asked for
    (500, 0, Status.CANCEL, True, False),         # the workstation cancelled
    (0, 0, Status.CANCEL, False, False),
    (10, 0, Status.SUCCESS, False, False),
])
def test_is_capped(matches_: int, cap: int, status: int, by_us: bool, expected: bool) -> None:
    assert caps.is_capped(matches_, cap, status, by_us) is expected


def test_with_return_keys_adds_only_absent_keys_and_leaves_the_query_alone() -> None:
    query = _query(StudyDate="20200101-", PatientID="P1")
    out, added = caps.with_return_keys(query, caps.HELPER_KEYS["STUDY"])
    assert added == ("StudyInstanceUID", "StudyTime")
    assert out.StudyDate == "20200101-" and out.StudyTime == ""
    assert "StudyTime" not in query


# -- spans -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("lo", "hi", "sample", "expected"), [
    (None, None, [10, 20, 30], [(None, 9), (10, 20), (21, 30), (31, None)]),
    (10, 30, [10, 20, 30], [(10, 20), (21, 30)]),
    (5, 40, [30, 30, 30], [(5, 29), (30, 30), (31, 40)]),
    (10, 30, [30, 30, 10], [(10, 29), (30, 30)]),    # median at the end: cut before it
    (0, 100, [], [(0, 50), (51, 100)]),
    (7, 7, [7], None),
    (None, None, [], [(None, 50), (51, None)]),       # floor 0, ceiling 100
    (None, 5, [99], [(None, 2), (3, 5)]),              # points outside the span are ignored
])
def test_split_span(lo: int | None, hi: int | None, sample: list[int],
                    expected: list[tuple[int | None, int | None]] | None) -> None:
    assert caps.split_span(lo, hi, sample, 0, 100) == expected


@given(st.one_of(st.none(), st.integers(0, 200)), st.one_of(st.none(), st.integers(0, 200)),
       st.lists(st.integers(-10, 210), max_size=30))
def test_split_span_covers_the_span_with_narrower_disjoint_parts(
        lo: int | None, hi: int | None, sample: list[int]) -> None:
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    parts = caps.split_span(lo, hi, sample, 50, 150)
    if lo is not None and lo == hi:
        assert parts is None
        return
    assert parts is not None and len(parts) >= 2
    for a, b in parts:
        assert (a, b) != (lo, hi)
        assert a is None or b is None or a <= b
    for (_, b), (a, _) in itertools.pairwise(parts):   # contiguous, in order
        assert b is not None and a == b + 1
    assert parts[0][0] == lo and parts[-1][1] == hi


# -- STUDY plans (rule 2b) -------------------------------------------------------------------

def test_study_dates_are_cut_around_the_sample() -> None:
    query = _query(StudyDate="", StudyInstanceUID="")
    sample = _sample("STUDY", query, [{"StudyDate": d} for d in
                                      ("20200110", "20200101", "20200120", "20200105")])
    assert _labels(caps.plan("STUDY", query, sample, 4)) == [
        "StudyDate=-20191231", "StudyDate=20200101-20200110", "StudyDate=20200111-20200120",
        "StudyDate=20200121-"]


def test_a_bounded_date_range_stays_inside_its_bounds() -> None:
    query = _query(StudyDate="20200101-20200131")
    sample = _sample("STUDY", query, [{"StudyDate": "20200115"}, {"StudyDate": "20200116"}])
    assert _labels(caps.plan("STUDY", query, sample, 2)) == [
        "StudyDate=20200101-20200114", "StudyDate=20200115", "StudyDate=20200116",
        "StudyDate=20200117-20200131"]


def test_one_day_is_split_by_study_time() -> None:
    query = _query(StudyDate="20200115", StudyTime="")
    sample = _sample("STUDY", query, [{"StudyDate": "20200115", "StudyTime": t}
                                      for t in ("080000", "120000.5", "1600")])
    planned = caps.plan("STUDY", query, sample, 3)
    assert _labels(planned) == [
        "StudyDate=20200115 StudyTime=000000-075959",
        "StudyDate=20200115 StudyTime=080000-120000",
        "StudyDate=20200115 StudyTime=120001-160000",
        "StudyDate=20200115 StudyTime=160001-235959"]
    assert isinstance(planned, caps.Split)
    assert planned.pieces[1].query.StudyDate == "20200115"


def test_one_second_still_capped_is_stuck() -> None:
    query = _query(StudyDate="20200115", StudyTime="080000")
    assert isinstance(caps.plan("STUDY", query, _sample("STUDY", query, []), 5), caps.Stuck)


@pytest.mark.parametrize("value", ["2020", "20201301", "2020.01.01"])
def test_an_unreadable_date_key_is_stuck(value: str) -> None:
    query = _query(StudyDate=value)
    planned = caps.plan("STUDY", query, _sample("STUDY", query, []), 5)
    assert isinstance(planned, caps.Stuck) and value in planned.reason


def test_studies_without_date_are_a_caveat_only_when_the_date_was_universal() -> None:
    query = _query(StudyDate="")
    sample = _sample("STUDY", query, [{"StudyDate": "20200101"}, {"StudyDate": ""}])
    planned = caps.plan("STUDY", query, sample, 2)
    assert isinstance(planned, caps.Split) and planned.caveat
    # Without StudyDate asked back, the sample knows nothing: plain bisection, no caveat.
    bare = _query(PatientID="X")
    planned = caps.plan("STUDY", bare, _sample("STUDY", bare, [{}, {}]), 2)
    assert isinstance(planned, caps.Split) and planned.caveat is None
    assert _labels(planned) == ["StudyDate=-20000101", "StudyDate=20000102-"]


def test_uid_lists_are_bisected_first() -> None:
    query = _query(StudyInstanceUID=["1.1", "1.2", "1.3"], StudyDate="")
    planned = caps.plan("STUDY", query, _sample("STUDY", query, []), 5)
    assert isinstance(planned, caps.Split)
    assert [p.query.StudyInstanceUID for p in planned.pieces] == ["1.1", ["1.2", "1.3"]]


# -- SERIES / IMAGE drill-down (rule 2c) ----------------------------------------------------

def test_series_without_a_study_drill_down_with_the_study_level_keys() -> None:
    query = _query("SERIES", PatientID="P1", StudyDate="2020-", Modality="CT",
                   SeriesInstanceUID="", StudyInstanceUID="")
    answers = [{"StudyInstanceUID": f"1.{k % 5}", "SeriesInstanceUID": f"2.{k}"}
               for k in range(10)]
    planned = caps.plan("SERIES", query, _sample("SERIES", query, answers), 10)
    assert isinstance(planned, caps.DrillDown)
    assert planned.parent_level == "STUDY" and planned.key == "StudyInstanceUID"
    parent = planned.parent_query
    assert parent.QueryRetrieveLevel == "STUDY" and parent.PatientID == "P1"
    assert parent.StudyDate == "2020-" and "Modality" not in parent
    assert planned.batch == 2                     # cap 10 / (2 x 2 series per study)
    pieces = caps.children(query, "StudyInstanceUID", ["1.1", "1.2", "1.3"], planned.batch)
    assert [p.query.StudyInstanceUID for p in pieces] == [["1.1", "1.2"], "1.3"]
    assert all(p.query.Modality == "CT" for p in pieces)


def test_images_drill_down_to_series_of_their_study() -> None:
    query = _query("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="", SOPInstanceUID="")
    planned = caps.plan("IMAGE", query, _sample("IMAGE", query, []), 100)
    assert isinstance(planned, caps.DrillDown)
    assert planned.parent_level == "SERIES"
    assert planned.parent_query.StudyInstanceUID == "1.1"
    assert "SOPInstanceUID" not in planned.parent_query


def test_one_parent_still_capped_is_stuck() -> None:
    query = _query("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1")
    assert isinstance(caps.plan("IMAGE", query, _sample("IMAGE", query, []), 5), caps.Stuck)


# -- PATIENT prefixes (rule 2d) --------------------------------------------------------------

def test_patient_ids_split_by_prefix() -> None:
    query = _query("PATIENT", PatientID="AB*")
    planned = caps.plan("PATIENT", query, _sample("PATIENT", query, []), 5)
    assert isinstance(planned, caps.Split)
    values = [p.query.PatientID for p in planned.pieces]
    assert values[0] == "AB" and "AB0*" in values and "ABz*" in values
    assert len(values) == 1 + len(caps.PATIENT_ID_ALPHABET)
    assert all("AB" not in p.label for p in planned.pieces)     # no PHI in labels


@pytest.mark.parametrize("value", ["A*B", "A?*", "EXACT"])
def test_patient_ids_that_are_not_prefixes_are_stuck(value: str) -> None:
    query = _query("PATIENT", PatientID=value)
    assert isinstance(caps.plan("PATIENT", query, _sample("PATIENT", query, []), 5), caps.Stuck)


def test_patient_ids_outside_the_alphabet_are_a_caveat() -> None:
    query = _query("PATIENT", PatientID="")
    sample = _sample("PATIENT", query, [{"PatientID": "#12"}, {"PatientID": "A1"}])
    planned = caps.plan("PATIENT", query, sample, 2)
    assert isinstance(planned, caps.Split) and planned.caveat


# -- the recovery loop against an in-memory capped archive ------------------------------------

class FakePeer:
    def __init__(self, name: str) -> None:
        self.name = name


class CappedArchive:
    """Answers C-FIND from a list of identifiers with proxy.query.matching, capped at ``cap``."""

    def __init__(self, name: str, holdings: list[Dataset], cap: int, silent: bool = False,
                 seed: int = 0) -> None:
        self.peer = FakePeer(name)
        self.holdings = holdings
        self.cap = cap
        self.silent = silent
        self.random = random.Random(seed)
        self.queries: list[Dataset] = []
        self.fail_after: int | None = None

    def find(self, identifier: Dataset, model: str, cancelled: CancelToken | None = None,
             syntax: str | None = None) -> Iterator[tuple[int | None, Dataset | None]]:
        self.queries.append(identifier)
        if self.fail_after is not None and len(self.queries) > self.fail_after:
            raise UpstreamError(self.peer.name, "gone", kind="refused")
        level = identifier.QueryRetrieveLevel
        hits = [ds for ds in self.holdings if ds.QueryRetrieveLevel == level
                and matches(identifier, ds, unknown_matches=False)]
        self.random.shuffle(hits)
        for n, ds in enumerate(hits):
            if n == self.cap:
                yield (Status.SUCCESS if self.silent else Status.CANCEL), None
                return
            if cancelled is not None and cancelled.is_set:
                yield Status.CANCEL, None
                return
            out = Dataset()
            for elem in identifier:
                if elem.keyword in ds:
                    out[elem.tag] = ds[elem.tag]
            out.QueryRetrieveLevel = level
            yield Status.PENDING, out
        yield Status.SUCCESS, None


def _studies(n: int, start: date = date(2020, 1, 1), per_day: int = 1,
             undated: int = 0) -> list[Dataset]:
    out = []
    for k in range(n + undated):
        ds = _query("STUDY", StudyInstanceUID=f"1.2.3.{k}", PatientID=f"P{k % 7}",
                    StudyDate=(start + timedelta(days=k // per_day)).strftime("%Y%m%d")
                    if k < n else "",
                    StudyTime=f"{8 + k % per_day // 60:02d}{k % 60:02d}00")
        out.append(ds)
    return out


def _series(studies: int, per_study: int) -> list[Dataset]:
    return [_query("SERIES", StudyInstanceUID=f"1.2.3.{k}", SeriesInstanceUID=f"1.2.3.{k}.{s}",
                   Modality="CT" if s % 2 == 0 else "MR")
            for k in range(studies) for s in range(per_study)]


def _services(archive: CappedArchive, max_results: int, budget: int = 500,
              ) -> tuple[Services, Recorder]:
    config = parse({
        "proxy": {"ae_title": "QR_PROXY"},
        "archives": {archive.peer.name: {"ae_title": "A", "host": "127.0.0.1", "port": 1,
                                         "max_results": max_results}},
        "routes": [{"called_ae": "FED", "archives": [archive.peer.name]}],
        "federation": {"max_subqueries": budget},
    })
    recorder = Recorder()
    services = Services(config, ev.EventBus([recorder]), None, {}, {})  # type: ignore[arg-type]
    return services, recorder


def _recover(archive: CappedArchive, query: Dataset, max_results: int, budget: int = 500,
             token: CancelToken | None = None) -> tuple[list[Dataset], int | None, Recorder]:
    services, recorder = _services(archive, max_results, budget)
    recovery = Recovery(services, None, archive, STUDY_ROOT,  # type: ignore[arg-type]
                        query.QueryRetrieveLevel, token or CancelToken())
    found, final = [], None
    for status, ds in recovery.run(query):
        if ds is not None and status in (Status.PENDING, Status.PENDING_WARNING):
            found.append(ds)
        else:
            final = status
    return found, final, recorder


def _uids(found: list[Dataset], keyword: str = "StudyInstanceUID") -> list[str]:
    return [str(ds.get(keyword, "")) for ds in found]


@pytest.mark.parametrize("silent", [False, True])
def test_700_studies_behind_a_cap_of_500_are_all_recovered(silent: bool) -> None:
    holdings = _studies(700)
    archive = CappedArchive("capped", holdings, 500, silent=silent)
    found, final, recorder = _recover(archive, _query(StudyInstanceUID=""), 500)
    assert sorted(_uids(found)) == sorted(str(ds.StudyInstanceUID) for ds in holdings)
    assert final == Status.SUCCESS
    assert all(set(ds.dir()) == {"QueryRetrieveLevel", "StudyInstanceUID"} for ds in found)
    truncated = [e for e in recorder.of(ev.FindMatched) if e.truncated]
    assert truncated and all(e.matches >= 500 for e in truncated)
    assert len(recorder.of(ev.FindMatched)) == len(archive.queries)
    assert len(recorder.of(ev.UpstreamCompleted)) == len(archive.queries) - 1
    assert [e.message for e in recorder.of(ev.Noted)] == ["find_recovered"]
    assert len(archive.queries) <= 8


def test_an_unconfigured_cap_is_found_by_the_unasked_cancel() -> None:
    holdings = _studies(300)
    archive = CappedArchive("capped", holdings, 120)
    found, final, _ = _recover(archive, _query(StudyInstanceUID="", PatientID=""), 0)
    assert sorted(_uids(found)) == sorted(str(ds.StudyInstanceUID) for ds in holdings)
    assert final == Status.SUCCESS


def test_an_uncapped_answer_is_passed_through_with_one_request() -> None:
    archive = CappedArchive("small", _studies(20), 500)
    found, final, recorder = _recover(archive, _query(StudyInstanceUID=""), 500)
    assert len(found) == 20 and final == Status.SUCCESS
    assert len(archive.queries) == 1
    assert not recorder.of(ev.UpstreamCompleted) and not recorder.of(ev.Noted)


def test_a_range_query_recovers_only_its_range() -> None:
    holdings = _studies(400, per_day=3)
    archive = CappedArchive("capped", holdings, 50)
    query = _query(StudyInstanceUID="", StudyDate="20200110-20200209")
    found, final, _ = _recover(archive, query, 50)
    expected = [ds for ds in holdings if "20200110" <= ds.StudyDate <= "20200209"]
    assert sorted(_uids(found)) == sorted(str(ds.StudyInstanceUID) for ds in expected)
    assert final == Status.SUCCESS


def test_more_studies_in_one_day_than_the_cap_split_by_time() -> None:
    holdings = _studies(90, per_day=90)          # 90 studies on one day, a minute apart
    archive = CappedArchive("capped", holdings, 40)
    found, final, _ = _recover(archive, _query(StudyInstanceUID=""), 40)
    assert len(set(_uids(found))) == 90 and final == Status.SUCCESS


def test_undated_studies_make_the_answer_incomplete() -> None:
    holdings = _studies(100, undated=30)
    archive = CappedArchive("capped", holdings, 60)
    found, final, recorder = _recover(archive, _query(StudyInstanceUID=""), 60)
    dated = {str(ds.StudyInstanceUID) for ds in holdings if ds.StudyDate}
    assert dated <= set(_uids(found))
    assert final == Status.REFUSED_OUT_OF_RESOURCES
    [note] = recorder.of(ev.Noted)
    assert note.message == "find_incomplete" and "StudyDate" in note.fields["reasons"][0]


def test_the_subquery_budget_bounds_the_work_and_says_so() -> None:
    archive = CappedArchive("capped", _studies(700), 500)
    _, final, recorder = _recover(archive, _query(StudyInstanceUID=""), 500, budget=2)
    assert final == Status.REFUSED_OUT_OF_RESOURCES
    assert len(archive.queries) == 3
    assert "budget" in recorder.of(ev.Noted)[0].fields["reasons"][0]


def test_series_are_recovered_by_drilling_down_into_studies() -> None:
    holdings = _studies(200) + _series(200, 3)
    archive = CappedArchive("capped", holdings, 100)
    query = _query("SERIES", SeriesInstanceUID="", Modality="CT")
    found, final, _ = _recover(archive, query, 100)
    expected = {str(ds.SeriesInstanceUID) for ds in holdings
                if ds.QueryRetrieveLevel == "SERIES" and ds.Modality == "CT"}
    assert sorted(_uids(found, "SeriesInstanceUID")) == sorted(expected)
    assert all("StudyInstanceUID" not in ds for ds in found)     # helper key removed
    assert final == Status.SUCCESS


def test_a_failing_subquery_raises_the_archive_error() -> None:
    archive = CappedArchive("capped", _studies(700), 500)
    archive.fail_after = 2
    with pytest.raises(UpstreamError):
        _recover(archive, _query(StudyInstanceUID=""), 500)


def test_cancel_stops_the_recovery_and_answers_cancel() -> None:
    archive = CappedArchive("capped", _studies(700), 500)
    token = CancelToken()
    services, _ = _services(archive, 500)
    recovery = Recovery(services, None, archive, STUDY_ROOT,  # type: ignore[arg-type]
                        "STUDY", token)
    seen, final = 0, None
    for status, ds in recovery.run(_query(StudyInstanceUID="")):
        if ds is not None:
            seen += 1
            if seen == 10:
                token.cancel()
        else:
            final = status
    assert final == Status.CANCEL and len(archive.queries) == 1 and seen <= 11


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 250), cap=st.integers(8, 120), per_day=st.integers(1, 12),
       seed=st.integers(0, 1000), silent=st.booleans())
def test_recovery_returns_exactly_the_holdings(n: int, cap: int, per_day: int, seed: int,
                                               silent: bool) -> None:
    holdings = _studies(n, per_day=per_day)
    archive = CappedArchive("capped", holdings, cap, silent=silent, seed=seed)
    found, final, _ = _recover(archive, _query(StudyInstanceUID=""), cap, budget=10_000)
    assert sorted(_uids(found)) == sorted(str(ds.StudyInstanceUID) for ds in holdings)
    assert final == Status.SUCCESS


def test_an_uncapped_answer_with_two_studies_under_one_uid_passes_whole() -> None:
    """Issue #10 defect 2: one response's matches are never duplicates of each other."""
    holdings = [_query("STUDY", StudyInstanceUID="1.2.3.9", PatientID=p, StudyDate="20200101",
                       StudyTime="080000") for p in ("P1", "P2")]
    for cap in (0, 50):
        archive = CappedArchive("collide", holdings, 1000)
        found, final, _ = _recover(archive, _query(StudyInstanceUID="1.2.3.9", PatientID=""),
                                   cap)
        assert sorted(str(ds.PatientID) for ds in found) == ["P1", "P2"]
        assert final == Status.SUCCESS


def test_a_split_sends_each_of_two_colliding_studies_once() -> None:
    """Both colliding studies in the capped first answer: the pieces repeat them, dropped."""
    holdings = [*_studies(6), *(_query("STUDY", StudyInstanceUID="1.2.3.0", PatientID=p,
                                       StudyDate="20200101", StudyTime="080000")
                                for p in ("PX", "PY"))]
    archive = CappedArchive("collide", holdings, 8, silent=True)
    found, final, _ = _recover(archive, _query(StudyInstanceUID="", PatientID=""), 8)
    assert len(archive.queries) > 1                      # it was split
    assert sorted(_uids(found)) == sorted(str(ds.StudyInstanceUID) for ds in holdings)
    assert final == Status.SUCCESS
