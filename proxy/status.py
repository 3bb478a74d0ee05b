"""Named DICOM statuses the proxy chooses or passes on, and their metric category.

Logic never uses bare hex: it names a status here, with the PS3.4/PS3.7 section
that defines it.
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import code_to_category


class Status(IntEnum):
    SUCCESS = 0x0000                          # PS3.7 C.1.1
    PENDING = 0xFF00                          # PS3.4 C.4.1.1.4 (matches / sub-ops continuing)
    PENDING_WARNING = 0xFF01                  # PS3.4 C.4.1.1.4: optional keys not supported
    CANCEL = 0xFE00                           # PS3.4 C.4.1.1.4: matching terminated by C-CANCEL
    WARNING_SUBOPS_FAILED = 0xB000            # PS3.4 C.4.2.1.5: sub-operations complete, >=1 failed
    WARNING_COERCION = 0xB000                 # PS3.4 B.2.3 (C-STORE) uses the same code
    REFUSED_OUT_OF_RESOURCES = 0xA700         # PS3.4 C.4.1.1.4 / B.2.3: out of resources
    REFUSED_OUT_OF_RESOURCES_MATCHES = 0xA701  # PS3.4 C.4.2.1.5: unable to calculate matches
    REFUSED_OUT_OF_RESOURCES_SUBOPS = 0xA702  # PS3.4 C.4.2.1.5: unable to perform sub-operations
    MOVE_DESTINATION_UNKNOWN = 0xA801         # PS3.4 C.4.2.1.5
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 C.4.1.1.4
    UNABLE_TO_PROCESS = 0xC000                # PS3.4 C.4.1.1.4: failed, unable to process
    PROCESSING_FAILURE = 0x0110               # PS3.7 C.4.2: general processing failure
    SOP_CLASS_NOT_SUPPORTED = 0x0122          # PS3.7 C.5.12: refused, SOP class not supported
    NOT_AUTHORIZED = 0x0124                   # PS3.7 Annex C.5: refused, not authorized
    RESOURCE_LIMITATION = 0x0213              # PS3.7 Annex C.5: refused, resource limitation
    DUPLICATE_SOP_INSTANCE = 0x0111           # PS3.7 Annex C / PS3.4 F.7.2.1.2 (N-CREATE)
    NO_SUCH_SOP_INSTANCE = 0x0112             # PS3.7 Annex C / PS3.4 F.7.2.2.2 (N-SET)
    NO_SUCH_SOP_CLASS = 0x0118                # PS3.7 Annex C: the SOP class is not this one
    NO_SUCH_EVENT_TYPE = 0x0113               # PS3.7 C.5.15 (N-EVENT-REPORT)
    INVALID_ARGUMENT_VALUE = 0x0115           # PS3.7 C.5.10: an argument out of range/unknown
    NO_SUCH_ACTION_TYPE = 0x0123              # PS3.7 C.5.14 (N-ACTION)
    MISSING_ATTRIBUTE = 0x0120                # PS3.7 C.5.7: a required attribute is missing
    UNRECOGNIZED_OPERATION = 0x0211           # PS3.7 C.5.3
    ELEMENTS_DISCARDED = 0xB006               # PS3.4 B.2.3 (C-STORE warning)
    DATA_SET_MISMATCH_WARNING = 0xB007        # PS3.4 B.2.3 (C-STORE warning)


# The statuses that say more responses follow (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.5).
PENDING = (Status.PENDING, Status.PENDING_WARNING)


def category(code: int | None) -> str:
    """The metric/log category of a status: success, warning, failure, cancel, pending."""
    if code is None:
        return "failure"
    name = code_to_category(code).lower()
    return name if name in {"success", "warning", "failure", "cancel", "pending"} else "failure"


def hex_status(code: int | None) -> str:
    """The log form of a status, e.g. ``0x0000``; ``none`` when no status was received."""
    return "none" if code is None else f"0x{code:04X}"
