"""What the proxy knows about one workstation association, and one request on it.

Job: the values the listener (``proxy.listener``) builds and every operation handler
(``proxy.operations``) reads: a ``Session`` per association, a ``Request`` per DIMSE
request message.

Rule 1: values and reads only: no sockets, no threads started here. A request's
        identifier is decoded on first use, in its presentation context's transfer
        syntax, with raw elements (``proxy.rawtext`` reads them without converting, so
        what goes upstream is the workstation's bytes).
Rule 2: a ``Request`` names its command's fields (PS3.7 E.1) by what they mean;
        anything else of the command set is in ``command``.
Rule 3: a request's responses and sub-operations go through ``send`` and ``request``
        (set by the listener to the association's ``Outbox``), which block while the
        workstation is behind (back-pressure) and raise ``LinkClosed`` once its
        association is gone; ``link_up`` says whether it still is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from proxy.cancel import CancelToken
from proxy.config import RouteConfig
from proxy.dicom import commands
from proxy.dicom.commands import Command
from proxy.dicom.events import MessageReceived, SendMessage
from proxy.dicom.negotiation import Accepted
from proxy.inflow import Inflow
from proxy.observe import events as ev
from proxy.rawdataset import decode

# (the Message ID to follow, the request, whether to send it still) -> its response
RequestAfter = Callable[[int, SendMessage, Callable[[], bool]], Future[MessageReceived]]


@dataclass(eq=False)               # one object per association: hashed by identity
class Session:
    """One workstation association, from its connection to its close."""

    info: ev.AssocInfo
    route: RouteConfig | None = None
    # The address the association comes from: what source-network rules compare (set
    # once, by ``proxy.association``; ``info.peer`` is the same address with its port).
    source_ip: str = ""
    started: float = field(default_factory=time.monotonic)
    accepted: bool = False
    admitted: bool = False              # holds one of the max_associations slots
    ended: bool = False                 # released or aborted already reported
    violation: str | None = None        # why the proxy cut the link, if it did
    data: dict[str, Any] = field(default_factory=dict)
    # accepted presentation context ID -> abstract/transfer syntax and roles
    contexts: dict[int, Accepted] = field(default_factory=dict)
    peer_max_pdu: int = 0               # the workstation's maximum PDU length (0: none)
    tls: bool = False                   # arrived on the TLS listener (handshake done)
    tls_subject: str | None = None      # its client certificate's subject, if it showed one
    # C-STORE data sets are handed to the handler as they arrive (``Request.inflow``), not
    # received into a file first: set for a ``store = "relay"`` association
    # (``proxy.store.relay``), whose handler forwards them while they arrive.
    stream_stores: bool = False
    # The association's link: whether it is still up, and how to abort it.
    is_up: Callable[[], bool] = lambda: True
    abort: Callable[[str], None] = lambda why: None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(eq=False)
class Request:
    """One DIMSE request message received on a workstation association."""

    session: Session
    context_id: int
    command: Command
    data: bytes | None = None               # the data set, when held in memory
    dataset_path: Path | None = None        # a C-STORE data set received into a file
    inflow: Inflow | None = None            # ... or still arriving (``stream_stores``)
    cancel: CancelToken = field(default_factory=CancelToken)
    send: Callable[[SendMessage], None] = lambda message: None
    request: Callable[[SendMessage], MessageReceived] | None = None
    # send a request once an earlier one is answered (``Outbox.request_after``)
    request_after: RequestAfter | None = None

    @property
    def abstract_syntax(self) -> str:
        return self.session.contexts[self.context_id].abstract_syntax

    @property
    def transfer_syntax(self) -> str:
        return self.session.contexts[self.context_id].transfer_syntax

    @property
    def command_field(self) -> int:
        return int(self.command.get(commands.COMMAND_FIELD, 0))

    @property
    def message_id(self) -> int:
        return int(self.command.get(commands.MESSAGE_ID, 0))

    @property
    def sop_class(self) -> str:
        """Affected SOP Class UID."""
        return str(self.command.get(commands.AFFECTED_SOP_CLASS, ""))

    @property
    def sop_instance(self) -> str:
        """Affected SOP Instance UID."""
        return str(self.command.get(commands.AFFECTED_SOP_INSTANCE, ""))

    @property
    def priority(self) -> int:
        return int(self.command.get(commands.PRIORITY, 0) or 0)

    @property
    def move_destination(self) -> str:
        return str(self.command.get(commands.MOVE_DESTINATION, "")).strip()

    @property
    def move_originator_ae(self) -> str | None:
        value = str(self.command.get(commands.MOVE_ORIGINATOR_AE, "")).strip()
        return value or None

    @property
    def move_originator_id(self) -> int | None:
        value = self.command.get(commands.MOVE_ORIGINATOR_ID)
        return int(value) if isinstance(value, int) else None

    @property
    def is_cancelled(self) -> bool:
        return self.cancel.is_set

    def link_up(self) -> bool:
        return self.session.is_up()

    @cached_property
    def identifier(self) -> Dataset:
        """The data set decoded (raw elements, Rule 1); empty when there is none."""
        if not self.data:
            return Dataset()
        syntax = self.transfer_syntax
        return decode(self.data, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
