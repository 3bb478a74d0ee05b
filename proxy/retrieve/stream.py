"""A retrieve with no DIMSE requester: each instance handed to a reader as it arrives (WADO-RS).

Job: what WADO-RS needs from the retrieve path. ``InstanceStream`` runs the same
``relay`` a workstation's C-GET runs (survey, pull over C-GET or C-MOVE-to-proxy, the
bounded ``InstanceBuffer``, true counts) for a study, series or instance of a route, and
hands each instance to the reader as a ``Part``: its Part-10 bytes in chunks, read from
where the buffer holds it (memory or file), never the whole study in memory.

Rule 1 (the same path): the request is a C-GET of the Study Root model at the level the
        UIDs name, made on the route as the pseudo-association ``asker`` (its log name),
        so federation, location cache, cap-free surveys and the counts work as for DIMSE.
Rule 2 (encoding): ``syntaxes`` None keeps each instance's original transfer syntax;
        otherwise an instance in another syntax is converted as for a C-GET workstation
        that accepted only those: between the little-endian syntaxes, or decompressed by
        ``transcode``; one that cannot be converted is a failed sub-operation.
Rule 3 (back-pressure): one part is out at a time; the retrieve waits until the reader
        has finished it (``Part.done``) before the buffer lets go of it, so a slow
        reader paces the archive through the buffer's memory window and spill, as a
        slow workstation does.
Rule 4 (the reader leaves): ``close`` cancels the retrieve (C-CANCEL upstream, later
        sub-operations refused, the buffer's files deleted) and waits for it to end.
Rule 5 (outcome): once the parts are exhausted, ``record`` holds the final status and
        the counts (``completed``, ``failed``, ``warning``, ``expected``) and details the
        caller logs in its own ``operation`` line; ``record.status`` is the C-GET status
        the same request would have had (0xA702 partial, 0xA701 none, 0xC000 ...).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET_MODEL

from proxy.cancel import CancelToken
from proxy.config import RouteConfig
from proxy.contexts import STORAGE_SYNTAXES
from proxy.dicom import commands
from proxy.dicom.negotiation import Accepted as AcceptedContext
from proxy.observe.events import AssocInfo
from proxy.part10 import file_meta
from proxy.retrieve import transcode
from proxy.retrieve.reception import Buffered
from proxy.retrieve.relay import relay
from proxy.retrieve.sinks import Delivery, Sink
from proxy.retrieve.sopclasses import Accepted, Instance
from proxy.services import OperationRecord, Services
from proxy.session import Request, Session
from proxy.status import Status

CHUNK = 1 << 20                      # bytes per chunk handed to the reader
_POLL = 0.1
_ids = itertools.count(1)
_END = object()


@dataclass
class Part:
    """One instance on its way to the reader (Rule 3): read ``chunks``, then ``done``."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str              # the syntax of the bytes handed out
    item: Buffered
    converted: bytes | None = None    # the data set, when the proxy converted it (Rule 2)
    finished: threading.Event = field(default_factory=threading.Event)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The Part-10 file: preamble, file meta, then the data set as held."""
        yield file_meta(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax)
        if self.converted is not None:
            view = memoryview(self.converted)
            for start in range(0, len(view), size):
                yield bytes(view[start:start + size])
            return
        item = self.item
        if item.data is not None:
            view = memoryview(item.data)
            for start in range(0, len(view), size):
                yield bytes(view[start:start + size])
            return
        assert item.path is not None
        with open(item.path, "rb") as source:
            source.seek(item.data_offset)
            while chunk := source.read(size):
                yield chunk

    def done(self) -> None:
        self.finished.set()


class _ReaderSink:
    """The retrieve's sink: each instance becomes a ``Part`` the reader takes (Rules 2-4)."""

    def __init__(self, parts: queue.Queue[object], syntaxes: tuple[str, ...] | None,
                 instances: list[Instance], gone: CancelToken) -> None:
        self.parts, self.syntaxes, self.gone = parts, syntaxes, gone
        self.instances = instances

    def accepted(self) -> Accepted:
        classes = {i.sop_class for i in self.instances if i.sop_class}
        syntaxes = list(self.syntaxes or STORAGE_SYNTAXES)
        return {sop_class: syntaxes for sop_class in classes}

    def store(self, item: Buffered) -> Delivery:
        part, why, transcoded = self._part(item)
        if part is None:
            return Delivery(None, why)
        while True:                          # at most one part waits for the reader
            if self.gone.is_set:
                return Delivery(None, "the HTTP client went away", fatal=True)
            try:
                self.parts.put(part, timeout=_POLL)
                break
            except queue.Full:
                continue
        while not part.finished.wait(_POLL):
            if self.gone.is_set:
                return Delivery(None, "the HTTP client went away", fatal=True)
        return Delivery(Status.SUCCESS, transcoded=transcoded)

    def _part(self, item: Buffered) -> tuple[Part | None, str | None, bool]:
        wanted = self.syntaxes
        if wanted is None:
            return Part(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax,
                        item), None, False
        result = transcode.as_accepted(item, list(wanted))
        if result.transfer_syntax is None:
            return None, (f"not converted to {', '.join(wanted)}: {result.reason}"), False
        return Part(item.sop_class_uid, item.sop_instance_uid, result.transfer_syntax, item,
                    result.data), None, result.transcoded

    def close(self) -> None:
        pass


