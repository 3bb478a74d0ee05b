"""Archive-facing SCU: associations to archives with the AE titles they expect.

Rule 1: every association is bounded in time — connect, ACSE, DIMSE, and the
        socket itself (the peer's ``timeout`` on every socket operation of a ``link``).
Rule 2: a failure to associate becomes an UpstreamError whose ``reason`` a
        person understands and whose ``hint`` says what to change.
Rule 3: this module talks DICOM; it does not log or count. Callers emit events.
Rule 4: every association the proxy opens (C-ECHO, C-FIND, C-MOVE, the retrieve and
        store paths, and the diagnostics of ``proxy.tools.doctor``) goes over the
        proxy's own upper layer (``link``, ``proxy.ul``); pynetdicom is a library here
        (presentation contexts, SOP class UIDs), never an association.
Rule 5: a response stream that ends without a final status raises ``no_response``:
        ``timeout`` when the peer was silent for its ``timeout``, ``aborted`` when the
        association ended under us. A C-CANCEL goes upstream once the request's
        ``CancelToken`` fires; the archive's answer to it still comes through.
Rule 6: the calling AE title is the peer's (``Peer.calling_ae``), or a workstation's for
        a request made for it (``calling_as``, route ``pass_calling_ae``); a refusal then
        names that title and says which setting chose it. Associations are never kept
        for reuse, so one opened with one calling AE title never carries another's request.
Rule 7: a peer with ``tls = true`` is reached over TLS only (``proxy.tls.ClientTls``: its
        certificate verified for ``tls_server_name``, default its host); a failed
        handshake is an UpstreamError of kind ``tls`` whose reason is the contract's
        (``proxy.tls.explain_peer``), and ``ClientTls`` hears every handshake so the
        caller logs ``tls_failed`` and counts it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from proxy import tls as tlsmod
from proxy.cancel import CancelToken
from proxy.config import ArchiveConfig, DestinationConfig
from proxy.dicom import commands, items, pdu
from proxy.dicom.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from proxy.fastencode import encode
from proxy.rawdataset import decode
from proxy.routing import upstream_titles
from proxy.status import PENDING, category
from proxy.ul.link import Link, LinkClosed, Rejected, TlsFailed

QUERY_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# PS3.8 Table 9-21: A-ASSOCIATE-RJ diagnostics, source "service user".
_RJ_USER = {0x01: "no reason given", 0x02: "application context name not supported",
            0x03: "calling AE title not recognised", 0x07: "called AE title not recognised"}
_RJ_PROVIDER = {0x01: "temporary congestion", 0x02: "local limit exceeded"}


class UpstreamError(Exception):
    """The proxy could not get an answer from an archive."""

    def __init__(self, peer: str, reason: str, hint: str | None = None,
                 kind: str = "error", rejection: tuple[int, int, int] | None = None) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason
        self.hint = hint
        self.kind = kind            # refused, timeout, rejected, aborted, no_context, tls, error
        self.rejection = rejection  # A-ASSOCIATE-RJ (result, source, diagnostic), if rejected


@dataclass(frozen=True)
class Peer:
    """What the SCU side needs to call an archive or destination."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str
    timeout: float
    for_workstation: bool = False      # calling_ae is a workstation's (pass_calling_ae)
    side: str = "archive"              # archive or destination (tls_failed's side)
    tls: bool = False                  # reached over TLS only (Rule 7)
    server_name: str | None = None     # the name its certificate must carry (None: host)

    @classmethod
    def of(cls, cfg: ArchiveConfig | DestinationConfig, default_calling: str,
           timeout: float = 30.0) -> Peer:
        calling, called = upstream_titles(cfg, default_calling)
        archive = isinstance(cfg, ArchiveConfig)
        t = cfg.timeout if isinstance(cfg, ArchiveConfig) else timeout
        return cls(cfg.name, called, cfg.host, cfg.port, calling, t,
                   side="archive" if archive else "destination", tls=cfg.tls,
                   server_name=cfg.tls_server_name)

    @property
    def expected_name(self) -> str:
        return self.server_name or self.host


def tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens; otherwise why not, in words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "TCP connection refused (nothing listening on that port, or a firewall rejects)"
    except TimeoutError:
        return f"TCP connect timed out after {timeout:g}s (host down or a firewall drops)"
    except OSError as exc:
        return f"TCP connect failed: {exc.strerror or exc}"


def explain_rejection(peer: Peer, result: int, source: int, diagnostic: int) -> UpstreamError:
    """Turn an A-ASSOCIATE-RJ into words, naming the AE titles used."""
    permanence = "permanently" if result == 0x01 else "transiently"
    if source == 0x01:
        why = _RJ_USER.get(diagnostic, f"diagnostic {diagnostic}")
    elif source == 0x02:
        why = "protocol version not supported" if diagnostic == 0x02 else "no reason given"
    else:
        why = _RJ_PROVIDER.get(diagnostic, f"diagnostic {diagnostic}")
    reason = (f"archive {peer.ae_title} at {peer.host}:{peer.port} {permanence} rejected calling "
              f"AE {peer.calling_ae}: {why}")
    hint: str | None = None
    if source == 0x01 and diagnostic == 0x03 and peer.for_workstation:
        hint = (f"the route passes the workstation's calling AE title (pass_calling_ae): "
                f"add {peer.calling_ae} to the known AEs of {peer.ae_title}, or turn "
                f"pass_calling_ae off to call as archives.{peer.name}.calling_ae")
    elif source == 0x01 and diagnostic == 0x03:
        hint = (f"add {peer.calling_ae} to the known AEs of {peer.ae_title} "
                f"(or set calling_ae for archives.{peer.name})")
    elif source == 0x01 and diagnostic == 0x07:
        hint = f"check ae_title of {peer.name}: the archive does not answer to {peer.ae_title}"
    elif source == 0x03:
        hint = "the archive is busy (association limit); retry later or raise its limit"
    return UpstreamError(peer.name, reason, hint, kind="rejected",
                         rejection=(result, source, diagnostic))


