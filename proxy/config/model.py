"""rules.toml → frozen dataclasses, validated once at load.

Rule 1: every error is a ConfigError whose message starts with the key path
        (``routes[1].archives[0]: no archive named "nope"``), one line, no traceback.
Rule 2: unknown keys are errors — a typo must never be silently ignored.
Rule 3: every reference by name (route → archive, store_to/mpps_to → archive) is
        checked here, so nothing downstream has to cope with a dangling name.
Rule 4: AE titles are validated by ``checks.ae_problem`` (PS3.5 6.2, VR AE), plus "not empty".
Rule 5: source networks (``allow = ["WS1@10.1.2.0/24"]``) are parsed here, once, into
        ``ipaddress`` networks: admission only compares addresses.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from proxy.config import checks as check
from proxy.config.checks import ConfigError as ConfigError

if sys.version_info >= (3, 11):  # noqa: UP036 - the card asks for tomli below 3.11
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
_CS = re.compile(r"[A-Z0-9_]{1,16}")                  # a modality code (CS, PS3.5 6.2)
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1
_ORIGIN = re.compile(r"https?://[^/\s]+")            # RFC 6454: scheme://host[:port]
_BASE_URL = re.compile(r"https?://[^/\s]+(/[^\s]*)?")

LOG_FORMATS = ("json", "console")
PHI_MODES = ("hash", "clear", "drop")
RETRIEVE_MODES = ("get", "move")
ECHO_MODES = ("upstream", "local")
MERGE_MODES = ("stream", "complete")
STORE_MODES = ("spool", "relay")


@dataclass(frozen=True)
class ProxyConfig:
    ae_title: str = "QR_PROXY"
    host: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 64        # established associations served at once
    max_connections: int = 128        # raw TCP connections, checked before any PDU is read
    max_pdu_size: int = 262_144       # advertised and enforced; a larger PDU aborts the link
    acse_timeout: float = 30.0        # seconds to wait for A-ASSOCIATE-RQ / A-RELEASE
    dimse_timeout: float = 120.0      # seconds to wait for the next DIMSE message
    network_timeout: float = 60.0     # seconds a socket may be idle or blocked on send
    shutdown_grace: float = 30.0      # seconds running operations get after SIGTERM
    # Load balancers whose connections start with a PROXY protocol header (v1/v2).
    proxy_protocol_from: tuple[check.Network, ...] = ()
    tls_port: int | None = None       # a second listener speaking DICOM over TLS (None: none)


TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True)
class TlsConfig:
    """The proxy's certificate and the CAs it trusts (PEM files; PS3.15 Annex B)."""

    cert: Path
    key: Path
    ca: Path | None = None            # peers' certificates are verified against these
    require_client_cert: bool = True  # the TLS listener refuses workstations without one
    min_version: str = "1.2"          # "1.2" or "1.3" (BCP 195: never SSL, TLS 1.0/1.1)
    handshake_timeout: float = 10.0   # seconds; a peer that stalls the handshake is dropped


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9110
    enabled: bool = True


@dataclass(frozen=True)
class LogConfig:
    format: str = "json"
    phi: str = "hash"
    phi_key: str = ""                 # site secret: phi tokens become an HMAC (not reversible)
    level: str = "info"


@dataclass(frozen=True)
class SpoolConfig:
    dir: Path = Path("./spool")
    max_bytes: int = 10 * 1024**3     # above this, new C-STOREs get Out of Resources
    retry_initial: float = 1.0        # seconds before the first retry of an unreachable archive
    retry_max: float = 60.0           # the backoff doubles up to this many seconds
    max_attempts: int = 5             # tries per instance on a retryable failure status
    retrieve_max_bytes: int = 1024**3  # per C-MOVE/C-GET: received, not yet delivered, on disk
    retrieve_memory_bytes: int = 64 * 1024**2  # per C-MOVE: of those, held in memory
    retrieve_spill_after: float = 1.0  # seconds the memory window may stay full before files
    commitment_overdue: float = 600.0  # seconds a forwarded Storage Commitment may await its report


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True              # periodic C-ECHO to every archive and destination
    interval: float = 30.0            # seconds between two rounds of health C-ECHOs
    timeout: float = 10.0             # seconds one health C-ECHO may take (capped by the peer's)


