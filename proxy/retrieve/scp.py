"""C-MOVE/C-GET SCP: send exactly the responses the handler yields.

pynetdicom's own C-MOVE SCP (``QueryRetrieveServiceClass._move_scp``) opens the
association to the Move Destination itself and performs the C-STOREs itself:
when the destination cannot be reached it answers 0xA801 with no counts, and a
handler cannot report sub-operations it performed elsewhere (a pending status
without a data set is silently dropped, and every final count is overwritten
with pynetdicom's own). The proxy forwards over its own, pipelined association
and must report true counts (a dead destination is Failed = N), so for the
proxy's listener this module swaps in a service class whose C-MOVE and C-GET
SCP is a pump:

Rule 1: the handler bound to EVT_C_MOVE / EVT_C_GET (``proxy.app.HANDLERS``) is
        a generator of response *status datasets* (Status, the Number of
        Remaining/Completed/Failed/Warning Sub-operations, and for a final
        non-Success status the Failed SOP Instance UID List and Error Comment);
        each is sent as one C-MOVE-RSP/C-GET-RSP, until the first non-Pending one.
        C-GET sub-operation C-STOREs go over the same association, sent by the
        handler itself (``event.assoc.send_c_store``), exactly as pynetdicom does.
Rule 2: a handler that raises, or ends without a final response, gets 0xC000
        (Unable to process, PS3.4 C.4.2.1.5) sent for it — never silence.
Rule 3: only associations accepted by a registered AE (``install(ae)``) are
        served this way; every other AE in the process keeps pynetdicom's
        behaviour. The swap is one module attribute
        (``pynetdicom.association.uid_to_service_class``), made once.
"""

from __future__ import annotations

import threading
import weakref
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pynetdicom import association, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.service_class import QueryRetrieveServiceClass

from proxy.status import PENDING, Status

_COUNTS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
           "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")
_relay_aes: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_original = association.uid_to_service_class


class RelayQueryRetrieveServiceClass(QueryRetrieveServiceClass):  # type: ignore[misc]
    """Query/Retrieve service class whose C-MOVE/C-GET SCP is the pump (Rule 1)."""

    def SCP(self, req: Any, context: Any) -> None:
        if isinstance(req, C_MOVE | C_GET) and self.assoc.ae in _relay_aes:
            self._pump(req, context)
            return
        super().SCP(req, context)

    def _pump(self, req: C_MOVE | C_GET, context: Any) -> None:
        is_move = isinstance(req, C_MOVE)
        cx_id = int(context.context_id)
        syntax = context.transfer_syntax[0]
        generator: Any = None
        try:
            generator = evt.trigger(
                self.assoc, evt.EVT_C_MOVE if is_move else evt.EVT_C_GET,
                {"request": req, "context": context.as_tuple,
                 "_is_cancelled": self.is_cancelled})
            for status in generator:
                if not self.assoc.is_established:
                    return
                self.dimse.send_msg(_response(req, status, syntax), cx_id)
                if int(status.Status) not in PENDING:
                    return
        except Exception:
            pass  # the handler reported it (Services.operation); the peer still gets an answer
        finally:
            if generator is not None and hasattr(generator, "close"):
                generator.close()
        if self.assoc.is_established:
            failure = Dataset()
            failure.Status = int(Status.UNABLE_TO_PROCESS)
            failure.ErrorComment = "the proxy could not complete the retrieve"
            self.dimse.send_msg(_response(req, failure, syntax), cx_id)


def _response(req: C_MOVE | C_GET, status: Dataset, syntax: Any) -> C_MOVE | C_GET:
    rsp = C_MOVE() if isinstance(req, C_MOVE) else C_GET()
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp.Status = int(status.Status)
    for keyword in _COUNTS:
        if keyword in status:
            setattr(rsp, keyword, int(status[keyword].value))
    if "ErrorComment" in status:
        rsp.ErrorComment = str(status.ErrorComment)[:64]
    if "FailedSOPInstanceUIDList" in status:
        identifier = Dataset()
        identifier.FailedSOPInstanceUIDList = status.FailedSOPInstanceUIDList
        encoded = encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian,
                         syntax.is_deflated)
        rsp.Identifier = BytesIO(encoded)
    return rsp


def _service_class_for(uid: str) -> Any:
    cls = _original(uid)
    return RelayQueryRetrieveServiceClass if cls is QueryRetrieveServiceClass else cls


def install(ae: Any) -> None:
    """Serve C-MOVE/C-GET on associations accepted by ``ae`` with the pump (Rule 3)."""
    with _lock:
        association.uid_to_service_class = _service_class_for
        _relay_aes.add(ae)


def uninstall(ae: Any) -> None:
    with _lock:
        _relay_aes.discard(ae)
