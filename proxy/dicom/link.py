"""One association on an asyncio transport: the sans-IO ``Association`` driven by the
loop, its ``Handler`` called with its events, its timers and its flow control.

Job: everything per association of the I/O driver (``proxy.dicom.io``, which owns the
listener, the worker pool and shutdown).

Rule 1: only the loop thread touches the association and the transport. Blocking
        handler work runs in the driver's pool (``Link.run_in_worker``); what it sends
        goes through its ``Outbox``, posted with ``call_soon_threadsafe`` and written
        by the loop.
Rule 2: the association is drained to ``NeedData`` after every read, and
        ``data_to_send()`` is written after every ``next_event()``, so aborts and
        rejections reach the wire; the receive buffer holds at most one PDU plus one
        read.
Rule 3: back-pressure both ways. Reading pauses while ``max_in_flight`` worker jobs
        are unfinished, the write buffer is above ``write_high_water``, or the handler
        holds it (``hold_reading``: a data set handed to a worker as it arrives, whose
        worker is behind); events wait, undelivered, in the association. A worker's
        send is queued for the loop without waiting while the write buffer is below the
        mark and what workers queued stays under it; otherwise it blocks until the loop
        has written it below the mark. A loop-thread send only follows a read, which that
        pause bounds. A write buffer that does not drain within ``network_timeout``
        aborts this association only.
Rule 4: timers are loop timers, one handle each, no polling: ARTIM (``acse_timeout``)
        runs exactly while ``artim_running``; a watchdog aborts an association with no
        bytes either way for ``network_timeout``, or with a message begun and not
        complete after ``dimse_timeout`` — neither while a worker job runs or awaits a
        response (that wait has its own ``dimse_timeout``, Rule 7). (A message
        whose first PDU arrived in the same read that completed the previous one is
        timed from its next read; the idle bound still holds.)
Rule 5: a handler or worker exception, a protocol error or a timeout aborts this
        association (A-ABORT, then close) and nothing else.
Rule 6: the A-RELEASE-RP goes out once no worker job is in flight; on a release
        collision the acceptor answers after its own A-RELEASE-RQ is answered
        (PS3.8 9.2.4).
Rule 7: a worker may send a request on the association and wait for its response
        (``Outbox.request``: a C-GET's C-STORE sub-operations). The response — the
        first message with that Message ID Being Responded To and no streamed data
        set — goes to the waiting worker, not to the handler; while it waits, the job
        does not count against ``max_in_flight`` (reading must go on for the response
        to arrive); no response within ``dimse_timeout`` aborts the association.
        A worker may also hand over the next request before that response comes
        (``Outbox.request_after``): the loop sends it as soon as the response is in,
        if its ``go`` still says so, with no thread hand-off in between; one request
        at a time is still all that is on the wire (no asynchronous window).
Rule 8: the answer to an A-ASSOCIATE-RQ may take blocking work (a route that must first
        associate with an archive): the handler then returns a future, and the AC or RJ
        is sent when it resolves, reading paused until then; ARTIM is not running in
        that state (PS3.8 Sta3), the association's own timers still are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from proxy.dicom import commands, pdu
from proxy.dicom.connection import Association, LocalProtocolError, Outgoing
from proxy.dicom.events import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    ConnectionClosed,
    DataFragment,
    MessageReceived,
    NeedData,
    ReleaseConfirmed,
    ReleaseRequested,
    SendMessage,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 500
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 60.0
    handshake_timeout: float = 10.0
    write_high_water: int = 1 << 20
    max_in_flight: int = 2          # one operation + a C-CANCEL may be read meanwhile
    stream_data: bool = False
    workers: int = 16


Answer = pdu.AssociateAC | pdu.AssociateRJ


class Handler(Protocol):
    """One association's application side; called on the loop thread (Rule 1)."""
    def on_associate_request(self, request: pdu.AssociateRQ
                             ) -> Answer | concurrent.futures.Future[Answer]:
        ...
    def on_message(self, message: MessageReceived | DataFragment) -> None: ...
    def on_release(self) -> None: ...
    def on_abort(self, aborted: Aborted) -> None: ...
    def on_closed(self) -> None: ...


class LinkClosed(Exception):
    """The association is gone: a worker's send cannot be written."""


class NotSent(Exception):
    """A request handed over to follow another was dropped: its ``go`` said no."""


@dataclass
class Chained:
    """A request to send once an earlier one is answered (Rule 7)."""
    message: SendMessage
    go: Callable[[], bool]
    done: concurrent.futures.Future[MessageReceived]


class AssociationRejected(Exception):
    def __init__(self, reject: pdu.AssociateRJ) -> None:
        super().__init__(f"A-ASSOCIATE-RJ result {reject.result} source {reject.source} "
                         f"reason {reject.reason}")
        self.reject = reject


class Owner(Protocol):
    """What a link needs of its driver."""
    loop: asyncio.AbstractEventLoop
    limits: Limits
    executor: concurrent.futures.ThreadPoolExecutor
    links: set[Link]

    def forget(self, link: Link) -> None: ...


class Outbox:
    """A worker thread's way to send on its association (Rules 1, 3, 7)."""
    def __init__(self, link: Link) -> None:
        self._link = link

    def send(self, item: Outgoing) -> None:
        """Queue ``item`` for the loop; blocks only while the association's write buffer
        and what is queued reach the high-water mark (Rule 3). ``LinkClosed`` if gone;
        a send the association refused raises here, on the worker's next send."""
        link = self._link
        link.raise_failed_send()
        size = len(item.data) + 256 if isinstance(item, SendMessage) and item.data else 256
        with link.posted_lock:
            fast = not link.write_paused and link.posted + size <= link.limits.write_high_water
            if fast:
                link.posted += size
        if fast:
            self._post(link.send_posted, item, size)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._post(link.send_for_worker, item, done)
        done.result()

    def request(self, message: SendMessage) -> MessageReceived:
        """Send a request and wait for its (first) response, matched by Message ID
        (Rule 7). ``LinkClosed`` if the association ends first."""
        done: concurrent.futures.Future[MessageReceived] = concurrent.futures.Future()
        self._post(self._link.request_for_worker, message, done)
        return done.result()

    def request_after(self, previous: int, message: SendMessage,
                      go: Callable[[], bool]) -> concurrent.futures.Future[MessageReceived]:
        """Send ``message`` once the request with Message ID ``previous`` is answered (at
        once if it is already), when ``go()`` then says so; its response, ``NotSent``
        when ``go()`` said no, or ``LinkClosed``, comes in the future (Rule 7)."""
        done: concurrent.futures.Future[MessageReceived] = concurrent.futures.Future()
        self._post(self._link.request_after_for_worker, previous, message, go, done)
        return done

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._link.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:                       # the loop is closed
            raise LinkClosed("event loop closed") from None


class Link(asyncio.Protocol):
    """One association and its transport."""

    def __init__(self, driver: Owner, factory: Callable[[Link], Handler],
                 role: Literal["acceptor", "requestor"],
                 source: tuple[str, int] | None = None) -> None:
        self.driver, self.limits, self.loop = driver, driver.limits, driver.loop
        self.source = source          # the peer a load balancer named (PROXY protocol)
        self.association = Association(role, stream_data=self.limits.stream_data)
        self._factory = factory
        self.handler: Handler                  # made once the transport is up
        self.transport: asyncio.Transport | None = None
        self.established: asyncio.Future[pdu.AssociateAC] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._in_flight = 0
        self._write_paused = self._read_paused = False
        self._held = False                     # a handler's buffer is full (Rule 3)
        self._writers: list[concurrent.futures.Future[None]] = []
        self._awaiting: dict[int, tuple[concurrent.futures.Future[MessageReceived],
                                        asyncio.TimerHandle]] = {}
        self._chained: dict[int, Chained] = {}  # sent once that Message ID is answered
        self._artim: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._active = self.loop.time()
        self._message_since: float | None = None
        self._reply_release = False
        self._gathered: list[bytes] = []       # writes gathered for one system call
        self.posted = 0                        # bytes workers queued, not yet sent
        self.posted_lock = threading.Lock()
        self._failed_send: Exception | None = None
        self.bytes_received = 0                # 0 at the end: a port probe
        self.abort_reason: str | None = None   # why this side aborted, if it did

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; uvloop's are not asyncio.Transport subclasses
        self.transport = transport = cast(asyncio.Transport, transport)
        self.handler = self._factory(self)
        transport.set_write_buffer_limits(high=self.limits.write_high_water)
        self.driver.links.add(self)
        self._arm_watchdog(self.loop.time() + self.limits.network_timeout)
        self._sync_artim()

    def data_received(self, data: bytes) -> None:
        self._active = self.loop.time()
        self.bytes_received += len(data)
        if self._message_since is None and self.association.contexts:
            self._message_since = self._active
            due = self._active + self.limits.dimse_timeout
            if self._watchdog is not None and self._watchdog.when() > due:
                self._watchdog.cancel()        # only when dimse_timeout < network_timeout
                self._arm_watchdog(due)
        self.association.receive_data(data)
        self._drain()

    def eof_received(self) -> bool:
        self.association.receive_data(b"")
        self._drain()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.association.receive_data(b"")
            self._drain(closing=True)
            for timer in (self._artim, self._write_timer, self._watchdog):
                if timer is not None:
                    timer.cancel()
            self._fail_writers()
            self.established.cancel()          # connect() turns this into LinkClosed
            self.driver.forget(self)
            self.closed.set_result(None)
            self._call(self.handler.on_closed)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_timer = self.loop.call_later(self.limits.network_timeout, self.abort,
                                                 "write buffer did not drain")
        self._sync_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
        writers, self._writers = self._writers, []
        for done in writers:
            done.set_result(None)
        self._sync_reading()
        self._drain()

    # -- events in ---------------------------------------------------------------
    def _blocked(self) -> bool:
        return self._in_flight >= self.limits.max_in_flight or self._write_paused \
            or self._held

    def hold_reading(self, held: bool) -> None:
        """Stop reading (events wait in the association) until called with False (loop
        thread only): a data set handed on as it arrives whose reader is behind (Rule 3)."""
        self._held = held
        if held:
            self._sync_reading()
        elif not self.closed.done():
            self._drain()

    def hold_released(self) -> None:
        """``hold_reading(False)`` from any thread."""
        self._post(self.hold_reading, False)

    def _drain(self, closing: bool = False) -> None:
        while closing or not self._blocked():
            event = self.association.next_event()
            self._write(self.association.data_to_send())
            if isinstance(event, NeedData):
                break
            try:
                self._deliver(event)
            except Exception:                  # Rule 5, e.g. an AC naming unknown contexts
                log.exception("answering an association event failed; aborting it")
                self.abort("answer failed")
                break
            if isinstance(event, ConnectionClosed):
                break
        self._sync_artim()
        self._sync_reading()

    def _deliver(self, event: object) -> None:
        if isinstance(event, MessageReceived | DataFragment):
            complete = (isinstance(event, DataFragment) and event.last) or \
                (isinstance(event, MessageReceived) and not event.data_follows)
            if complete and not self.association.buffered:
                self._message_since = None
            if not self._answered(event):
                self._call(self.handler.on_message, event)
        elif isinstance(event, AssociateRequested):
            answer = self._call(self.handler.on_associate_request, event.request)
            if isinstance(answer, concurrent.futures.Future):   # decided in a worker
                self._in_flight += 1           # nothing more is read meanwhile (Rule 8)
                answer.add_done_callback(lambda f: self._post(self._answer_later, f))
            elif answer is not None:           # None: the handler failed, already aborted
                self.send(answer)
        elif isinstance(event, ReleaseRequested):
            self._call(self.handler.on_release)
            self._reply_release = True
            if not event.collision or self.association.requestor:
                self._answer_release()         # else after our RQ is answered (PS3.8 9.2.4)
        elif isinstance(event, ReleaseConfirmed):
            self._answer_release()
        elif isinstance(event, Aborted):
            self._call(self.handler.on_abort, event)
        elif isinstance(event, AssociateAccepted) and not self.established.done():
            self.established.set_result(event.accept)
        elif isinstance(event, AssociateRejected) and not self.established.done():
            self.established.set_exception(AssociationRejected(event.reject))
        elif isinstance(event, ConnectionClosed) and self.transport is not None:
            self.transport.close()

    def _answer_later(self, future: concurrent.futures.Future[Any]) -> None:
        self._in_flight -= 1
        if self.closed.done():
            return
        exc = None if future.cancelled() else future.exception()
        if exc is not None or future.cancelled():
            log.error("deciding an association failed; aborting it", exc_info=exc)
            self.abort("association decision failed")
            return
        try:
            self.send(future.result())
        except Exception:
            log.exception("answering an association request failed; aborting it")
            self.abort("answer failed")
            return
        self._drain()

    def _answer_release(self) -> None:
        if self._reply_release and self._in_flight == 0:
            self._reply_release = False
            with contextlib.suppress(LocalProtocolError):
                self.send(pdu.ReleaseRP())

    def _call(self, method: Callable[..., Any], *args: object) -> Any:
        try:
            return method(*args)
        except Exception:
            log.exception("association handler failed; aborting the association")
            self.abort("handler failed")
            return None

    # -- bytes out ---------------------------------------------------------------
    def send(self, item: Outgoing) -> None:
        """Write ``item`` now (loop thread only); ``LocalProtocolError`` if PS3.8 forbids."""
        self._write(self.association.send(item))
        self._sync_artim()
        if isinstance(item, pdu.AssociateAC) and not self.established.done():
            self.established.set_result(item)

    def send_posted(self, item: Outgoing, size: int) -> None:
        """A worker's send that did not wait (``Outbox.send``)."""
        with self.posted_lock:
            self.posted -= size
        if self.closed.done():
            return
        try:
            self._write(self.association.send(item), coalesce=True)
        except Exception as exc:               # LocalProtocolError, PduError: the worker's
            self._failed_send = exc

    def raise_failed_send(self) -> None:
        if self._failed_send is not None:
            raise self._failed_send
        if self.closed.done():
            raise LinkClosed("association closed")

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def send_for_worker(self, item: Outgoing,
                        done: concurrent.futures.Future[None]) -> None:
        if self.closed.done():
            done.set_exception(LinkClosed("association closed"))
            return
        try:
            self.send(item)
        except Exception as exc:               # LocalProtocolError, PduError: the worker's
            done.set_exception(exc)
            return
        if self._write_paused:
            self._writers.append(done)
        else:
            done.set_result(None)

    def _write(self, data: bytes, coalesce: bool = False) -> None:
        """Write ``data``; with ``coalesce``, gathered with the other writes of this loop
        turn into one (a worker's burst of small responses: one system call, not one each).
        Order is kept: any other write flushes what was gathered first."""
        if coalesce:
            if data:
                if not self._gathered:
                    self.loop.call_soon(self._flush)
                self._gathered.append(data)
            return
        self._flush()
        if data and self.transport is not None and not self.transport.is_closing():
            self._active = self.loop.time()
            self.transport.write(data)

    def _flush(self) -> None:
        if not self._gathered:
            return
        data, self._gathered = b"".join(self._gathered), []
        if self.transport is not None and not self.transport.is_closing():
            self._active = self.loop.time()
            self.transport.write(data)

    def abort(self, why: str = "") -> None:
        """A-ABORT (service user) if the state allows, then close: this association only."""
        if self.transport is None or self.closed.done():
            return
        self.abort_reason = self.abort_reason or why or "aborted"
        if why:
            log.info("aborting association with %s: %s",
                     self.transport.get_extra_info("peername"), why)
        with contextlib.suppress(LocalProtocolError):
            self.send(pdu.Abort())
        if self._write_paused:
            self.transport.abort()
        else:
            self.transport.close()

    def release(self) -> None:
        """Requestor: send A-RELEASE-RQ; ``closed`` resolves once the peer answers."""
        self.send(pdu.ReleaseRQ())

    def _fail_writers(self) -> None:
        writers, self._writers = self._writers, []
        waiting, self._awaiting = self._awaiting, {}
        chained, self._chained = self._chained, {}
        for done in writers:
            done.set_exception(LinkClosed("association closed"))
        for waiter, timer in waiting.values():
            timer.cancel()
            waiter.set_exception(LinkClosed("association closed"))
        for after in chained.values():
            after.done.set_exception(LinkClosed("association closed"))

    def request_after_for_worker(self, previous: int, message: SendMessage,
                                 go: Callable[[], bool],
                                 done: concurrent.futures.Future[MessageReceived]) -> None:
        after = Chained(message, go, done)
        if self.closed.done():
            done.set_exception(LinkClosed("association closed"))
        elif previous in self._awaiting or any(
                _message_id(c.message) == previous for c in self._chained.values()):
            self._chained[previous] = after
        else:
            self._send_chained(after)

    def _send_chained(self, after: Chained | None) -> None:
        """Send ``after`` if its ``go`` says so; when it then awaits no answer (not sent,
        or refused), what follows it may go at once."""
        while after is not None:
            msg_id = _message_id(after.message)
            if after.go():
                self.request_for_worker(after.message, after.done)
                if msg_id in self._awaiting:
                    return                     # what follows goes once it is answered
            else:
                after.done.set_exception(NotSent("not sent"))
            after = self._chained.pop(msg_id, None)

    def request_for_worker(self, message: SendMessage,
                           done: concurrent.futures.Future[MessageReceived]) -> None:
        msg_id = _message_id(message)
        if self.closed.done() or msg_id in self._awaiting:
            done.set_exception(LinkClosed("association closed") if self.closed.done()
                               else LocalProtocolError(f"Message ID {msg_id} already awaited"))
            return
        timer = self.loop.call_later(self.limits.dimse_timeout, self.abort,
                                     f"no response to message {msg_id} within "
                                     f"{self.limits.dimse_timeout} s")
        self._awaiting[msg_id] = (done, timer)
        self._in_flight -= 1                   # waiting on the peer: reading must go on
        self._sync_reading()
        try:
            self.send(message)
        except Exception as exc:
            self._awaiting.pop(msg_id)
            timer.cancel()
            self._in_flight += 1
            done.set_exception(exc)

    def _answered(self, event: MessageReceived | DataFragment) -> bool:
        """A response a worker awaits goes to it, not to the handler (Rule 7)."""
        if not isinstance(event, MessageReceived) or event.data_follows:
            return False
        command = event.command
        if not int(command.get(commands.COMMAND_FIELD, 0)) & 0x8000:
            return False
        msg_id = int(command.get(commands.RESPONDED_TO, -1))
        waiter = self._awaiting.pop(msg_id, None)
        if waiter is None:
            return False
        waiter[1].cancel()
        self._in_flight += 1
        self._sync_reading()
        waiter[0].set_result(event)
        self._send_chained(self._chained.pop(msg_id, None))   # no hand-off (Rule 7)
        return True

    # -- workers (Rule 1) ----------------------------------------------------------
    def run_in_worker(self, work: Callable[[Outbox], None]) -> None:
        """Run blocking ``work`` in the pool; reading pauses at ``max_in_flight``."""
        self._in_flight += 1
        self._sync_reading()
        future = self.driver.executor.submit(work, Outbox(self))
        future.add_done_callback(lambda f: self._post(self._work_done, f))

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):    # loop closed: nothing left to tell
            self.loop.call_soon_threadsafe(callback, *args)

    def _work_done(self, future: concurrent.futures.Future[None]) -> None:
        self._in_flight -= 1
        if self.closed.done():
            return
        self._active = self.loop.time()
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not isinstance(exc, LinkClosed):
            log.error("association worker failed", exc_info=exc)
            self.abort("worker failed")
            return
        self._answer_release()
        self._drain()

    # -- timers and flow (Rules 3, 4) --------------------------------------------
    def _sync_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        blocked = self._blocked()
        if blocked and not self._read_paused:
            self.transport.pause_reading()
        elif not blocked and self._read_paused:
            self.transport.resume_reading()
        self._read_paused = blocked

    def _sync_artim(self) -> None:
        if self.association.artim_running and self._artim is None:
            self._artim = self.loop.call_later(self.limits.acse_timeout, self._artim_expired)
        elif not self.association.artim_running and self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        closed = self.association.timer_expired()
        self._write(self.association.data_to_send())
        if closed is not None and self.transport is not None:
            self.transport.close()

    def _arm_watchdog(self, when: float) -> None:
        self._watchdog = self.loop.call_at(when, self._watch)

    def _watch(self) -> None:
        now, limits = self.loop.time(), self.limits
        idle_until = self._active + limits.network_timeout
        message_until = (self._message_since + limits.dimse_timeout
                         if self._message_since is not None else idle_until)
        if self._in_flight or self._awaiting:  # a worker job runs: not idle (Rule 4)
            return self._arm_watchdog(now + limits.network_timeout)
        if now >= idle_until:
            return self.abort(f"no network activity for {limits.network_timeout} s")
        if now >= message_until:
            return self.abort(f"DIMSE message incomplete after {limits.dimse_timeout} s")
        self._arm_watchdog(min(idle_until, message_until))


def _message_id(message: SendMessage) -> int:
    return int(message.command[commands.MESSAGE_ID])
