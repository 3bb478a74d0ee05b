"""An event-bus observer for in-process tests: it keeps every event it is given."""

from __future__ import annotations

from typing import Any

from proxy.observe import events as ev


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def of(self, kind: type[ev.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]