class ArchiveClient:
    """Opens bounded associations to one archive (or destination)."""

    def __init__(self, peer: Peer, network_timeout: float = 60.0,
                 max_pdu_size: int = 262_144, tls: tlsmod.ClientTls | None = None) -> None:
        self.peer = peer
        self.network_timeout = network_timeout
        self.max_pdu_size = max_pdu_size
        self.tls = tls
        self._active: set[Link] = set()
        self._active_lock = threading.Lock()

    def calling_as(self, calling_ae: str) -> ArchiveClient:
        """This peer called with a workstation's ``calling_ae`` (Rule 6).

        Same address, titles and time bounds; associations opened through it are in
        this client's record, so ``abort_all`` still reaches them at shutdown.
        """
        if calling_ae == self.peer.calling_ae:
            return self
        other = ArchiveClient(replace(self.peer, calling_ae=calling_ae, for_workstation=True),
                              self.network_timeout, self.max_pdu_size, self.tls)
        other._active, other._active_lock = self._active, self._active_lock
        return other

    def abort_all(self) -> int:
        """Abort every association still open to this peer (shutdown); how many."""
        with self._active_lock:
            open_now = list(self._active)
        for assoc in open_now:
            try:
                assoc.abort()
            except Exception:  # already going down
                pass
        return len(open_now)

    @contextmanager
    def link(self, contexts: Sequence[PresentationContext],
             roles: Sequence[Any] = ()) -> Iterator[Link]:
        """An established lean association (``proxy.ul``).

        Refusals and failures are explained as ``associate`` explains them; the link
        is released on exit, or aborted when the block raises.
        """
        proposed = tuple(items.PresentationContextRQ(2 * i + 1, cx.abstract_syntax,
                                                   tuple(cx.transfer_syntax))
                         for i, cx in enumerate(contexts))
        request = pdu.AssociateRQ(
            self.peer.ae_title, self.peer.calling_ae, proposed,
            items.UserInformation(
                max_length=self.max_pdu_size,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version=IMPLEMENTATION_VERSION,
                roles=tuple(items.RoleSelection(str(r.sop_class_uid), bool(r.scu_role),
                                              bool(r.scp_role)) for r in roles)))
        peer = self.peer
        tls = self._tls() if peer.tls else None
        where = f"{peer.host}:{peer.port}"
        connect_timeout = min(peer.timeout, 10.0)
        try:
            link = Link.open(peer.host, peer.port, request, connect_timeout, peer.timeout,
                             tls=tls.context if tls else None,
                             server_hostname=peer.expected_name,
                             on_tls=(lambda cert: tls.heard(peer.side, where, peer_cert=cert))
                             if tls else None)
        except TlsFailed as exc:
            assert tls is not None
            reason, failed = self._tls_failure(exc.error)
            tls.heard(peer.side, where, reason, failed.hint)
            raise failed from None
        except Rejected as exc:
            raise explain_rejection(self.peer, exc.rj.result, exc.rj.source,
                                    exc.rj.reason) from None
        except (OSError, LinkClosed, pdu.PduError) as exc:
            raise self._not_associated(f"failed during negotiation: {exc}") from None
        link.abstract = {cx.context_id: cx.abstract_syntax for cx in proposed}
        with self._active_lock:
            self._active.add(link)
        try:
            yield link
        except BaseException:
            link.abort()
            raise
        else:
            link.release()
        finally:
            with self._active_lock:
                self._active.discard(link)

    def _tls(self) -> tlsmod.ClientTls:
        if self.tls is None:
            raise UpstreamError(self.peer.name, f"{self.peer.side} {self.peer.name} has tls = "
                                "true but the proxy has no client TLS context",
                                "add a [tls] section (cert, key, ca)", kind="tls")
        return self.tls

    def _tls_failure(self, error: BaseException) -> tuple[str, UpstreamError]:
        """The contract's reason and the UpstreamError (kind ``tls``) of a failed handshake."""
        peer = self.peer
        reason, hint = tlsmod.explain_peer(error, peer.side, peer.expected_name,
                                           min(peer.timeout, 10.0))
        return reason, UpstreamError(peer.name, f"TLS handshake with {peer.side} "
                                     f"{peer.ae_title} at {peer.host}:{peer.port} failed: "
                                     f"{reason}", hint, kind="tls")

    def _not_associated(self, what: str) -> UpstreamError:
        """No association: unreachable (a TCP probe says how), or the handshake ``what``."""
        peer = self.peer
        probe = tcp_probe(peer.host, peer.port, min(peer.timeout, 5.0))
        if probe is not None:
            kind = "timeout" if "timed out" in probe else "refused"
            return UpstreamError(peer.name, f"{peer.host}:{peer.port}: {probe}",
                                 f"check that {peer.ae_title} is running and reachable "
                                 f"from the proxy at {peer.host}:{peer.port}", kind=kind)
        return UpstreamError(peer.name, f"association to {peer.ae_title} at {peer.host}:"
                             f"{peer.port} {what}", "the peer accepted TCP but did not "
                             "complete the DICOM handshake; is it a DICOM port?", kind="aborted")

    def echo(self) -> int | None:
        """C-ECHO; the status, or raise UpstreamError."""
        with self.link([build_context(Verification)]) as link:
            return self.echo_on(link)

    def echo_on(self, link: Link) -> int | None:
        """C-ECHO over an open ``link`` (one that proposed Verification)."""
        cx = self.link_context(link, Verification, "the archive does not accept "
                               "Verification (C-ECHO); check its DICOM configuration")
        sent = time.monotonic()
        try:
            link.send_message(cx, commands.c_echo_rq(1))
            return response_status(link.read_message().command, commands.C_ECHO_RSP)
        except TimeoutError:
            raise self.no_response("C-ECHO", time.monotonic() - sent) from None
        except (LinkClosed, OSError, pdu.PduError):
            raise self.no_response("C-ECHO", 0.0) from None

    def find(self, identifier: Dataset, model: str, cancelled: CancelToken | None = None,
             syntax: str | None = None) -> Iterator[tuple[int | None, Dataset | None]]:
        """C-FIND: yield (status, identifier) for every response, final included.

        When ``cancelled`` fires, a C-CANCEL is sent upstream once; the archive's
        answer to it (normally 0xFE00) still comes through this iterator.
        ``syntax`` (the workstation's transfer syntax) gets a presentation context
        of its own, used when the archive accepts it: each match is then passed on
        as the bytes it came in, without re-encoding (``query_contexts``).
        """
        with self.link(query_contexts(model, syntax)) as link:
            yield from self.find_on(link, identifier, model, cancelled)

    def find_on(self, link: Link, identifier: Dataset, model: str,
                cancelled: CancelToken | None = None
                ) -> Iterator[tuple[int | None, Dataset | None]]:
        """``find`` over an open ``link`` (one that proposed ``model``)."""
        cx = self.link_context(link, model)
        implicit = link.accept.accepted[cx] == ImplicitVRLittleEndian
        query = encode(identifier, implicit, True)   # raw elements: their own bytes
        if query is None:
            raise UpstreamError(self.peer.name, "the C-FIND identifier could not be encoded")
        last = time.monotonic()
        try:
            link.send_message(cx, commands.c_find_rq(1, model), query)
            with (cancelled or CancelToken()).on_cancel(lambda: cancel_on(link, cx)):
                while True:
                    message = link.read_message()
                    code = response_status(message.command, commands.C_FIND_RSP)
                    last = time.monotonic()
                    yield code, (decode(bytes(message.data), implicit)
                                 if message.data else None)
                    if code not in PENDING:
                        return
        except TimeoutError:
            raise self.no_response("C-FIND", time.monotonic() - last) from None
        except (LinkClosed, OSError, pdu.PduError):
            raise self.no_response("C-FIND", 0.0) from None

    def link_context(self, link: Link, sop_class: str,
                     hint: str = "the archive does not support this query/retrieve model"
                     ) -> int:
        """The presentation context ``link`` accepted for ``sop_class`` (lowest ID)."""
        ids = [cx for cx in link.accept.accepted if link.abstract.get(cx) == sop_class]
        if not ids:
            raise UpstreamError(self.peer.name, f"archive {self.peer.ae_title} did not accept "
                                f"the presentation context for {sop_class}", kind="no_context",
                                hint=hint)
        return min(ids)

    def move(self, identifier: Dataset, model: str, move_destination: str, msg_id: int,
             cancelled: CancelToken | None = None) -> Iterator[tuple[int, Dataset]]:
        """C-MOVE to ``move_destination``; yields (status, response) for every response.

        ``msg_id`` comes back in the archive's C-STOREs as Move Originator Message ID,
        and is the one a C-CANCEL names (Rule 5). Each response is ``move_status``.
        """
        with self.link([build_context(model, QUERY_TRANSFER_SYNTAXES)]) as link:
            cx = self.link_context(link, model)
            implicit = link.accept.accepted[cx] == ImplicitVRLittleEndian
            request = encode(identifier, implicit, True)
            if request is None:
                raise UpstreamError(self.peer.name, "the C-MOVE identifier could not be encoded")
            last = time.monotonic()
            try:
                link.send_message(cx, commands.c_move_rq(msg_id, model, move_destination),
                                  request)
                with (cancelled or CancelToken()).on_cancel(
                        lambda: cancel_on(link, cx, msg_id)):
                    while True:
                        message = link.read_message()
                        code = response_status(message.command, commands.C_MOVE_RSP)
                        last = time.monotonic()
                        yield code, move_status(message.command, message.data, implicit)
                        if code not in PENDING:
                            return
            except TimeoutError:
                raise self.no_response("C-MOVE", time.monotonic() - last) from None
            except (LinkClosed, OSError, pdu.PduError):
                raise self.no_response("C-MOVE", 0.0) from None

    def no_response(self, operation: str, waited: float) -> UpstreamError:
        """Why a response stream ended without a status: our timeout (``waited`` reached
        it), or the archive ending the association (Rule 5)."""
        if waited >= self.peer.timeout * 0.95:
            return UpstreamError(self.peer.name, f"no {operation} response within timeout "
                                 f"({self.peer.timeout:g}s); the proxy aborted the association",
                                 kind="timeout",
                                 hint=f"raise archives.{self.peer.name}.timeout or narrow "
                                      "the query")
        return UpstreamError(self.peer.name, f"the archive aborted or closed the association "
                             f"during {operation}", kind="aborted",
                             hint="see the archive's log for why")


