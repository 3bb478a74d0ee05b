"""proxy.workflow.commit_policy: what an N-ACTION needs, when it goes on, which report is
taken, where it goes."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from proxy.config import parse
from proxy.status import Status
from proxy.workflow.commit_policy import (
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    Action,
    Refusal,
    check_action,
    check_report,
    forward_verdict,
    overdue,
    read_action,
    ready,
    target,
)
from proxy.workflow.policy import Verdict

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(("sop_class", "instance", "action_type", "status"), [
    (STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, None),
    ("1.2.840.10008.3.1.2.3.3", STORAGE_COMMITMENT_INSTANCE, 1, Status.NO_SUCH_SOP_CLASS),
    (STORAGE_COMMITMENT, "1.2.3", 1, Status.NO_SUCH_SOP_INSTANCE),
    (STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 2, Status.NO_SUCH_ACTION_TYPE),
    (STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, None, Status.NO_SUCH_ACTION_TYPE),
])
def test_check_action(sop_class: str, instance: str, action_type: object,
                      status: int | None) -> None:
    refusal = check_action(sop_class, instance, action_type)
    assert (refusal.status if refusal else None) == status
    assert refusal is None or len(refusal.comment) <= 64


def info(uid: str | None, *items: tuple[str | None, str | None]) -> Dataset:
    ds = Dataset()
    if uid is not None:
        ds.TransactionUID = uid
    refs = []
    for sop_class, sop_instance in items:
        item = Dataset()
        if sop_class:
            item.ReferencedSOPClassUID = sop_class
        if sop_instance:
            item.ReferencedSOPInstanceUID = sop_instance
        refs.append(item)
    if items:
        ds.ReferencedSOPSequence = Sequence(refs)
    return ds


def test_read_action_keeps_the_transaction_and_the_instances_in_order() -> None:
    assert read_action(info("9.8", (CT, "1.2"), (CT, "1.1"))) == Action("9.8", ("1.2", "1.1"))
    empty = info("9.8")
    empty.ReferencedSOPSequence = Sequence([])          # present, empty: the archive judges
    assert read_action(empty) == Action("9.8", ())


@pytest.mark.parametrize("ds", [info(None, (CT, "1.2")), info("9.8"),
                                info("9.8", (CT, "1.2"), (None, "1.3")),
                                info("9.8", (CT, None))])
def test_read_action_refuses_what_is_missing(ds: Dataset) -> None:
    refusal = read_action(ds)
    assert isinstance(refusal, Refusal) and refusal.status == Status.MISSING_ATTRIBUTE


@pytest.mark.parametrize(("instances", "held", "go"), [
    (("1.1", "1.2"), set(), True),
    (("1.1", "1.2"), {"1.2"}, False),              # one still pending for the archive
    (("1.1",), {"1.2", "1.3"}, True),              # others' instances do not hold it back
    ((), {"1.2"}, True),
])
def test_ready_only_when_the_spool_holds_none_of_them(
        instances: tuple[str, ...], held: set[str], go: bool) -> None:
    assert ready(instances, held) is go


@pytest.mark.parametrize(("status", "verdict"), [
    (0x0000, Verdict.DELIVERED), (None, Verdict.RETRY), (0xA700, Verdict.RETRY),
    (0x0213, Verdict.RETRY), (0x0122, Verdict.DEAD), (0x0110, Verdict.DEAD),
])
def test_forward_verdict(status: int | None, verdict: Verdict) -> None:
    assert forward_verdict(status) is verdict


@pytest.mark.parametrize(("event_type", "uid", "known", "status"), [
    (1, "9.8", True, None), (2, "9.8", True, None),
    (3, "9.8", True, Status.NO_SUCH_EVENT_TYPE), (None, "9.8", True, Status.NO_SUCH_EVENT_TYPE),
    (1, "", False, Status.MISSING_ATTRIBUTE),
    (1, "9.8", False, Status.INVALID_ARGUMENT_VALUE),   # the proxy never asked for it
])
def test_check_report(event_type: object, uid: str, known: bool, status: int | None) -> None:
    refusal = check_report(event_type, uid, known)
    assert (refusal.status if refusal else None) == status


def test_the_report_goes_to_the_destination_with_the_modalitys_title() -> None:
    config = parse({"proxy": {"ae_title": "QR_PROXY"},
                    "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1}},
                    "destinations": {"ct": {"ae_title": "CT_1", "host": "ct", "port": 104}},
                    "routes": [{"called_ae": "R", "archives": ["a"], "store_to": ["a"]}]})
    found = target(config, "CT_1 ")
    assert found is not None and (found.name, found.port) == ("ct", 104)
    assert target(config, "MR_1") is None


def test_overdue_commitments_are_said_once() -> None:
    forwarded = [("a", 100.0), ("b", 150.0), ("c", 199.5)]
    assert overdue(forwarded, now=200.0, after=30.0, said=set()) == ["a", "b"]
    assert overdue(forwarded, now=200.0, after=30.0, said={"a"}) == ["b"]
    assert overdue(forwarded, now=200.0, after=120.0, said=set()) == []
