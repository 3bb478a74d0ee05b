"""Association negotiation, pure: an A-ASSOCIATE-RQ and a policy in, an AC or RJ out.

Job: the acceptor's answer to a parsed ``AssociateRQ`` (``negotiate``) under a route's
``Policy``, and the requestor's reading of the answer it got (``accepted_contexts``).

Rule 1: pure; no sockets, no clocks. The same RQ and policy give the same answer.
Rule 2: the RQ is rejected (PS3.8 Table 9-21) before any context is looked at, in this
        order: protocol version without bit 0 (permanent, ACSE provider, 2); the
        application context is not the DICOM one (permanent, user, 2); the called AE
        title is not one of ours (permanent, user, 7); the calling AE title is not
        allowed (permanent, user, 3); we are at our association limit (transient,
        presentation provider, 2); the user identity is refused (permanent, user, 1).
Rule 3: each proposed context gets exactly one result (PS3.8 Table 9-18): acceptance;
        abstract-syntax-not-supported (3) when the policy does not name it; transfer-
        syntaxes-not-supported (4) when no proposed syntax is acceptable; user-rejection
        (1) when role selection leaves the requestor neither role; no-reason (2) for a
        context without transfer syntaxes or a context ID proposed twice (PS3.8 9.3.2.2:
        IDs are unique odd integers). A deflated transfer syntax (``DEFLATED``) is never
        acceptable: the proxy does not inflate streams.
Rule 4: the transfer syntax is the policy's first that the requestor proposed, or —
        ``requestor_order`` — the requestor's first that the policy lists.
Rule 5: role selection (PS3.7 D.3.3.4): without the requestor's item for a SOP class
        the default roles hold (requestor SCU, acceptor SCP) and no item is returned;
        with it, each role is granted only if proposed *and* allowed by the policy
        (a role proposed 0 is never answered 1); neither role granted rejects the
        context (1). A policy with ``roles=None`` for a syntax does not negotiate roles.
Rule 6: the AC carries our maximum PDU length, implementation class UID and version,
        the asynchronous operations window only when proposed (each value the smaller
        of ours and theirs, 0 = unlimited; PS3.7 D.3.3.3), SOP class extended
        negotiation replies only from the policy's ``extended`` answerer for accepted
        SOP classes, and a user identity response only when a positive response was
        requested and the policy's ``identity`` answerer accepted (PS3.7 D.3.3.7).
        Without an answerer, identity and extended negotiation are ignored, as the
        standard allows an acceptor that does not support them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from proxy.dicom.items import (
    ExtendedNegotiation,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from proxy.dicom.pdu import APPLICATION_CONTEXT, AssociateAC, AssociateRJ, AssociateRQ

# PS3.8 Table 9-18 presentation context results
ACCEPTANCE, USER_REJECTION, NO_REASON = 0, 1, 2
ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 3, 4
# PS3.8 Table 9-21 A-ASSOCIATE-RJ result / source / reason
PERMANENT, TRANSIENT = 1, 2
SERVICE_USER, ACSE_PROVIDER, PRESENTATION_PROVIDER = 1, 2, 3
REJECTED_NO_REASON = AssociateRJ(PERMANENT, SERVICE_USER, 1)
APPLICATION_CONTEXT_NOT_SUPPORTED = AssociateRJ(PERMANENT, SERVICE_USER, 2)
CALLING_AE_NOT_RECOGNIZED = AssociateRJ(PERMANENT, SERVICE_USER, 3)
CALLED_AE_NOT_RECOGNIZED = AssociateRJ(PERMANENT, SERVICE_USER, 7)
PROTOCOL_VERSION_NOT_SUPPORTED = AssociateRJ(PERMANENT, ACSE_PROVIDER, 2)
LOCAL_LIMIT_EXCEEDED = AssociateRJ(TRANSIENT, PRESENTATION_PROVIDER, 2)

# Deflated transfer syntaxes, never accepted (Rule 3). JPIP Referenced Deflate
# (1.2.840.10008.1.2.4.95) and JPIP HTJ2K Referenced Deflate are named by UID.
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95",
                      "1.2.840.10008.1.2.4.205"})

# The proxy's own Implementation Class UID (PS3.7 D.3.3.2; a UUID-derived 2.25 UID, PS3.5
# B.2) and version name: in every association it accepts or requests and every file it writes.
IMPLEMENTATION_CLASS_UID = "2.25.162438964047009189657653309476940645118"
try:
    _VERSION = version("dicom-proxy")          # pyproject.toml's, as installed
except PackageNotFoundError:                   # run from a source tree not installed
    _VERSION = "dev"
IMPLEMENTATION_VERSION = f"DICOMPROXY_{_VERSION}"[:16]


@dataclass(frozen=True)
class Offer:
    """What the route takes for one abstract syntax."""
    transfer_syntaxes: tuple[str, ...]
    requestor_order: bool = False          # Rule 4
    roles: tuple[bool, bool] | None = None  # (requestor may be SCU, may be SCP); Rule 5


@dataclass(frozen=True)
class Policy:
    offers: Mapping[str, Offer]
    called_aes: frozenset[str] | None = None    # None: any called AE title
    calling_aes: frozenset[str] | None = None   # None: any calling AE title
    max_pdu: int = 262_144
    async_window: tuple[int, int] = (1, 1)
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version: str | None = IMPLEMENTATION_VERSION
    identity: Callable[[UserIdentityRQ], bytes | None] | None = None
    extended: Callable[[ExtendedNegotiation], bytes | None] | None = None


@dataclass(frozen=True)
class Accepted:
    """One accepted context, as the requestor reads it from the AC."""
    abstract_syntax: str
    transfer_syntax: str
    scu: bool = True                        # the requestor may act as SCU
    scp: bool = False                       # the requestor may act as SCP


@dataclass(frozen=True)
class _Outcome:
    result: PresentationContextAC
    role: RoleSelection | None = field(default=None)


def negotiate(rq: AssociateRQ, policy: Policy, *,
              at_capacity: bool = False) -> AssociateAC | AssociateRJ:
    """The acceptor's answer to ``rq`` (Rules 2-6)."""
    if not rq.protocol_version & 1:
        return PROTOCOL_VERSION_NOT_SUPPORTED
    if rq.application_context != APPLICATION_CONTEXT:
        return APPLICATION_CONTEXT_NOT_SUPPORTED
    if policy.called_aes is not None and rq.called_ae not in policy.called_aes:
        return CALLED_AE_NOT_RECOGNIZED
    if policy.calling_aes is not None and rq.calling_ae not in policy.calling_aes:
        return CALLING_AE_NOT_RECOGNIZED
    if at_capacity:
        return LOCAL_LIMIT_EXCEEDED
    identity_ac: UserIdentityAC | None = None
    if rq.user.identity_rq is not None and policy.identity is not None:
        response = policy.identity(rq.user.identity_rq)
        if response is None:
            return REJECTED_NO_REASON
        if rq.user.identity_rq.positive_response_requested:
            identity_ac = UserIdentityAC(response)
    proposed_roles = {r.sop_class_uid: r for r in rq.user.roles}
    outcomes: list[_Outcome] = []
    seen: set[int] = set()
    for cx in rq.contexts:
        duplicate = cx.context_id in seen
        seen.add(cx.context_id)
        outcomes.append(_context(cx, policy, proposed_roles, duplicate))
    roles: dict[str, RoleSelection] = {}
    for out in outcomes:
        if out.role is not None:
            roles.setdefault(out.role.sop_class_uid, out.role)
    accepted = {rq_cx.abstract_syntax for rq_cx, out in zip(rq.contexts, outcomes, strict=True)
                if out.result.result == ACCEPTANCE}
    user = UserInformation(
        max_length=policy.max_pdu, implementation_class_uid=policy.implementation_class_uid,
        implementation_version=policy.implementation_version,
        async_window=_window(rq.user.async_window, policy.async_window),
        roles=tuple(roles.values()), extended=_extended(rq.user.extended, accepted, policy),
        identity_ac=identity_ac)
    return AssociateAC(rq.called_ae, rq.calling_ae, tuple(o.result for o in outcomes), user,
                       rq.application_context, 1)


