"""One workstation association on the proxy's listener: admit, negotiate, receive, dispatch.

Job: the ``proxy.dicom.link.Handler`` of every association the listener accepts. It runs
on the event loop thread; DIMSE requests are answered in the driver's workers
(``proxy.responder``).

Rule 1: admission is ``routing.admit`` (pure; with ``session.source_ip``, the one peer
        address this module sets, in ``_source``) and the association limits
        (``routing.too_many_associations``, then the route's ``routing.route_limit``,
        counted by ``Listener.admitted_on``); the contexts are ``proxy.dicom.negotiation``
        under the route's policy (``Listener.policy_for``); a route may then change the
        answer, or reject, through the listener's ``negotiating`` hook (``proxy.store.
        relay``: association mirroring). A ``tls_only`` route refuses an association that
        came over the clear port (``routing.clear_on_tls_only``); one over TLS carries
        ``session.tls`` and its client certificate's subject (``session.tls_subject``).
        Every rejection is one ``association_rejected``.
Rule 2: a C-STORE data set is written as it arrives into a Part-10 file the
        listener's ``reception`` gives (the spool's: a recycled file or a new one, on
        the spool's filesystem, so it can be renamed into place), its File Meta naming
        the sending and receiving AE titles (PS3.10 7.1; ``routing.forward_calling_ae``).
        Any other data set (an identifier) is held in memory up to ``MAX_IDENTIFIER``
        bytes; a larger one aborts the association. A handler takes the file (renames it
        into the spool or the retrieve buffer) or deletes it; one left when the
        association ends is deleted.
        On a session that ``stream_stores`` (``store = "relay"``), a C-STORE is instead
        dispatched when its command arrives, its data set handed on fragment by fragment
        (``proxy.inflow``: reading held while the handler is ``INFLOW_HIGH_WATER``
        behind; an association that ends first breaks it), so the archive receives it
        while the workstation still sends.
Rule 3: a C-CANCEL-RQ is not dispatched: it sets the cancel token of the request it
        names, on the loop thread, while that request's handler runs in a worker.
Rule 4: every association ends in exactly one report: released, aborted (with the
        reason in words: who ended it and why), a port probe (debug only), or — never
        accepted — why it never became one; then ``association_closed`` if it had been
        accepted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from proxy.dicom import commands, negotiation, pdu
from proxy.dicom.events import Aborted, DataFragment, MessageReceived
from proxy.dicom.link import Answer, Link, Outbox
from proxy.dicom.negotiation import accepted_contexts
from proxy.inflow import Inflow
from proxy.observe import events as ev
from proxy.part10 import file_meta
from proxy.routing import (
    Inbound,
    Rejection,
    admit,
    clear_on_tls_only,
    route_limit,
    too_many_associations,
)
from proxy.session import Request, Session
from proxy.tls import peer_subject

if TYPE_CHECKING:
    from proxy.listener import Listener

MAX_IDENTIFIER = 16 << 20
INFLOW_HIGH_WATER = 4 << 20
_ids = itertools.count(1)


class Receiving(Protocol):
    """A file open to receive one C-STORE data set into (``Listener.reception``: the
    spool's ``Reception``)."""
    path: Path

    def write(self, data: bytes | memoryview) -> None: ...
    def close(self) -> None: ...


class _Incoming:
    """A message whose data set is still arriving (Rule 2)."""

    def __init__(self, context_id: int, command: commands.Command,
                 file: Receiving | None, meta: bytes | None) -> None:
        self.context_id, self.command = context_id, command
        self.path: Path | None = None
        self.data = bytearray()
        self._file: Receiving | None = None
        if file is not None and meta is not None:
            self._file, self.path = file, file.path
            file.write(meta)

    def add(self, data: bytes | memoryview) -> None:
        if self._file is not None:
            self._file.write(data)
        else:
            self.data += data
            if len(self.data) > MAX_IDENTIFIER:
                raise ValueError(f"a data set over {MAX_IDENTIFIER} bytes that is not a "
                                 "C-STORE's")

    def finish(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.finish()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class WorkstationAssociation:
    """The handler of one accepted connection (``proxy.dicom.link.Handler``)."""

    def __init__(self, listener: Listener, link: Link) -> None:
        self.listener, self.link = listener, link
        source_ip, peer = self._source()
        self.session = Session(ev.AssocInfo(f"a{next(_ids):06d}", "unknown", "unknown", peer),
                               source_ip=source_ip)
        self.session.is_up = lambda: link.abort_reason is None and not link.closed.done()
        self.session.abort = self._abort
        transport = link.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:          # the TLS listener: the handshake is done
            self.session.tls = True
            self.session.tls_subject = peer_subject(ssl_object.getpeercert(True))
        self.requested = False
        self._incoming: _Incoming | None = None
        self._inflow: Inflow | None = None     # a streamed data set still arriving
        self._running: dict[int, Request] = {}
        self._files: set[Path] = set()
        listener.sessions.add(self.session)

    def _source(self) -> tuple[str, str]:
        """(source IP, "ip:port") of the workstation: the one place the peer's address is
        read; source-network rules, logs and metrics all use what this returns."""
        if self.link.source is not None:      # named by a load balancer (PROXY protocol)
            host, port = self.link.source
            return host, f"{host}:{port}"
        transport = self.link.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        if not peername:
            return "", "unknown"
        return str(peername[0]), f"{peername[0]}:{peername[1]}"

    # -- negotiation (Rule 1) ---------------------------------------------------------
    def on_associate_request(self, rq: pdu.AssociateRQ
                             ) -> Answer | concurrent.futures.Future[Answer]:
        self.requested = True
        listener, session = self.listener, self.session
        route = listener.config.route_for(rq.called_ae.strip())
        session.info = ev.AssocInfo(session.info.assoc_id, rq.calling_ae.strip() or "unknown",
                                    rq.called_ae.strip() or "unknown", session.info.peer,
                                    route.called_ae if route else "unknown")
        decision = admit(listener.config, rq.calling_ae, rq.called_ae, listener.retrieving(),
                         session.source_ip, session.tls_subject)
        if isinstance(decision, Rejection):
            return self._reject(decision)
        busy = too_many_associations(listener.admitted(), listener.config.proxy.max_associations)
        if busy is None and not isinstance(decision, Inbound):
            busy = route_limit(decision, rq.calling_ae,
                               *listener.admitted_on(decision, rq.calling_ae))
        if busy is not None:
            return self._reject(busy)
        if not isinstance(decision, Inbound):
            clear = clear_on_tls_only(decision, session.tls, listener.tls_port)
            if clear is not None:
                return self._reject(clear)
        session.admitted = True
        if isinstance(decision, Inbound):  # an archive delivering C-MOVE sub-operations
            session.data["inbound"] = True
            session.data["inbound_archive"] = decision.archive
            return self._conclude(rq, negotiation.negotiate(
                rq, listener.inbound_policy(decision.archive)))
        session.route = decision
        answer = negotiation.negotiate(rq, listener.policy_for(decision))
        hook = listener.negotiating
        if isinstance(answer, pdu.AssociateAC) and hook is not None \
                and hook.applies(session, rq):
            ac = answer       # the route's last word may block (an archive): in a worker
            return self.link.driver.executor.submit(
                lambda: self._conclude(rq, hook(session, rq, ac)))
        return self._conclude(rq, answer)

    def _conclude(self, rq: pdu.AssociateRQ,
                  answer: pdu.AssociateAC | pdu.AssociateRJ | Rejection) -> Answer:
        listener, session = self.listener, self.session
        if isinstance(answer, Rejection):
            return self._reject(answer)
        if isinstance(answer, pdu.AssociateRJ):   # protocol version, application context
            return self._reject(Rejection(
                f"A-ASSOCIATE-RQ refused (result {answer.result}, source {answer.source}, "
                f"reason {answer.reason})", "the peer's request is not a DICOM one the proxy "
                "serves", answer.result, answer.source, answer.reason))
        session.accepted = True
        session.contexts = accepted_contexts(rq, answer)
        session.peer_max_pdu = rq.user.max_length or 0
        rejected = sum(1 for cx in answer.contexts if cx.result != negotiation.ACCEPTANCE)
        listener.bus.emit(ev.AssociationAccepted(session.info, len(session.contexts), rejected,
                                                 session.tls, session.tls_subject))
        return answer

    def _reject(self, why: Rejection) -> pdu.AssociateRJ:
        self.session.admitted = False
        self.session.ended = True
        self.listener.bus.emit(ev.AssociationRejected(self.session.info, why.reason, why.hint,
                                                      why.security))
        return pdu.AssociateRJ(why.result, why.source, why.diagnostic)

    # -- messages (Rules 2, 3) ---------------------------------------------------------
    def on_message(self, message: MessageReceived | DataFragment) -> None:
        if isinstance(message, DataFragment):
            inflow = self._inflow
            if inflow is not None:
                if inflow.feed(message.data, message.last):
                    self.link.hold_reading(True)
                if message.last:
                    self._inflow = None
                return
            incoming = self._incoming
            if incoming is None:
                return
            try:
                incoming.add(message.data)
            except (OSError, ValueError) as exc:
                self._incoming = None
                incoming.discard()
                self._abort(f"the data set could not be received: {exc}")
                return
            if message.last:
                self._incoming = None
                try:
                    incoming.finish()
                except OSError as exc:
                    incoming.discard()
                    self._abort(f"the data set could not be received: {exc}")
                    return
                self._dispatch(incoming.context_id, incoming.command,
                               bytes(incoming.data) if incoming.path is None else None,
                               incoming.path)
            return
        command = message.command
        if command.get(commands.COMMAND_FIELD) == commands.C_CANCEL_RQ:
            running = self._running.get(int(command.get(commands.RESPONDED_TO, -1)))
            if running is not None:
                running.cancel.cancel()
            return
        if message.data_follows:
            if self.session.stream_stores and message.context_id in self.session.contexts \
                    and command.get(commands.COMMAND_FIELD) == commands.C_STORE_RQ:
                self._stream(message.context_id, command)
            else:
                self._incoming = self._receive(message.context_id, command)
            return
        self._dispatch(message.context_id, command, message.data, None)

    def _receive(self, context_id: int, command: commands.Command) -> _Incoming:
        reception = self.listener.reception
        meta = file = None
        accepted = self.session.contexts.get(context_id)
        if (reception is not None and accepted is not None
                and command.get(commands.COMMAND_FIELD) == commands.C_STORE_RQ):
            info = self.session.info
            meta = file_meta(str(command.get(commands.AFFECTED_SOP_CLASS, "")),
                             str(command.get(commands.AFFECTED_SOP_INSTANCE, "")),
                             accepted.transfer_syntax, sending_ae=info.calling_ae,
                             receiving_ae=info.called_ae)
            file = reception()
        incoming = _Incoming(context_id, command, file, meta)
        if incoming.path is not None:
            self._files.add(incoming.path)
        return incoming

    def _stream(self, context_id: int, command: commands.Command) -> None:
        limits = self.link.limits
        self._inflow = inflow = Inflow(INFLOW_HIGH_WATER, limits.network_timeout,
                                       limits.dimse_timeout, self.link.hold_released,
                                       self._abort)
        self._dispatch(context_id, command, None, None, inflow)

    def _dispatch(self, context_id: int, command: commands.Command, data: bytes | None,
                  path: Path | None, inflow: Inflow | None = None) -> None:
        request = Request(self.session, context_id, command, data, path, inflow)
        msg_id = request.message_id
        self._running[msg_id] = request

        def work(outbox: Outbox) -> None:
            request.send, request.request = outbox.send, outbox.request
            request.request_after = outbox.request_after
            try:
                self.listener.dispatch(request)
            finally:
                if self._running.get(msg_id) is request:
                    del self._running[msg_id]

        self.link.run_in_worker(work)

    def _abort(self, why: str) -> None:
        self.session.violation = self.session.violation or why
        if self.link.loop.is_running():
            self.link.loop.call_soon_threadsafe(self.link.abort, why)

    # -- the end (Rule 4) ----------------------------------------------------------------
    def on_release(self) -> None:
        session = self.session
        if session.accepted and not session.ended:
            session.ended = True
            self.listener.bus.emit(ev.AssociationReleased(session.info, session.elapsed))
        hooks = list(self.listener.on_released)
        if hooks:       # in a worker: the A-RELEASE-RP waits for them (link Rule 6)
            def run(outbox: Outbox) -> None:
                for hook in hooks:
                    hook(session)
            self.link.run_in_worker(run)

    def on_abort(self, aborted: Aborted) -> None:
        session = self.session
        if aborted.local and session.violation is None and aborted.reason_text:
            session.violation = (f"invalid PDU from the peer: {aborted.reason_text}"
                                 if session.accepted else
                                 f"no valid A-ASSOCIATE-RQ received: {aborted.reason_text}")
        if aborted.local and self.link.transport is not None:
            self.link.transport.close()       # the A-ABORT is written; framing is lost
        if session.ended or not session.accepted:
            return
        session.ended = True
        self.listener.bus.emit(ev.AssociationAborted(session.info, session.elapsed,
                                                     self._abort_reason(aborted)))

    def _abort_reason(self, aborted: Aborted | None) -> str:
        p = self.listener.config.proxy
        ours = self.link.abort_reason
        if self.session.violation:
            return self.session.violation
        if str(self.session.data.get("abort_reason") or ""):
            return str(self.session.data["abort_reason"])
        if ours is not None:
            if ours.startswith("write buffer"):
                return (f"the workstation stopped reading for network_timeout "
                        f"({p.network_timeout:g}s) with responses still unsent, or went away;"
                        f" the proxy aborted")
            if ours.startswith("no network activity"):
                return (f"no PDU from the workstation for network_timeout "
                        f"({p.network_timeout:g}s); the proxy aborted")
            return f"aborted by the proxy: {ours}"
        if aborted is not None and not aborted.local and aborted.source == 2 \
                and aborted.reason_text:
            return "the workstation dropped the connection without A-RELEASE"
        return "the workstation aborted (A-ABORT) or dropped the connection without A-RELEASE"

    def on_closed(self) -> None:
        listener, session = self.listener, self.session
        for request in list(self._running.values()):
            request.cancel.cancel()           # nothing can reach the workstation any more
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        if self._inflow is not None:
            self._inflow.broken("the workstation's association ended in the middle of the "
                                "C-STORE data set")
            self._inflow = None
        if not session.ended:
            session.ended = True
            reason = self._never_reason()
            if reason is not None:
                listener.bus.emit(ev.AssociationAborted(session.info, session.elapsed, reason))
        for hook in listener.on_closed:     # may block on an archive: not on the loop
            self.link.driver.executor.submit(hook, session)
        if session.accepted:
            listener.bus.emit(ev.AssociationClosed(session.info))
        for path in self._files:              # what no handler took (refused, aborted)
            path.unlink(missing_ok=True)
        listener.sessions.discard(session)
        session.admitted = False

    def _never_reason(self) -> str | None:
        session = self.session
        acse = self.listener.config.proxy.acse_timeout
        if session.accepted:
            return self._abort_reason(None)
        if session.violation:
            return session.violation
        if not self.requested and self.link.bytes_received == 0 \
                and session.elapsed < acse * 0.9:
            # A load balancer's or a monitoring system's TCP check: connect, close.
            self.listener.bus.emit(ev.Noted("debug", "connection_probed", {
                "peer": session.info.peer,
                "reason": "TCP connection opened and closed without a byte "
                          "(a port probe or health check)"}))
            return None
        if not self.requested:
            if session.elapsed >= acse * 0.9:
                return (f"no A-ASSOCIATE-RQ within acse_timeout ({acse:g}s): the peer "
                        "connected and said nothing")
            return ("no valid A-ASSOCIATE-RQ received: invalid PDU or garbage bytes "
                    "(a non-DICOM client?), or the peer hung up")
        return "connection lost during association negotiation"
