"""DIMSE messages over P-DATA (PS3.8 Annex E, PS3.7 6.3): reassembly and fragmentation.

Job: turn the PDVs an association receives into whole DIMSE messages (a command set,
then the data set it announces), and cut an outgoing message into P-DATA-TF PDUs that
fit the peer's maximum PDU length.

Rule 1: pure; PDVs in, events out; messages in, PDU bytes out.
Rule 2: a message is its command fragments (bit 0 set) up to the one marked last, then
        — only if the command's Command Data Set Type (0000,0800) is not 0101H — its
        data fragments up to the one marked last, all on one presentation context
        (PS3.8 E.2). Anything else raises ``DimseError`` naming the violation: a data
        fragment before the command set completes, data after a command announcing
        none, a command fragment amid a data set, a context change mid-message.
Rule 3: bounded: a command set over ``max_command`` bytes is an error; a buffered data
        set over ``max_data`` is an error. With ``stream=True`` the data set is not
        buffered at all: each fragment is handed on as a ``DataFragment``.
Rule 4: outgoing fragments hold at most the peer's maximum PDU length minus the 6-byte
        PDV header, one PDV per P-DATA-TF (as DCMTK and pynetdicom send); a peer with no
        limit (0) gets ``UNLIMITED_FRAGMENT``-byte fragments. A data set is sliced as a
        ``memoryview``: never copied before the PDU is built.
"""

from __future__ import annotations

from collections.abc import Iterator

from proxy.dicom import commands
from proxy.dicom.commands import Command, CommandError
from proxy.dicom.events import DataFragment, MessageReceived
from proxy.dicom.pdu import COMMAND, HEADER, LAST, P_DATA_TF, pdv_header

UNLIMITED_FRAGMENT = 1 << 20
MAX_COMMAND = 64 * 1024                    # a command set is a few hundred bytes
MAX_DATA = 1 << 30


class DimseError(ValueError):
    """PDVs that do not form DIMSE messages as PS3.8 Annex E orders them."""


class Assembler:
    """Reassembles one association's incoming messages (Rule 2)."""

    def __init__(self, *, stream: bool = False, max_command: int = MAX_COMMAND,
                 max_data: int = MAX_DATA) -> None:
        self.stream, self.max_command, self.max_data = stream, max_command, max_data
        self._context: int | None = None         # context of the message in progress
        self._command = bytearray()
        self._decoded: Command | None = None     # set once the command is complete
        self._data = bytearray()

    @property
    def idle(self) -> bool:
        """No message is partly received."""
        return self._context is None

    def feed(self, context_id: int, is_command: bool, is_last: bool,
             fragment: bytes | memoryview) -> list[MessageReceived | DataFragment]:
        if self._context is not None and context_id != self._context:
            raise DimseError(f"presentation context changed mid-message from {self._context} "
                             f"to {context_id}")
        if is_command:
            return self._feed_command(context_id, is_last, fragment)
        if self._decoded is None:
            if self._context is None:
                raise DimseError(f"data fragment on context {context_id} without a command set "
                                 "announcing a data set")
            raise DimseError("data fragment before the command set is complete")
        return self._feed_data(context_id, is_last, fragment)

    def _feed_command(self, context_id: int, is_last: bool,
                      fragment: bytes | memoryview) -> list[MessageReceived | DataFragment]:
        if self._decoded is not None:
            raise DimseError("command fragment while the data set of the previous command "
                             "is incomplete")
        self._context = context_id
        if len(self._command) + len(fragment) > self.max_command:
            raise DimseError(f"command set longer than {self.max_command} bytes")
        self._command += fragment
        if not is_last:
            return []
        try:
            command = commands.decode(bytes(self._command))
        except CommandError as exc:
            raise DimseError(f"command set cannot be read: {exc}") from None
        self._command.clear()
        if not commands.has_data_set(command):
            self._context = None
            return [MessageReceived(context_id, command)]
        self._decoded = command
        return [MessageReceived(context_id, command, data_follows=True)] if self.stream else []

    def _feed_data(self, context_id: int, is_last: bool,
                   fragment: bytes | memoryview) -> list[MessageReceived | DataFragment]:
        command = self._decoded
        assert command is not None
        if is_last:
            self._context = self._decoded = None
        if self.stream:
            return [DataFragment(context_id, fragment, is_last)]
        if len(self._data) + len(fragment) > self.max_data:
            raise DimseError(f"data set longer than {self.max_data} bytes")
        self._data += fragment
        if not is_last:
            return []
        data = bytes(self._data)
        self._data.clear()
        return [MessageReceived(context_id, command, data)]


def fragment_size(peer_max_pdu_length: int) -> int:
    """The largest PDV fragment a peer with this maximum PDU length accepts (Rule 4)."""
    if peer_max_pdu_length == 0:
        return UNLIMITED_FRAGMENT
    if peer_max_pdu_length <= 6:
        raise DimseError(f"peer maximum PDU length {peer_max_pdu_length} leaves no room "
                         "for a PDV")
    return peer_max_pdu_length - 6


def fragments(context_id: int, command: Command, data: bytes | memoryview | None,
              peer_max_pdu_length: int) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of one message (Rule 4). The command's Data Set Type is set
    from whether ``data`` is given, so the two cannot disagree."""
    command = dict(command)
    if data is None:
        command[commands.DATA_SET_TYPE] = commands.NO_DATA_SET
    elif not commands.has_data_set(command):
        command[commands.DATA_SET_TYPE] = 0x0000
    size = fragment_size(peer_max_pdu_length)
    yield from _slices(context_id, COMMAND, memoryview(commands.encode(command)), size)
    if data is not None:
        yield from _slices(context_id, 0, memoryview(data).cast("B"), size)


def _slices(context_id: int, kind: int, raw: memoryview, size: int) -> Iterator[bytes]:
    at = 0
    while True:
        piece = raw[at:at + size]
        at += len(piece)
        last = at >= len(raw)
        yield (HEADER.pack(P_DATA_TF, len(piece) + 6)
               + pdv_header(context_id, bool(kind & COMMAND), last, len(piece)) + piece)
        if last:
            return


__all__ = ["LAST", "Assembler", "DimseError", "fragment_size", "fragments"]
