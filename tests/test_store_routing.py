"""Which archives a received C-STORE goes to: store_to narrowed by store_filter (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, parse
from proxy.routing import InstanceFacts, store_targets

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def rules(**route: Any) -> dict[str, Any]:
    return {
        "proxy": {},
        "archives": {name: {"ae_title": name.upper(), "host": "127.0.0.1", "port": 104 + i}
                     for i, name in enumerate(("main", "ct", "dose"))},
        "routes": [{"called_ae": "STORE", "archives": ["main"], **route}],
    }


def targets(facts: InstanceFacts, **route: Any) -> list[str]:
    return store_targets(parse(rules(**route)).routes[0], facts)


def test_without_filters_every_store_to_archive_gets_everything() -> None:
    facts = InstanceFacts("CT1", CT, "CT")
    assert targets(facts, store_to=["main", "ct"]) == ["main", "ct"]
    assert targets(facts) == []


@pytest.mark.parametrize(("facts", "expected"), [
    (InstanceFacts("CT1", CT, "CT"), ["main", "ct"]),
    (InstanceFacts("CT1", CT, "ct "), ["main", "ct"]),       # CS values compare trimmed/upper
    (InstanceFacts("MR1", CT, "MR"), ["main"]),
    (InstanceFacts("CT1", SR, "SR"), ["main", "dose"]),
    (InstanceFacts("OTHER", SR, "SR"), ["main"]),             # calling_ae and sop_class: AND
    (InstanceFacts("CT1", CT, ""), ["main"]),                 # no Modality: no modality match
])
def test_filters_narrow_each_archive(facts: InstanceFacts, expected: list[str]) -> None:
    assert targets(facts, store_to=["main", "ct", "dose"], store_filter={
        "ct": {"modality": ["CT", "PT"]},
        "dose": {"calling_ae": ["CT1", "CT2"], "sop_class": [SR]},
    }) == expected


@pytest.mark.parametrize(("route", "message"), [
    ({"store_to": ["main"], "store_filter": {"ct": {"modality": ["CT"]}}},
     "routes[0].store_filter.ct: 'ct' is not in store_to of this route (main)"),
    ({"store_filter": {"ct": {"modality": ["CT"]}}},
     "routes[0].store_filter.ct: 'ct' is not in store_to of this route (store_to is empty)"),
    ({"store_to": ["ct"], "store_filter": {"ct": {}}},
     "routes[0].store_filter.ct: has no condition"),
    ({"store_to": ["ct"], "store_filter": {"ct": {"modality": []}}},
     "routes[0].store_filter.ct.modality: must not be empty"),
    ({"store_to": ["ct"], "store_filter": {"ct": {"modality": ["ct"]}}},
     "routes[0].store_filter.ct.modality[0]: must be a modality code"),
    ({"store_to": ["ct"], "store_filter": {"ct": {"calling_ae": ["A\\B"]}}},
     "routes[0].store_filter.ct.calling_ae[0]: invalid AE title"),
    ({"store_to": ["ct"], "store_filter": {"ct": {"sop_class": ["1.2.03"]}}},
     "routes[0].store_filter.ct.sop_class[0]: must be a UID"),
    ({"store_to": ["ct"], "store_filter": {"ct": {"series": ["x"]}}},
     "routes[0].store_filter.ct.series: unknown key"),
    ({"store_to": ["ct"], "store_filter": ["ct"]},
     "routes[0].store_filter: must be a table"),
])
def test_filter_errors_name_the_key_path(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(rules(**route))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(("spool", "message"), [
    ({"retry_initial": 0}, "spool.retry_initial: must be a positive number"),
    ({"retry_max": "x"}, "spool.retry_max: must be a positive number"),
    ({"max_attempts": 0}, "spool.max_attempts: must be a positive integer"),
])
def test_spool_retry_keys_are_validated(spool: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse({**rules(), "spool": spool})
    assert str(err.value).startswith(message)


def test_spool_retry_defaults() -> None:
    spool = parse(rules()).spool
    assert (spool.retry_initial, spool.retry_max, spool.max_attempts) == (1.0, 60.0, 5)
