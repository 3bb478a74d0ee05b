"""Typed, past-tense events and the bus that hands them to observers.

Rule 1: handlers *emit* events; they never touch Prometheus or structlog.
Rule 2: an observer's exception is reported once on stderr and swallowed —
        watching can never change a DICOM response or kill an association.
Rule 3: events carry configured names (route called AE, archive name) for
        labels; anything a peer chose freely is labelled ``unknown``.
Rule 4: ``phi`` holds the patient identifiers an event's text may contain, so
        the log observer can hash or drop them wherever they appear.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class AssocInfo:
    """Who is on the other end of one workstation-facing association."""

    assoc_id: str
    calling_ae: str
    called_ae: str
    peer: str
    route: str = "unknown"            # the configured called AE, or "unknown"

    def fields(self) -> dict[str, Any]:
        return {"assoc_id": self.assoc_id, "calling_ae": self.calling_ae,
                "called_ae": self.called_ae, "peer": self.peer}


@dataclass(frozen=True)
class Event:
    """Base of every event; ``phi`` lists identifier values to protect in text."""


@dataclass(frozen=True)
class ProxyStarted(Event):
    ae_title: str
    host: str
    port: int
    metrics_url: str | None
    routes: Sequence[str]
    tls_port: int | None = None       # the DICOM-over-TLS listener's port, when there is one


@dataclass(frozen=True)
class ProxyStopping(Event):
    reason: str
    active_associations: int


@dataclass(frozen=True)
class ProxyStopped(Event):
    unfinished_associations: int


@dataclass(frozen=True)
class ConnectionRefused(Event):
    peer: str
    reason: str


@dataclass(frozen=True)
class AssociationAccepted(Event):
    assoc: AssocInfo
    contexts_accepted: int
    contexts_rejected: int
    tls: bool = False                 # over the TLS listener
    client_certificate: str | None = None   # its subject, when the workstation showed one


@dataclass(frozen=True)
class AssociationRejected(Event):
    assoc: AssocInfo
    reason: str
    hint: str | None = None
    security: str | None = None       # a security event of this kind (``routing`` Rule 6)


@dataclass(frozen=True)
class SecurityRefused(Event):
    """A request refused by a "who may do what" rule (``routing`` Rule 6), e.g. a C-MOVE
    to a Move Destination its route does not allow; logged as ``<kind>_refused``."""

    assoc: AssocInfo
    kind: str                         # "move_destination"
    reason: str
    hint: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AssociationReleased(Event):
    assoc: AssocInfo
    duration_s: float


@dataclass(frozen=True)
class AssociationAborted(Event):
    assoc: AssocInfo
    duration_s: float
    reason: str


@dataclass(frozen=True)
class AssociationClosed(Event):
    """The association's thread ended, whatever the reason (keeps the gauge honest)."""

    assoc: AssocInfo


@dataclass(frozen=True)
class OperationCompleted(Event):
    """Exactly one per DIMSE request the proxy answers."""

    assoc: AssocInfo
    operation: str                    # C-ECHO ... C-STORE, N-CREATE, N-SET; unserved: N-ACTION...
    status: int | None
    duration_s: float
    archives: Sequence[str]
    details: Mapping[str, Any] = field(default_factory=dict)  # level, matches, counts...
    hint: str | None = None
    phi: Sequence[str] = ()


@dataclass(frozen=True)
class HttpRequestCompleted(Event):
    """Exactly one per DICOMweb request the proxy answers (``proxy.web``)."""

    service: str                      # QIDO-RS, WADO-RS, STOW-RS; "unknown" for no service
    route: str                        # the configured called AE, or "unknown"
    code: int                         # the HTTP status code sent
    duration_s: float
    peer: str                         # the client's ip:port
    method: str
    path: str                         # the URL path (UIDs, never the query: it may hold PHI)
    archives: Sequence[str] = ()
    details: Mapping[str, Any] = field(default_factory=dict)  # level, matches, query...
    hint: str | None = None
    phi: Sequence[str] = ()


@dataclass(frozen=True)
class DicomwebStarted(Event):
    """The DICOMweb front door listens (``proxy.web.server``)."""

    host: str
    port: int
    routes: Sequence[str]             # the called AE titles served


