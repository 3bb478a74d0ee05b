"""``dicom-proxy doctor``: check every archive and destination, and say what to fix.

Rule 1: a finding is data (``Finding``: severity, subject, message, fix); the
        probing functions produce them, ``render`` alone turns them into text —
        one line per finding, in rules-file order, then a summary line.
Rule 2: every line names the configured peer and, where it matters, the AE
        titles and address used, so a person can act on it without the proxy's
        source: "archive PACS_A at 10.0.0.5:104 permanently rejected calling AE
        QR_PROXY …; fix: add QR_PROXY to the known AEs of PACS_A …".
Rule 3: probes are gentle and bounded: one TCP connect and at most one
        association per peer; the STUDY-level test query asks for
        StudyInstanceUID only and is cancelled after ``max_results + 1``
        matches (one match when no cap is configured); every wait is bounded
        by ``timeout`` (and by the peer's own). Peers are probed in parallel.
Rule 5: with ``[tls]``, the proxy's own certificate is checked without the network:
        that it chains to ``[tls] ca`` (FAIL otherwise: workstations verifying it refuse
        the proxy), and its days to expiry (FAIL expired, WARN within 30 days, else ok).
Rule 6: each peer with ``tls = true`` reached: the certificate it presented (verified by
        the handshake: chain to ``[tls] ca``, its name) and its days to expiry (WARN
        within 30 days, so it is renewed before associations start failing).
Rule 7: an archive is checked for what routes use it for: Q/R (``archives``, ``store_to``:
        C-ECHO, C-FIND, the retrieve context, the test query) and MPPS (``mpps_to``: the
        MPPS SOP class accepted from the proxy's calling AE title, so a RIS that would
        refuse N-CREATE/N-SET is a FAIL before a modality reports); a RIS used only by
        ``mpps_to`` is not asked for C-FIND. An archive a route asks for Storage
        Commitment (``commit_to``, default the first of ``store_to``) must accept the Push
        Model from the proxy (FAIL otherwise: N-ACTIONs are journaled and never answered);
        when it does, the line says that it sends its reports to the proxy's AE title at
        the proxy's address, which it must know (doctor cannot see the archive's table).
Rule 4: ``exit_status``: 1 when any finding is FAIL (something is broken),
        else 0 — warnings are printed but do not fail.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)
from pynetdicom.sop_class import (
    Verification as ECHO,
)

from proxy import tls as tlsmod
from proxy.cancel import CancelToken
from proxy.config import ArchiveConfig, Config, DestinationConfig, TlsConfig
from proxy.contexts import MPPS_SOP_CLASS, MPPS_SYNTAXES, STORAGE_COMMITMENT
from proxy.status import PENDING, Status, category, hex_status
from proxy.ul.link import Link
from proxy.upstream import (
    QUERY_TRANSFER_SYNTAXES,
    ArchiveClient,
    Peer,
    UpstreamError,
    tcp_probe,
)

OK, WARN, FAIL = "ok", "warn", "fail"
_LABEL = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Finding:
    severity: str               # OK, WARN or FAIL
    subject: str                # "archive site_a", "destination ws1", "route FEDERATION", "config"
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class QueryOutcome:
    """What the STUDY-level test query got back."""

    matches: int
    status: int | None          # the final status (None: no final response)
    cancelled: bool             # the doctor sent C-CANCEL after enough matches


@dataclass(frozen=True)
class PeerReport:
    kind: str                   # "archive" or "destination"
    name: str
    reachable: bool             # TCP open and association accepted
    findings: tuple[Finding, ...]


# -- probing (I/O) ---------------------------------------------------------------


def diagnose(config: Config, timeout: float = 10.0) -> list[Finding]:
    """Every finding for this rules file, in rules-file order."""
    jobs: list[tuple[str, ArchiveConfig | DestinationConfig]] = [
        *(("archive", a) for a in config.archives.values()),
        *(("destination", d) for d in config.destinations.values())]

    client_tls: tlsmod.ClientTls | None = None
    presented: dict[str, tlsmod.PeerCertificate] = {}      # "host:port" → its certificate

    def heard(side: str, peer: str, reason: str | None, hint: str | None,
              seen: tlsmod.PeerCertificate | None) -> None:
        if reason is None and seen is not None:
            presented[peer] = seen

    if config.tls is not None and any(cfg.tls for _kind, cfg in jobs):
        try:
            client_tls = tlsmod.ClientTls(config.tls, heard)
        except (OSError, ValueError):
            client_tls = None          # tls_findings says what is wrong with the files

    queried = {a for r in config.routes for a in (*r.archives, *r.store_to)}
    mpps = {a for r in config.routes for a in r.mpps_to}
    commit = {r.commitment_archive for r in config.routes if r.commitment_archive}
    p = config.proxy
    at = "this host's address" if p.host in ("0.0.0.0", "::", "") else p.host
    reports_to = f"{p.ae_title} at {at}, port {p.port}"

    def run(job: tuple[str, ArchiveConfig | DestinationConfig]) -> PeerReport:
        kind, cfg = job
        try:
            if isinstance(cfg, ArchiveConfig):
                report = check_archive(cfg, config.proxy.ae_title, timeout, client_tls,
                                       queries=cfg.name in queried or cfg.name not in mpps,
                                       mpps=cfg.name in mpps,
                                       commit=reports_to if cfg.name in commit else None)
            else:
                report = check_destination(cfg, config.proxy.ae_title, timeout, client_tls)
            seen = presented.get(f"{cfg.host}:{cfg.port}") if cfg.tls else None
            if seen is None:
                return report
            return dataclasses.replace(report, findings=(
                *report.findings, peer_certificate_finding(kind, cfg, seen, time.time())))
        except Exception as exc:  # a pynetdicom surprise is still one finding, not a crash
            return PeerReport(kind, cfg.name, False, (Finding(
                FAIL, f"{kind} {cfg.name}", f"{cfg.ae_title} at {cfg.host}:{cfg.port}: "
                f"unexpected error {type(exc).__name__}: {exc}"),))

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(jobs)))) as pool:
        reports = list(pool.map(run, jobs))
    reachable = {r.name: r.reachable for r in reports if r.kind == "archive"}
    tls = tls_findings(config.tls, time.time()) if config.tls is not None else []
    return [*config_findings(config), *tls, *(f for r in reports for f in r.findings),
            *route_findings(config, reachable)]


def _peer(cfg: ArchiveConfig | DestinationConfig, proxy_ae: str, timeout: float) -> Peer:
    peer = Peer.of(cfg, proxy_ae, timeout)
    return dataclasses.replace(peer, timeout=min(peer.timeout, timeout))


def check_archive(cfg: ArchiveConfig, proxy_ae: str, timeout: float,
                  tls: tlsmod.ClientTls | None = None, *, queries: bool = True,
                  mpps: bool = False, commit: str | None = None) -> PeerReport:
    """TCP, then one association: C-ECHO, the retrieve context, a STUDY-level test query;
    the MPPS context for an ``mpps_to`` archive, Storage Commitment for a commitment
    archive (``commit``: where it must send its reports) (Rule 7)."""
    peer = _peer(cfg, proxy_ae, timeout)
    subject = f"archive {cfg.name}"
    down = _unreachable(peer, subject, "archive")
    if down is not None:
        return PeerReport("archive", cfg.name, False, (down,))
    wanted = (ECHO, FIND, GET, MOVE) if queries else (ECHO,)
    contexts = [build_context(uid, QUERY_TRANSFER_SYNTAXES) for uid in wanted]
    if mpps:
        contexts.append(build_context(MPPS_SOP_CLASS, list(MPPS_SYNTAXES)))
    if commit is not None:
        contexts.append(build_context(STORAGE_COMMITMENT, list(MPPS_SYNTAXES)))
    try:
        client = ArchiveClient(peer, timeout, tls=tls)
        with client.link(contexts) as link:
            accepted = {link.abstract[cx] for cx in link.accept.accepted if cx in link.abstract}
            echo = _echo(client, link) if ECHO in accepted else None
            query = _test_query(client, link, cfg.max_results) \
                if queries and FIND in accepted else None
    except UpstreamError as exc:
        return PeerReport("archive", cfg.name, False, (_association_failed(exc, subject),))
    return PeerReport("archive", cfg.name, True, tuple(
        archive_findings(cfg, peer, accepted, echo, query, queries=queries, mpps=mpps,
                         commit=commit)))


def check_destination(cfg: DestinationConfig, proxy_ae: str, timeout: float,
                      tls: tlsmod.ClientTls | None = None) -> PeerReport:
    """TCP, then a C-ECHO with the proxy's AE title (the one C-MOVEs arrive from)."""
    peer = _peer(cfg, proxy_ae, timeout)
    subject = f"destination {cfg.name}"
    down = _unreachable(peer, subject, "destination")
    if down is not None:
        return PeerReport("destination", cfg.name, False, (down,))
    try:
        client = ArchiveClient(peer, timeout, tls=tls)
        with client.link([build_context(ECHO)]) as link:
            echo = _echo(client, link)
    except UpstreamError as exc:
        finding = _association_failed(exc, subject)
        if exc.kind == "rejected" and "calling AE title" in exc.reason:
            finding = dataclasses.replace(finding, fix=f"add {peer.calling_ae} to the known AEs "
                                          f"of {peer.ae_title}: retrieved instances come from it")
        return PeerReport("destination", cfg.name, False, (finding,))
    where = f"{peer.ae_title} at {peer.host}:{peer.port}"
    if echo != Status.SUCCESS:
        return PeerReport("destination", cfg.name, True, (Finding(
            WARN, subject, f"{where} accepted the association but answered C-ECHO with "
                           f"{hex_status(echo)}", "check that it accepts Verification"),))
    return PeerReport("destination", cfg.name, True, (Finding(
        OK, subject, f"{where} answers C-ECHO from {peer.calling_ae}"),))


