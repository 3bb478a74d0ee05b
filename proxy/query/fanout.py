"""Run one C-FIND against one or more archives at once and merge the response streams.

Rule 1: each archive is queried on its own thread; responses are handed to the
        caller through one bounded queue as they arrive, so the first match
        never waits for the slowest archive, and a slow workstation slows the
        archives down (back-pressure) instead of filling memory.
Rule 2: an archive's failure is an item in the stream (``Outcome``), never an
        exception that could end the others.
Rule 3: a workstation's C-CANCEL reaches every archive (``CancelToken``); a caller that
        stops reading early cancels them too.
Rule 4: one archive (a relay route) is read on the caller's own thread: no queue and no
        thread hand-off per match. The caller then learns of a C-CANCEL by the token
        itself (``CancelToken.on_cancel``), not by polling: ``poll`` and ``abandon`` are
        not called.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom import Dataset

from proxy.cancel import CancelToken
from proxy.upstream import ArchiveClient, UpstreamError

if TYPE_CHECKING:   # annotations only
    from proxy.session import Request

_QUEUE_DEPTH = 512


@dataclass(frozen=True)
class Match:
    archive: str
    identifier: Dataset
    status: int                           # 0xFF00 or 0xFF01


@dataclass(frozen=True)
class Outcome:
    """The end of one archive's answer: its final status, or why there is none."""

    archive: str
    status: int | None
    matches: int
    error: UpstreamError | None = None


Item = Match | Outcome
Query = Callable[[ArchiveClient, CancelToken], Iterator[tuple[int | None, Dataset | None]]]


def workstation_syntax(event: Request | None) -> str | None:
    """The transfer syntax of the workstation's request: ask archives in it first, so
    matches pass through as their bytes (``ArchiveClient.find``, ``proxy.rawtext``)."""
    return event.transfer_syntax if event is not None else None


def fan_out(clients: dict[str, ArchiveClient], query: Query, token: CancelToken,
            poll: Callable[[], None] | None = None, poll_interval: float = 0.05,
            abandon: Callable[[], bool] | None = None) -> Iterator[Item]:
    """Yield every Match and exactly one Outcome per archive, in arrival order.

    ``poll`` is called at least every ``poll_interval`` seconds while waiting —
    the caller checks for the workstation's C-CANCEL there. When ``abandon``
    returns True (checked as often; the workstation went away) the stream ends
    early, without waiting for the archives, which are cancelled.
    """
    if len(clients) == 1:               # Rule 4
        [(name, client)] = clients.items()
        yield from _inline(name, client, query, token)
        return
    items: queue.Queue[Item] = queue.Queue(maxsize=_QUEUE_DEPTH)
    closed = threading.Event()          # the caller stopped reading: drop everything

    def put(item: Item) -> bool:
        # After a cancel, matches are dropped at once, so the archive's remaining
        # answer (up to its Cancel status) drains at network speed; once the
        # caller is gone nothing is queued, so no pump thread waits forever.
        while not closed.is_set():
            if token.is_set and isinstance(item, Match):
                return False
            try:
                items.put(item, timeout=poll_interval)
                return True
            except queue.Full:
                continue
        return False

    def pump(name: str, client: ArchiveClient) -> None:
        count = 0
        final: int | None = None
        error: UpstreamError | None = None
        try:
            for status, ds in query(client, token):
                if status in (0xFF00, 0xFF01) and ds is not None:
                    count += 1
                    if not put(Match(name, ds, status)):
                        continue
                else:
                    final = status
        except UpstreamError as exc:
            error = exc
        except Exception as exc:  # a pynetdicom surprise is still just this archive's failure
            error = UpstreamError(name, f"{type(exc).__name__}: {exc}")
        put(Outcome(name, final, count, error))

    threads = [threading.Thread(target=pump, args=(n, c), name=f"find-{n}", daemon=True)
               for n, c in clients.items()]
    for t in threads:
        t.start()
    remaining = len(threads)
    try:
        while remaining:
            try:
                item = items.get(timeout=poll_interval)
            except queue.Empty:
                if poll:
                    poll()
                if abandon is not None and abandon():
                    return
                continue
            if isinstance(item, Outcome):
                remaining -= 1
            yield item
            if poll:
                poll()
    finally:
        closed.set()
        if remaining:
            token.cancel()      # the caller stopped early: stop the archives too


def _inline(name: str, client: ArchiveClient, query: Query,
            token: CancelToken) -> Iterator[Item]:
    """One archive, read on the caller's thread (Rule 4)."""
    count = 0
    final: int | None = None
    error: UpstreamError | None = None
    responses = query(client, token)
    done = False
    try:
        for status, ds in responses:
            if status in (0xFF00, 0xFF01) and ds is not None:
                count += 1
                if not token.is_set:            # after a cancel: drained, not passed on
                    yield Match(name, ds, status)
            else:
                final = status
        done = True
    except UpstreamError as exc:
        error, done = exc, True
    except Exception as exc:  # a surprise is still just this archive's failure
        error, done = UpstreamError(name, f"{type(exc).__name__}: {exc}"), True
    finally:
        if not done:          # the caller stopped early (Rule 3): cancel, drain aside
            token.cancel()
            threading.Thread(target=_drain, args=(responses,), name=f"find-{name}-drain",
                             daemon=True).start()
    yield Outcome(name, final, count, error)


def _drain(responses: Iterator[tuple[int | None, Dataset | None]]) -> None:
    """Read what the archive still sends after a C-CANCEL (up to its final status), so
    it is not left blocked writing to a link nobody reads."""
    try:
        for _ in responses:
            pass
    except Exception:
        pass