def query_contexts(model: str, syntax: str | None = None) -> list[PresentationContext]:
    """The C-FIND contexts to propose: ``syntax`` alone first, when it is a query syntax.

    pydicom re-encodes every element of a match when the workstation's transfer syntax
    differs from the archive's (implicit/explicit VR), and copies each element's bytes
    when they agree. An acceptor picks the syntax of a context by its own preference
    (Orthanc: explicit VR whatever the order proposed), so the workstation's syntax gets
    a context of its own; ``link_context`` (and pynetdicom) use the first accepted
    context of a SOP class, the lowest ID; the second context is the fallback.
    """
    if syntax is None or syntax not in QUERY_TRANSFER_SYNTAXES:
        return [build_context(model, QUERY_TRANSFER_SYNTAXES)]
    others = [ts for ts in QUERY_TRANSFER_SYNTAXES if ts != syntax]
    return [build_context(model, [syntax]), build_context(model, others)]


# The response elements a C-MOVE status carries, as pynetdicom names them (PS3.7 9.3.4.2).
_MOVE_STATUS = {commands.ERROR_COMMENT: "ErrorComment",
                commands.REMAINING: "NumberOfRemainingSuboperations",
                commands.COMPLETED: "NumberOfCompletedSuboperations",
                commands.FAILED: "NumberOfFailedSuboperations",
                commands.WARNING: "NumberOfWarningSuboperations"}


