"""What every DIMSE handler shares: the services it may use and its one report.

Rule 1: every handler has the same shape, ``handle(request, services)`` (a
        ``proxy.session.Request``), and is bound to its DIMSE command in
        ``proxy.app.HANDLERS``; ``proxy.responder`` sends what it answers.
Rule 2: every request a handler answers produces exactly one
        ``OperationCompleted`` — ``Services.operation`` guarantees it, even when
        the handler raises or its generator is abandoned mid-way.
Rule 3: every request to an archive produces one ``UpstreamCompleted``
        (``Services.upstream_call``).
Rule 4: a request made for a workstation goes through ``Services.archive(name, event)``,
        which presents the calling AE title the route chooses (``routing.calling_ae_for``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag

from proxy.config import Config
from proxy.listener import Listener
from proxy.observe import events as ev
from proxy.observe.logs import PHI_KEYWORDS
from proxy.rawtext import text_values
from proxy.routing import calling_ae_for
from proxy.session import Request, Session
from proxy.upstream import ArchiveClient, UpstreamError

if TYPE_CHECKING:   # annotations only: these modules import this one (no runtime cycle)
    from proxy.observe.health import HealthMonitor
    from proxy.query.federation.locations import Locate, LocationCache
    from proxy.query.federation.recovery import Finder
    from proxy.retrieve.inbound import InboundRegistry
    from proxy.store.spool import Spool
    from proxy.workflow.commitment import Commitments
    from proxy.workflow.delivery import Mpps

# The DICOM keywords among PHI_KEYWORDS (the others name log fields), as tags.
_PHI_TAGS = tuple(BaseTag(tag) for keyword in sorted(PHI_KEYWORDS)
                  if (tag := tag_for_keyword(keyword)) is not None)


@dataclass
class OperationRecord:
    """Filled in by a handler while it works; reported once when it ends."""

    operation: str
    status: int | None = None
    archives: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None
    phi: list[str] = field(default_factory=list)
    # Response elements beyond Status and Error Comment the answer carries by keyword
    # (an archive's Error ID or Offending Element, relayed as the archive sent them).
    response: dict[str, Any] = field(default_factory=dict)

    def protect(self, ds: Dataset | None) -> None:
        """Remember the patient identifiers in ``ds`` so logs never show them."""
        if ds is None:
            return
        present = ds.keys()         # runs once per C-FIND match: read, never convert
        for tag in _PHI_TAGS:
            if tag in present:
                self.phi.extend(text_values(ds, tag))


@dataclass
class Plugins:
    """What the extensions in ``proxy.app.EXTENSIONS`` plug in; ``None`` when not installed."""

    spool: Spool | None = None                    # proxy.store.drain.start
    health: HealthMonitor | None = None           # proxy.observe.health.start ([health] enabled)
    locations: LocationCache | None = None        # proxy.query.federation.install
    remember_location: Callable[[str, str, Dataset], None] | None = None   # federation
    locate: Locate | None = None                  # proxy.query.federation.install
    find_query: Finder | None = None              # federation: C-FIND with cap recovery
    retrieve_inbound: InboundRegistry | None = None                # proxy.retrieve.install
    inbound_store: Callable[[Request], int | Dataset] | None = None  # proxy.retrieve
    mpps: Mpps | None = None                      # proxy.workflow.delivery.start
    commitment: Commitments | None = None         # proxy.workflow.commitment.start


@dataclass
class Services:
    """Everything a handler may use; built once in ``proxy.app``."""

    config: Config
    bus: ev.EventBus
    listener: Listener
    archives: dict[str, ArchiveClient]
    destinations: dict[str, ArchiveClient]
    plugins: Plugins = field(default_factory=Plugins)     # set by the extensions

    def session(self, event: Request) -> Session:
        return event.session

    def archive(self, name: str, event: Request | None) -> ArchiveClient:
        """The client for a request to archive ``name`` made for ``event``'s workstation
        (Rule 4); without an event, the proxy's own (its ``calling_ae``)."""
        if event is None:
            return self.archives[name]
        return self.archive_for(name, self.session(event))

    def archive_for(self, name: str, session: Session) -> ArchiveClient:
        """``archive`` for a workstation's association before any request (negotiation)."""
        return self.archives[name].calling_as(calling_ae_for(
            self.config.archives[name], session.route, session.info.calling_ae))

    @contextmanager
    def operation(self, event: Request, name: str) -> Iterator[OperationRecord]:
        """Time one DIMSE request and report it exactly once (Rule 2)."""
        record = OperationRecord(name)
        started = time.monotonic()
        session = self.session(event)
        try:
            yield record
        except Exception as exc:
            if record.status is None:
                record.status = 0xC000
            record.details.setdefault("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.bus.emit(ev.OperationCompleted(
                session.info, name, record.status, time.monotonic() - started,
                list(record.archives), dict(record.details), record.hint, list(record.phi)))

    @contextmanager
    def upstream_call(self, archive: str, operation: str, event: Request | None = None,
                      phi: list[str] | None = None, info: ev.AssocInfo | None = None,
                      ) -> Iterator[dict[str, Any]]:
        """Time one request to an archive; the caller sets ``status`` in the dict.

        ``info`` names who it is for when there is no DIMSE request (an HTTP client)."""
        result: dict[str, Any] = {"status": None, "details": {}}
        started = time.monotonic()
        if event is not None:
            info = self.session(event).info
        error: str | None = None
        hint: str | None = None
        try:
            yield result
        except UpstreamError as exc:
            error, hint = exc.reason, exc.hint
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.bus.emit(ev.UpstreamCompleted(
                archive, operation, result["status"], time.monotonic() - started, info,
                result.get("error", error), result.get("hint", hint), result["details"],
                list(phi or [])))
