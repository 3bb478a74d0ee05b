"""``proxy.web.stow``: a STOW-RS request's outcomes → PS3.18 10.5.3 answer and HTTP status."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from proxy.status import Status
from proxy.web import stow

BASE = "http://proxy.example/dicomweb/ROUTE"
CT = "1.2.840.10008.5.1.4.1.1.2"


def test_all_stored_is_200_with_referenced_items_and_their_retrieve_urls() -> None:
    code, body = stow.answer([stow.Outcome(CT, "1.2.3.1", Status.SUCCESS, "1.2.3"),
                              stow.Outcome(CT, "1.2.3.2", 0xB007, "1.2.3")], BASE)
    assert code == 200 and "00081198" not in body
    parsed = Dataset.from_json(body)                 # valid DICOM JSON
    assert [str(i.ReferencedSOPInstanceUID) for i in parsed.ReferencedSOPSequence] == [
        "1.2.3.1", "1.2.3.2"]                          # a Warning status was stored (Rule 1)
    assert {i.RetrieveURL for i in parsed.ReferencedSOPSequence} == {f"{BASE}/studies/1.2.3"}
    assert {i.ReferencedSOPClassUID for i in parsed.ReferencedSOPSequence} == {CT}


def test_some_failed_is_202_and_each_failure_carries_its_reason() -> None:
    code, body = stow.answer([stow.Outcome(CT, "1.2.3.1", Status.SUCCESS, "1.2.3"),
                              stow.Outcome(CT, "1.2.3.2", 0xA900, "9.9"),
                              stow.Outcome("", "", Status.UNABLE_TO_PROCESS)], BASE)
    assert code == 202
    parsed = Dataset.from_json(body)
    reasons = [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in parsed.FailedSOPSequence]
    assert reasons == [("1.2.3.2", 0xA900), ("", 0xC000)]
    assert "RetrieveURL" not in parsed.FailedSOPSequence[0]
    unreadable = body["00081198"]["Value"][1]
    assert unreadable["00081150"] == unreadable["00081155"] == {"vr": "UI"}   # no value


@pytest.mark.parametrize("status", [0xA700, 0x0124, 0xC000, 0x0110])
def test_none_stored_is_409_with_only_the_failed_sequence(status: int) -> None:
    code, body = stow.answer([stow.Outcome(CT, "1.2.3.1", status, "1.2.3")], BASE)
    assert code == 409 and list(body) == ["00081198"]
    assert body["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [status]}
