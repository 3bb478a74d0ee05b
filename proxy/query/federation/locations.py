"""Where things are: which archive(s) answered for which Study/Series/SOP Instance UID.

Job: the federation remembers, from every C-FIND match, which archive holds which entity,
so retrieve code can send a C-MOVE/C-GET only to the archives that have it; when the
cache does not know, ``Locator.locate`` asks the archives with a C-FIND.

Rule 1 (bounded): at most ``entries`` UIDs are kept; the least recently used goes first.
        An entry is about 300 bytes: 100,000 entries are some 30 MB.
Rule 2 (expiring): each (UID, archive) fact is forgotten ``ttl`` seconds after it was last
        seen, so a study moved or deleted upstream is not retrieved from the old place
        forever. Expired facts are dropped when read and when the cache is full.
Rule 3 (what is remembered): a match at level L records its own UID at L and the parent
        UIDs it carries (an IMAGE match also locates its series and study): the entity is
        at least partly in that archive. A study split over two archives lists both.
Rule 4 (what a hit means): the archives that were *seen* holding the UID. It says nothing
        about archives never asked; ``locate(..., refresh=True)`` asks them all.
Rule 5: this module never logs or counts; ``locate`` reports each request to an archive
        through ``Services.upstream_call`` (one ``upstream`` log line each).

``services.plugins`` fields set by ``proxy.query.federation.install``:
  ``locations``: the LocationCache; ``remember_location``: ``LocationCache.remember``;
  ``locate``: ``Locator.locate``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom import Dataset
from pydicom.tag import Tag
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from proxy.cancel import CancelToken
from proxy.query.fanout import Match, Outcome, fan_out
from proxy.rawtext import text_values
from proxy.services import OperationRecord, Services
from proxy.session import Request
from proxy.upstream import ArchiveClient

LEVEL_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
              "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
Clock = Callable[[], float]


class LocationCache:
    """A bounded, expiring map (level, UID) → {archive: expiry} (Rules 1-4). Thread-safe."""

    def __init__(self, entries: int = 100_000, ttl: float = 3600.0,
                 clock: Clock = time.monotonic) -> None:
        self.max_entries = entries
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, archive: str, level: str, identifier: Dataset) -> None:
        """Record that ``archive`` answered ``identifier`` at ``level`` (Rule 3)."""
        level = level.strip().upper()
        if level not in _LEVELS:
            return
        keys = list(_LEVELS[1:_LEVELS.index(level) + 1]) or ["PATIENT"]
        for lvl in keys:
            for uid in _values(identifier, LEVEL_KEYS[lvl]):
                self.add(archive, lvl, uid)

    def add(self, archive: str, level: str, uid: str) -> None:
        now = self._clock()
        key = (level, uid)
        with self._lock:
            holders = self._entries.pop(key, None) or {}
            holders[archive] = now + self.ttl
            self._entries[key] = holders
            if len(self._entries) > self.max_entries:
                self._evict(now)

    def forget(self, archive: str, level: str, uid: str) -> None:
        """Drop one fact (e.g. a retrieve found the entity gone from that archive)."""
        with self._lock:
            holders = self._entries.get((level, uid))
            if holders is not None:
                holders.pop(archive, None)
                if not holders:
                    del self._entries[(level, uid)]

    def lookup(self, level: str, uid: str) -> tuple[str, ...]:
        """The archives known (and not expired) to hold ``uid``, oldest-known first."""
        now = self._clock()
        key = (level.strip().upper(), uid.strip(" \0"))
        with self._lock:
            holders = self._entries.get(key)
            if holders is None:
                return ()
            for name in [n for n, expiry in holders.items() if expiry <= now]:
                del holders[name]
            if not holders:
                del self._entries[key]
                return ()
            self._entries.move_to_end(key)
            return tuple(holders)

    def _evict(self, now: float) -> None:
        for key in [k for k, h in self._entries.items() if max(h.values()) <= now]:
            del self._entries[key]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Location:
    """Answer of ``locate``: archives per UID, and the archives that could not be asked."""

    archives: dict[str, tuple[str, ...]]        # UID → archives holding it (may be empty)
    unreachable: tuple[str, ...] = ()
    asked: bool = False                         # False: everything came from the cache

    def of(self, uid: str) -> tuple[str, ...]:
        return self.archives.get(uid, ())


class Locate(Protocol):
    """The type of ``Locator.locate`` (the ``services.plugins.locate`` plug)."""

    def __call__(self, level: str, identifier: Dataset | Iterable[str],
                 archives: Sequence[str], event: Request | None = None,
                 refresh: bool = False) -> Location: ...


class Locator:
    """Finds the archives holding given UIDs: cache first, then a parallel C-FIND."""

    def __init__(self, services: Services, cache: LocationCache) -> None:
        self.services = services
        self.cache = cache

    def locate(self, level: str, identifier: Dataset | Iterable[str],
               archives: Sequence[str], event: Request | None = None,
               refresh: bool = False) -> Location:
        """Which of ``archives`` hold each UID of ``level``?

        ``identifier`` is a retrieve identifier (its level key may list several UIDs, its
        parent keys are sent along for archives that need hierarchical queries) or just UIDs.
        Cached facts answer first (unless ``refresh``); the rest is one C-FIND per archive,
        all archives in parallel, each bounded by that archive's ``timeout``.
        """
        level = level.strip().upper()
        if level not in LEVEL_KEYS:
            raise ValueError(f"cannot locate at level {level!r}")
        key = LEVEL_KEYS[level]
        if isinstance(identifier, Dataset):
            uids, parents = _values(identifier, key), identifier
        else:
            uids, parents = [u.strip(" \0") for u in identifier if u.strip(" \0")], Dataset()
        found: dict[str, tuple[str, ...]] = {}
        missing: list[str] = []
        for uid in uids:
            known = () if refresh else tuple(a for a in self.cache.lookup(level, uid)
                                             if a in archives)
            found[uid] = known
            if not known:
                missing.append(uid)
        if not missing:
            return Location(found, (), asked=False)
        holders, unreachable = self._ask(level, key, missing, parents, archives, event)
        for uid in missing:
            found[uid] = tuple(a for a in archives if uid in holders.get(a, set()))
        return Location(found, unreachable, asked=True)

    def _ask(self, level: str, key: str, uids: list[str], parents: Dataset,
             archives: Sequence[str], event: Request | None,
             ) -> tuple[dict[str, set[str]], tuple[str, ...]]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for lvl in _LEVELS[1:_LEVELS.index(level)] if level != "PATIENT" else ():
            parent_key = LEVEL_KEYS[lvl]
            values = _values(parents, parent_key)
            if len(values) == 1:
                setattr(query, parent_key, values[0])
        setattr(query, key, uids[0] if len(uids) == 1 else uids)
        model = (PatientRootQueryRetrieveInformationModelFind if level == "PATIENT"
                 else StudyRootQueryRetrieveInformationModelFind)
        record = OperationRecord("locate")
        record.protect(query)
        clients = {name: self.services.archive(name, event) for name in archives}
        holders: dict[str, set[str]] = {name: set() for name in archives}
        failed: list[str] = []
        token = CancelToken()

        def ask(client: ArchiveClient, tok: CancelToken) -> Iterator[tuple[int | None,
                                                                           Dataset | None]]:
            with self.services.upstream_call(client.peer.name, "C-FIND", event,
                                             record.phi) as result:
                count = 0
                for status, ds in client.find(query, model, tok):
                    if ds is not None and status in (0xFF00, 0xFF01):
                        count += 1
                    else:
                        result["status"] = status
                    yield status, ds
                result["details"] = {"locate": level, "uids": len(uids), "matches": count}

        for item in fan_out(clients, ask, token):
            if isinstance(item, Match):
                self.cache.remember(item.archive, level, item.identifier)
                holders[item.archive].update(_values(item.identifier, key))
            elif isinstance(item, Outcome) and item.error is not None:
                failed.append(item.archive)
        return holders, tuple(failed)


def _values(identifier: Dataset, keyword: str) -> list[str]:
    # Per streamed match (remember): read the raw bytes, do not convert (proxy.rawtext).
    return [s for v in text_values(identifier, Tag(keyword)) if (s := v.strip(" \0"))]
