"""Tests for proxy.query.federation.locations: the bounded, expiring cache and ``locate``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pydicom import Dataset

from proxy.cancel import CancelToken
from proxy.config import parse
from proxy.observe import events as ev
from proxy.query.federation.locations import LocationCache, Locator
from proxy.services import Services
from proxy.status import Status
from proxy.upstream import UpstreamError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ds(level: str, **keys: str | list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_remember_records_the_level_uid_and_its_parents() -> None:
    cache = LocationCache()
    cache.remember("a", "IMAGE", _ds("IMAGE", StudyInstanceUID="1", SeriesInstanceUID="1.1",
                                     SOPInstanceUID="1.1.1"))
    assert cache.lookup("IMAGE", "1.1.1") == ("a",)
    assert cache.lookup("SERIES", "1.1") == ("a",)
    assert cache.lookup("STUDY", "1") == ("a",)
    assert cache.lookup("STUDY", "2") == ()


def test_a_study_in_two_archives_lists_both_in_the_order_first_seen() -> None:
    cache = LocationCache()
    cache.remember("b", "STUDY", _ds("STUDY", StudyInstanceUID="1"))
    cache.remember("a", "STUDY", _ds("STUDY", StudyInstanceUID="1"))
    cache.remember("b", "STUDY", _ds("STUDY", StudyInstanceUID="1"))
    assert cache.lookup("study", "1") == ("b", "a")


def test_patient_level_and_unknown_levels() -> None:
    cache = LocationCache()
    cache.remember("a", "PATIENT", _ds("PATIENT", PatientID="P1"))
    cache.remember("a", "WORKLIST", _ds("WORKLIST", PatientID="P2"))
    assert cache.lookup("PATIENT", "P1") == ("a",)
    assert len(cache) == 1


def test_facts_expire_one_by_one() -> None:
    clock = Clock()
    cache = LocationCache(ttl=60, clock=clock)
    cache.add("a", "STUDY", "1")
    clock.now += 30
    cache.add("b", "STUDY", "1")
    clock.now += 31
    assert cache.lookup("STUDY", "1") == ("b",)
    clock.now += 30
    assert cache.lookup("STUDY", "1") == ()
    assert len(cache) == 0


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = LocationCache(entries=3)
    for uid in "1234":
        cache.add("a", "STUDY", uid)
    assert len(cache) == 3
    assert cache.lookup("STUDY", "1") == ()
    cache.lookup("STUDY", "2")                 # touched: now the most recent
    cache.add("a", "STUDY", "5")
    assert cache.lookup("STUDY", "2") == ("a",)
    assert cache.lookup("STUDY", "3") == ()


def test_expired_entries_go_before_live_ones_when_full() -> None:
    clock = Clock()
    cache = LocationCache(entries=2, ttl=10, clock=clock)
    cache.add("a", "STUDY", "old")
    clock.now += 5
    cache.add("a", "STUDY", "live")
    cache.lookup("STUDY", "old")                # most recently used, but expires first
    clock.now += 6
    cache.add("a", "STUDY", "new")
    assert cache.lookup("STUDY", "live") == ("a",)
    assert cache.lookup("STUDY", "new") == ("a",)


def test_forget_drops_one_fact() -> None:
    cache = LocationCache()
    cache.add("a", "STUDY", "1")
    cache.add("b", "STUDY", "1")
    cache.forget("a", "STUDY", "1")
    assert cache.lookup("STUDY", "1") == ("b",)
    cache.forget("b", "STUDY", "1")
    assert len(cache) == 0


def test_concurrent_remember_keeps_the_bound() -> None:
    cache = LocationCache(entries=500)

    def fill(name: str) -> None:
        for k in range(2000):
            cache.add(name, "STUDY", f"{k}")

    threads = [threading.Thread(target=fill, args=(n,)) for n in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 500
    assert all(cache.lookup("STUDY", uid) for _, uid in list(cache._entries))


# -- locate ------------------------------------------------------------------------------

class Peer:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeArchive:
    def __init__(self, name: str, uids: set[str], down: bool = False) -> None:
        self.peer = Peer(name)
        self.uids = uids
        self.down = down
        self.queries: list[Dataset] = []

    def find(self, identifier: Dataset, model: str, cancelled: CancelToken | None = None,
             syntax: str | None = None) -> Iterator[tuple[int | None, Dataset | None]]:
        self.queries.append(identifier)
        if self.down:
            raise UpstreamError(self.peer.name, "connection refused", kind="refused")
        level = identifier.QueryRetrieveLevel
        key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}[level]
        asked = identifier[key].value
        for uid in [asked] if isinstance(asked, str) else list(asked):
            if uid in self.uids:
                yield Status.PENDING, _ds(level, **{key: uid})
        yield Status.SUCCESS, None


def _locator(*archives: FakeArchive) -> tuple[Locator, LocationCache, list[ev.Event]]:
    config = parse({
        "proxy": {"ae_title": "QR_PROXY"},
        "archives": {a.peer.name: {"ae_title": "A", "host": "127.0.0.1", "port": 1}
                     for a in archives},
        "routes": [{"called_ae": "FED", "archives": [a.peer.name for a in archives]}],
    })
    seen: list[ev.Event] = []
    services = Services(config, ev.EventBus([seen.append]), None,  # type: ignore[arg-type]
                        {a.peer.name: a for a in archives}, {})  # type: ignore[misc]
    cache = LocationCache()
    return Locator(services, cache), cache, seen


def test_locate_asks_every_archive_on_a_miss_then_answers_from_the_cache() -> None:
    a, b = FakeArchive("a", {"1", "2"}), FakeArchive("b", {"2", "3"})
    locator, cache, seen = _locator(a, b)
    where = locator.locate("STUDY", _ds("STUDY", StudyInstanceUID=["1", "2", "3", "4"]),
                           ["a", "b"])
    assert where.asked and where.unreachable == ()
    assert where.archives == {"1": ("a",), "2": ("a", "b"), "3": ("b",), "4": ()}
    assert len([e for e in seen if isinstance(e, ev.UpstreamCompleted)]) == 2
    assert cache.lookup("STUDY", "2") in (("a", "b"), ("b", "a"))
    again = locator.locate("STUDY", ["2"], ["a", "b"])
    assert not again.asked and set(again.of("2")) == {"a", "b"}
    assert len(a.queries) == 1


def test_locate_only_asks_for_the_misses_and_only_the_named_archives() -> None:
    a, b = FakeArchive("a", {"1"}), FakeArchive("b", {"2"})
    locator, cache, _ = _locator(a, b)
    cache.add("a", "STUDY", "1")
    where = locator.locate("STUDY", ["1", "2"], ["b"])     # "a" is not on this route
    assert where.archives == {"1": (), "2": ("b",)}
    assert not a.queries
    assert str(b.queries[0].StudyInstanceUID.__class__.__name__) == "MultiValue"


def test_locate_sends_parent_uids_and_names_unreachable_archives() -> None:
    a, b = FakeArchive("a", {"1.1"}), FakeArchive("b", set(), down=True)
    locator, _, seen = _locator(a, b)
    where = locator.locate("SERIES", _ds("SERIES", StudyInstanceUID="1", SeriesInstanceUID="1.1"),
                           ["a", "b"])
    assert where.of("1.1") == ("a",) and where.unreachable == ("b",)
    assert a.queries[0].StudyInstanceUID == "1"
    failed = [e for e in seen if isinstance(e, ev.UpstreamCompleted) and e.error]
    assert [e.archive for e in failed] == ["b"]


def test_locate_refresh_bypasses_the_cache_and_bad_levels_are_refused() -> None:
    a = FakeArchive("a", {"1"})
    locator, cache, _ = _locator(a)
    cache.add("a", "STUDY", "1")
    assert locator.locate("STUDY", ["1"], ["a"], refresh=True).asked
    with pytest.raises(ValueError):
        locator.locate("FRAME", ["1"], ["a"])
