"""Association mirroring for ``store = "relay"``: answer the workstation as the archive did.

Job: pure decisions for ``proxy.store.relay``. When a workstation's A-ASSOCIATE-RQ
arrives on a relay route, the proxy proposes the same storage contexts to the
route's archive; the archive's answer to each becomes the proxy's answer to the same
context, so a SOP class or transfer syntax the archive refuses is refused at
negotiation, with the archive's reason, exactly as it would be without the proxy.

Rule 1: the contexts the proxy serves itself (Verification, the Q/R models, any non-storage
        SOP class pynetdicom's tables know) are not mirrored: the route's policy answers
        them. Every storage context — a storage SOP class, or one the tables do not
        know (``is_storage``) — goes to the archive unchanged: same abstract syntax,
        same transfer syntaxes, same order — except a storage class the workstation
        proposed only the SCP role for: it wants to receive those (C-GET sub-operations
        from the proxy), so they stay the proxy's own contexts.
Rule 2: each mirrored context's result in the A-ASSOCIATE-AC is the archive's: acceptance
        with the transfer syntax the archive chose, or the archive's refusal reason
        (PS3.8 Table 9-18: 1, 2, 3 or 4) — the proxy's own negotiation (``proxy.dicom.
        negotiation``) can say each of them, so the answer is always exact.
Rule 3: whatever is accepted downstream has an upstream context with the same abstract
        and transfer syntax, so every C-STORE can be forwarded as received.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from pydicom.uid import UID
from pynetdicom.service_class import (
    NonPatientObjectStorageServiceClass,
    ServiceClass,
    StorageServiceClass,
)
from pynetdicom.sop_class import uid_to_service_class

from proxy.dicom.items import PresentationContextAC, PresentationContextRQ, RoleSelection
from proxy.dicom.pdu import AssociateAC

# PS3.8 9.3.3.2 presentation context results (A-ASSOCIATE-AC)
ACCEPTANCE, USER_REJECTION, NO_REASON = 0x00, 0x01, 0x02
ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x03, 0x04


def is_storage(uid: str) -> bool:
    """A storage SOP class, or one pynetdicom does not know (the archive judges it, Rule 1)."""
    return uid_to_service_class(uid) in (StorageServiceClass, NonPatientObjectStorageServiceClass,
                                         ServiceClass)


def receiving_classes(roles: Iterable[RoleSelection]) -> set[str]:
    """SOP classes of role selection items proposing the SCP role and not the SCU role."""
    return {item.sop_class_uid for item in roles if item.scp_role and not item.scu_role}


def to_mirror(proposed: Sequence[PresentationContextRQ],
              receiving: Iterable[str] = ()) -> list[PresentationContextRQ]:
    """The workstation's proposed contexts that go to the archive, in its order (Rule 1).

    ``receiving``: storage SOP classes the workstation proposed only the SCP role for
    (PS3.7 D.3.3.4): it wants to *receive* them as C-GET sub-operations, which come
    from the proxy, not from this route's ``store_to`` archive — the proxy's own."""
    skip = set(receiving)
    return [cx for cx in proposed if is_storage(cx.abstract_syntax) and cx.transfer_syntaxes
            and cx.abstract_syntax not in skip]


def mirrored(ac: AssociateAC, upstream: Sequence[PresentationContextRQ],
             accepted: Mapping[int, str], refused: Mapping[int, int]) -> AssociateAC:
    """``ac`` with each mirrored context answered as the archive answered it (Rule 2).

    ``upstream`` is what was proposed to the archive (``to_mirror``); ``accepted`` maps
    an index into it to the transfer syntax the archive accepted for that context,
    ``refused`` to the result the archive gave (missing: no reason given).
    """
    answers: dict[int, PresentationContextAC] = {}
    for i, cx in enumerate(upstream):
        if i in accepted:
            answers[cx.context_id] = PresentationContextAC(cx.context_id, ACCEPTANCE,
                                                           accepted[i])
        else:
            answers[cx.context_id] = PresentationContextAC(
                cx.context_id, refused.get(i, NO_REASON), cx.transfer_syntaxes[0])
    contexts = tuple(answers.get(cx.context_id, cx) for cx in ac.contexts)
    kept = {cx.abstract_syntax for i, cx in enumerate(upstream) if i in accepted}
    mirrored_classes = {cx.abstract_syntax for cx in upstream}
    roles = tuple(r for r in ac.user.roles
                  if r.sop_class_uid not in mirrored_classes or r.sop_class_uid in kept)
    return replace(ac, contexts=contexts, user=replace(ac.user, roles=roles))


def refusal(proposed: Sequence[PresentationContextRQ], accepted: Mapping[int, str],
            refused: Mapping[int, int]) -> list[str]:
    """Readable lines for the contexts the archive refused (for the log)."""
    lines = []
    for i, cx in enumerate(proposed):
        if i not in accepted:
            reason = _REASONS.get(refused.get(i, 0), "refused")
            lines.append(f"{_name(cx.abstract_syntax)}: {reason}")
    return lines


_REASONS = {USER_REJECTION: "user rejection", NO_REASON: "no reason given",
            ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract syntax not supported",
            TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer syntaxes not supported"}


def _name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid
