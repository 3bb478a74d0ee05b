"""Federation: one AE title in front of several archives, one merged C-FIND answer.

The C-FIND fan-out, de-duplication and final status live in ``proxy.query.search`` (with
``proxy.query.fanout`` and ``proxy.query.merging``), for C-FIND and QIDO-RS alike.
This package adds:

- ``caps`` (pure): is an answer capped, and how to split its query (Study Date ranges,
  Study Time ranges, UID lists, parent drill-down, Patient ID prefixes);
- ``recovery``: runs a query against one archive and recovers past its cap;
- ``locations``: the bounded, expiring location cache and ``locate`` for retrieve code.

``install`` is registered in ``proxy.app.EXTENSIONS``. It sets in ``services.plugins``:
  find_query          → recovery.make_finder(services): every C-FIND request to an archive;
  remember_location   → LocationCache.remember(archive, level, identifier), for archives of
                        a federated route only (the cache orders a retrieve's archives, which
                        a route with one archive does not need); None when there are none;
  locations           → the LocationCache itself (``lookup(level, uid)``);
  locate              → Locator.locate(level, identifier_or_uids, archives, event=None,
                        refresh=False) → Location (archives per UID, unreachable archives).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom import Dataset

from proxy.query.federation.locations import LocationCache, Locator
from proxy.query.federation.recovery import make_finder
from proxy.services import Services


def install(services: Services) -> Callable[[], None] | None:
    """Plug cap recovery and the location cache into the C-FIND handler (no threads)."""
    settings = services.config.federation
    cache = LocationCache(settings.location_cache_entries, settings.location_cache_ttl)
    services.plugins.locations = cache
    federated = frozenset(name for route in services.config.routes if route.is_federated
                          for name in route.archives)

    def remember(archive: str, level: str, identifier: Dataset) -> None:
        if archive in federated:
            cache.remember(archive, level, identifier)

    services.plugins.remember_location = remember if federated else None
    services.plugins.locate = Locator(services, cache).locate
    services.plugins.find_query = make_finder(services)
    return None
