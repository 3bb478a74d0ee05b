"""The metrics observer: events → Prometheus samples. The only prometheus import.

Rule: labels are configured names only (route called AE, archive name, operation,
status category); an unconfigured peer is ``unknown`` so cardinality stays bounded.
Rule 2: ``tls_certificate_expiry_seconds`` carries certificate subjects: the proxy's own
        and its CAs (``role`` proxy, ca) and each verified peer certificate it has seen
        in a handshake (``role`` workstation, archive, destination). Peers' subjects are
        bounded by what ``[tls] ca`` issued, and by ``SEEN_CERTIFICATES`` per role besides.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from proxy.observe import events as ev
from proxy.routing import SECURITY_KINDS
from proxy.status import category

SEEN_CERTIFICATES = 256          # distinct peer certificate subjects exported per role
_DIMSE = ("C-ECHO", "C-FIND", "C-MOVE", "C-GET", "C-STORE", "N-CREATE", "N-SET")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MetricsObserver:
    """Owns a registry with the contract's metrics and updates it from events."""

    def __init__(self, archives: list[str] | None = None,
                 routes: list[str] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        p = "dicom_proxy_"
        self.associations = Counter(p + "associations", "Workstation associations by outcome",
                                    ["called_ae", "result"], registry=r)
        self.active = Gauge(p + "associations_active", "Workstation associations open now",
                            registry=r)
        self.operations = Counter(p + "operations", "DIMSE requests answered",
                                  ["operation", "called_ae", "status"], registry=r)
        self.op_duration = Histogram(p + "operation_duration_seconds",
                                     "Time to answer a DIMSE request", ["operation", "called_ae"],
                                     buckets=_BUCKETS, registry=r)
        self.upstream = Counter(p + "upstream_requests", "Requests made to archives",
                                ["archive", "operation", "status"], registry=r)
        self.up_duration = Histogram(p + "upstream_duration_seconds",
                                     "Time an archive took to answer", ["archive", "operation"],
                                     buckets=_BUCKETS, registry=r)
        self.matches = Counter(p + "find_matches", "C-FIND matches returned by archives",
                               ["archive"], registry=r)
        self.truncated = Counter(p + "find_truncated",
                                 "C-FIND responses that hit the archive's match cap",
                                 ["archive"], registry=r)
        self.subops = Counter(p + "suboperations", "Retrieve and forward sub-operations",
                              ["operation", "result"], registry=r)
        self.archive_up = Gauge(p + "archive_up", "1 when the archive's last C-ECHO succeeded",
                                ["archive"], registry=r)
        self.echo_latency = Gauge(p + "archive_echo_seconds",
                                  "Latency of the last health C-ECHO to each archive",
                                  ["archive"], registry=r)
        self.destination_up = Gauge(p + "destination_up",
                                    "1 when the destination's last health C-ECHO succeeded",
                                    ["destination"], registry=r)
        self.destination_echo = Gauge(p + "destination_echo_seconds",
                                      "Latency of the last health C-ECHO to each destination",
                                      ["destination"], registry=r)
        self.spool_pending = Gauge(p + "spool_pending", "Instances waiting to be forwarded",
                                   registry=r)
        self.spool_bytes = Gauge(p + "spool_pending_bytes", "Bytes waiting to be forwarded",
                                 registry=r)
        self.spool_oldest = Gauge(p + "spool_oldest_age_seconds",
                                  "Age of the oldest instance waiting to be forwarded",
                                  registry=r)
        self.dead_letters = Counter(p + "forward_dead_letters",
                                    "Instances an archive refused for good (dead-letter folder)",
                                    ["archive"], registry=r)
        self.spool_dead = Gauge(p + "spool_dead_letters",
                                "Instances waiting in the dead-letter folder", registry=r)
        self.mpps_pending = Gauge(p + "mpps_pending",
                                  "MPPS messages (N-CREATE/N-SET) journaled for an archive",
                                  ["archive"], registry=r)
        self.mpps_dead = Gauge(p + "mpps_dead_letters",
                               "MPPS messages an archive refused (dead-letter folder)",
                               ["archive"], registry=r)
        self.commitments_pending = Gauge(
            p + "commitments_pending", "Storage Commitment requests for an archive whose "
            "report has not reached the modality yet", ["archive"], registry=r)
        self.commitment_dead = Gauge(p + "commitment_dead_letters",
                                     "Storage Commitment reports that could not be delivered "
                                     "to the modality (dead-letter folder)", registry=r)
        self.refused = Counter(p + "connections_refused",
                               "TCP connections closed before association (limits)", ["reason"],
                               registry=r)
        self.security = Counter(p + "security_events",
                                "Requests refused by a who-may-do-what rule", ["kind"],
                                registry=r)
        for kind in SECURITY_KINDS:
            self.security.labels(kind)
        self.tls_handshakes = Counter(p + "tls_handshakes", "TLS handshakes by side and result",
                                      ["side", "result"], registry=r)
        self.tls_expiry = Gauge(p + "tls_certificate_expiry_seconds",
                                "Expiry time (unix seconds) of each certificate the proxy "
                                "holds or has seen a peer present",
                                ["subject", "role"], registry=r)
        self.http_requests = Counter(p + "http_requests", "DICOMweb requests answered",
                                     ["route", "service", "code"], registry=r)
        self._seen: dict[str, set[str]] = {}
        for side in ("workstation", "archive", "destination"):
            for result in ("ok", "failed"):
                self.tls_handshakes.labels(side, result)
        for name in archives or []:
            # Pre-create series so dashboards show zeros rather than "no data".
            self.matches.labels(name)
            self.truncated.labels(name)
            self.dead_letters.labels(name)
        for op in ("C-MOVE", "C-GET", "C-STORE-forward"):
            for result in ("completed", "failed", "warning"):
                self.subops.labels(op, result)
        # A counter series born at its first failure starts at 1, and Prometheus never
        # sees that increase: failure-ratio alerts would miss it. Failures start at 0.
        for op in _DIMSE:
            for name in archives or []:
                self.upstream.labels(name, op, "failure")
            for called in routes or []:
                self.operations.labels(op, called, "failure")

    def _seen_certificate(self, subject: str, role: str, not_after: float) -> None:
        seen = self._seen.setdefault(role, set())
        if subject not in seen:
            if len(seen) >= SEEN_CERTIFICATES:
                return                          # Rule 2: bounded
            seen.add(subject)
        self.tls_expiry.labels(subject, role).set(not_after)

    def serve(self, host: str, port: int) -> int:
        """Start the exposition endpoint; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])

    def __call__(self, event: ev.Event) -> None:
        match event:
            case ev.AssociationAccepted(assoc=a):
                self.associations.labels(a.route, "accepted").inc()
                self.active.inc()
            case ev.AssociationRejected(assoc=a, security=kind):
                self.associations.labels(a.route, "rejected").inc()
                if kind is not None:
                    self.security.labels(kind).inc()
            case ev.SecurityRefused(kind=kind):
                self.security.labels(kind).inc()
            case ev.AssociationClosed():
                self.active.dec()
            case ev.OperationCompleted(assoc=a, operation=op, status=st, duration_s=d):
                self.operations.labels(op, a.route, category(st)).inc()
                self.op_duration.labels(op, a.route).observe(d)
            case ev.HttpRequestCompleted(route=route, service=service, code=code):
                self.http_requests.labels(route, service, str(code)).inc()
            case ev.UpstreamCompleted(archive=name, operation=op, status=st, duration_s=d):
                self.upstream.labels(name, op, category(st)).inc()
                self.up_duration.labels(name, op).observe(d)
            case ev.FindMatched(archive=name, matches=n, truncated=t):
                self.matches.labels(name).inc(n)
                if t:
                    self.truncated.labels(name).inc()
            case ev.SubOperationsCounted(operation=op, completed=c, failed=f, warning=w):
                for result, n in (("completed", c), ("failed", f), ("warning", w)):
                    if n:
                        self.subops.labels(op, result).inc(n)
            case ev.ArchiveProbed(archive=name, up=up, latency_s=lat, kind="destination"):
                self.destination_up.labels(name).set(1 if up else 0)
                if lat is not None:
                    self.destination_echo.labels(name).set(lat)
            case ev.ArchiveProbed(archive=name, up=up, latency_s=lat):
                self.archive_up.labels(name).set(1 if up else 0)
                if lat is not None:
                    self.echo_latency.labels(name).set(lat)
            case ev.ForwardDeadLettered(archive=name):
                self.dead_letters.labels(name).inc()
            case ev.SpoolChanged(pending=n, pending_bytes=b, oldest_age_s=age, dead=dead):
                self.spool_dead.set(dead)
                self.spool_pending.set(n)
                self.spool_bytes.set(b)
                self.spool_oldest.set(age)
            case ev.MppsJournalChanged(archive=name, pending=n, dead=dead):
                self.mpps_pending.labels(name).set(n)
                self.mpps_dead.labels(name).set(dead)
            case ev.CommitmentsChanged(pending=pending, dead=dead):
                for name, n in pending.items():
                    self.commitments_pending.labels(name).set(n)
                self.commitment_dead.set(dead)
            case ev.TlsHandshake(side=side, ok=ok, subject=subject, not_after=not_after):
                self.tls_handshakes.labels(side, "ok" if ok else "failed").inc()
                if ok and subject is not None and not_after is not None:
                    self._seen_certificate(subject, side, not_after)
            case ev.TlsCertificateHeld(subject=subject, role=role, not_after=not_after):
                self.tls_expiry.labels(subject, role).set(not_after)
            case ev.ConnectionRefused(reason=reason):
                self.refused.labels(reason).inc()
            case _:
                pass