class InstanceStream:
    """One study, series or instance of a route, instance by instance (see the module)."""

    def __init__(self, services: Services, route: RouteConfig, keys: dict[str, str],
                 asker: str, peer: str, syntaxes: tuple[str, ...] | None = None) -> None:
        level = "IMAGE" if "SOPInstanceUID" in keys else \
            "SERIES" if "SeriesInstanceUID" in keys else "STUDY"
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        data = encode(identifier, False, True)
        assert data is not None
        number = next(_ids)
        session = Session(AssocInfo(f"h{number:06d}", asker, route.called_ae, peer,
                                    route.called_ae), route=route, accepted=True)
        session.contexts[1] = AcceptedContext(str(GET_MODEL), ExplicitVRLittleEndian)
        self.request = Request(session, 1, {commands.COMMAND_FIELD: commands.C_GET_RQ,
                                            commands.MESSAGE_ID: number % 65535 + 1,
                                            commands.AFFECTED_SOP_CLASS: str(GET_MODEL)},
                               data=bytes(data))
        self.services, self.syntaxes = services, syntaxes
        self.level = level
        self.record = OperationRecord("C-GET")
        self.record.details.update(completed=0, failed=0, warning=0)
        self.final: Dataset | None = None
        self._parts: queue.Queue[object] = queue.Queue(maxsize=1)
        self._gone = CancelToken()
        self._thread = threading.Thread(target=self._run, name=f"stream-{number}", daemon=True)
        self._started = False

    def _open(self, instances: list[Instance]) -> Sink:
        return _ReaderSink(self._parts, self.syntaxes, instances, self._gone)

    def _run(self) -> None:
        try:
            for response in relay(self.services, self.request, self.record, "C-GET",
                                  self._open):
                self.final = response
        except Exception as exc:          # never leave the reader waiting
            self.record.status = Status.UNABLE_TO_PROCESS
            self.record.details["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            while True:
                try:
                    self._parts.put(_END, timeout=_POLL)
                    break
                except queue.Full:
                    if self._gone.is_set:
                        break

    def __iter__(self) -> Iterator[Part]:
        while (part := self.next_part()) is not None:
            yield part

    def next_part(self) -> Part | None:
        """The next instance (blocking until it arrives); None when the retrieve ended."""
        if not self._started:
            self._started = True
            self._thread.start()
        if self._gone.is_set:
            return None
        item = self._parts.get()
        if item is _END:
            self._thread.join()
            return None
        assert isinstance(item, Part)
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Rule 4: stop the retrieve (if still running) and wait for it to end."""
        if self._started and self._thread.is_alive():
            self._gone.cancel()
            self.request.cancel.cancel()
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the retrieve is still going (not ended, not closed)."""
        return self._started and self._thread.is_alive()

    @property
    def status(self) -> int | None:
        return self.record.status