def _unreachable(peer: Peer, subject: str, kind: str) -> Finding | None:
    why = tcp_probe(peer.host, peer.port, min(peer.timeout, 5.0))
    if why is None:
        return None
    effect = ("queries and retrieves through it fail" if kind == "archive"
              else "C-MOVEs to it fail")
    return Finding(FAIL, subject, f"{peer.ae_title} at {peer.host}:{peer.port} is not reachable "
                   f"from the proxy: {why}; {effect}",
                   f"check that {peer.ae_title} is running and listening on "
                   f"{peer.host}:{peer.port}, and that no firewall blocks the proxy's host")


def _association_failed(exc: UpstreamError, subject: str) -> Finding:
    return Finding(FAIL, subject, exc.reason, exc.hint)


def _echo(client: ArchiveClient, link: Link) -> int | None:
    """The C-ECHO status, None when no answer came (the findings say so)."""
    try:
        return client.echo_on(link)
    except UpstreamError:
        return None


def _test_query(client: ArchiveClient, link: Link, max_results: int) -> QueryOutcome:
    """STUDY-level, universal, StudyInstanceUID only; cancelled after ``cap + 1`` matches.
    No final status (None) when the archive stops answering or ends the association."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    enough = max_results + 1 if max_results else 1
    cancel = CancelToken()
    matches, final = 0, None
    try:
        for status, _match in client.find_on(link, identifier, FIND, cancel):
            if status not in PENDING:
                final = status
            else:
                matches += 1
                if matches >= enough:
                    cancel.cancel()            # once: a set token does nothing more
    except UpstreamError:
        final = None
    return QueryOutcome(matches, final, cancel.is_set)


# -- deciding (pure) ---------------------------------------------------------------


def archive_findings(cfg: ArchiveConfig, peer: Peer, accepted: set[str], echo: int | None,
                     query: QueryOutcome | None, *, queries: bool = True,
                     mpps: bool = False, commit: str | None = None) -> list[Finding]:
    """What an archive's negotiated contexts, C-ECHO and test query say about it (Rule 7:
    ``queries``, ``mpps`` and ``commit`` say what routes use it for)."""
    return [*_use_findings(cfg, peer, accepted, echo, query, queries, mpps),
            *_commit_findings(cfg, peer, accepted, commit)]


def _commit_findings(cfg: ArchiveConfig, peer: Peer, accepted: set[str],
                     commit: str | None) -> list[Finding]:
    """Storage Commitment for a commitment archive (Rule 7); ``commit``: where its reports
    must go (the proxy's AE title and address)."""
    if commit is None:
        return []
    subject = f"archive {cfg.name}"
    where = f"{peer.ae_title} at {peer.host}:{peer.port}"
    title = commit.split(" at ")[0]
    if STORAGE_COMMITMENT not in accepted:
        return [Finding(FAIL, subject, f"{where} did not accept Storage Commitment Push Model "
                        f"from {peer.calling_ae}: N-ACTIONs of its routes are journaled and "
                        "never answered", f"enable Storage Commitment (SCP) for {title} on "
                        f"{peer.ae_title}, and register {commit} there as a known modality")]
    return [Finding(OK, subject, f"{where} accepts Storage Commitment from "
                    f"{peer.calling_ae}; it sends its reports (N-EVENT-REPORT) to {commit}, "
                    f"which it must know as a modality (the proxy forwards N-ACTIONs calling "
                    f"as {title})")]


def _use_findings(cfg: ArchiveConfig, peer: Peer, accepted: set[str], echo: int | None,
                  query: QueryOutcome | None, queries: bool, mpps: bool) -> list[Finding]:
    subject = f"archive {cfg.name}"
    where = f"{peer.ae_title} at {peer.host}:{peer.port}"
    out: list[Finding] = []
    if ECHO not in accepted or echo != Status.SUCCESS:
        answer = "did not accept Verification" if ECHO not in accepted else \
            f"answered C-ECHO with {hex_status(echo)}"
        out.append(Finding(WARN, subject, f"{where} {answer}: health checks report it down",
                           f"allow C-ECHO from {peer.calling_ae} on {peer.ae_title}"))
    if mpps and MPPS_SOP_CLASS not in accepted:
        out.append(Finding(FAIL, subject, f"{where} did not accept Modality Performed "
                           f"Procedure Step from {peer.calling_ae}: N-CREATE/N-SET of mpps_to "
                           "routes are journaled and never delivered",
                           f"allow MPPS (N-CREATE/N-SET SCP) for {peer.calling_ae} on "
                           f"{peer.ae_title}"))
    if not queries:
        if not out:
            out.append(Finding(OK, subject, f"{where} answers C-ECHO and accepts MPPS from "
                               f"{peer.calling_ae}"))
        return out
    if FIND not in accepted:
        out.append(Finding(FAIL, subject, f"{where} did not accept Study Root C-FIND from "
                           f"{peer.calling_ae}: queries through the proxy fail",
                           f"allow Study Root Query/Retrieve FIND for {peer.calling_ae} on "
                           f"{peer.ae_title}"))
    out += _retrieve_findings(cfg, subject, where, accepted)
    if query is not None:
        out += _query_findings(cfg, subject, where, query)
    if not out:
        retrieve = "C-GET" if cfg.retrieve == "get" else "C-MOVE"
        also = " and MPPS" if mpps else ""
        out.append(Finding(OK, subject, f"{where} answers C-ECHO, C-FIND (STUDY) and accepts "
                           f"{retrieve}{also} from {peer.calling_ae}"))
    return out


def _retrieve_findings(cfg: ArchiveConfig, subject: str, where: str,
                       accepted: set[str]) -> list[Finding]:
    if cfg.retrieve == "get" and GET not in accepted:
        other = " (it accepts C-MOVE)" if MOVE in accepted else ""
        return [Finding(FAIL, subject, f"{where} did not accept C-GET (Study Root GET not "
                        f"negotiated){other}; retrieves from it fail",
                        f'set retrieve = "move" for archives.{cfg.name} (and make '
                        f"{cfg.ae_title} know the proxy as a C-MOVE destination)")]
    if cfg.retrieve == "move" and MOVE not in accepted:
        other = " (it accepts C-GET)" if GET in accepted else ""
        fix = (f'set retrieve = "get" for archives.{cfg.name}' if GET in accepted
               else f"allow Study Root MOVE for the proxy on {cfg.ae_title}")
        return [Finding(FAIL, subject, f"{where} did not accept C-MOVE (Study Root MOVE not "
                        f"negotiated){other}; retrieves from it fail", fix)]
    return []


def _query_findings(cfg: ArchiveConfig, subject: str, where: str,
                    query: QueryOutcome) -> list[Finding]:
    cap = cfg.max_results
    if query.status is None and not query.cancelled:
        return [Finding(FAIL, subject, f"{where} gave no final status to a STUDY-level test "
                        f"query (after {query.matches} matches): it timed out or aborted",
                        f"check {cfg.ae_title}'s load, or raise archives.{cfg.name}.timeout")]
    if category(query.status) == "failure" and not query.cancelled:
        return [Finding(FAIL, subject, f"{where} answered a STUDY-level test query with "
                        f"{hex_status(query.status)} after {query.matches} matches",
                        f"check that {cfg.calling_ae} may query {cfg.ae_title}")]
    if cap and query.matches == cap and not query.cancelled:
        return [Finding(WARN, subject, f"{where} answered a STUDY-level test query with "
                        f"exactly max_results = {cap} matches: it caps its answers, so wider "
                        f"queries lose matches past {cap}",
                        "narrow queries (date ranges), or raise the archive's limit and "
                        f"archives.{cfg.name}.max_results together")]
    if cap and query.matches > cap:
        return [Finding(WARN, subject, f"{where} returned more than max_results = {cap} "
                        "matches to a STUDY-level test query: the configured cap is not the "
                        "archive's, so complete answers are reported as truncated",
                        f"set archives.{cfg.name}.max_results to the archive's real limit "
                        "(0 when it has none)")]
    return []


def route_findings(config: Config, reachable: Mapping[str, bool]) -> list[Finding]:
    """Routes whose archives are all (or partly) unreachable."""
    out: list[Finding] = []
    for route in config.routes:
        down = [a for a in route.archives if not reachable.get(a, True)]
        if not down:
            continue
        names = ", ".join(down)
        if len(down) == len(route.archives):
            out.append(Finding(FAIL, f"route {route.called_ae}", f"every archive of this route "
                               f"is down ({names}): workstations calling {route.called_ae} get "
                               "no answers", "see the archive lines above"))
        else:
            out.append(Finding(WARN, f"route {route.called_ae}", f"{names} of this federated "
                               "route is down: answers miss its studies",
                               "see the archive lines above"))
    return out


def tls_findings(tls: TlsConfig, now: float) -> list[Finding]:
    """The proxy's own certificate: chain to [tls] ca, days to expiry (Rule 5)."""
    subject = "tls certificate"
    try:
        held = tlsmod.held_certificates(tls)
        chain = tlsmod.chain_problem(tls)
    except (OSError, ValueError) as exc:
        return [Finding(FAIL, subject, f"{tls.cert} or {tls.ca} cannot be read as PEM "
                        f"certificates: {exc}", "point [tls] cert and ca at PEM files")]
    own = next(c for c in held if c.role == "proxy")
    out: list[Finding] = []
    if chain is not None:
        out.append(Finding(FAIL, subject, f"{own.subject} ({tls.cert}) does not chain to a CA "
                           f"in {tls.ca}: {chain}", "issue the proxy's certificate from a CA "
                           "in [tls] ca, or add its issuer (and intermediates) there"))
    elif tls.ca is not None:
        out.append(Finding(OK, subject, f"{own.subject} chains to a CA in {tls.ca}"))
    days = (own.not_after - now) / 86400.0
    if days < 0:
        out.append(Finding(FAIL, subject, f"{own.subject} expired {-days:.0f} days ago: "
                           "workstations refuse the TLS handshake",
                           f"renew {tls.cert} and send SIGHUP to the proxy"))
    elif days < EXPIRY_WARNING_DAYS:
        out.append(Finding(WARN, subject, f"{own.subject} expires in {days:.0f} days",
                           f"renew {tls.cert} and send SIGHUP to the proxy before it does"))
    else:
        out.append(Finding(OK, subject, f"{own.subject} expires in {days:.0f} days"))
    return out


def peer_certificate_finding(kind: str, cfg: ArchiveConfig | DestinationConfig,
                             seen: tlsmod.PeerCertificate, now: float) -> Finding:
    """Rule 6: the certificate a TLS peer presented, as the handshake verified it."""
    subject = f"{kind} {cfg.name}"
    name = cfg.tls_server_name or cfg.host
    what = f"TLS certificate {seen.subject} (chains to [tls] ca, carries {name})"
    days = (seen.not_after - now) / 86400.0
    if days < 0:
        return Finding(FAIL, subject, f"{what} expired {-days:.0f} days ago",
                       f"renew the certificate of {cfg.ae_title} at {cfg.host}:{cfg.port}")
    if days < EXPIRY_WARNING_DAYS:
        return Finding(WARN, subject, f"{what} expires in {int(days)} days: associations "
                       "will then fail", f"renew the certificate of {cfg.ae_title} at "
                       f"{cfg.host}:{cfg.port} before it does")
    return Finding(OK, subject, f"{what} expires in {int(days)} days")


def config_findings(config: Config) -> list[Finding]:
    """Rules-file sanity that needs no network."""
    out: list[Finding] = []
    used = {a for r in config.routes for a in (*r.archives, *r.store_to, *r.mpps_to)}
    p = config.proxy
    for name, a in config.archives.items():
        if a.port == p.port and (a.host in _LOOPBACK or a.host == p.host):
            out.append(Finding(FAIL, f"archive {name}", f"{a.host}:{a.port} is the proxy's own "
                               "listener: requests would loop back into the proxy",
                               f"point archives.{name} at the archive's host and port"))
        if name not in used:
            out.append(Finding(WARN, f"archive {name}", "no route uses it: no workstation "
                               "reaches it", f'add "{name}" to the archives of a route, or '
                               "remove it"))
    for route in config.routes:          # every route serves C-MOVE
        if route.destinations is None:
            names = ", ".join(config.destinations) or "none configured yet"
            out.append(Finding(WARN, f"route {route.called_ae}", "no destinations key: its "
                               "workstations may C-MOVE studies to every [destinations] entry "
                               f"({names}) and to any added later",
                               "add destinations = [...] to the route with the names of the "
                               "destinations its workstations may send to (destinations = [] "
                               "for none)"))
    if not config.health.enabled:
        out.append(Finding(WARN, "config", "[health] enabled = false: dicom_proxy_archive_up is "
                           "never set, so the archive-down alert cannot fire",
                           "remove enabled = false from [health]"))
    if not config.metrics.enabled:
        out.append(Finding(WARN, "config", "[metrics] enabled = false: dashboards and alerts "
                           "get no data", "remove enabled = false from [metrics]"))
    return out


# -- rendering (the one place findings become text) ---------------------------------


def render(findings: Sequence[Finding]) -> list[str]:
    """One line per finding, then a summary line."""
    lines = [f"{_LABEL[f.severity]} {f.subject}: {f.message}" + (f"; fix: {f.fix}" if f.fix
                                                                  else "")
             for f in findings]
    counts = {s: sum(1 for f in findings if f.severity == s) for s in (FAIL, WARN, OK)}
    lines.append(f"summary: {counts[FAIL]} broken, {counts[WARN]} warnings, {counts[OK]} ok")
    return lines


def exit_status(findings: Iterable[Finding]) -> int:
    return 1 if any(f.severity == FAIL for f in findings) else 0
