"""``store = "relay"`` routes: one archive association per workstation association, mirrored.

The extension ``install`` (in ``proxy.app.EXTENSIONS``) sets the listener's
``negotiating`` hook (the A-ASSOCIATE-AC, context by context: ``proxy.store.mirroring``);
C-STOREs of such a session are forwarded by ``proxy.operations.store_relay`` over the
``Upstream`` kept in ``session.data``, each data set as it arrives (the session
``stream_stores``: socket → memory → socket, no file).

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
Rule 5: a SOP class no table knows that the archive accepted is relayed like any other:
        the listener dispatches C-STOREs by command, not by SOP class.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from io import BufferedIOBase
from typing import Any, NoReturn

from proxy.dicom import commands, pdu
from proxy.dicom.items import PresentationContextRQ
from proxy.inflow import Inflow, InflowBroken
from proxy.observe import events as ev
from proxy.routing import Rejection
from proxy.services import Services
from proxy.session import Session
from proxy.store import mirroring
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient, UpstreamError

SESSION_KEY = "store_relay"


@dataclass(frozen=True)
class Proposal:
    """A context proposed to the archive (what ``ArchiveClient.link`` reads)."""
    abstract_syntax: str
    transfer_syntax: tuple[str, ...]


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
              data: bytes | None, length: int, inflow: Inflow | None = None
              ) -> commands.Command:
        """Send one C-STORE-RQ and return the archive's C-STORE-RSP command set; the data
        set from ``data``, ``length`` bytes of ``source``, or as it arrives (``inflow``).

        Raises ``UpstreamError`` (kind ``aborted``/``timeout``) when no response can come;
        the link is then aborted and every later call fails at once (Rule 3). Raises
        ``InflowBroken`` when the workstation's data set stops arriving: the message
        cannot be completed, so the archive association is aborted too.
        """
        peer = self.client.peer
        with self._lock:
            if self.lost is not None or self.link.closed:
                raise UpstreamError(self.archive, self.lost or "archive association closed",
                                    "the archive ended the association; the workstation "
                                    "must associate again", kind="aborted")
            try:
                if inflow is not None:
                    self.link.send_arriving(cx, command, inflow.parts())
                elif data is not None:
                    self.link.send_message(cx, command, data=data)
                else:
                    self.link.send_message(cx, command, source=source, length=length)
                rsp = self.link.read_message().command
            except InflowBroken as exc:
                self.lost = f"the C-STORE the archive was receiving broke off: {exc}"
                self.link.abort()
                raise
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
    listener = services.listener
    listener.negotiating = _Mirroring(services)
    listener.on_released.append(_on_released)
    listener.on_closed.append(_on_closed)


class _Mirroring:
    """The listener's ``negotiating`` hook for ``store = "relay"`` routes (Rule 1)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def applies(self, session: Session, rq: pdu.AssociateRQ) -> bool:
        route = session.route
        return route is not None and route.store == "relay" and bool(
            mirroring.to_mirror(rq.contexts, mirroring.receiving_classes(rq.user.roles)))

    def __call__(self, session: Session, rq: pdu.AssociateRQ,
                 ac: pdu.AssociateAC) -> pdu.AssociateAC | Rejection:
        route = session.route
        assert route is not None                   # ``applies`` said so
        upstream = mirroring.to_mirror(rq.contexts, mirroring.receiving_classes(rq.user.roles))
        return _mirror(self.services, session, route.store_to[0], upstream, ac)


def _mirror(services: Services, session: Session, archive: str,
            upstream: list[PresentationContextRQ], ac: pdu.AssociateAC
            ) -> pdu.AssociateAC | Rejection:
    client = services.archive_for(archive, session)    # pass_calling_ae applies here too
    started = time.monotonic()
    stack = ExitStack()
    proposals = [Proposal(cx.abstract_syntax, cx.transfer_syntaxes) for cx in upstream]
    try:
        link = stack.enter_context(client.link(proposals))
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
    details: dict[str, Any] = {"archive": archive, "proposed": len(upstream),
                               "accepted": len(accepted)}
    if refused:
        details["refused"] = mirroring.refusal(upstream, accepted, refused)[:20]
    relay = session.data[SESSION_KEY] = Upstream(archive, client, stack, link)
    session.stream_stores = True        # proxy.association Rule 2: forwarded as they arrive

    def lost(reason: str) -> None:            # Rule 3: the archive ended it first
        session.data["abort_reason"] = reason
        session.abort(reason)
    relay.watch(lost, f"relay-{session.info.assoc_id}")
    services.bus.emit(ev.Noted("info", "association_mirrored", details, session.info))
    return mirroring.mirrored(ac, upstream, accepted, refused)


def _on_released(session: Session) -> None:
    upstream = session.data.pop(SESSION_KEY, None)
    if upstream is not None:
        upstream.close(release=True)


def _on_closed(session: Session) -> None:
    # Anything still open here: the workstation aborted, or the link dropped (Rule 3).
    upstream = session.data.pop(SESSION_KEY, None)
    if upstream is not None:
        upstream.close(release=False)
