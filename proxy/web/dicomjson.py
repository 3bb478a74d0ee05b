"""A data set → the DICOM JSON Model (PS3.18 F.2), element by element.

Job: pure. What QIDO-RS and WADO-RS ``/metadata`` answer: each attribute as
``"ggggeeee": {"vr": ..., "Value": [...]}``. pydicom's ``DataElement.to_json_dict`` writes
the model (checked against F.2 in tests/test_web_dicomjson.py): PN as ``Alphabetic`` /
``Ideographic`` / ``Phonetic`` component groups, IS/DS and the binary numbers as JSON
numbers, AT as ``"ggggeeee"`` strings, sequences as lists of objects, OB/OW/UN... as
``InlineBinary`` (base64) or a ``BulkDataURI``.

Rule 1: text is decoded with the data set's own Specific Character Set (ISO 2022 escapes,
        multi-valued sets included); the JSON document is UTF-8. Specific Character Set
        itself keeps its source value (CP-2518: it says what the source was; Orthanc's
        plugin and Google's Healthcare API do the same).
Rule 2: an attribute with no value is ``{"vr": ...}`` alone (F.2.5) — a sequence of no
        items too (pydicom writes ``"Value": []`` for it); group lengths (gggg,0000) are
        left out (F.2: they carry nothing in JSON).
Rule 3: one element pydicom cannot convert (a DS that is not a number, a bad VR) never
        costs the whole answer: it is left out and its tag reported in ``Converted.skipped``.
Rule 4: ``bulk_data_uri`` (WADO-RS metadata) turns binary values above ``threshold`` bytes
        into ``BulkDataURI``s; without it every binary value is inline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

JsonObject = dict[str, Any]
BulkDataUri = Callable[[DataElement], str]


@dataclass
class Converted:
    """One data set's DICOM JSON object, and the tags left out (Rule 3)."""

    json: JsonObject
    skipped: list[str] = field(default_factory=list)


def to_json(ds: Dataset, bulk_data_uri: BulkDataUri | None = None,
            threshold: int = 1024) -> Converted:
    """``ds`` as a DICOM JSON object (Rules 1-4)."""
    out: JsonObject = {}
    skipped: list[str] = []
    limit = threshold if bulk_data_uri is not None else 2**62
    for tag in sorted(ds.keys()):                   # tag order, as a data set is written
        if tag.element == 0x0000:                    # Rule 2: group length
            continue
        key = f"{tag:08X}"
        try:
            elem = ds[tag]                           # converts a raw element (Rule 1)
            out[key] = _no_empty_values(elem.to_json_dict(bulk_data_uri, limit))
        except Exception:
            skipped.append(key)
    return Converted(out, skipped)


def _no_empty_values(obj: JsonObject) -> JsonObject:
    """Rule 2, in nested items as well: ``"Value": []`` is no value (F.2.5)."""
    value = obj.get("Value")
    if value == []:
        del obj["Value"]
    elif obj.get("vr") == "SQ" and isinstance(value, list):
        for item in value:
            for attribute in item.values():
                if isinstance(attribute, dict):
                    _no_empty_values(attribute)
    return obj
