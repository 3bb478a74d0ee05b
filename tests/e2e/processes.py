"""Long-running peer processes (Orthanc, storescp) that can never outlive the tests.

Rule 1: every peer is started through ``spawn`` and thereby registered; an
        ``atexit`` hook kills whatever is still registered when Python exits.
Rule 2: on Linux a peer started from the main thread also gets
        ``PR_SET_PDEATHSIG=SIGKILL``, so it dies even if pytest itself is killed.
        (The signal fires when the *spawning thread* exits, hence main thread only.)
Rule 3: peers run in their own session, so a Ctrl-C in the terminal reaches
        pytest only, and the harness decides how each peer stops.
Rule 4: ``stop_process`` is SIGTERM, wait, then SIGKILL: it always returns.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_running: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` setting PDEATHSIG, or None where that is unsafe or unsupported."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def spawn(
    args: Sequence[str], *, log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` with stdout and stderr appended to ``log_path``; register it for cleanup."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # only ever set from the main thread
        )
    with _lock:
        _running.add(proc)
    return proc


def stop_process(
    proc: subprocess.Popen[bytes], *, graceful: bool = True, timeout: float = 15.0
) -> None:
    """Stop ``proc``: SIGTERM and ``timeout`` s to exit, then SIGKILL (at once if not graceful)."""
    try:
        if proc.poll() is None:
            if graceful:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
            proc.wait(timeout)
    finally:
        with _lock:
            _running.discard(proc)


@atexit.register
def kill_all() -> None:
    """Kill every registered peer still running (the interpreter-exit safety net)."""
    with _lock:
        leftovers = list(_running)
    for proc in leftovers:
        with contextlib.suppress(Exception):
            stop_process(proc, graceful=False, timeout=5.0)
