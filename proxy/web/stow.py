"""STOW-RS answers (PS3.18 10.5.3), pure: per-instance outcomes → DICOM JSON and HTTP status.

Rule 1: an instance counts as stored when its status is Success or a Warning (0xB000-0xBFFF,
        PS3.4 B.2.3: the archive kept it, perhaps coerced); every other status is a failure.
Rule 2: a stored instance is an item of Referenced SOP Sequence (0008,1199): Referenced SOP
        Class/Instance UID (0008,1150/1155) and the Retrieve URL (0008,1190) of its study
        on this proxy; a failed one an item of Failed SOP Sequence (0008,1198) with its
        Failure Reason (0008,1197, US: the status it got). A UID that could not be read is
        present without a value (F.2.5), so every item has both attributes.
Rule 3: the answer holds only the sequences that have items; the HTTP status is 200 when
        all were stored, 202 when some were, 409 when none was (PS3.18 10.5.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.status import Status


@dataclass(frozen=True)
class Outcome:
    """What became of one POSTed instance."""

    sop_class: str
    sop_instance: str
    status: int
    study: str = ""               # its Study Instance UID, for the Retrieve URL


def stored(status: int) -> bool:
    """Rule 1."""
    return status == Status.SUCCESS or 0xB000 <= status <= 0xBFFF


def _uid(uid: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [uid]} if uid else {"vr": "UI"}


def item(outcome: Outcome, base: str) -> dict[str, Any]:
    """Rule 2: the sequence item of one instance (``base`` = …/dicomweb/<route>)."""
    entry: dict[str, Any] = {"00081150": _uid(outcome.sop_class),
                             "00081155": _uid(outcome.sop_instance)}
    if stored(outcome.status):
        entry["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{outcome.study}"]}
    else:
        entry["00081197"] = {"vr": "US", "Value": [int(outcome.status)]}
    return entry


def answer(outcomes: list[Outcome], base: str) -> tuple[int, dict[str, Any]]:
    """Rule 3: (HTTP status, DICOM JSON answer) for a request's instances, in order."""
    referenced = [item(o, base) for o in outcomes if stored(o.status)]
    failed = [item(o, base) for o in outcomes if not stored(o.status)]
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    code = 200 if not failed else 202 if referenced else 409
    return code, body
