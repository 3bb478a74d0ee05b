"""Pure store-and-forward decisions: what a status means, backoff, what to propose and send.

Rule 1: no I/O, no threads: data in, data out (``proxy.store.drain`` acts on the answers).
Rule 2: an instance is proposed in its own transfer syntax; only uncompressed data
        may be re-encoded (between uncompressed syntaxes); compressed pixel data
        is never transcoded.
Rule 3: a status is classified once, here (``classify``, PS3.4 B.2.3), for the
        drain, its tests and the README to agree on.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from proxy.status import Status, category
from proxy.store.spool import InstanceMeta

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
_FALLBACK = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_CONTEXTS = 126                # PS3.8 9.3.2.2: at most 128 presentation contexts


class Verdict(enum.Enum):
    DELIVERED = "completed"           # Success: the archive keeps it
    WARNING = "warning"               # kept, with a warning (coercion, elements discarded, ...)
    RETRY_ARCHIVE = "retry_archive"   # the archive cannot take anything now: back off
    RETRY_INSTANCE = "retry_instance"  # this instance failed in a way worth a few more tries
    REFUSED = "refused"               # permanent: dead-letter


def classify(status: int | None) -> Verdict:
    """What a C-STORE response status means for the spooled instance (PS3.4 B.2.3).

    - no status (timeout, abort): the archive, not the instance → back off;
    - 0xA7xx Refused: Out of Resources: the archive is full → back off, retry forever;
    - 0x0110 Processing failure, 0x0213 Resource limitation: transient, per instance;
    - 0xBxxx warnings: stored (with coercion or discarded elements) → delivered;
    - everything else (0x0122 SOP class not supported, 0x0124 not authorized,
      0xA9xx data set does not match SOP class, 0xCxxx cannot understand, ...)
      will fail the same way next time → refused.
    """
    if status is None:
        return Verdict.RETRY_ARCHIVE
    if status == Status.SUCCESS:
        return Verdict.DELIVERED
    if category(status) == "warning":
        return Verdict.WARNING
    if status >> 8 == Status.REFUSED_OUT_OF_RESOURCES >> 8:      # the whole 0xA7xx family
        return Verdict.RETRY_ARCHIVE
    if status in (Status.PROCESSING_FAILURE, Status.RESOURCE_LIMITATION):
        return Verdict.RETRY_INSTANCE
    return Verdict.REFUSED


def backoff_delay(failures: int, initial: float, maximum: float, rand: float = 1.0) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling, capped, jittered.

    ``rand`` in [0, 1] spreads retries between half and all of the nominal delay,
    so several proxies do not hammer a recovering archive in step.
    """
    if failures <= 0:
        return 0.0
    nominal = min(maximum, initial * 2.0 ** min(failures - 1, 60))
    return nominal * (0.5 + 0.5 * min(max(rand, 0.0), 1.0))


Key = tuple[str, str]                     # (SOP class UID, transfer syntax UID)


def plan_contexts(metas: Sequence[InstanceMeta],
                  limit: int = MAX_CONTEXTS) -> tuple[list[tuple[str, list[str]]], int]:
    """Contexts to propose for the instances, in order, and how many instances they cover.

    Each instance gets a context with exactly its own transfer syntax (Rule 2);
    an uncompressed one also a fallback context offering the uncompressed
    little-endian syntaxes. Planning stops before the instance that would need
    more than ``limit`` contexts.
    """
    contexts: dict[tuple[str, tuple[str, ...]], None] = {}
    covered = 0
    for meta in metas:
        wanted: list[tuple[str, tuple[str, ...]]] = [(meta.sop_class, (meta.transfer_syntax,))]
        if meta.transfer_syntax in UNCOMPRESSED:
            others = tuple(str(ts) for ts in _FALLBACK if ts != meta.transfer_syntax)
            wanted.append((meta.sop_class, others))
        new = [w for w in wanted if w not in contexts]
        if len(contexts) + len(new) > limit:
            break
        contexts.update(dict.fromkeys(new))
        covered += 1
    return [(sop, list(ts)) for sop, ts in contexts], covered


@dataclass(frozen=True)
class Choice:
    raw: bool                         # send the stored bytes as they are
    transfer_syntax: str              # what the archive will receive


def choose(meta: InstanceMeta, accepted: Sequence[tuple[str, str]]) -> Choice | None:
    """How to send an instance over an association with these accepted (SOP class, TS)."""
    offered = [ts for sop, ts in accepted if sop == meta.sop_class]
    if meta.transfer_syntax in offered:
        return Choice(True, meta.transfer_syntax)
    if meta.transfer_syntax in UNCOMPRESSED:
        for ts in offered:
            if ts in UNCOMPRESSED:
                return Choice(False, ts)
    return None


def key(meta: InstanceMeta) -> Key:
    return meta.sop_class, meta.transfer_syntax


def status_text(status: int) -> str:
    described = STORAGE_SERVICE_CLASS_STATUS.get(status)
    return f"0x{status:04X} ({described[1]})" if described else f"0x{status:04X}"


def uid_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid
