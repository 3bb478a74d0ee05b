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
Rule 6: who may do what (the Security issue). An ``allow`` entry ``AE@CIDR`` binds a
        calling AE title to source networks: from any other address (``source_ip``,
        the association's one peer address) it is rejected like an unknown calling AE,
        as a security event (``Rejection.security``). A route's ``destinations`` lists
        the Move Destinations its workstations may name; any other is refused with
        0xA801 (``move_destination_for``), a security event when the route has the key.
        A route's ``max_associations`` and ``max_associations_per_ae`` (per calling AE
        title) are local limits like ``[proxy] max_associations`` (``route_limit``).
Rule 7: a route's ``certificates`` binds a calling AE title to TLS client certificate
        subjects: that title is admitted only over TLS with a verified certificate whose
        subject has every attribute of one of them (``tls_subject``, values compared as
        X.520 caseIgnoreMatch; the certificate may carry more). Anything else is rejected
        like an unknown calling AE, as a security event of kind ``certificate``. Titles
        without a binding are governed by ``allow`` alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from proxy.config import ArchiveConfig, Config, DestinationConfig, RouteConfig, StoreFilter
from proxy.config.checks import subject_attributes

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
    security: str | None = None        # a security event of this kind (metric label)


# Kinds of security events (``dicom_proxy_security_events_total{kind}``).
SECURITY_SOURCE_NETWORK = "source_network"
SECURITY_MOVE_DESTINATION = "move_destination"
SECURITY_CERTIFICATE = "certificate"
SECURITY_KINDS = (SECURITY_SOURCE_NETWORK, SECURITY_MOVE_DESTINATION, SECURITY_CERTIFICATE)


@dataclass(frozen=True)
class Inbound:
    """An archive delivering C-MOVE sub-operations to the proxy's own AE title (Rule 4)."""

    called_ae: str
    archive: str | None                # the archive whose AE title called, if one did


def admit(config: Config, calling_ae: str, called_ae: str, retrieving: bool = False,
          source_ip: str | None = None, tls_subject: str | None = None
          ) -> RouteConfig | Inbound | Rejection:
    """Decide whether a workstation may associate, and on which route.

    ``retrieving``: a move-mode retrieve is in flight (Rule 4). ``source_ip``: the
    address the association comes from (None: not known, so no bound entry matches).
    ``tls_subject``: the RFC 4514 subject of its verified client certificate (Rule 7).
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
    networks = allowed_networks(route, calling)
    if networks and not from_networks(source_ip, networks):
        where = source_ip or "an unknown address"
        nets = ", ".join(map(str, networks))
        address = parse_ip(source_ip)
        add = ("" if address is None else
               f"if {where} is one of its hosts, add '{calling}@{address}/"
               f"{address.max_prefixlen}' to allow of the route {called!r} in rules.toml; ")
        return Rejection(
            reason=f"calling AE title {calling!r} is not allowed from {where} on route "
                   f"{called!r} (only from {nets})",
            hint=f"{add}otherwise another host is using the AE title {calling!r}",
            result=RESULT_PERMANENT, source=SOURCE_SERVICE_USER,
            diagnostic=DIAG_CALLING_AE_NOT_RECOGNISED, security=SECURITY_SOURCE_NETWORK)
    return certificate_refusal(route, calling, tls_subject) or route


def subject_matches(bound: frozenset[tuple[str, str]], tls_subject: str) -> bool:
    """Whether a certificate subject (RFC 4514) has every attribute of ``bound`` (Rule 7)."""
    try:
        return bound <= subject_attributes(tls_subject)
    except ValueError:
        return False


def certificate_refusal(route: RouteConfig, calling_ae: str,
                        tls_subject: str | None) -> Rejection | None:
    """Rule 7: why ``calling_ae`` may not use ``route`` with this certificate (None: it may)."""
    binding = route.certificate_binding(calling_ae)
    if binding is None:
        return None
    if tls_subject is not None and any(subject_matches(b, tls_subject)
                                       for b in binding.attributes):
        return None
    wanted = " or ".join(binding.subjects)
    if tls_subject is None:
        reason = (f"calling AE title {calling_ae!r} is bound to a client certificate on route "
                  f"{route.called_ae!r} ({wanted}) and this association showed none")
        hint = (f"{calling_ae} must call over TLS (the proxy's tls_port) with its client "
                "certificate; otherwise another host is using its AE title")
    else:
        reason = (f"calling AE title {calling_ae!r} is bound to a client certificate on route "
                  f"{route.called_ae!r} ({wanted}) and this association showed {tls_subject}")
        hint = (f"if {tls_subject} is {calling_ae}'s new certificate, add it to certificates."
                f"{calling_ae} of the route {route.called_ae!r} in rules.toml; otherwise "
                f"another workstation is using the AE title {calling_ae!r}")
    return Rejection(reason=reason, hint=hint, result=RESULT_PERMANENT,
                     source=SOURCE_SERVICE_USER, diagnostic=DIAG_CALLING_AE_NOT_RECOGNISED,
                     security=SECURITY_CERTIFICATE)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(route: RouteConfig, calling_ae: str) -> tuple[Network, ...]:
    """The networks ``calling_ae`` may call ``route`` from; () when from anywhere."""
    entries = [e for e in route.allow_from if e.ae_title == calling_ae.strip()]
    if not entries or any(e.network is None for e in entries):
        return ()
    return tuple(e.network for e in entries if e.network is not None)


def parse_ip(source_ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address; an IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, a dual-stack
    listener) is its IPv4 address. None when absent or not an address."""
    if not source_ip:
        return None
    try:
        address = ipaddress.ip_address(source_ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def from_networks(source_ip: str | None, networks: tuple[Network, ...]) -> bool:
    address = parse_ip(source_ip)
    return address is not None and any(address.version == net.version and address in net
                                       for net in networks)


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


def route_limit(route: RouteConfig, calling_ae: str, on_route: int,
                from_ae: int) -> Rejection | None:
    """Transient rejection when the route's limits are reached (Rule 6): ``on_route``
    associations are admitted on it now, ``from_ae`` of them from ``calling_ae``."""
    called, calling = route.called_ae, calling_ae.strip()
    limit = route.max_associations
    if limit is not None and on_route >= limit:
        return Rejection(
            reason=f"association limit of route {called!r} reached ({on_route} active, "
                   f"max_associations = {limit})",
            hint=f"raise max_associations of the route {called!r} in rules.toml, or find "
                 "who holds associations open",
            result=RESULT_TRANSIENT, source=SOURCE_SERVICE_PROVIDER_PRESENTATION,
            diagnostic=DIAG_LOCAL_LIMIT_EXCEEDED)
    limit = route.max_associations_per_ae
    if limit is not None and from_ae >= limit:
        return Rejection(
            reason=f"calling AE title {calling!r} holds {from_ae} associations on route "
                   f"{called!r} (max_associations_per_ae = {limit})",
            hint=f"raise max_associations_per_ae of the route {called!r} in rules.toml, or "
                 f"find why {calling!r} holds associations open (other calling AE titles "
                 "are still served)",
            result=RESULT_TRANSIENT, source=SOURCE_SERVICE_PROVIDER_PRESENTATION,
            diagnostic=DIAG_LOCAL_LIMIT_EXCEEDED)
    return None


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
    """Archives a request on this route goes to; C-STORE follows ``store_to``, N-CREATE and
    N-SET (MPPS) ``mpps_to``."""
    names = (route.store_to if operation == "C-STORE" else
             route.mpps_to if operation in ("N-CREATE", "N-SET") else route.archives)
    return [config.archives[name] for name in names]


def move_destination(config: Config, move_ae: str) -> DestinationConfig | None:
    """Resolve a C-MOVE destination from the proxy's own table (never the archive's)."""
    return config.destination_by_ae(move_ae)


@dataclass(frozen=True)
class MoveRefusal:
    """A Move Destination a C-MOVE may not name: answered 0xA801 (PS3.4 C.4.2.1.5)."""

    reason: str
    hint: str
    security: str | None = None        # the route's ``destinations`` refused it (Rule 6)


def move_destination_for(config: Config, route: RouteConfig | None,
                         move_ae: str) -> DestinationConfig | MoveRefusal:
    """The destination a C-MOVE on ``route`` may send to, or why not (Rule 6)."""
    asked = move_ae.strip()
    destination = move_destination(config, asked)
    if route is None or route.destinations is None:
        if destination is not None:
            return destination
        known = ", ".join(d.ae_title for d in config.destinations.values())
        return MoveRefusal(
            reason=f"Move Destination {asked!r} is not in [destinations]",
            hint=f"Move Destination {asked!r} is not in [destinations] (known: "
                 f"{known or 'none'}); add [destinations.<name>] with ae_title = {asked!r}, "
                 "host and port to rules.toml")
    if destination is not None and destination.name in route.destinations:
        return destination
    allowed = ", ".join(config.destinations[n].ae_title for n in route.destinations)
    add = (f"add {destination.name!r} to destinations of the route" if destination is not None
           else f"add [destinations.<name>] with ae_title = {asked!r}, host and port, and its "
                "name to destinations of the route")
    return MoveRefusal(
        reason=f"route {route.called_ae!r} does not allow Move Destination {asked!r} "
               f"(allowed: {allowed or 'none'})",
        hint=f"if its workstations may send studies to {asked!r}, {add} {route.called_ae!r} "
             "in rules.toml; otherwise find out who asked for it",
        security=SECURITY_MOVE_DESTINATION)


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
