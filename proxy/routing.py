"""Pure routing decisions: (association facts, operation) → what to do.

Rule 1: no sockets, no threads, no logging here — data in, data out.
Rule 2: an association is admitted only to a configured route (by called AE)
        and only from an allowed calling AE; otherwise it is rejected with the
        A-ASSOCIATE-RJ reason the standard defines for it (PS3.8 9.3.4).
Rule 3: upstream, the proxy presents the AE titles the archive expects: the
        archive's ``calling_ae`` as calling AE and its ``ae_title`` as called AE.
Rule 4: the proxy's own AE title (``[proxy] ae_title``) is where archives with
        ``retrieve = "move"`` deliver C-MOVE sub-operations: an association calling
        it is admitted as ``Inbound`` when the calling AE is a configured archive's
        AE title, or while a move-mode retrieve is in flight (archives may call
        with another title); otherwise it is rejected (calling AE not recognised).
Rule 5: on a route with ``pass_calling_ae``, every association the proxy opens for one
        of its workstations presents that workstation's calling AE title instead of
        the archive's ``calling_ae`` (``calling_ae_for``): C-ECHO, every C-FIND (relay,
        federation, cap-recovery sub-queries, locating and surveying a retrieve), the
        C-GET or C-MOVE that pulls a retrieve, and the forwarding of the instances it
        stored (``forward_calling_ae``). The archive then applies its own per-AE rules
        and audit to the workstation. The proxy's own associations keep its titles:
        health checks and ``doctor`` call as ``calling_ae``, a move-mode C-MOVE names
        the proxy's ``ae_title`` as Move Destination (the archive must know the proxy
        there), and C-STOREs to a Move Destination call as ``[proxy] ae_title`` — the
        proxy is that destination's storage SCU; the workstation is named in them as
        Move Originator.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import ArchiveConfig, Config, DestinationConfig, RouteConfig, StoreFilter

# A-ASSOCIATE-RJ fields, PS3.8 Table 9-21.
RESULT_PERMANENT = 0x01
RESULT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_SERVICE_PROVIDER_PRESENTATION = 0x03
DIAG_NO_REASON = 0x01
DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
DIAG_CALLED_AE_NOT_RECOGNISED = 0x07
DIAG_LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class Rejection:
    reason: str                        # what a person reads in the log
    hint: str                          # what to change to make it work
    result: int
    source: int
    diagnostic: int


@dataclass(frozen=True)
class Inbound:
    """An archive delivering C-MOVE sub-operations to the proxy's own AE title (Rule 4)."""

    called_ae: str
    archive: str | None                # the archive whose AE title called, if one did


def admit(config: Config, calling_ae: str, called_ae: str,
          retrieving: bool = False) -> RouteConfig | Inbound | Rejection:
    """Decide whether a workstation may associate, and on which route.

    ``retrieving``: a move-mode retrieve is in flight (Rule 4).
    """
    called = called_ae.strip()
    calling = calling_ae.strip()
    route = config.route_for(called)
    if called == config.proxy.ae_title:
        archive = next((a.name for a in config.archives.values() if a.ae_title == calling),
                       None)
        if archive is not None or retrieving:
            return Inbound(called, archive)
        if route is None:
            known = ", ".join(r.called_ae for r in config.routes)
            return Rejection(
                reason=f"called AE title {called!r} is the proxy's own retrieve AE title; "
                       f"calling AE {calling!r} is not an archive and no retrieve is in flight",
                hint=f"workstations call a route ({known}); an archive delivering C-MOVE "
                     f"sub-operations must be in [archives] with ae_title = {calling!r}",
                result=RESULT_PERMANENT, source=SOURCE_SERVICE_USER,
                diagnostic=DIAG_CALLING_AE_NOT_RECOGNISED)
    if route is None:
        known = ", ".join(r.called_ae for r in config.routes)
        return Rejection(
            reason=f"called AE title {called!r} is not a route of this proxy",
            hint=f"call one of: {known}",
            result=RESULT_PERMANENT, source=SOURCE_SERVICE_USER,
            diagnostic=DIAG_CALLED_AE_NOT_RECOGNISED)
    if route.allow and calling not in route.allow:
        return Rejection(
            reason=f"calling AE title {calling!r} is not allowed on route {called!r}",
            hint=f"add {calling!r} to allow of the route {called!r} in rules.toml",
            result=RESULT_PERMANENT, source=SOURCE_SERVICE_USER,
            diagnostic=DIAG_CALLING_AE_NOT_RECOGNISED)
    return route