@dataclass(frozen=True)
class FederationConfig:
    location_cache_entries: int = 100_000  # UIDs whose archive(s) the proxy remembers (LRU)
    location_cache_ttl: float = 3600.0     # seconds a "this archive holds that UID" fact lasts
    max_subqueries: int = 500              # per archive per C-FIND, when splitting past a cap


@dataclass(frozen=True)
class DicomwebConfig:
    """``[dicomweb]``: the HTTP front door for routes with ``dicomweb = true`` (PS3.18)."""

    host: str = "127.0.0.1"
    port: int = 8080                  # 0: a free port (logged in ``dicomweb_started``)
    cors_origins: tuple[str, ...] = ()  # origins allowed by CORS ("*" for any)
    tokens_file: Path | None = None   # set: every request needs a bearer token listed there
    max_requests: int = 16            # requests answered at once; more get 503
    public_url: str = ""              # the base URL clients use (Retrieve URL); "" = bound one
    metadata_cache_bytes: int = 256 << 20  # WADO-RS /metadata: encoded answers kept (LRU)


MAX_FORWARD_ASSOCIATIONS = 8


@dataclass(frozen=True)
class ArchiveConfig:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str
    retrieve: str = "get"
    max_results: int = 0
    timeout: float = 30.0
    tls: bool = False                 # reached over TLS only (proxy.tls.client_context)
    tls_server_name: str | None = None  # the name its certificate must carry (default: host)
    forward_associations: int = 1     # store-and-forward: associations at once (drain Rule 6)


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False                 # reached over TLS only (proxy.tls.client_context)
    tls_server_name: str | None = None  # the name its certificate must carry (default: host)


@dataclass(frozen=True)
class StoreFilter:
    """Which instances of a route one of its ``store_to`` archives gets (all keys must match)."""

    archive: str
    modality: tuple[str, ...] = ()    # Modality (0008,0060) in this list
    calling_ae: tuple[str, ...] = ()  # the sending AE title in this list
    sop_class: tuple[str, ...] = ()   # SOP Class UID in this list


@dataclass(frozen=True)
class AllowEntry:
    """One ``allow`` entry: a calling AE title, from one source network or from anywhere."""

    ae_title: str
    network: check.Network | None = None   # None: from any address


@dataclass(frozen=True)
class CertificateBinding:
    """A calling AE title bound to TLS client certificate subjects (``certificates``)."""

    ae_title: str
    subjects: tuple[str, ...]                      # as written (for logs and hints)
    attributes: tuple[check.Subject, ...]          # each: the attributes a certificate needs


