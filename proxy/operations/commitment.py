"""N-ACTION and N-EVENT-REPORT (Storage Commitment Push Model, PS3.4 J.3).

Rule 1: an N-ACTION on a route with a commitment archive (``commit_to``, else the first of
        ``store_to``) is checked (``commit_policy`` Rule 1), journaled durably and answered
        Success: the N-ACTION-RSP only acknowledges the request (J.3.3.1); the result
        comes later as an N-EVENT-REPORT (``proxy.workflow.commitment``). A route
        without one answers 0x0122 (SOP class not supported).
Rule 2: an N-EVENT-REPORT from an archive on an association to the proxy's own AE title
        is taken as on the forwarding association (``commit_reports.take``): checked
        (``commit_policy`` Rule 4), journaled durably with its Event Information as
        received, then answered Success; it is
        delivered to the modality that asked. One for a Transaction UID the proxy does
        not hold is answered 0x0115 and logged. A workstation sending one on a route
        gets 0x0211: the proxy takes reports from archives only.
Rule 3: one ``operation`` event per request (``Services.operation``), naming the archive,
        the Transaction UID and what became of the request; the responses carry the
        Action/Event Type ID of the request.
"""

from __future__ import annotations

from proxy.dicom import commands
from proxy.responder import Reply
from proxy.services import Services
from proxy.session import Request
from proxy.status import Status
from proxy.workflow import commit_policy
from proxy.workflow.commit_reports import take
from proxy.workflow.commitments import WAITING, Commitment


def handle(request: Request, services: Services) -> Reply:
    """N-ACTION (Rule 1)."""
    with services.operation(request, "N-ACTION") as record:
        route = services.session(request).route
        engine = services.plugins.commitment
        action_type = request.command.get(commands.ACTION_TYPE_ID)
        base: commands.Command = {} if action_type is None else \
            {commands.ACTION_TYPE_ID: action_type}
        archive = route.commitment_archive if route is not None else None
        if archive is None or engine is None:
            record.status = Status.SOP_CLASS_NOT_SUPPORTED
            record.hint = "give the route commit_to = \"<archive>\" (or store_to)"
            return Reply(record.status, base)
        refusal = commit_policy.check_action(
            str(request.command.get(commands.REQUESTED_SOP_CLASS, "")),
            str(request.command.get(commands.REQUESTED_SOP_INSTANCE, "")), action_type)
        action = refusal or commit_policy.read_action(request.identifier)
        if isinstance(action, commit_policy.Refusal):
            record.status = action.status
            record.hint = action.comment
            return Reply(action.status, {**base, commands.ERROR_COMMENT: action.comment})
        record.archives = [archive]
        record.details["transaction_uid"] = action.transaction_uid
        record.details["instances"] = len(action.instances)
        item = engine.request(Commitment(
            "", action.transaction_uid, archive, request.session.info.calling_ae,
            request.session.info.called_ae, request.transfer_syntax, action.instances),
            request.data)
        record.details["commitment"] = item.state if item.state != WAITING else "journaled"
        record.status = Status.SUCCESS
        return Reply(Status.SUCCESS, base)


def report(request: Request, services: Services) -> Reply:
    """N-EVENT-REPORT (Rule 2)."""
    with services.operation(request, "N-EVENT-REPORT") as record:
        session = services.session(request)
        engine = services.plugins.commitment
        event_type = request.command.get(commands.EVENT_TYPE_ID)
        base: commands.Command = {} if event_type is None else \
            {commands.EVENT_TYPE_ID: event_type}
        record.details["event_type"] = event_type
        if not session.data.get("inbound") or engine is None:
            record.status = Status.UNRECOGNIZED_OPERATION
            record.hint = ("the proxy takes Storage Commitment reports from archives, on its "
                           "own AE title")
            return Reply(record.status, base)
        if request.sop_class != commit_policy.STORAGE_COMMITMENT:
            record.status = Status.NO_SUCH_SOP_CLASS
            return Reply(record.status, base)
        taken = take(engine, event_type, request.transfer_syntax, request.data)
        record.details["transaction_uid"] = taken.transaction_uid
        if taken.item is not None:
            record.archives = [taken.item.archive]
            record.details["modality"] = taken.item.modality
        record.status = taken.status
        if taken.status != Status.SUCCESS:
            record.hint = taken.hint
            return Reply(taken.status, {**base, commands.ERROR_COMMENT: taken.comment or ""})
        record.details["commitment"] = "journaled"
        return Reply(Status.SUCCESS, base)