def _context(cx: PresentationContextRQ, policy: Policy,
             proposed_roles: Mapping[str, RoleSelection], duplicate: bool) -> _Outcome:
    first = cx.transfer_syntaxes[0] if cx.transfer_syntaxes else ""
    if duplicate or not cx.transfer_syntaxes:
        return _Outcome(PresentationContextAC(cx.context_id, NO_REASON, first))
    offer = policy.offers.get(cx.abstract_syntax)
    if offer is None:
        return _Outcome(PresentationContextAC(cx.context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED, first))
    ours = [ts for ts in offer.transfer_syntaxes if ts not in DEFLATED]
    if offer.requestor_order:
        chosen = next((ts for ts in cx.transfer_syntaxes if ts in ours), None)
    else:
        chosen = next((ts for ts in ours if ts in cx.transfer_syntaxes), None)
    if chosen is None:
        return _Outcome(PresentationContextAC(cx.context_id, TRANSFER_SYNTAXES_NOT_SUPPORTED,
                                              first))
    proposed = proposed_roles.get(cx.abstract_syntax)
    if proposed is None or offer.roles is None:
        return _Outcome(PresentationContextAC(cx.context_id, ACCEPTANCE, chosen))
    scu, scp = proposed.scu_role and offer.roles[0], proposed.scp_role and offer.roles[1]
    if not scu and not scp:
        return _Outcome(PresentationContextAC(cx.context_id, USER_REJECTION, chosen))
    return _Outcome(PresentationContextAC(cx.context_id, ACCEPTANCE, chosen),
                    RoleSelection(cx.abstract_syntax, scu, scp))


