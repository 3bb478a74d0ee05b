"""Archive and destination health: a periodic C-ECHO to every configured peer.

Rule 1: every probe emits ``ArchiveProbed`` (→ ``dicom_proxy_archive_up`` /
        ``dicom_proxy_destination_up`` and the echo latency gauges); only a
        change of state emits ``ArchiveHealthChanged`` (→ one ``archive_down``
        line with the reason and a hint, or one ``archive_up`` line). The first
        probe after start counts as a change: the state was unknown before.
Rule 2: the decision (is this a change? what is the reason and hint?) is pure
        (``transition``, ``verdict``); the thread only calls peers and emits.
Rule 3: health never steers traffic and never blocks it: probes run on their
        own threads, each bounded by ``[health].timeout`` (and by the peer's own
        ``timeout``), and a probe that raises is just a "down".
Rule 4: health C-ECHOs are not ``upstream`` requests: they feed no
        ``dicom_proxy_upstream_*`` series and no ``upstream`` log lines.

``services.plugins.health`` is the running ``HealthMonitor`` (its
``state(kind, name)`` is True/False/None-if-unknown), for subsystems that may
want to know which archives answered their last C-ECHO.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from proxy.observe import events as ev
from proxy.status import Status, hex_status
from proxy.upstream import ArchiveClient, UpstreamError

if TYPE_CHECKING:   # annotations only: an observer imports no handler code
    from proxy.services import Services

ARCHIVE, DESTINATION = "archive", "destination"
_MAX_WORKERS = 16


class Echoer(Protocol):
    """Anything that can C-ECHO a peer (``ArchiveClient``; a fake in unit tests)."""

    def echo(self) -> int | None: ...


@dataclass(frozen=True)
class Verdict:
    """The outcome of one health C-ECHO."""

    up: bool
    latency_s: float | None = None
    reason: str | None = None
    hint: str | None = None


def verdict(status: int | None, error: BaseException | None, elapsed: float) -> Verdict:
    """Turn a C-ECHO result (status, or the exception it raised) into up/down and why."""
    if isinstance(error, UpstreamError):
        return Verdict(False, None, error.reason, error.hint)
    if error is not None:
        return Verdict(False, None, f"{type(error).__name__}: {error}", None)
    if status == Status.SUCCESS:
        return Verdict(True, elapsed)
    if status is None:
        return Verdict(False, None, "no C-ECHO response (the peer stopped answering)",
                       "check the peer's DIMSE timeout and load")
    return Verdict(False, None, f"C-ECHO answered status {hex_status(status)}",
                   "the peer refuses Verification; check its configuration for the proxy's AE")


def transition(previous: bool | None, now: bool) -> bool:
    """Whether a probe result is a change worth one log line (unknown → anything counts)."""
    return previous is None or previous != now


class HealthMonitor:
    """Probes every peer each ``interval`` seconds on a background thread."""

    def __init__(self, bus: ev.EventBus, peers: Mapping[tuple[str, str], Echoer],
                 interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.peers = dict(peers)                  # (kind, name) → echoer
        self.interval = interval
        self._clock = clock
        self._states: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def state(self, kind: str, name: str) -> bool | None:
        with self._lock:
            return self._states.get((kind, name))

    def probe(self, key: tuple[str, str]) -> Verdict:
        """C-ECHO one peer, emit what it means, remember the new state."""
        kind, name = key
        started = self._clock()
        status: int | None = None
        error: BaseException | None = None
        try:
            status = self.peers[key].echo()
        except Exception as exc:  # Rule 3: any failure is just "down"
            error = exc
        result = verdict(status, error, self._clock() - started)
        if self._stop.is_set():  # the proxy is stopping: report nothing after proxy_stopped
            return result
        self.bus.emit(ev.ArchiveProbed(name, result.up, result.latency_s, kind=kind))
        with self._lock:
            previous = self._states.get(key)
            self._states[key] = result.up
        if transition(previous, result.up):
            self.bus.emit(ev.ArchiveHealthChanged(name, result.up, result.reason, result.hint,
                                                  kind=kind))
        return result

    def probe_all(self) -> dict[tuple[str, str], Verdict]:
        """One round: every peer at once, so one slow peer delays no other."""
        keys = list(self.peers)
        if not keys:
            return {}
        with ThreadPoolExecutor(max_workers=min(_MAX_WORKERS, len(keys)),
                                thread_name_prefix="health") as pool:
            return dict(zip(keys, pool.map(self.probe, keys), strict=True))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe_all()
            except Exception as exc:  # never let the thread die silently
                self.bus.emit(ev.Noted("error", "health_round_failed",
                                       {"error": f"{type(exc).__name__}"}))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def peers_of(services: Services, timeout: float) -> dict[tuple[str, str], ArchiveClient]:
    """A health client per archive and destination, each bounded by ``timeout``."""
    out: dict[tuple[str, str], ArchiveClient] = {}
    for kind, clients in ((ARCHIVE, services.archives), (DESTINATION, services.destinations)):
        for name, client in clients.items():
            peer = dataclasses.replace(client.peer, timeout=min(client.peer.timeout, timeout))
            out[(kind, name)] = ArchiveClient(peer, min(client.network_timeout, timeout),
                                              client.max_pdu_size, client.tls)
    return out


def start(services: Services) -> Callable[[], None] | None:
    """The ``proxy.app.EXTENSIONS`` entry: start probing unless ``[health] enabled = false``."""
    cfg = services.config.health
    if not cfg.enabled:
        return None
    monitor = HealthMonitor(services.bus, peers_of(services, cfg.timeout), cfg.interval)
    services.plugins.health = monitor
    monitor.start()
    # A probe still in flight is abandoned (daemon thread, silenced by the stop flag).
    return lambda: monitor.stop(timeout=1.0)
