"""C-GET: the workstation receives the instances over its own association.

Rule 1: the proxy pulls from the archive exactly as for C-MOVE (``proxy.retrieve.relay``)
        and sends each instance back as a C-STORE sub-operation on the storage
        contexts the workstation negotiated with the SCP role, in the instance's
        own transfer syntax when the workstation accepted it.
Rule 2: counts, final status and cancel behave as for C-MOVE (``proxy.retrieve.tally``).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset

from proxy.retrieve.relay import relay
from proxy.retrieve.sinks import Sink, WorkstationSink
from proxy.retrieve.sopclasses import Instance
from proxy.services import Services
from proxy.session import Request


def handle(event: Request, services: Services) -> Iterator[Dataset]:
    with services.operation(event, "C-GET") as record:
        record.details.update(completed=0, failed=0, warning=0)

        def open_sink(instances: list[Instance]) -> Sink:
            del instances       # the workstation chose its contexts when it associated
            return WorkstationSink(event)

        yield from relay(services, event, record, "C-GET", open_sink)