def _window(proposed: tuple[int, int] | None,
            ours: tuple[int, int]) -> tuple[int, int] | None:
    if proposed is None:
        return None
    def smaller(a: int, b: int) -> int:
        return max(a, b) if 0 in (a, b) else min(a, b)
    return smaller(proposed[0], ours[0]), smaller(proposed[1], ours[1])


def _extended(items: tuple[ExtendedNegotiation, ...], accepted: set[str],
              policy: Policy) -> tuple[ExtendedNegotiation, ...]:
    if policy.extended is None:
        return ()
    out: list[ExtendedNegotiation] = []
    for ext in items:
        if ext.sop_class_uid in accepted and (info := policy.extended(ext)) is not None:
            out.append(ExtendedNegotiation(ext.sop_class_uid, info))
    return tuple(out)


def accepted_contexts(rq: AssociateRQ, ac: AssociateAC) -> dict[int, Accepted]:
    """The requestor's view of an AC: accepted context ID → syntaxes and roles.

    A context the AC accepts but ``rq`` did not propose is ignored; roles follow Rule 5
    from the requestor's side: defaults unless both sides sent an item for the SOP
    class, and then a role holds only if both proposed it.
    """
    proposed = {cx.context_id: cx for cx in rq.contexts}
    asked = {r.sop_class_uid: r for r in rq.user.roles}
    answered = {r.sop_class_uid: r for r in ac.user.roles}
    out: dict[int, Accepted] = {}
    for cx in ac.contexts:
        mine = proposed.get(cx.context_id)
        if cx.result != ACCEPTANCE or mine is None:
            continue
        scu, scp = True, False
        ask, answer = asked.get(mine.abstract_syntax), answered.get(mine.abstract_syntax)
        if ask is not None and answer is not None:
            scu, scp = ask.scu_role and answer.scu_role, ask.scp_role and answer.scp_role
        out[cx.context_id] = Accepted(mine.abstract_syntax, cx.transfer_syntax, scu, scp)
    return out