@dataclass(frozen=True)
class RouteConfig:
    called_ae: str
    archives: tuple[str, ...]
    allow: tuple[str, ...] = ()
    store_to: tuple[str, ...] = ()
    echo: str = "upstream"            # "upstream": C-ECHO the archives; "local": answer here
    merge: str = "stream"             # federation: stream first answers, or "complete" merge
    recheck_matches: bool = False     # re-check every match against the query (PS3.4 C.2.2.2)
    store_filters: tuple[StoreFilter, ...] = ()  # per store_to archive; absent: every instance
    pass_calling_ae: bool = False     # archives see the workstation's calling AE, not calling_ae
    store: str = "spool"              # "spool": Success once durable; "relay": the archive's own
    allow_from: tuple[AllowEntry, ...] = ()  # ``allow`` as written: titles and their networks
    destinations: tuple[str, ...] | None = None  # Move Destinations allowed (None: every one)
    max_associations: int | None = None   # associations on this route at once (None: no limit)
    max_associations_per_ae: int | None = None  # ... per calling AE title (None: no limit)
    tls_only: bool = False            # answered only on the TLS listener ([proxy] tls_port)
    certificates: tuple[CertificateBinding, ...] = ()  # calling AE → client certificate subjects
    mpps_to: tuple[str, ...] = ()     # archives (RIS) that N-CREATE/N-SET (MPPS) go to
    dicomweb: bool = False            # also served over DICOMweb at /dicomweb/<called_ae>
    commit_to: str | None = None      # the archive asked for Storage Commitment (N-ACTION)

    def certificate_binding(self, calling_ae: str) -> CertificateBinding | None:
        return next((b for b in self.certificates if b.ae_title == calling_ae), None)

    @property
    def commitment_archive(self) -> str | None:
        """Where a Storage Commitment N-ACTION goes: ``commit_to``, else the first of
        ``store_to``; None: the route does not serve Storage Commitment."""
        return self.commit_to or (self.store_to[0] if self.store_to else None)

    @property
    def is_federated(self) -> bool:
        return len(self.archives) > 1


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig
    metrics: MetricsConfig
    log: LogConfig
    spool: SpoolConfig
    archives: Mapping[str, ArchiveConfig]
    destinations: Mapping[str, DestinationConfig]
    routes: tuple[RouteConfig, ...]
    health: HealthConfig = field(default_factory=HealthConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    tls: TlsConfig | None = None
    dicomweb: DicomwebConfig | None = None
    source: Path | None = field(default=None, compare=False)

    def route_for(self, called_ae: str) -> RouteConfig | None:
        for route in self.routes:
            if route.called_ae == called_ae.strip():
                return route
        return None

    def destination_by_ae(self, ae_title: str) -> DestinationConfig | None:
        for dest in self.destinations.values():
            if dest.ae_title == ae_title.strip():
                return dest
        return None


# -- reading -------------------------------------------------------------------


def load(path: str | Path) -> Config:
    """Read and validate a rules file; raise ConfigError naming the key on any problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read the rules file: {exc.strerror}") from None
    # The caller names the file; these messages say what is wrong with it.
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}") from None
    cfg = parse(data)
    return Config(**{**cfg.__dict__, "source": p})


def parse(data: Mapping[str, Any]) -> Config:
    """Validate an already-decoded TOML document."""
    check.only_keys("", data, {"proxy", "metrics", "log", "spool", "archives", "destinations",
                               "routes", "health", "federation", "tls", "dicomweb"})
    if "proxy" not in data:
        raise ConfigError("proxy", "section is required")
    proxy = check.section("proxy", data["proxy"], ProxyConfig, {
        "ae_title": check.ae, "host": check.host, "port": check.port,
        "max_associations": check.positive_int, "max_connections": check.positive_int,
        "max_pdu_size": check.pdu_size, "acse_timeout": check.positive_float,
        "dimse_timeout": check.positive_float, "network_timeout": check.positive_float,
        "shutdown_grace": check.positive_float, "tls_port": check.port,
        "proxy_protocol_from": check.networks,
    })
    metrics = check.section("metrics", data.get("metrics", {}), MetricsConfig, {
        "host": check.host, "port": check.port, "enabled": check.boolean,
    })
    log = check.section("log", data.get("log", {}), LogConfig, {
        "format": check.choice(LOG_FORMATS), "phi": check.choice(PHI_MODES), "phi_key": check.text,
        "level": check.choice(("debug", "info", "warning", "error")),
    })
    spool = check.section("spool", data.get("spool", {}), SpoolConfig, {
        "dir": check.path_value, "max_bytes": check.positive_int,
        "retry_initial": check.positive_float,
        "retry_max": check.positive_float, "max_attempts": check.positive_int,
        "commitment_overdue": check.positive_float,
        "retrieve_max_bytes": check.positive_int,
        "retrieve_memory_bytes": check.non_negative_int,
        "retrieve_spill_after": check.non_negative_float,
    })
    archives = _archives(data.get("archives"), proxy.ae_title)
    destinations = _destinations(data.get("destinations", {}))
    routes = _routes(data.get("routes"), archives, destinations)
    health = check.section("health", data.get("health", {}), HealthConfig, {
        "enabled": check.boolean, "interval": check.positive_float, "timeout": check.positive_float,
    })
    federation = check.section("federation", data.get("federation", {}), FederationConfig, {
        "location_cache_entries": check.positive_int, "location_cache_ttl": check.positive_float,
        "max_subqueries": check.positive_int,
    })
    tls = _tls(data.get("tls"))
    _tls_references(proxy, tls, archives, destinations, routes)
    dicomweb = _dicomweb(data.get("dicomweb"), routes)
    return Config(proxy, metrics, log, spool, archives, destinations, routes, health=health,
                  federation=federation, tls=tls, dicomweb=dicomweb)


def _dicomweb(raw: Any, routes: tuple[RouteConfig, ...]) -> DicomwebConfig | None:
    """``[dicomweb]``; a route with ``dicomweb = true`` needs it (where would it listen?)."""
    if raw is None:
        for i, route in enumerate(routes):
            if route.dicomweb:
                raise ConfigError(f"routes[{i}].dicomweb", "needs a [dicomweb] section (host, "
                                                           "port): the HTTP front door")
        return None
    return check.section("dicomweb", raw, DicomwebConfig, {
        "host": check.host, "port": check.port, "cors_origins": _origins,
        "tokens_file": check.readable_file, "max_requests": check.positive_int,
        "public_url": _base_url, "metadata_cache_bytes": check.non_negative_int,
    })


def _origins(path: str, value: Any) -> tuple[str, ...]:
    """``["https://viewer.example.org", ...]`` or ``["*"]``: scheme://host[:port], no path."""
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of origins, not {check.kind(value)}")
    for i, origin in enumerate(value):
        if origin != "*" and (not isinstance(origin, str) or not _ORIGIN.fullmatch(origin)):
            raise ConfigError(f"{path}[{i}]", f"must be an origin such as "
                                              f"\"https://viewer.example.org\" or \"*\", "
                                              f"not {origin!r}")
    return tuple(value)


def _base_url(path: str, value: Any) -> str:
    if not isinstance(value, str) or not _BASE_URL.fullmatch(value):
        raise ConfigError(path, f"must be an http(s) URL such as \"https://pacs.example.org\""
                                f", not {value!r}")
    return value.rstrip("/")


def _tls(raw: Any) -> TlsConfig | None:
    """``[tls]``: the files must exist and be readable now, not at the first handshake."""
    if raw is None:
        return None
    fields = check.fields("tls", raw, required={"cert", "key"}, checks={
        "cert": check.readable_file, "key": check.readable_file, "ca": check.readable_file,
        "require_client_cert": check.boolean, "min_version": _tls_version,
        "handshake_timeout": check.positive_float,
    })
    tls = TlsConfig(**fields)
    if tls.require_client_cert and tls.ca is None:
        raise ConfigError("tls.ca", "is required with require_client_cert = true (the CA "
                                    "certificates workstation certificates are verified "
                                    "against); or set require_client_cert = false")
    return tls


def _tls_version(path: str, value: Any) -> str:
    if isinstance(value, float):           # min_version = 1.2 written without quotes
        value = repr(value)
    return str(check.choice(TLS_VERSIONS)(path, value))


def _tls_references(proxy: ProxyConfig, tls: TlsConfig | None,
                    archives: Mapping[str, ArchiveConfig],
                    destinations: Mapping[str, DestinationConfig],
                    routes: tuple[RouteConfig, ...]) -> None:
    """Keys that need ``[tls]`` (the proxy's certificate and CAs) name it as the fix."""
    if tls is not None:
        if proxy.tls_port is not None and proxy.tls_port != 0 and proxy.tls_port == proxy.port:
            raise ConfigError("proxy.tls_port", f"is the clear port ({proxy.port}): the TLS "
                                                "listener needs a port of its own")
        for i, route in enumerate(routes):
            if route.certificates and (not tls.require_client_cert or proxy.tls_port is None):
                raise ConfigError(f"routes[{i}].certificates", "needs [proxy] tls_port and "
                                  "[tls] require_client_cert = true: only a verified client "
                                  "certificate proves a subject")
        return
    if proxy.tls_port is not None:
        raise ConfigError("proxy.tls_port", "needs a [tls] section (cert, key, ca)")
    for i, route in enumerate(routes):
        if route.tls_only:
            raise ConfigError(f"routes[{i}].tls_only", "needs [proxy] tls_port and a [tls] "
                                                       "section: no TLS listener would answer")
        if route.certificates:
            raise ConfigError(f"routes[{i}].certificates", "needs [proxy] tls_port and a [tls] "
                              "section with require_client_cert = true: only a verified "
                              "client certificate proves a subject")
    for group, table in (("archives", archives), ("destinations", destinations)):
        for name, peer in table.items():
            if peer.tls:
                raise ConfigError(f"{group}.{name}.tls", "needs a [tls] section (its ca "
                                                         "verifies the peer's certificate)")


def _archives(raw: Any, default_calling: str) -> dict[str, ArchiveConfig]:
    if raw is None or (isinstance(raw, Mapping) and not raw):
        raise ConfigError("archives", "at least one archive is required")
    table = check.table("archives", raw)
    out: dict[str, ArchiveConfig] = {}
    for name, body in table.items():
        path = f"archives.{name}"
        fields = check.fields(path, body, required={"ae_title", "host", "port"}, checks={
            "ae_title": check.ae, "host": check.host, "port": check.peer_port,
            "calling_ae": check.ae,
            "retrieve": check.choice(RETRIEVE_MODES), "max_results": check.non_negative_int,
            "timeout": check.positive_float, "tls": check.boolean,
            "tls_server_name": check.host,
            "forward_associations": check.int_between(1, MAX_FORWARD_ASSOCIATIONS),
        })
        fields.setdefault("calling_ae", default_calling)
        out[name] = ArchiveConfig(name=name, **fields)
    return out


def _destinations(raw: Any) -> dict[str, DestinationConfig]:
    table = check.table("destinations", raw)
    out: dict[str, DestinationConfig] = {}
    seen: dict[str, str] = {}
    for name, body in table.items():
        path = f"destinations.{name}"
        fields = check.fields(path, body, required={"ae_title", "host", "port"}, checks={
            "ae_title": check.ae, "host": check.host, "port": check.peer_port,
            "tls": check.boolean, "tls_server_name": check.host,
        })
        if fields["ae_title"] in seen:
            raise ConfigError(f"{path}.ae_title", f"{fields['ae_title']!r} is already used by "
                              f"destinations.{seen[fields['ae_title']]}")
        seen[fields["ae_title"]] = name
        out[name] = DestinationConfig(name=name, **fields)
    return out


def _routes(raw: Any, archives: Mapping[str, ArchiveConfig],
            destinations: Mapping[str, DestinationConfig]) -> tuple[RouteConfig, ...]:
    if raw is None or raw == []:
        raise ConfigError("routes", "at least one [[routes]] entry is required")
    if not isinstance(raw, list):
        raise ConfigError("routes", "must be an array of tables ([[routes]])")
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
    for i, body in enumerate(raw):
        path = f"routes[{i}]"
        fields = check.fields(path, body, required={"called_ae", "archives"}, checks={
            "called_ae": check.ae, "archives": check.name_list, "allow": _allow_list,
            "store_to": check.name_list, "echo": check.choice(ECHO_MODES),
            "merge": check.choice(MERGE_MODES), "recheck_matches": check.boolean,
            "store_filter": _any, "pass_calling_ae": check.boolean,
            "store": check.choice(STORE_MODES), "destinations": check.name_list,
            "tls_only": check.boolean,
            "max_associations": check.positive_int,
            "max_associations_per_ae": check.positive_int,
            "certificates": _certificates, "mpps_to": check.name_list,
            "dicomweb": check.boolean,
            "commit_to": check.text,
        })
        if "allow" in fields:
            fields["allow_from"] = fields["allow"]
            fields["allow"] = tuple(dict.fromkeys(e.ae_title for e in fields["allow"]))
        for j, name in enumerate(fields.get("destinations", ())):
            if name not in destinations:
                raise ConfigError(f"{path}.destinations[{j}]",
                                  f"no destination named {name!r} (known: "
                                  f"{', '.join(destinations) or 'none'})")
        allowed = fields.get("allow", ())
        for binding in fields.get("certificates", ()):
            if allowed and binding.ae_title not in allowed:
                raise ConfigError(f"{path}.certificates.{binding.ae_title}",
                                  f"{binding.ae_title!r} is not in allow of this route, so it "
                                  "is refused whatever its certificate: add it to allow")
        if not fields["archives"]:
            raise ConfigError(f"{path}.archives", "must name at least one archive")
        for key in ("archives", "store_to", "mpps_to"):
            for j, name in enumerate(fields.get(key, ())):
                if name not in archives:
                    raise ConfigError(f"{path}.{key}[{j}]", f"no archive named {name!r}")
            if len(set(fields.get(key, ()))) != len(fields.get(key, ())):
                raise ConfigError(f"{path}.{key}", "names an archive twice")
        if "commit_to" in fields and fields["commit_to"] not in archives:
            raise ConfigError(f"{path}.commit_to", f"no archive named {fields['commit_to']!r}")
        if fields.get("store") == "relay" and len(fields.get("store_to", ())) != 1:
            raise ConfigError(f"{path}.store", "\"relay\" forwards each C-STORE to one archive "
                              "while the workstation waits: store_to must name exactly one "
                              f"(it names {len(fields.get('store_to', ()))})")
        called = fields["called_ae"]
        if called in seen:
            raise ConfigError(f"{path}.called_ae",
                              f"{called!r} is already used by routes[{seen[called]}]")
        seen[called] = i
        if "store_filter" in fields:
            fields["store_filters"] = _store_filters(f"{path}.store_filter",
                                                     fields.pop("store_filter"),
                                                     fields.get("store_to", ()))
        routes.append(RouteConfig(**fields))
    return tuple(routes)


def _store_filters(path: str, raw: Any, store_to: tuple[str, ...]) -> tuple[StoreFilter, ...]:
    """``store_filter.<archive> = { modality = [...], calling_ae = [...], sop_class = [...] }``."""
    out: list[StoreFilter] = []
    for name, body in check.table(path, raw).items():
        where = f"{path}.{name}"
        if name not in store_to:
            raise ConfigError(where, f"{name!r} is not in store_to of this route "
                                     f"({', '.join(store_to) or 'store_to is empty'})")
        fields = check.fields(where, body, required=set(), checks={
            "modality": _modality_list, "calling_ae": check.ae_list, "sop_class": _uid_list})
        if not fields:
            raise ConfigError(where, "has no condition (modality, calling_ae, sop_class); "
                                     "remove it to forward every instance")
        for key, values in fields.items():
            if not values:
                raise ConfigError(f"{where}.{key}", "must not be empty")
        out.append(StoreFilter(archive=name, **fields))
    return tuple(out)


def _certificates(path: str, value: Any) -> tuple[CertificateBinding, ...]:
    """``{ WS1 = "CN=ws1,O=Radiology", WS2 = ["CN=old,O=Rad", "CN=new,O=Rad"] }``: each
    calling AE title bound to the client certificate subjects it may use (a list: any of
    them, e.g. while a certificate is renewed)."""
    table = check.table(path, value)
    out = []
    for title, raw in table.items():
        where = f"{path}.{title}"
        check.ae(where, title)
        written = raw if isinstance(raw, list) else [raw]
        if not written:
            raise ConfigError(where, "names no certificate subject")
        subjects = tuple(check.text(f"{where}[{i}]", s) for i, s in enumerate(written))
        attributes = tuple(check.subject(f"{where}[{i}]", s) for i, s in enumerate(subjects))
        out.append(CertificateBinding(title, subjects, attributes))
    return tuple(out)


def _allow_list(path: str, value: Any) -> tuple[AllowEntry, ...]:
    """``["WS1", "WS2@10.1.2.0/24", "WS2@fd00::/8"]``: AE titles, each optionally bound to
    a source network (``AE@CIDR``; an AE title listed several times may call from any)."""
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of AE titles (AE or AE@network), not "
                                f"{check.kind(value)}")
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, str):
            raise ConfigError(where, f"AE title must be a string, not {check.kind(item)}")
        title, at, net = item.rpartition("@")
        if not at:
            out.append(AllowEntry(check.ae(where, item)))
            continue
        if not net.strip():
            raise ConfigError(where, f"{item!r}: nothing after '@' (expected AE@network, "
                                     "e.g. WS1@10.1.2.0/24)")
        out.append(AllowEntry(check.ae(where, title), check.network(where, net.strip())))
    return tuple(out)


def _modality_list(path: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of modality codes, not {check.kind(value)}")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not _CS.fullmatch(v):
            raise ConfigError(f"{path}[{i}]", f"must be a modality code such as \"CT\" "
                                              f"(1-16 of A-Z, 0-9, _), not {v!r}")
        out.append(v)
    return tuple(out)


def _uid_list(path: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of UIDs, not {check.kind(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or len(v) > 64 or not _UID.fullmatch(v):
            raise ConfigError(f"{path}[{i}]", f"must be a UID such as \"1.2.840.10008.5.1.4.1.1.2\""
                                              f", not {v!r}")
    return tuple(value)


def _any(path: str, value: Any) -> Any:
    del path
    return value
