"""C-FIND fidelity: a route never drops what its archive returned (issue #10, defect 2).

One Orthanc holds two studies of two patients under the same Study Instance UID (a UID
collision, or patients merged elsewhere): Orthanc files studies under PatientID + UID,
so it keeps both and a STUDY query by that UID answers two matches. The same findscu is
sent directly and through the proxy, and the answers must be equal — on a plain route,
on a route whose archive has cap recovery on (``max_results``), and in a federation of
two replicas (de-duplication is across archives only, ``proxy.query.merging`` rule 1b).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydicom import Dataset

from proxy.tools.synthetic import make_studies
from tests.e2e.conftest import OrthancFactory
from tests.e2e.dcmtk import FindResult, findscu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

ProxyFactory = Callable[..., ProxyProcess]
WS = "WORKSTATION"
KEYS = ["PatientID", "PatientName", "StudyDate", "NumberOfStudyRelatedInstances"]


def colliding() -> tuple[str, list[Dataset]]:
    """Two studies of two patients that share one Study Instance UID (and nothing else)."""
    first, second = (ds for ds in make_studies(2, seed="collide", rows=8, cols=8))
    assert first.PatientID != second.PatientID
    second.StudyInstanceUID = first.StudyInstanceUID
    return str(first.StudyInstanceUID), [first, second]


def find(port: int, called: str, uid: str) -> FindResult:
    return findscu(LOOPBACK, port, called, WS, level="STUDY",
                   keys=[f"StudyInstanceUID={uid}", *KEYS])


def answer(result: FindResult) -> tuple[Any, list[tuple[str, ...]]]:
    """Final status and the matches (without Retrieve AE Title, which the proxy names)."""
    rows = sorted(tuple(str(ds.get(k, "")) for k in ["StudyInstanceUID", *KEYS])
                  for ds in result.identifiers)
    return result.final_status, rows


@pytest.fixture
def archive(orthanc_factory: OrthancFactory) -> tuple[OrthancArchive, str]:
    uid, datasets = colliding()
    pacs = orthanc_factory("COLLIDE")
    pacs.upload(datasets)
    return pacs, uid


@pytest.mark.parametrize("extra", [{}, {"max_results": 50}], ids=["plain", "cap-recovery"])
def test_two_studies_under_one_uid_are_both_answered_through_a_route(
        archive: tuple[OrthancArchive, str], proxy_factory: ProxyFactory,
        extra: dict[str, Any]) -> None:
    pacs, uid = archive
    proxy = proxy_factory({"archives": {"pacs": archive_entry(pacs, **extra)},
                           "routes": [{"called_ae": "ROUTE", "archives": ["pacs"]}]})
    direct = find(pacs.dicom_port, pacs.aet, uid)
    assert len(direct.identifiers) == 2, direct.output[-2000:]       # Orthanc keeps both
    assert answer(find(proxy.port, "ROUTE", uid)) == answer(direct)


@pytest.mark.parametrize("merge", ["stream", "complete"])
def test_a_federation_of_replicas_answers_each_colliding_study_once(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, merge: str) -> None:
    """Both archives hold both studies: two answers (not four: across archives they are
    the same entities; not one: within an archive they are two)."""
    uid, datasets = colliding()
    a, b = orthanc_factory("SITE_A"), orthanc_factory("SITE_B")
    a.upload(datasets)
    b.upload(datasets)
    proxy = proxy_factory({
        "archives": {"a": archive_entry(a), "b": archive_entry(b)},
        "routes": [{"called_ae": "FED", "archives": ["a", "b"], "merge": merge}]})
    direct = find(a.dicom_port, a.aet, uid)
    assert len(direct.identifiers) == 2
    assert answer(find(proxy.port, "FED", uid)) == answer(direct)
    assert answer(find(b.dicom_port, b.aet, uid)) == answer(direct)


def test_a_federation_answers_one_uid_held_by_two_archives_once(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory) -> None:
    """Decision (``proxy.query.merging`` rule 1): across archives the UID is the entity, even
    under two Patient IDs — archives file one study under their own patient domains."""
    uid, (first, second) = colliding()
    a, b = orthanc_factory("SITE_A"), orthanc_factory("SITE_B")
    a.upload([first])
    b.upload([second])
    proxy = proxy_factory({
        "archives": {"a": archive_entry(a), "b": archive_entry(b)},
        "routes": [{"called_ae": "FED", "archives": ["a", "b"]}]})
    federated = find(proxy.port, "FED", uid)
    directs = [answer(find(x.dicom_port, x.aet, uid)) for x in (a, b)]
    status, rows = answer(federated)
    assert status == 0x0000 and len(rows) == 1
    assert (status, rows) in directs
