"""Association mirroring for ``store = "relay"``: offer the workstation what the archive took.

Job: pure decisions for ``proxy.store.relay``. When a workstation's A-ASSOCIATE-RQ
arrives on a relay route, the proxy proposes the same storage contexts to the
route's archive; what the archive's A-ASSOCIATE-AC accepted becomes what the proxy
offers the workstation, so a SOP class or transfer syntax the archive refuses is
refused at negotiation, exactly as it would be without the proxy.

Rule 1: the contexts the proxy serves itself (Verification, the Q/R models, any non-storage
        SOP class pynetdicom knows) are not mirrored: the route offers them as usual.
        Every storage context — a storage SOP class, or one pynetdicom does not know
        (``is_storage``) — goes to the archive unchanged: same abstract syntax, same
        transfer syntaxes, same order — except a storage class the workstation proposed
        only the SCP role for: it wants to receive those (C-GET sub-operations from the
        proxy), so they stay the proxy's own contexts.
Rule 2: pynetdicom's acceptor (PS3.8 9.3.3.2 via ``negotiate_as_acceptor``) keeps one
        supported context per abstract syntax and, per proposed context, accepts the
        first of its transfer syntaxes that the context offered. So per abstract
        syntax the offered list is every transfer syntax the archive accepted for it,
        ordered so that each proposed context gets the very syntax the archive chose
        for it (``_ordered``).
Rule 3: whatever is accepted downstream has an upstream context with the same abstract
        and transfer syntax, so every C-STORE can be forwarded as received.
        Only an archive inconsistent with itself (two contexts offering the same
        syntaxes answered differently) cannot be mirrored exactly; then the first
        context's choice wins (``MirrorPlan.exact`` is False, and the log says so).
Rule 4: a refused context gets the archive's reason. pynetdicom's acceptor knows two:
        0x04 (transfer syntaxes not supported) when the abstract syntax is offered — so
        one refused that way is offered with the placeholder ``NO_TRANSFER_SYNTAX`` when
        nothing else of it is — and 0x03 (abstract syntax not supported) when it is not:
        a context refused that way whose abstract syntax is offered for other contexts
        is shown to pynetdicom as ``HIDDEN_ABSTRACT_SYNTAX`` (``MirrorPlan.hide``; the
        A-ASSOCIATE-AC carries no abstract syntax, PS3.8 9.3.3.2). 0x01 and 0x02 cannot
        be produced through pynetdicom's public API and become 0x03 (not exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import (
    NonPatientObjectStorageServiceClass,
    ServiceClass,
    StorageServiceClass,
)
from pynetdicom.sop_class import uid_to_service_class

# PS3.8 9.3.3.2 presentation context results (A-ASSOCIATE-AC)
ACCEPTANCE, USER_REJECTION, NO_REASON = 0x00, 0x01, 0x02
ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x03, 0x04
# Placeholders no peer proposes (UUID-derived root 2.25, PS3.5 B.2): an abstract syntax
# a refused context is shown as, so that pynetdicom answers 0x03 for it (Rule 4), and
# the one transfer syntax of an abstract syntax offered only to be answered 0x04.
HIDDEN_ABSTRACT_SYNTAX = "2.25.1"
NO_TRANSFER_SYNTAX = "2.25.2"


@dataclass(frozen=True)
class MirrorPlan:
    contexts: list[PresentationContext]    # what the proxy offers the workstation
    hide: list[int]                        # proposed contexts to show as HIDDEN_ABSTRACT_SYNTAX
    exact: bool                            # every proposed context gets the archive's answer


def is_storage(uid: str) -> bool:
    """A storage SOP class, or one pynetdicom does not know (the archive judges it, Rule 1)."""
    return uid_to_service_class(uid) in (StorageServiceClass, NonPatientObjectStorageServiceClass,
                                         ServiceClass)


def to_mirror(proposed: Sequence[PresentationContext],
              receiving: Iterable[str] = ()) -> list[PresentationContext]:
    """The workstation's proposed contexts that go to the archive, in its order (Rule 1).

    ``receiving``: storage SOP classes the workstation proposed only the SCP role for
    (PS3.7 D.3.3.4): it wants to *receive* them as C-GET sub-operations, which come
    from the proxy, not from this route's ``store_to`` archive — the proxy's own."""
    skip = set(receiving)
    return [cx for cx in proposed
            if is_storage(str(cx.abstract_syntax)) and str(cx.abstract_syntax) not in skip]


def receiving_classes(roles: Mapping[str, Any]) -> set[str]:
    """SOP classes of role selection items proposing the SCP role and not the SCU role."""
    return {str(uid) for uid, item in roles.items()
            if getattr(item, "scp_role", False) and not getattr(item, "scu_role", False)}


def mirrored(upstream: Sequence[PresentationContext], accepted: Mapping[int, str],
             refused: Mapping[int, int], own: Iterable[PresentationContext]) -> MirrorPlan:
    """The contexts to offer downstream (Rules 2, 4).

    ``upstream`` is what was proposed to the archive (``to_mirror``); ``accepted`` maps
    an index into it to the transfer syntax the archive accepted for that context,
    ``refused`` to the result the archive gave; ``own`` are the proxy's own contexts
    (Rule 1), offered unchanged.
    """
    by_abstract: dict[str, list[tuple[list[str], str]]] = {}
    for i, cx in enumerate(upstream):
        if i in accepted:
            by_abstract.setdefault(str(cx.abstract_syntax), []).append(
                ([str(ts) for ts in cx.transfer_syntax], accepted[i]))
    offered = {abstract: _ordered(answers) for abstract, answers in by_abstract.items()}
    hide = []
    for i, cx in enumerate(upstream):
        if i in accepted:
            continue
        abstract = str(cx.abstract_syntax)
        if refused.get(i) == TRANSFER_SYNTAXES_NOT_SUPPORTED:
            offered.setdefault(abstract, [NO_TRANSFER_SYNTAX])
        elif abstract in offered:
            hide.append(i)
    out: list[PresentationContext] = list(own)
    for abstract, syntaxes in offered.items():
        context = build_context(abstract, syntaxes)
        context.scu_role = True      # a C-GET requester may still take the SCP role
        context.scp_role = True
        out.append(context)
    exact = all(_answer(cx, i in hide, offered) == (ACCEPTANCE, accepted[i]) if i in accepted
                else _answer(cx, i in hide, offered) == (refused.get(i), None)
                for i, cx in enumerate(upstream))
    return MirrorPlan(out, hide, exact)


def _answer(cx: PresentationContext, hidden: bool,
            offered: Mapping[str, list[str]]) -> tuple[int | None, str | None]:
    """What pynetdicom's acceptor will answer this context: (result, transfer syntax)."""
    syntaxes = None if hidden else offered.get(str(cx.abstract_syntax))
    if syntaxes is None:
        return ABSTRACT_SYNTAX_NOT_SUPPORTED, None
    chosen = next((ts for ts in syntaxes if ts in cx.transfer_syntax), None)
    return (ACCEPTANCE, chosen) if chosen else (TRANSFER_SYNTAXES_NOT_SUPPORTED, None)


def _ordered(answers: list[tuple[list[str], str]]) -> list[str]:
    """The accepted syntaxes, each chosen one before the others its context offered."""
    chosen = list(dict.fromkeys(ts for _offered, ts in answers))
    graph: TopologicalSorter[str] = TopologicalSorter({ts: set() for ts in chosen})
    for offered, ts in answers:
        for other in chosen:
            if other != ts and other in offered:
                graph.add(other, ts)          # ``ts`` must come before ``other``
    try:
        return list(graph.static_order())
    except CycleError:        # the archive contradicted itself: its first choice wins
        return chosen


def refusal(proposed: Sequence[PresentationContext], accepted: Mapping[int, str],
            refused: Mapping[int, int]) -> list[str]:
    """Readable lines for the contexts the archive refused (for the log)."""
    lines = []
    for i, cx in enumerate(proposed):
        if i not in accepted:
            reason = _REASONS.get(refused.get(i, 0), "refused")
            lines.append(f"{_name(str(cx.abstract_syntax))}: {reason}")
    return lines


_REASONS = {USER_REJECTION: "user rejection", NO_REASON: "no reason given",
            ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract syntax not supported",
            TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer syntaxes not supported"}


def _name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid
