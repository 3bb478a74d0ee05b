"""A C-STORE data set still arriving, read by the worker that relays it.

Job: carry a data set from the event loop, fragment by fragment as the workstation sends
it, to the one worker thread that forwards it to the archive (``store = "relay"``), so a
relayed instance goes socket → memory → socket and the archive receives it while the
workstation is still sending (``proxy.association`` Rule 2, ``proxy.store.relay``).

Rule 1: one feeder (the loop: ``feed``, ``broken``) and one reader (the worker: ``head``,
        ``take``, ``discard``, ``wait_end``). What is fed is held as views of the received
        bytes, never copied (``proxy.dicom.connection`` Rule 6: they do not change).
Rule 2: bounded. ``feed`` returns True once ``high_water`` bytes wait unread: the loop
        then stops reading the workstation (``Link.hold_reading``) until the reader has
        taken them below half of it and ``resume`` (called on the reader's thread) says
        so. ``head(n)`` raises the bound to ``n`` while it waits, for a header longer
        than usual.
Rule 3: the reader never gets the last bytes before the last fragment has arrived: a
        ``take`` that is not the last holds back ``HOLD_BACK`` bytes, so the final
        ``take`` always has data to carry the last-fragment flag (an empty last fragment
        from the workstation is not passed on as one).
Rule 4: a reader that gives up (``discard``: the archive failed, or no archive takes the
        instance) drops what waits and everything fed after it; reading never pauses
        again, and ``wait_end`` returns once the last fragment arrived, so the answer
        never goes out before the request's data set is complete.
Rule 5: a wait ends with ``InflowBroken``: when the association ended (``broken``), or
        when no byte came for ``idle`` seconds or the data set is not complete
        ``deadline`` seconds after its command (the loop's own watchdog does not time an
        association while a worker runs, ``proxy.dicom.link`` Rule 4); then ``stalled``
        is called first, with the reason (the association aborts the workstation).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

HOLD_BACK = 2          # even: a DICOM data set's values, and so its fragments, are even


class InflowBroken(Exception):
    """The data set will not arrive whole (Rule 5)."""


class Inflow:
    """The data set of one C-STORE-RQ as it arrives (see the module rules)."""

    def __init__(self, high_water: int, idle: float, deadline: float,
                 resume: Callable[[], None], stalled: Callable[[str], None]) -> None:
        self._high = self._bound = high_water
        self._idle, self._dimse = idle, deadline
        self._deadline = time.monotonic() + deadline
        self._resume, self._stalled = resume, stalled
        self._cond = threading.Condition(threading.Lock())
        self._views: deque[memoryview] = deque()
        self._size = 0                 # bytes waiting in _views
        self.received = 0              # bytes fed so far
        self.ended = False             # the last fragment arrived
        self._broken: str | None = None
        self._discarding = False
        self._paused = False

    # -- the loop's side ---------------------------------------------------------------
    def feed(self, data: bytes | memoryview, last: bool) -> bool:
        """Add one fragment; True when the loop must stop reading (Rule 2)."""
        with self._cond:
            self.received += len(data)
            if data and not self._discarding:
                self._views.append(memoryview(data).cast("B"))
                self._size += len(data)
            self.ended = self.ended or last
            self._cond.notify()
            if self._size >= self._bound and not self._paused and not self.ended:
                self._paused = True
                return True
            return False

    def broken(self, why: str) -> None:
        """The association ended before the last fragment (Rule 5)."""
        with self._cond:
            if not self.ended and self._broken is None:    # the first reason stands
                self._broken = why
                self._cond.notify()

    # -- the reader's side ---------------------------------------------------------------
    def head(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer only when the data set is shorter), not taken."""
        with self._cond:
            self._bound = max(self._high, n + HOLD_BACK)
            try:
                self._wait(lambda: self._size >= n or self.ended)
            finally:
                self._bound = self._high
            resume = self._unpause_if_below()
            out = bytearray()
            for view in self._views:
                out += view[:n - len(out)]
                if len(out) >= n:
                    break
        if resume:
            self._resume()
        return bytes(out)

    def take(self) -> tuple[list[memoryview], bool]:
        """Everything waiting (Rule 3: less ``HOLD_BACK`` bytes unless it is the end), and
        whether that ends the data set."""
        with self._cond:
            self._wait(lambda: self.ended or self._size > HOLD_BACK)
            if self.ended:
                out, self._size = list(self._views), 0
                self._views.clear()
            else:
                out, want = [], self._size - HOLD_BACK
                while want:
                    view = self._views.popleft()
                    if len(view) > want:
                        self._views.appendleft(view[want:])
                        view = view[:want]
                    out.append(view)
                    want -= len(view)
                    self._size -= len(view)
            last = self.ended
            resume = self._unpause_if_below()
        if resume:
            self._resume()
        return out, last

    def parts(self) -> Iterator[tuple[list[memoryview], bool]]:
        """``take`` until the last fragment has been taken."""
        while True:
            views, last = self.take()
            yield views, last
            if last:
                return

    def discard(self) -> None:
        """Rule 4: nothing more is wanted; reading goes on, nothing is kept."""
        with self._cond:
            self._discarding = True
            self._views.clear()
            self._size = 0
            resume = self._unpause_if_below()
        if resume:
            self._resume()

    def wait_end(self) -> None:
        """Discard the rest and return once the last fragment has arrived (Rule 4)."""
        self.discard()
        with self._cond:
            self._wait(lambda: self.ended)

    # -- inside the lock ---------------------------------------------------------------
    def _unpause_if_below(self) -> bool:
        if self._paused and self._size < self._bound // 2:
            self._paused = False
            return True
        return False

    def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._broken is not None:
                raise InflowBroken(self._broken)
            now = time.monotonic()
            if now >= self._deadline:
                self._stall(f"C-STORE data set incomplete after dimse_timeout "
                            f"({self._dimse:g}s)")
            if self._paused and self._size < self._bound:
                self._paused = False       # head() raised the bound: read on
                self._cond.release()
                try:
                    self._resume()
                finally:
                    self._cond.acquire()
                continue
            before = self.received
            self._cond.wait(min(self._idle, self._deadline - now))
            if self.received == before and not ready() and self._broken is None \
                    and time.monotonic() - now >= self._idle:
                self._stall(f"no data from the workstation for network_timeout "
                            f"({self._idle:g}s) in the middle of a C-STORE data set")

    def _stall(self, why: str) -> None:
        self._broken = why
        self._cond.release()
        try:
            self._stalled(why)
        finally:
            self._cond.acquire()
        raise InflowBroken(why)