def clear_on_tls_only(route: RouteConfig, over_tls: bool,
                      tls_port: int | None) -> Rejection | None:
    """A ``tls_only`` route refuses an association that came over the clear port: called AE
    not recognised (PS3.8 9.3.4), the nearest reason: this AE title does not exist there."""
    if over_tls or not route.tls_only:
        return None
    where = f"the TLS port {tls_port}" if tls_port else "the proxy's TLS port"
    return Rejection(
        reason=f"route {route.called_ae} accepts TLS only",
        hint=f"connect to {where} with DICOM over TLS (DCMTK: +tls KEY CERT +cf CA), or set "
             f"tls_only = false on the route {route.called_ae!r}",
        result=RESULT_PERMANENT, source=SOURCE_SERVICE_USER,
        diagnostic=DIAG_CALLED_AE_NOT_RECOGNISED)


def too_many_associations(active: int, limit: int) -> Rejection | None:
    """Transient rejection when the association limit is reached (PS3.8 9.3.4)."""
    if active < limit:
        return None
    return Rejection(
        reason=f"association limit reached ({limit} active)",
        hint="raise proxy.max_associations or find who holds associations open",
        result=RESULT_TRANSIENT, source=SOURCE_SERVICE_PROVIDER_PRESENTATION,
        diagnostic=DIAG_LOCAL_LIMIT_EXCEEDED)


def upstream_titles(archive: ArchiveConfig | DestinationConfig,
                    default_calling: str) -> tuple[str, str]:
    """(calling AE, called AE) the proxy presents when it calls this peer."""
    calling = archive.calling_ae if isinstance(archive, ArchiveConfig) else default_calling
    return calling, archive.ae_title


def calling_ae_for(archive: ArchiveConfig, route: RouteConfig | None,
                   workstation_ae: str) -> str:
    """The calling AE title presented to ``archive`` for a request of a workstation (Rule 5)."""
    calling = workstation_ae.strip()
    if route is not None and route.pass_calling_ae and calling:
        return calling
    return archive.calling_ae


def forward_calling_ae(config: Config, archive: ArchiveConfig, sending_ae: str,
                       receiving_ae: str) -> str:
    """The calling AE title for forwarding a spooled instance to ``archive`` (Rule 5).

    ``sending_ae`` called the proxy's ``receiving_ae`` with it: the route of that called
    AE title, as the rules are now, decides; an instance whose titles are not known (an
    older spool) is forwarded with the archive's ``calling_ae``.
    """
    route = config.route_for(receiving_ae) if receiving_ae.strip() else None
    return calling_ae_for(archive, route, sending_ae)


def archives_for(config: Config, route: RouteConfig, operation: str) -> list[ArchiveConfig]:
    """Archives a request on this route goes to; C-STORE follows ``store_to``."""
    names = route.store_to if operation == "C-STORE" else route.archives
    return [config.archives[name] for name in names]


def move_destination(config: Config, move_ae: str) -> DestinationConfig | None:
    """Resolve a C-MOVE destination from the proxy's own table (never the archive's)."""
    return config.destination_by_ae(move_ae)


@dataclass(frozen=True)
class InstanceFacts:
    """What content routing may look at in one received C-STORE."""

    calling_ae: str
    sop_class: str
    modality: str = ""


def store_targets(route: RouteConfig, facts: InstanceFacts) -> list[str]:
    """The ``store_to`` archives of ``route`` that take this instance, in configured order.

    An archive without a ``store_filter`` takes every instance; with one, the
    instance must match every condition given (each is "value in list").
    """
    filters = {f.archive: f for f in route.store_filters}
    return [name for name in route.store_to
            if name not in filters or filter_matches(filters[name], facts)]


def filter_matches(rule: StoreFilter, facts: InstanceFacts) -> bool:
    checks = ((rule.modality, facts.modality.strip().upper()),
              (rule.calling_ae, facts.calling_ae.strip()),
              (rule.sop_class, facts.sop_class.strip()))
    return all(not allowed or value in allowed for allowed, value in checks)
