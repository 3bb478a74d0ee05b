"""The log observer: events → one JSON object per line. The only structlog setup.

Rule 1: every line has ``timestamp`` (ISO 8601 UTC), ``level``, ``event``;
        association-scoped lines add ``assoc_id``, ``calling_ae``, ``called_ae``, ``peer``.
        The contract names two things ``level``: the line's severity, and the
        Query/Retrieve level of an ``operation`` line. An ``operation`` line with
        a Q/R level (C-FIND, C-MOVE, C-GET) carries that level in ``level`` as the
        contract lists it (also in ``query_level``); every line carries its
        severity in ``severity`` (the same as ``level`` everywhere else).
Rule 2: ``phi = "hash"`` (default) replaces patient name, ID and birth date with a
        short stable token everywhere — fields, query keys and free text such as
        exception messages; ``"drop"`` removes them; ``"clear"`` leaves them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import IO, Any, TextIO, cast

import structlog

from proxy.observe import events as ev
from proxy.status import hex_status

PHI_KEYWORDS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "patient_name", "patient_id", "birth_date",
})


class PhiFilter:
    """Hashes, drops or keeps patient identifiers in log fields and text."""

    def __init__(self, mode: str = "hash", key: str = "") -> None:
        self.mode = mode
        # With a site secret the tokens are an HMAC: stable for one installation,
        # but a short patient ID can no longer be recovered by hashing every value.
        self._key = key.encode("utf-8")

    def token(self, value: str) -> str:
        data = value.strip().encode("utf-8", "replace")
        if self._key:
            digest = hmac.new(self._key, data, hashlib.sha256).hexdigest()
        else:
            digest = hashlib.sha256(data).hexdigest()
        return "phi:" + digest[:12]

    def field(self, value: Any) -> Any:
        """The logged form of a value known to be a patient identifier."""
        if self.mode == "clear" or value in (None, ""):
            return value
        if self.mode == "drop":
            return "[dropped]"
        return self.token(str(value))

    def scrub(self, value: Any, phi: Iterable[str]) -> Any:
        """Replace known identifier values wherever they appear in ``value``."""
        if self.mode == "clear":
            return value
        secrets = sorted({s for s in phi if s and len(s.strip()) >= 2}, key=len, reverse=True)
        return self._scrub(value, secrets)

    def _scrub(self, value: Any, secrets: list[str]) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, self.field(secret))
            return value
        if isinstance(value, Mapping):
            return {k: (self.field(v) if k in PHI_KEYWORDS else self._scrub(v, secrets))
                    for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub(v, secrets) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        # Anything else (pydicom PersonName, an exception, a Dataset element…) is
        # rendered as text by the JSON renderer anyway: scrub that text here.
        return self._scrub(str(value), secrets)


def make_logger(fmt: str = "json", level: str = "info",
                stream: IO[str] | None = None) -> structlog.typing.FilteringBoundLogger:
    """Build the proxy's logger without touching structlog's global configuration."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(sort_keys=False) if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    wrapper = structlog.make_filtering_bound_logger(getattr(logging, level.upper()))
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(cast(TextIO, stream or sys.stdout)),
        processors=[
            structlog.processors.add_log_level,
            _severity_and_query_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _timestamp_first,
            renderer,
        ],
        wrapper_class=wrapper,
    )
    return logger


