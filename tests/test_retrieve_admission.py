"""Admission of archives delivering C-MOVE sub-operations to the proxy (routing Rule 4)."""

from __future__ import annotations

import pytest

from proxy.config import Config, parse
from proxy.routing import (
    DIAG_CALLING_AE_NOT_RECOGNISED,
    RESULT_PERMANENT,
    Inbound,
    Rejection,
    admit,
)


@pytest.fixture(scope="module")
def config() -> Config:
    return parse({
        "proxy": {"ae_title": "QR_PROXY"},
        "archives": {
            "site_a": {"ae_title": "PACS_A", "host": "h", "port": 104, "retrieve": "move"},
            "site_b": {"ae_title": "PACS_B", "host": "h", "port": 105},
        },
        "routes": [{"called_ae": "RELAY", "archives": ["site_a", "site_b"]}],
    })


@pytest.mark.parametrize(("calling", "archive"), [("PACS_A", "site_a"), ("PACS_B", "site_b")])
def test_an_archive_calling_the_proxys_title_is_inbound(config: Config, calling: str,
                                                        archive: str) -> None:
    assert admit(config, calling, "QR_PROXY") == Inbound("QR_PROXY", archive)


def test_another_title_is_admitted_only_while_a_move_mode_retrieve_runs(config: Config) -> None:
    refused = admit(config, "ORTHANC_X", "QR_PROXY")
    assert isinstance(refused, Rejection)
    assert (refused.result, refused.diagnostic) == (RESULT_PERMANENT,
                                                    DIAG_CALLING_AE_NOT_RECOGNISED)
    assert "ORTHANC_X" in refused.hint
    assert admit(config, "ORTHANC_X", "QR_PROXY", retrieving=True) == Inbound("QR_PROXY", None)


def test_routes_are_unaffected(config: Config) -> None:
    route = admit(config, "PACS_A", "RELAY", retrieving=True)
    assert not isinstance(route, Inbound | Rejection)
    assert route.called_ae == "RELAY"