@dataclass(frozen=True)
class UpstreamCompleted(Event):
    """One per request the proxy made to an archive (or destination)."""

    archive: str
    operation: str
    status: int | None
    duration_s: float
    assoc: AssocInfo | None = None
    error: str | None = None
    hint: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    phi: Sequence[str] = ()


@dataclass(frozen=True)
class FindMatched(Event):
    """Matches an archive returned for one C-FIND (before de-duplication)."""

    archive: str
    matches: int
    truncated: bool
    cap: int
    assoc: AssocInfo | None = None


@dataclass(frozen=True)
class SubOperationsCounted(Event):
    operation: str                    # C-MOVE, C-GET, C-STORE-forward
    completed: int
    failed: int
    warning: int


@dataclass(frozen=True)
class ArchiveProbed(Event):
    """Every health C-ECHO (feeds the up gauge and latency; not logged).

    ``archive`` is the configured name; ``kind`` says which table it is from
    ("archive" or "destination"), since the two name spaces are separate.
    """

    archive: str
    up: bool
    latency_s: float | None = None
    kind: str = "archive"


@dataclass(frozen=True)
class ArchiveHealthChanged(Event):
    """Only when a peer goes up → down or down → up (logged); the first probe counts."""

    archive: str
    up: bool
    reason: str | None = None
    hint: str | None = None
    kind: str = "archive"             # "archive" or "destination"


@dataclass(frozen=True)
class SpoolChanged(Event):
    pending: int
    pending_bytes: int = 0
    oldest_age_s: float = 0.0
    dead: int = 0                     # (instance, archive) pairs in the dead-letter folder


@dataclass(frozen=True)
class ForwardDeadLettered(Event):
    """An archive refused a spooled instance for good; it went to the dead-letter folder."""

    archive: str
    instance: str                     # spool id
    sop_class: str
    sop_instance_uid: str
    status: int | None
    reason: str
    path: str                         # where the instance now lies
    hint: str | None = None


@dataclass(frozen=True)
class MppsJournalChanged(Event):
    """An archive's MPPS journal after a change (``proxy.workflow``; gauges, not logged)."""

    archive: str
    pending: int                      # N-CREATE/N-SET messages waiting for the archive
    dead: int                         # ... and in its dead-letter folder


@dataclass(frozen=True)
class CommitmentsChanged(Event):
    """The Storage Commitment journal after a change (``proxy.workflow.commitment``;
    gauges, not logged)."""

    pending: dict[str, int]           # commitments per archive not yet reported back
    dead: int                         # reports that could not be delivered (dead letters)


@dataclass(frozen=True)
class TlsHandshake(Event):
    """One TLS handshake with a peer; ``reason``/``hint`` when it failed (``proxy.tls``)."""

    side: str                         # workstation, archive, destination
    peer: str                         # ip:port
    ok: bool
    reason: str | None = None         # the contract's words: unknown CA, expired, timeout...
    hint: str | None = None
    subject: str | None = None        # the peer certificate's subject, when one was shown
    not_after: float | None = None    # ... and its expiry (unix seconds)


@dataclass(frozen=True)
class TlsCertificateHeld(Event):
    """A certificate the proxy holds (its own, a CA's): its expiry, for the gauge."""

    subject: str
    role: str                         # "proxy" or "ca"
    not_after: float                  # unix seconds


@dataclass(frozen=True)
class TlsReloaded(Event):
    """SIGHUP re-read [tls] cert/key/ca; ``error`` when the new files were unusable."""

    error: str | None = None


@dataclass(frozen=True)
class Noted(Event):
    """A free-form operational note (level + message + fields), for rare cases."""

    level: str
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    assoc: AssocInfo | None = None
    phi: Sequence[str] = ()


class Observer(Protocol):
    def __call__(self, event: Event) -> None: ...


class EventBus:
    """Fan events out to observers; never lets an observer's failure escape."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self._observers = list(observers)
        self._lock = threading.Lock()
        self._failures: set[str] = set()

    def subscribe(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)

    def emit(self, event: Event) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception as exc:  # Rule 2
                key = f"{type(observer).__name__}:{type(exc).__name__}"
                if key not in self._failures:
                    self._failures.add(key)
                    print(f"dicom-proxy: observer {type(observer).__name__} failed on "
                          f"{type(event).__name__}: {type(exc).__name__}", file=sys.stderr)
