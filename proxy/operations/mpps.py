"""N-CREATE and N-SET (Modality Performed Procedure Step, PS3.4 F.7): to the route's RIS.

Rule 1: a message on a route with ``mpps_to`` goes to each of those archives as
        ``proxy.workflow.policy`` decides (``proxy.workflow.delivery``: at once when
        nothing is queued for the archive, else journaled durably); the modality's
        answer is the first archive's: its own status, response elements and data set
        when it answered, Success once the message is journaled, 0x0110 with an Error
        Comment when an N-SET for an instance the proxy does not know cannot reach it.
Rule 2: an N-CREATE without Affected SOP Instance UID gets one from the proxy (a 2.25
        UUID UID, PS3.5 B.2; the SCP may choose it, PS3.4 F.7.2.1.1), forwarded with the
        message and returned in the N-CREATE-RSP.
Rule 3: only the MPPS SOP class is served here: another SOP class in the command gets
        0x0118 (No such SOP class), an N-SET without Requested SOP Instance UID 0x0110;
        neither reaches an archive.
Rule 4: one ``operation`` event per message (``Services.operation``), naming the archives
        and what became of the message for each (``delivery``: forwarded, journaled,
        refused).
"""

from __future__ import annotations

from pydicom.uid import generate_uid

from proxy.contexts import MPPS_SOP_CLASS
from proxy.dicom import commands
from proxy.responder import Reply
from proxy.services import Services
from proxy.session import Request
from proxy.status import Status
from proxy.workflow.delivery import Outcome
from proxy.workflow.journal import Message
from proxy.workflow.policy import Step

UNREACHABLE = "RIS unreachable; instance not created through the proxy"   # <= 64 chars


def handle(request: Request, services: Services) -> Reply:
    operation = commands.operation_name(request.command_field)
    with services.operation(request, operation) as record:
        route = services.session(request).route
        mpps = services.plugins.mpps
        message, base = _message(request, operation)
        if route is None or not route.mpps_to or mpps is None:
            record.status = Status.SOP_CLASS_NOT_SUPPORTED
            record.hint = "give the route mpps_to = [...] naming the RIS"
            return Reply(record.status, base)
        if message.sop_class != MPPS_SOP_CLASS:
            record.status = Status.NO_SUCH_SOP_CLASS
            record.hint = f"the proxy relays {operation} for MPPS ({MPPS_SOP_CLASS}) only"
            return Reply(record.status, base)
        if not message.sop_instance:
            record.status = Status.PROCESSING_FAILURE
            return Reply(record.status, {**base, commands.ERROR_COMMENT:
                                         "no Requested SOP Instance UID"})
        record.archives = list(route.mpps_to)
        record.details["sop_instance_uid"] = message.sop_instance
        outcomes = mpps.submit_all(request, message, route.mpps_to)
        record.details["delivery"] = {o.archive: o.step.value for o in outcomes}
        reply = _reply(outcomes[0], base)
        record.status = reply.status
        if outcomes[0].step is Step.REFUSE:
            record.hint = (f"{outcomes[0].archive} did not answer ({outcomes[0].error}) and "
                           f"the proxy never saw this instance's N-CREATE: it cannot keep the "
                           f"N-SET for later; the modality should retry")
        return reply


def _message(request: Request, operation: str) -> tuple[Message, commands.Command]:
    """The message to deliver and the elements every reply carries (Rule 2)."""
    if operation == "N-CREATE":
        sop_class, instance = request.sop_class, request.sop_instance
        base: commands.Command = {}
        if not instance:
            instance = generate_uid(prefix=None)
            base[commands.AFFECTED_SOP_INSTANCE] = instance
    else:
        sop_class = str(request.command.get(commands.REQUESTED_SOP_CLASS, ""))
        instance = str(request.command.get(commands.REQUESTED_SOP_INSTANCE, ""))
        base = {}
    return Message(operation, sop_class, instance, request.transfer_syntax,
                   request.data if request.data is not None else None), base


def _reply(outcome: Outcome, base: commands.Command) -> Reply:
    if outcome.step is Step.FORWARD:
        assert outcome.answer is not None
        answer = outcome.answer
        return Reply(answer.status, {**base, **answer.elements}, answer.data)
    if outcome.step is Step.JOURNAL:
        return Reply(Status.SUCCESS, base)
    return Reply(Status.PROCESSING_FAILURE, {**base, commands.ERROR_COMMENT: UNREACHABLE})