def response_status(command: commands.Command, expected: int) -> int:
    """The Status of a response of the ``expected`` kind; PduError for anything else."""
    code, field = command.get(commands.STATUS), command.get(commands.COMMAND_FIELD)
    if not isinstance(code, int) or field != expected:
        got = f"0x{field:04X}" if isinstance(field, int) else repr(field)
        raise pdu.PduError(f"expected a response 0x{expected:04X} with a status, got "
                           f"command {got}")
    return code


def move_status(command: commands.Command, identifier: bytes | None,
                implicit: bool) -> Dataset:
    """A C-MOVE response as a Dataset: Status, Error Comment, Offending Element and the
    sub-operation counts; on a final warning, failure or cancel, the identifier's
    Failed SOP Instance UID List (PS3.4 C.4.2.1.5) too — as pynetdicom reported them."""
    status = Dataset()
    status.Status = command[commands.STATUS]
    offending = command.get(commands.OFFENDING_ELEMENT)
    if isinstance(offending, str) and offending:
        status.OffendingElement = [int(tag, 16) for tag in offending.split("\\")]
    for element, keyword in _MOVE_STATUS.items():
        if element in command:
            setattr(status, keyword, command[element])
    if identifier and category(int(status.Status)) in ("warning", "failure", "cancel"):
        try:
            decoded = decode(bytes(identifier), implicit)
        except Exception:  # an unreadable identifier: the counts still say what happened
            decoded = None
        if decoded is not None and "FailedSOPInstanceUIDList" in decoded:
            status.FailedSOPInstanceUIDList = decoded.FailedSOPInstanceUIDList
    return status


def status_of(status: Dataset | None) -> int | None:
    """The Status of a response dataset; None when there is no response (timeout, abort)."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def cancel_on(link: Link, cx: int, msg_id: int = 1) -> None:
    """C-CANCEL the request ``msg_id`` on ``link``, unless it has ended."""
    if not link.closed:
        link.send_message(cx, commands.c_cancel_rq(msg_id))
