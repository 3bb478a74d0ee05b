"""Configuration: ``rules.toml`` read once, validated, and handed out as frozen dataclasses.

- ``model``: the dataclasses (``Config`` and its sections) and ``load``/``parse``;
- ``checks``: the generic value checks, each raising ``ConfigError`` naming its key path.

The public names of ``model`` are re-exported here, so ``from proxy.config import Config,
RouteConfig, parse`` is how the rest of the proxy reads it. Nothing here imports handler
code (tests/test_layout.py).
"""

from __future__ import annotations

from proxy.config.model import (
    ECHO_MODES,
    LOG_FORMATS,
    MERGE_MODES,
    PHI_MODES,
    RETRIEVE_MODES,
    STORE_MODES,
    AllowEntry,
    ArchiveConfig,
    Config,
    ConfigError,
    DestinationConfig,
    DicomwebConfig,
    FederationConfig,
    HealthConfig,
    LogConfig,
    MetricsConfig,
    ProxyConfig,
    RouteConfig,
    SpoolConfig,
    StoreFilter,
    TlsConfig,
    load,
    parse,
)

__all__ = [
    "ECHO_MODES",
    "LOG_FORMATS",
    "MERGE_MODES",
    "PHI_MODES",
    "RETRIEVE_MODES",
    "STORE_MODES",
    "AllowEntry",
    "ArchiveConfig",
    "Config",
    "ConfigError",
    "DestinationConfig",
    "DicomwebConfig",
    "FederationConfig",
    "HealthConfig",
    "LogConfig",
    "MetricsConfig",
    "ProxyConfig",
    "RouteConfig",
    "SpoolConfig",
    "StoreFilter",
    "TlsConfig",
    "load",
    "parse",
]
