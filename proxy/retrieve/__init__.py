"""Retrieve: C-MOVE becomes a proxied C-GET (or C-MOVE-to-proxy), C-GET is relayed, counts are true.

One workstation C-MOVE or C-GET, in the order the work happens (``relay``):
  1. survey   — an IMAGE-level C-FIND per archive: how many instances, which SOP
                classes and transfer syntaxes, who holds what (``puller.survey``);
  2. sink     — C-MOVE: the proxy's own association to the Move Destination, opened
                first; C-GET: the workstation's association (``proxy.retrieve.sinks``);
  3. pull     — C-GET with the storage SCP role over the proxy's lean association
                (``getter``, ``proxy.ul``), or
                C-MOVE to the proxy's own AE title, deliveries matched back by
                ``inbound`` (``puller``);
  4. buffer   — each instance as received, never decoded: in memory up to
                ``[spool] retrieve_memory_bytes``, beyond that a file under
                ``[spool] dir``/retrieve (``buffer``);
  5. deliver  — each instance C-STOREd onward as soon as it is there; Pending
                responses with the counts; the final status from ``tally``.
The responses the handlers yield (with true counts) are sent by ``proxy.responder``.
``sopclasses`` and ``tally`` are pure.

``install`` is registered in ``proxy.app.EXTENSIONS``. It sets in ``services.plugins``:
  retrieve_inbound   → the ``inbound.InboundRegistry`` of move-mode retrieves in flight;
  inbound_store      → its ``deliver(event)``, the C-STORE handler ``operations.store``
                       calls for sessions marked ``inbound`` (routing Rule 4).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from proxy.retrieve.inbound import InboundRegistry
from proxy.services import Services


def install(services: Services) -> Callable[[], None]:
    """Accept move-mode deliveries; clear old buffers."""
    listener = services.listener
    # Buffers of retrieves that were running when the proxy last stopped are dead weight.
    shutil.rmtree(services.config.spool.dir / "retrieve", ignore_errors=True)
    registry = InboundRegistry(services)
    services.plugins.retrieve_inbound = registry
    services.plugins.inbound_store = registry.deliver
    listener.retrieving = registry.expecting
    listener.inbound_syntaxes = registry.syntaxes_for

    def stop() -> None:
        listener.retrieving = lambda: False
        listener.inbound_syntaxes = lambda archive: None

    return stop
