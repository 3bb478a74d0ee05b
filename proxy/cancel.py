"""A workstation's C-CANCEL, passed on: set once, runs what was registered to stop work.

Rule 1: ``cancel`` runs each registered action once, on the cancelling thread; an
        action that fails (an upstream link already gone) does not stop the others.
Rule 2: ``on_cancel`` registers an action for the length of a block, and runs it at
        once when the token was set before the block began.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
