"""Generic checks for rules.toml values: each takes (key path, value) and returns
the typed value or raises ConfigError naming the key path.

Rule: one line per error, starting with the key path; no traceback reaches a user.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A rules file problem; ``str()`` is the one line shown to the user."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


Check = Callable[[str, Any], Any]


def section(path: str, raw: Any, cls: Callable[..., T], checks: dict[str, Check]) -> T:
    return cls(**fields(path, raw, required=set(), checks=checks))


def fields(path: str, raw: Any, *, required: set[str], checks: dict[str, Check]) -> dict[str, Any]:
    body = table(path, raw)
    only_keys(path, body, set(checks))
    for key in sorted(required):
        if key not in body:
            raise ConfigError(f"{path}.{key}", "is required")
    return {key: checks[key](f"{path}.{key}", value) for key, value in body.items()}


def table(path: str, raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"must be a table, not {kind(raw)}")
    return raw


def only_keys(path: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            hint = ", ".join(sorted(allowed))
            raise ConfigError(where, f"unknown key (expected one of: {hint})")


def kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def ae_problem(value: str) -> str | None:
    """What makes ``value`` no AE title (PS3.5 6.2, VR AE), or None: at most 16
    characters of the Default Character Repertoire, no backslash, no control characters."""
    if len(value) > 16:
        return "must be no more than 16 characters"
    if not value.isascii() or any(ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F
                                  for ch in value):
        return "must not contain backslashes, control characters or non-ASCII characters"
    return None


def ae(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"AE title must be a string, not {kind(value)}")
    why = ae_problem(value)
    if why is not None:
        raise ConfigError(path, f"invalid AE title {value!r}: {why}")
    if not value.strip():
        raise ConfigError(path, "AE title must not be empty or all spaces")
    return value.strip()


def ae_list(path: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of AE titles, not {kind(value)}")
    return tuple(ae(f"{path}[{i}]", v) for i, v in enumerate(value))


def name_list(path: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of names, not {kind(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{path}[{i}]", "must be a non-empty string")
    return tuple(value)


def host(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ConfigError(path, f"must be a host name or IP address, not {value!r}")
    return value


def port(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"port must be an integer, not {kind(value)}")
    if not 0 <= value <= 65535:
        raise ConfigError(path, f"port {value} is out of range (0-65535)")
    return value


def peer_port(path: str, value: Any) -> int:
    # A port the proxy connects to; 0 ("any free port") only makes sense for listening.
    number = port(path, value)
    if number == 0:
        raise ConfigError(path, "port 0 is out of range for a peer (1-65535)")
    return number


def positive_int(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(path, f"must be a positive integer, not {value!r}")
    return value


def int_between(low: int, high: int) -> Check:
    def check(path: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(path, f"must be an integer from {low} to {high}, not {value!r}")
        return value
    return check


def non_negative_int(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(path, f"must be an integer >= 0, not {value!r}")
    return value


def pdu_size(path: str, value: Any) -> int:
    size = positive_int(path, value)
    if not 4096 <= size <= 16 * 1024 * 1024:
        raise ConfigError(path, f"must be between 4096 and 16777216 bytes, not {size}")
    return size


def positive_float(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(path, f"must be a positive number of seconds, not {value!r}")
    return float(value)


def non_negative_float(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(path, f"must be a number of seconds >= 0, not {value!r}")
    return float(value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(path: str, value: str) -> Network:
    """An IPv4 or IPv6 network in CIDR notation (a bare address is one host)."""
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(path, f"invalid network {value!r}: expected an IPv4 or IPv6 "
                                    "address or CIDR such as 10.1.2.0/24 or fd00::/8") from None
        raise ConfigError(path, f"invalid network {value!r}: host bits set (did you mean "
                                f"{loose}?)") from exc


def networks(path: str, value: Any) -> tuple[Network, ...]:
    """An array of networks (``network``), e.g. the load balancers a setting trusts."""
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of networks, not {kind(value)}")
    return tuple(network(f"{path}[{i}]", text(f"{path}[{i}]", v)) for i, v in enumerate(value))


# A certificate subject as a set of (attribute OID, value folded for comparison).
Subject = frozenset[tuple[str, str]]


def subject_attributes(rfc4514: str) -> Subject:
    """The attributes of a distinguished name written as RFC 4514 (``CN=ws1,O=Radiology``),
    each value compared as X.520's caseIgnoreMatch does: case and runs of spaces folded.
    Raises ValueError when it is not a distinguished name."""
    from cryptography import x509  # only configs with certificate bindings need it

    # openssl's default display ("CN = ws1, O = Radiology") puts spaces around separators.
    compact = re.sub(r"(?<!\\)\s*([,+=])\s*", r"\1", rfc4514.strip())
    compact = re.sub(r"(^|(?<!\\)[,+])([A-Za-z][A-Za-z0-9-]*)=",    # cn=, o= as CN=, O=
                     lambda m: m.group(1) + m.group(2).upper() + "=", compact)
    try:
        name = x509.Name.from_rfc4514_string(compact)
    except ValueError as exc:
        raise ValueError(str(exc) or "expected TYPE=value pairs separated by commas") from None
    out = set()
    for attribute in name:
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
        out.add((attribute.oid.dotted_string, " ".join(value.split()).casefold()))
    if not out:
        raise ValueError("no attributes")
    return frozenset(out)


def subject(path: str, value: Any) -> Subject:
    """A certificate subject, RFC 4514: ``"CN=ws1.example.org,O=Radiology"``."""
    try:
        return subject_attributes(text(path, value))
    except ValueError as exc:
        raise ConfigError(path, f"{value!r} is not a certificate subject ({exc}): write it "
                                "as RFC 4514, e.g. \"CN=ws1.example.org,O=Radiology\" (openssl "
                                "x509 -noout -subject -nameopt RFC2253 shows it)") from None


def text(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"must be a string, not {kind(value)}")
    return value


def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, not {value!r}")
    return value


def path_value(path: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"must be a non-empty path string, not {value!r}")
    return Path(value)


def readable_file(path: str, value: Any) -> Path:
    """A file that exists and can be read now (certificates, keys)."""
    file = path_value(path, value)
    try:
        with open(file, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(path, f"cannot read {str(file)!r}: {exc.strerror}") from None
    return file


def choice(options: tuple[str, ...]) -> Check:
    def check(path: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, options))}, "
                                    f"not {value!r}")
        return str(value)
    return check
