"""Archive-facing SCU: associations to archives with the AE titles they expect.

Rule 1: every association is bounded in time — connect, ACSE, DIMSE, and the
        socket itself (pynetdicom clears the socket timeout after connect, so a
        peer that stops reading would block a send forever; we set it back).
Rule 2: a failure to associate becomes an UpstreamError whose ``reason`` a
        person understands and whose ``hint`` says what to change.
Rule 3: this module talks DICOM; it does not log or count. Callers emit events.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from proxy.config import ArchiveConfig, DestinationConfig
from proxy.routing import upstream_titles

QUERY_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# PS3.8 Table 9-21: A-ASSOCIATE-RJ diagnostics, source "service user".
_RJ_USER = {0x01: "no reason given", 0x02: "application context name not supported",
            0x03: "calling AE title not recognised", 0x07: "called AE title not recognised"}
_RJ_PROVIDER = {0x01: "temporary congestion", 0x02: "local limit exceeded"}


class UpstreamError(Exception):
    """The proxy could not get an answer from an archive."""

    def __init__(self, peer: str, reason: str, hint: str | None = None,
                 kind: str = "error") -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason
        self.hint = hint
        self.kind = kind            # refused, timeout, rejected, aborted, no_context, error


@dataclass(frozen=True)
class Peer:
    """What the SCU side needs to call an archive or destination."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str
    timeout: float

    @classmethod
    def of(cls, cfg: ArchiveConfig | DestinationConfig, default_calling: str,
           timeout: float = 30.0) -> Peer:
        calling, called = upstream_titles(cfg, default_calling)
        t = cfg.timeout if isinstance(cfg, ArchiveConfig) else timeout
        return cls(cfg.name, called, cfg.host, cfg.port, calling, t)


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
    if source == 0x01 and diagnostic == 0x03:
        hint = (f"add {peer.calling_ae} to the known AEs of {peer.ae_title} "
                f"(or set calling_ae for archives.{peer.name})")
    elif source == 0x01 and diagnostic == 0x07:
        hint = f"check ae_title of {peer.name}: the archive does not answer to {peer.ae_title}"
    elif source == 0x03:
        hint = "the archive is busy (association limit); retry later or raise its limit"
    return UpstreamError(peer.name, reason, hint, kind="rejected")


class ArchiveClient:
    """Opens bounded associations to one archive (or destination)."""

    def __init__(self, peer: Peer, network_timeout: float = 60.0,
                 max_pdu_size: int = 262_144) -> None:
        self.peer = peer
        self.network_timeout = network_timeout
        self.max_pdu_size = max_pdu_size

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.peer.calling_ae)
        ae.acse_timeout = self.peer.timeout
        ae.dimse_timeout = self.peer.timeout
        ae.network_timeout = self.network_timeout
        ae.connection_timeout = min(self.peer.timeout, 10.0)
        ae.maximum_pdu_size = self.max_pdu_size
        return ae

    @contextmanager
    def associate(self, contexts: Sequence[PresentationContext],
                  ext_neg: list[Any] | None = None,
                  handlers: list[Any] | None = None) -> Iterator[Association]:
        """An established association, released (or aborted) on exit."""
        ae = self._make_ae()
        bound = [(evt.EVT_CONN_OPEN, self._bound_socket), *(handlers or [])]
        assoc = ae.associate(self.peer.host, self.peer.port, contexts=list(contexts),
                             ae_title=self.peer.ae_title, ext_neg=ext_neg,
                             evt_handlers=bound)
        if not assoc.is_established:
            raise self._why_not(assoc)
        try:
            yield assoc
        except BaseException:
            if assoc.is_established:
                assoc.abort()
            raise
        else:
            if assoc.is_established:
                assoc.release()

    def _bound_socket(self, event: evt.Event) -> None:
        # pynetdicom sets the socket back to blocking-forever after connect (Rule 1).
        sock = event.assoc.dul.socket
        if sock is not None and sock.socket is not None:
            sock.socket.settimeout(self.network_timeout)

    def _why_not(self, assoc: Association) -> UpstreamError:
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            p = assoc.acceptor.primitive
            return explain_rejection(self.peer, int(p.result), int(p.result_source),
                                     int(p.diagnostic))
        probe = tcp_probe(self.peer.host, self.peer.port, min(self.peer.timeout, 5.0))
        if probe is not None:
            kind = "timeout" if "timed out" in probe else "refused"
            return UpstreamError(self.peer.name, f"{self.peer.host}:{self.peer.port}: {probe}",
                                 f"check that {self.peer.ae_title} is running and reachable "
                                 f"from the proxy at {self.peer.host}:{self.peer.port}",
                                 kind=kind)
        return UpstreamError(self.peer.name, f"association to {self.peer.ae_title} at "
                             f"{self.peer.host}:{self.peer.port} was aborted or timed out "
                             f"during negotiation", "the peer accepted TCP but did not "
                             "complete the DICOM handshake; is it a DICOM port?", kind="aborted")

    def echo(self) -> int | None:
        """C-ECHO; the status, or raise UpstreamError."""
        with self.associate([build_context(Verification)]) as assoc:
            status = assoc.send_c_echo()
            return _status_of(status)

    def find(self, identifier: Dataset, model: str,
             cancelled: CancelToken | None = None) -> Iterator[tuple[int | None, Dataset | None]]:
        """C-FIND: yield (status, identifier) for every response, final included.

        When ``cancelled`` fires, a C-CANCEL is sent upstream once; the archive's
        answer to it (normally 0xFE00) still comes through this iterator.
        """
        with self.associate([build_context(model, QUERY_TRANSFER_SYNTAXES)]) as assoc:
            cx = _context_for(assoc, model, self.peer)
            msg_id = 1

            def send_cancel() -> None:
                if assoc.is_established:
                    assoc.send_c_cancel(msg_id, cx)

            with (cancelled or CancelToken()).on_cancel(send_cancel):
                for status, ds in assoc.send_c_find(identifier, model, msg_id=msg_id):
                    code = _status_of(status)
                    if code is None:
                        if not assoc.is_established:
                            raise UpstreamError(self.peer.name, "the archive aborted the "
                                                "association during C-FIND", kind="aborted")
                        raise UpstreamError(self.peer.name, f"no C-FIND response within "
                                            f"{self.peer.timeout:g}s", kind="timeout",
                                            hint=f"raise archives.{self.peer.name}.timeout or "
                                                 "narrow the query")
                    yield code, ds


def _status_of(status: Dataset | None) -> int | None:
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def _context_for(assoc: Association, sop_class: str, peer: Peer) -> int:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class:
            return int(cx.context_id)
    raise UpstreamError(peer.name, f"archive {peer.ae_title} did not accept the presentation "
                        f"context for {sop_class}", kind="no_context",
                        hint="the archive does not support this query/retrieve model")


class CancelToken:
    """Set once by whoever sees the workstation's C-CANCEL; runs registered actions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._actions: list[Callable[[], None]] = []

    @property
    def is_set(self) -> bool:
        return self._set

    def cancel(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            actions, self._actions = self._actions, []
        for action in actions:
            try:
                action()
            except Exception:  # a dead upstream link is already being handled
                pass

    @contextmanager
    def on_cancel(self, action: Callable[[], None]) -> Iterator[None]:
        """Run ``action`` if cancelled while inside this block (or already)."""
        with self._lock:
            run_now = self._set
            if not run_now:
                self._actions.append(action)
        if run_now:
            action()
        try:
            yield
        finally:
            with self._lock:
                if action in self._actions:
                    self._actions.remove(action)
