"""``store = "relay"`` routes: one archive association per workstation association, mirrored.

The extension ``install`` (in ``proxy.app.EXTENSIONS``) sets the listener's
``negotiating`` hook; C-STOREs of such a session are forwarded by
``proxy.operations.store_relay`` over the ``Upstream`` kept in ``session.data``.

Rule 1 (mirroring): when the workstation's A-ASSOCIATE-RQ arrives, the archive named by
        the route's ``store_to`` is associated with the workstation's storage contexts,
        and the workstation is offered exactly what the archive accepted
        (``proxy.store.mirroring``). A workstation proposing no storage context (a C-FIND, a
        C-ECHO) costs the archive nothing.
Rule 2 (refusal): when the archive is down, or rejects or aborts the request, the
        workstation's association is rejected, transient (PS3.8 9.3.4: result
        rejected-transient, source service-user, no reason given), the archive's answer
        as the reason in the log — never accepted for instances nobody would hold.
Rule 3 (life): the archive association lives exactly as long as the workstation's: released
        when the workstation releases, aborted when it aborts or the connection drops.
        If the archive ends it first (released, aborted, closed — e.g. its idle timeout),
        the workstation's association is aborted, as the archive's own end would have
        ended it without the proxy (``Upstream.watch``); a C-STORE caught by the loss
        fails (``Upstream.store``: 0xA700) — never Success for what the archive did not.
Rule 4: one ``upstream`` event when the archive association cannot be opened (the
        C-STOREs it would have carried report their own, ``proxy.operations.store_relay``).
Rule 5: pynetdicom answers a C-STORE only for a SOP class it maps to a storage service
        (otherwise it aborts the association). A SOP class it does not know that the
        archive accepted is registered with ``pynetdicom.register_uid`` (its documented
        way to add private SOP classes) as storage, so the C-STORE is relayed as direct.
        At most ``MAX_REGISTERED`` are registered per process; past that such a context
        is refused (0x03) and the log says why.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from io import BufferedIOBase
from typing import Any, NoReturn

from pynetdicom import Association, evt, register_uid
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from proxy.listener import Negotiator, Session
from proxy.observe import events as ev
from proxy.routing import Rejection
from proxy.services import Services
from proxy.store import mirroring
from proxy.ul import commands, pdu
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient, UpstreamError

SESSION_KEY = "store_relay"
# SOP classes unknown to pynetdicom registered as storage (Rule 5); bounded, as a
# workstation chooses them.
MAX_REGISTERED = 1000
_registered: set[str] = set()
_register_lock = threading.Lock()


class Upstream:
    """The archive association of one workstation association (Rules 1, 3)."""

    def __init__(self, archive: str, client: ArchiveClient, stack: ExitStack, link: Link) -> None:
        self.archive = archive
        self.client = client
        self._stack = stack
        self.link = link
        self.lost: str | None = None          # why the archive association is gone
        self._lock = threading.Lock()
        self._contexts = {(link.abstract.get(cx), ts): cx
                          for cx, ts in sorted(link.accept.accepted.items(), reverse=True)}

    def watch(self, on_lost: Callable[[str], None], name: str) -> None:
        """Call ``on_lost`` if the archive ends the association between C-STOREs (Rule 3)."""
        threading.Thread(target=self._watch, args=(on_lost,), name=name, daemon=True).start()

    def _watch(self, on_lost: Callable[[str], None]) -> None:
        sock = self.link.sock
        while True:
            try:
                select.select([sock], [], [])      # data, EOF, or our own shutdown
            except (OSError, ValueError):
                return
            with self._lock:                       # a C-STORE may be reading its answer
                if self.link.closed or self.lost is not None:
                    return
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                except (OSError, ValueError):
                    return
                if not readable:
                    continue                       # that was a C-STORE's answer
                # Unsolicited while idle: A-RELEASE-RQ, A-ABORT or a closed connection.
                self.lost = (f"archive {self.archive} ({self.client.peer.ae_title}) ended its "
                             "association (released, aborted or closed it) between C-STOREs")
                self.link.abort()
            on_lost(self.lost)
            return

    def context_for(self, sop_class: str, transfer_syntax: str) -> int | None:
        return self._contexts.get((sop_class, transfer_syntax))

    def store(self, cx: int, command: bytes, msg_id: int, source: BufferedIOBase | None,
              data: bytes | None, length: int) -> commands.Command:
        """Send one C-STORE-RQ and return the archive's C-STORE-RSP command set.

        Raises ``UpstreamError`` (kind ``aborted``/``timeout``) when no response can come;
        the link is then aborted and every later call fails at once (Rule 3).
        """
        peer = self.client.peer
        with self._lock:
            if self.lost is not None or self.link.closed:
                raise UpstreamError(self.archive, self.lost or "archive association closed",
                                    "the archive ended the association; the workstation "
                                    "must associate again", kind="aborted")
            try:
                if data is not None:
                    self.link.send_message(cx, command, data=data)
                else:
                    self.link.send_message(cx, command, source=source, length=length)
                rsp = self.link.read_message().command
            except TimeoutError:
                self._lose(f"no C-STORE response from {peer.ae_title} within "
                           f"{peer.timeout:g}s", "timeout")
            except (LinkClosed, pdu.PduError, OSError) as exc:
                self._lose(f"archive association to {peer.ae_title} lost ({exc})", "aborted")
            if (rsp.get(commands.COMMAND_FIELD) != commands.C_STORE_RSP
                    or rsp.get(commands.RESPONDED_TO) != msg_id
                    or commands.STATUS not in rsp):
                self._lose(f"{peer.ae_title} answered the C-STORE with something else",
                           "aborted")
            return rsp

    def _lose(self, reason: str, kind: str) -> NoReturn:
        self.lost = reason
        self.link.abort()
        raise UpstreamError(self.archive, reason, f"check {self.client.peer.ae_title}'s log; "
                            "the workstation must associate again", kind=kind)

    def close(self, release: bool) -> None:
        """A-RELEASE (after any C-STORE in flight), or A-ABORT at once (Rule 3)."""
        if release:
            with self._lock:
                self._stack.close()                # ArchiveClient.link releases it
        else:
            self.link.abort()                      # wakes a C-STORE waiting for its answer
            self._stack.close()


def install(services: Services) -> None:
    """Mirror associations on ``store = "relay"`` routes (a no-op for other routes)."""
    if not any(route.store == "relay" for route in services.config.routes):
        return
    services.listener.negotiating = _negotiator(services)
    services.plugins.handlers.extend([
        (evt.EVT_RELEASED, _on_released),
        (evt.EVT_CONN_CLOSE, _on_closed),
    ])


def _negotiator(services: Services) -> Negotiator:
    def negotiate(assoc: Association, session: Session, proposed: list[Any],
                  contexts: list[Any]) -> list[Any] | Rejection:
        route = session.route
        if route is None or route.store != "relay":
            return contexts
        receiving = mirroring.receiving_classes(assoc.requestor.role_selection or {})
        upstream = mirroring.to_mirror(proposed, receiving)
        if not upstream:
            return contexts                        # nothing to store: no archive needed
        own = [cx for cx in contexts if not mirroring.is_storage(str(cx.abstract_syntax))
               or str(cx.abstract_syntax) in receiving]
        return _mirror(services, assoc, session, route.store_to[0], upstream, own)
    return negotiate


def _mirror(services: Services, assoc: Association, session: Session, archive: str,
            upstream: list[PresentationContext], own: list[PresentationContext]
            ) -> list[Any] | Rejection:
    client = services.archive_for(archive, session)    # pass_calling_ae applies here too
    started = time.monotonic()
    stack = ExitStack()
    try:
        link = stack.enter_context(client.link(upstream))
    except UpstreamError as exc:
        stack.close()
        services.bus.emit(ev.UpstreamCompleted(
            archive, "C-STORE", None, time.monotonic() - started, session.info, exc.reason,
            exc.hint, {"phase": "association", "contexts": len(upstream)}))
        return Rejection(f"store = \"relay\": archive {archive} could not be associated: "
                         f"{exc.reason}", exc.hint or f"check archive {archive}",
                         0x02, 0x01, 0x01)     # Rule 2: rejected-transient, no reason given
    accepted = {i: link.accept.accepted[2 * i + 1] for i in range(len(upstream))
                if 2 * i + 1 in link.accept.accepted}
    refused = {i: link.accept.refused.get(2 * i + 1, mirroring.NO_REASON)
               for i in range(len(upstream)) if i not in accepted}
    plan = mirroring.mirrored(upstream, accepted, refused, own)
    unserved = _serve_unknown(plan.contexts)
    if unserved:
        plan = mirroring.MirrorPlan([cx for cx in plan.contexts
                                     if str(cx.abstract_syntax) not in unserved],
                                    plan.hide, False)
    details: dict[str, Any] = {"archive": archive, "proposed": len(upstream),
                               "accepted": len(accepted)}
    if refused:
        details["refused"] = mirroring.refusal(upstream, accepted, refused)[:20]
    for i in plan.hide:       # mirroring Rule 4: seen by pynetdicom's negotiation only
        upstream[i].abstract_syntax = mirroring.HIDDEN_ABSTRACT_SYNTAX
    relay = session.data[SESSION_KEY] = Upstream(archive, client, stack, link)

    def lost(reason: str) -> None:            # Rule 3: the archive ended it first
        session.data["abort_reason"] = reason
        assoc.abort()
    relay.watch(lost, f"relay-{session.info.assoc_id}")
    if not plan.exact:
        details["inexact"] = ("the workstation's contexts cannot all get the archive's own "
                              "answer (an archive answering alike contexts differently, or "
                              "refusing with reason 1 or 2): see proxy.store.mirroring Rule 3, 4")
    services.bus.emit(ev.Noted("info", "association_mirrored", details, session.info))
    return plan.contexts


def _serve_unknown(contexts: list[PresentationContext]) -> set[str]:
    """Register the SOP classes pynetdicom does not know as storage, so their C-STOREs reach
    the handler (Rule 5); the ones over the bound are returned, not to be offered."""
    unknown = {str(cx.abstract_syntax) for cx in contexts
               if uid_to_service_class(str(cx.abstract_syntax)) is ServiceClass}
    refused = set()
    with _register_lock:
        for uid in sorted(unknown - _registered):
            if len(_registered) >= MAX_REGISTERED:
                refused.add(uid)
                continue
            register_uid(uid, "RelayedStorage_" + uid.replace(".", "_"), StorageServiceClass)
            _registered.add(uid)
    return refused


def _on_released(event: evt.Event, services: Services) -> None:
    upstream = services.session(event).data.pop(SESSION_KEY, None)
    if upstream is not None:
        upstream.close(release=True)


def _on_closed(event: evt.Event, services: Services) -> None:
    # Anything still open here: the workstation aborted, or the link dropped (Rule 3).
    upstream = services.session(event).data.pop(SESSION_KEY, None)
    if upstream is not None:
        upstream.close(release=False)