def _severity_and_query_level(_: Any, __: str,
                              event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["severity"] = event_dict.get("level")
    if event_dict.get("event") == "operation" and event_dict.get("query_level"):
        event_dict["level"] = event_dict["query_level"]   # Rule 1
    return event_dict


def _timestamp_first(_: Any, __: str,
                     event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    head: dict[str, Any] = {k: event_dict.pop(k) for k in ("timestamp", "level", "event",
                                                            "severity")
                            if k in event_dict}
    return {**head, **event_dict}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


class LogObserver:
    """Turns each event into at most one log line."""

    def __init__(self, logger: structlog.typing.FilteringBoundLogger, phi: PhiFilter) -> None:
        self.log = logger
        self.phi = phi

    def _emit(self, level: str, name: str, fields: dict[str, Any], phi: Iterable[str] = (),
              assoc: ev.AssocInfo | None = None) -> None:
        out = assoc.fields() if assoc else {}
        out.update({k: v for k, v in fields.items() if v is not None})
        out = self.phi.scrub(out, phi)
        getattr(self.log, level)(name, **out)

    def __call__(self, event: ev.Event) -> None:
        match event:
            case ev.ProxyStarted():
                self._emit("info", "proxy_started", {
                    "ae_title": event.ae_title, "host": event.host, "port": event.port,
                    "metrics_url": event.metrics_url, "routes": list(event.routes),
                    "tls_port": event.tls_port})
            case ev.ProxyStopping():
                self._emit("info", "proxy_stopping", {
                    "reason": event.reason, "active_associations": event.active_associations})
            case ev.ProxyStopped():
                self._emit("info", "proxy_stopped",
                           {"unfinished_associations": event.unfinished_associations})
            case ev.ConnectionRefused():
                self._emit("warning", "connection_refused",
                           {"peer": event.peer, "reason": event.reason})
            case ev.AssociationAccepted():
                self._emit("info", "association_accepted", {
                    "contexts_accepted": event.contexts_accepted,
                    "contexts_rejected": event.contexts_rejected,
                    "tls": event.tls or None, "client_certificate": event.client_certificate},
                    assoc=event.assoc)
            case ev.AssociationRejected():
                self._emit("warning", "association_rejected",
                           {"reason": event.reason, "hint": event.hint,
                            "security": event.security}, assoc=event.assoc)
            case ev.SecurityRefused():
                self._emit("warning", f"{event.kind}_refused", {
                    "route": event.assoc.route, "reason": event.reason, **dict(event.details),
                    "hint": event.hint}, assoc=event.assoc)
            case ev.AssociationReleased():
                self._emit("info", "association_released",
                           {"duration_ms": _ms(event.duration_s)}, assoc=event.assoc)
            case ev.AssociationAborted():
                self._emit("warning", "association_aborted", {
                    "duration_ms": _ms(event.duration_s), "reason": event.reason},
                    assoc=event.assoc)
            case ev.OperationCompleted():
                fields: dict[str, Any] = {
                    "operation": event.operation, "status": hex_status(event.status),
                    "duration_ms": _ms(event.duration_s), "archives": list(event.archives),
                    "route": event.assoc.route}
                fields.update(event.details)
                # Every line's ``level`` is the log level (Rule 1); the Q/R level of a
                # C-FIND/C-MOVE/C-GET would be overwritten by it, so it is ``query_level``.
                if "level" in fields:
                    fields["query_level"] = fields.pop("level")
                fields["hint"] = event.hint
                level = "info" if event.status in (0x0000, 0xFE00) else "warning"
                self._emit(level, "operation", fields, event.phi, event.assoc)
            case ev.HttpRequestCompleted():
                fields = {"operation": event.service, "status": event.code,
                          "duration_ms": _ms(event.duration_s), "archives": list(event.archives),
                          "route": event.route, "called_ae": event.route,
                          "calling": event.peer, "peer": event.peer, "method": event.method,
                          "path": event.path, **dict(event.details)}
                if "level" in fields:                      # Rule 1, as for C-FIND
                    fields["query_level"] = fields.pop("level")
                fields["hint"] = event.hint
                self._emit("info" if event.code < 400 else "warning", "operation", fields,
                           event.phi)
            case ev.DicomwebStarted():
                self._emit("info", "dicomweb_started", {
                    "host": event.host, "port": event.port, "routes": list(event.routes),
                    "url": f"http://{event.host}:{event.port}/dicomweb/"})
            case ev.UpstreamCompleted():
                level = "info" if event.error is None and event.status in (0x0000, 0xFE00) \
                    else "warning"
                self._emit(level, "upstream", {
                    "archive": event.archive, "operation": event.operation,
                    "status": hex_status(event.status), "duration_ms": _ms(event.duration_s),
                    "error": event.error, "hint": event.hint, **dict(event.details)},
                    event.phi, event.assoc)
            case ev.FindMatched(truncated=True):
                self._emit("warning", "find_truncated", {
                    "archive": event.archive, "matches": event.matches, "cap": event.cap,
                    "hint": "the archive probably capped its answer; the proxy splits the query "
                            "to recover the rest"}, assoc=event.assoc)
            case ev.ArchiveHealthChanged():
                kind = "destination" if event.kind == "destination" else "archive"
                self._emit("info" if event.up else "warning",
                           f"{kind}_up" if event.up else f"{kind}_down",
                           {kind: event.archive, "reason": event.reason, "hint": event.hint})
            case ev.ForwardDeadLettered():
                self._emit("warning", "forward_dead_lettered", {
                    "archive": event.archive, "instance": event.instance,
                    "sop_class": event.sop_class, "sop_instance_uid": event.sop_instance_uid,
                    "status": hex_status(event.status), "reason": event.reason,
                    "path": event.path, "hint": event.hint})
            case ev.TlsHandshake(ok=False):
                self._emit("warning", "tls_failed", {
                    "peer": event.peer, "side": event.side, "reason": event.reason,
                    "hint": event.hint, "subject": event.subject})
            case ev.TlsHandshake(ok=True):
                self._emit("debug", "tls_accepted", {
                    "peer": event.peer, "side": event.side, "subject": event.subject})
            case ev.TlsReloaded(error=None):
                self._emit("info", "tls_reloaded", {})
            case ev.TlsReloaded():
                self._emit("error", "tls_reload_failed", {
                    "error": event.error,
                    "hint": "the previous certificates stay in use; fix the files in [tls] "
                            "and send SIGHUP again"})
            case ev.Noted():
                self._emit(event.level, event.message, dict(event.fields), event.phi, event.assoc)
            case _:
                pass
