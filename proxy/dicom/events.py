"""What an association tells its driver (received) and what the driver asks of it (sent).

Job: the typed vocabulary of the sans-IO association (``connection.Association``):
``next_event()`` returns the received kinds, ``send()`` takes the sending kinds.

Rule 1: received events are past tense (``AssociateRequested``), things to send are
        the PDU values of ``proxy.dicom.pdu`` plus ``SendMessage`` (a DIMSE message).
Rule 2: values only; no behaviour, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.dicom.commands import Command
from proxy.dicom.pdu import AssociateAC, AssociateRJ, AssociateRQ


@dataclass(frozen=True)
class AssociateRequested:
    """The peer asks for an association (acceptor; answer with send(AssociateAC|RJ))."""
    request: AssociateRQ


@dataclass(frozen=True)
class AssociateAccepted:
    accept: AssociateAC


@dataclass(frozen=True)
class AssociateRejected:
    reject: AssociateRJ


@dataclass(frozen=True)
class MessageReceived:
    """A DIMSE message. ``data`` is the data set when buffered; with streaming it is
    None and ``data_follows`` says DataFragment events carry the data set."""
    context_id: int
    command: Command
    data: bytes | None = None
    data_follows: bool = False


@dataclass(frozen=True)
class DataFragment:
    """One PDV of a streamed data set; ``last`` ends the message. ``data`` is a
    read-only view of the received PDU: no copy until the consumer keeps it."""
    context_id: int
    data: bytes | memoryview
    last: bool


@dataclass(frozen=True)
class ReleaseRequested:
    collision: bool = False               # both sides sent A-RELEASE-RQ (PS3.8 9.2.4)


@dataclass(frozen=True)
class ReleaseConfirmed:
    pass


@dataclass(frozen=True)
class Aborted:
    """The association is over without release. ``local``: we sent the A-ABORT (a
    protocol error named in ``reason_text``); else the peer aborted or the connection
    dropped (source/reason from its A-ABORT, source 2 = service provider)."""
    source: int
    reason: int
    local: bool
    reason_text: str = ""


@dataclass(frozen=True)
class ConnectionClosed:
    """The transport is gone, or must now be closed (state Sta1)."""


@dataclass(frozen=True)
class NeedData:
    """No whole PDU buffered: feed more with receive_data()."""


@dataclass(frozen=True)
class SendMessage:
    """A DIMSE message to send on an accepted presentation context."""
    context_id: int
    command: Command
    data: bytes | memoryview | None = None


Received = (AssociateRequested | AssociateAccepted | AssociateRejected | MessageReceived
            | DataFragment | ReleaseRequested | ReleaseConfirmed | Aborted | ConnectionClosed
            | NeedData)
