"""The one pynetdicom knob the proxy turns, per association: the DUL thread's idle sleep.

Job: every association (workstation-facing and archive-facing) runs a pynetdicom DUL
thread that loops ``select(0)`` on its socket and checks its queues, and sleeps
``DULServiceProvider._run_loop_delay`` (1 ms) only when a loop found nothing to do.
A busy link never sleeps (a loop that handled an event loops again at once), so the
delay is a pure idle-polling cost: the proxy holds two DUL threads per relayed query
(one each side), each waking 1000 times a second. pynetdicom documents the attribute in
``run_reactor`` ("higher will use less CPU when idle, but will also increase the
latency to respond to new requests").

Rule 1: ``tune(assoc)`` sets ``DUL_IDLE_DELAY`` on the association's DUL if pynetdicom
        has the attribute (pinned: pynetdicom >=3.0.4,<3.1, see pyproject.toml); with
        another pynetdicom it does nothing rather than fail. Nothing else is patched.
Rule 2: the value bounds the extra latency of a PDU arriving on an idle link (a request,
        the first response after a wait); measured with bench/bench_find_relay.py.
"""

from __future__ import annotations

import os
from typing import Any

# Seconds a DUL thread sleeps after a loop with nothing to do (pynetdicom default 0.001).
DUL_IDLE_DELAY = float(os.environ.get("DICOM_PROXY_DUL_DELAY", "0.001"))


def tune(assoc: Any) -> None:
    """Apply the proxy's DUL idle delay to ``assoc`` (Rule 1)."""
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_IDLE_DELAY
