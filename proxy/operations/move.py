"""C-MOVE: the workstation names a Move Destination; the proxy pulls and forwards.

Rule 1: the Move Destination is resolved in the proxy's own ``[destinations]`` table,
        never the archive's, and must be one the route allows (``routing.
        move_destination_for``); unknown or not allowed → 0xA801 (Move Destination
        unknown, PS3.4 C.4.2.1.5), logged with the AE title asked for, nothing pulled.
        One the route's ``destinations`` refuses is also a security event
        (``move_destination_refused``, counted in ``dicom_proxy_security_events_total``);
        the workstation is told no more than "unknown".
Rule 2: the archive never connects to the destination: the proxy pulls (C-GET, or
        C-MOVE to itself for ``retrieve = "move"`` archives) and C-STOREs each
        instance to the destination over its own association as it arrives
        (``proxy.retrieve.relay``), with true counts in every response.
Rule 3: the destination association is opened first: a destination that cannot be
        reached gets nothing pulled for it and the workstation gets Failed = N
        (0xA702), never "Success" with nothing delivered.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset

from proxy.observe import events as ev
from proxy.retrieve.relay import relay
from proxy.retrieve.sinks import DestinationSink, Sink
from proxy.retrieve.sopclasses import Instance, propose
from proxy.retrieve.tally import Tally, response
from proxy.routing import MoveRefusal, move_destination_for
from proxy.services import Services
from proxy.session import Request
from proxy.status import Status


def handle(event: Request, services: Services) -> Iterator[Dataset]:
    session = services.session(event)
    with services.operation(event, "C-MOVE") as record:
        asked = str(event.move_destination or "").strip()
        record.details.update(destination=asked, completed=0, failed=0, warning=0)
        destination = move_destination_for(services.config, session.route, asked)
        if isinstance(destination, MoveRefusal):
            record.status = Status.MOVE_DESTINATION_UNKNOWN
            record.hint = destination.hint
            if destination.security is not None:
                services.bus.emit(ev.SecurityRefused(
                    session.info, destination.security, destination.reason, destination.hint,
                    {"destination": asked}))
            yield response(record.status, Tally(), f"unknown Move Destination {asked}")
            return
        record.details["destination_name"] = destination.name

        def open_sink(instances: list[Instance]) -> Sink:
            sink = DestinationSink(services, destination.name,
                                   services.destinations[destination.name],
                                   propose(instances), session.info.calling_ae,
                                   int(event.message_id), session.info)
            sink.open()
            return sink

        yield from relay(services, event, record, "C-MOVE", open_sink)
