"""Issue 10, defect 1: the receiver's accepted contexts decide what the proxy asks the archive for.

Orthanc holds one study in every encoding pydicom bundles (JPEG baseline, extended and
lossless, JPEG 2000, JPEG-LS, RLE, big endian, explicit and implicit little endian).
The receivers are DCMTK as a site runs it out of the box: ``storescp`` with its
default options (uncompressed syntaxes only) as Move Destination, ``getscu`` with its
default proposal as C-GET workstation.

Every test runs the same retrieve directly against Orthanc and through the proxy and
compares: final status, sub-operation counts, which instances arrived, and each arrived
instance's transfer syntax and pixel data, byte for byte. Directly, Orthanc converts what
the receiver does not accept; through the proxy the archive must be asked for exactly
that, so the two deliveries are the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tests.e2e.conftest import StoreSCPFactory
from tests.e2e.dcmtk import RetrieveResult, StoreSCP, getscu, movescu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.e2e.retrieve_peers import ENCODED_FILES, RecordingSCP, encoded_study

ROUTE = "FIDELITY"
WORKSTATION = "VIEWER"
ProxyFactory = Callable[..., ProxyProcess]
UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    return encoded_study(tmp_path_factory.mktemp("fidelity-encoded"), ENCODED_FILES,
                         patient_id="FIDSYN01")


@pytest.fixture(scope="module")
def direct_dest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """storescp with default options, known to Orthanc: the direct path's destination."""
    with StoreSCP("DIRECT", tmp_path_factory.mktemp("direct-dest"),
                  default_options=True) as scp:
        yield scp


@pytest.fixture(scope="module")
def only_ct() -> Iterator[RecordingSCP]:
    """A destination that accepts CT Image Storage only (any transfer syntax)."""
    scp = RecordingSCP("ONLY_CT", [CTImageStorage])
    yield scp
    scp.close()


@pytest.fixture(scope="module")
def no_class() -> Iterator[RecordingSCP]:
    """A destination that accepts no storage class of the study."""
    scp = RecordingSCP("NO_CLASS", [EncapsulatedPDFStorage])
    yield scp
    scp.close()


@pytest.fixture(scope="module")
def pacs(encoded: tuple[str, list[Path]], direct_dest: StoreSCP, only_ct: RecordingSCP,
         no_class: RecordingSCP) -> Iterator[OrthancArchive]:
    with OrthancArchive("FIDPACS", known_modalities={
            "direct": direct_dest.modality,
            "only_ct": (only_ct.aet, LOOPBACK, only_ct.port),
            "no_class": (no_class.aet, LOOPBACK, no_class.port)}) as archive:
        archive.upload(encoded[1])
        yield archive


def rules(pacs: OrthancArchive, dest: StoreSCP | RecordingSCP) -> dict[str, Any]:
    return {
        "archives": {"pacs": archive_entry(pacs)},
        "destinations": {"dest": {"ae_title": dest.aet, "host": LOOPBACK, "port": dest.port}},
        "routes": [{"called_ae": ROUTE, "archives": ["pacs"]}],
    }


def delivered(datasets: list[Dataset]) -> dict[str, tuple[str, bytes | None]]:
    """SOP Instance UID → (transfer syntax, pixel data bytes) of what a receiver holds."""
    return {str(ds.SOPInstanceUID): (str(ds.file_meta.TransferSyntaxUID),
                                     bytes(ds.PixelData) if "PixelData" in ds else None)
            for ds in datasets}


def original_syntaxes(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    return out


def assert_same_delivery(got: dict[str, tuple[str, bytes | None]],
                         want: dict[str, tuple[str, bytes | None]],
                         originals: dict[str, str], proxied: RetrieveResult) -> None:
    """Everything the direct path delivered arrived through the proxy, pixel data byte for
    byte. An instance that kept its own syntax directly keeps it through the proxy. One the
    archive converted was converted by the archive through the proxy too; Orthanc reports
    no syntaxes in C-FIND, so which uncompressed syntax of those the receiver accepted it
    converts to is Orthanc's choice, not storescp's (README, "What the proxy changes")."""
    assert got.keys() >= want.keys(), proxied.output[-3000:]
    for uid, (syntax, pixels) in want.items():
        assert got[uid][1] == pixels, (uid, syntax)
        if syntax == originals[uid]:
            assert got[uid][0] == syntax, uid
        else:
            assert got[uid][0] in UNCOMPRESSED_LE, (uid, got[uid][0])


def compare_moves(direct_dest: StoreSCP, dest: StoreSCP, originals: list[Path],
                  direct: RetrieveResult, proxied: RetrieveResult,
                  ) -> tuple[dict[str, tuple[str, bytes | None]],
                             dict[str, tuple[str, bytes | None]]]:
    """What the two storescps received, checked alike (``assert_same_delivery``)."""
    want = delivered(direct_dest.received_datasets())
    got = delivered(dest.received_datasets())
    # The direct path delivers the study converted to what storescp takes, up to the first
    # instance Orthanc cannot convert (it then ends the C-MOVE with 0xC000).
    assert len(want) >= len(ENCODED_FILES) // 2, direct.output[-3000:]
    assert_same_delivery(got, want, original_syntaxes(originals), proxied)
    return want, got


def counts(result: RetrieveResult) -> tuple[int | None, int | None, int | None, int | None]:
    return result.final_status, result.completed, result.failed, result.warning


def test_move_to_a_receiver_of_uncompressed_syntaxes_delivers_what_direct_delivers(
        pacs: OrthancArchive, encoded: tuple[str, list[Path]], direct_dest: StoreSCP,
        proxy_factory: ProxyFactory, store_scp_factory: StoreSCPFactory) -> None:
    study = encoded[0]
    keys = [f"StudyInstanceUID={study}"]
    direct = movescu(LOOPBACK, pacs.dicom_port, pacs.aet, WORKSTATION,
                     move_destination=direct_dest.aet, keys=keys)
    dest = store_scp_factory("PROXIED", default_options=True)
    proxy = proxy_factory(rules(pacs, dest))
    proxied = movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=dest.aet,
                      keys=keys)

    want, got = compare_moves(direct_dest, dest, encoded[1], direct, proxied)
    if got.keys() == want.keys():
        assert counts(proxied) == counts(direct)
    else:   # the proxy converted what Orthanc could not; what it could not either is Failed
        assert_converted_or_failed_with_reason(proxy, "C-MOVE", proxied, len(got))
    assert "Release Failed" not in proxied.output


def test_get_with_getscu_default_proposal_receives_what_direct_receives(
        pacs: OrthancArchive, encoded: tuple[str, list[Path]],
        proxy_factory: ProxyFactory, store_scp_factory: StoreSCPFactory,
        tmp_path: Path) -> None:
    study = encoded[0]
    keys = [f"StudyInstanceUID={study}"]
    direct = getscu(LOOPBACK, pacs.dicom_port, pacs.aet, WORKSTATION, keys=keys)
    proxy = proxy_factory(rules(pacs, store_scp_factory("UNUSED")))
    proxied = getscu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, keys=keys)

    want = delivered(direct.datasets)
    got = delivered(proxied.datasets)
    assert len(want) >= len(ENCODED_FILES) // 2, direct.output[-3000:]
    assert_same_delivery(got, want, original_syntaxes(encoded[1]), proxied)
    if got.keys() == want.keys():
        assert counts(proxied) == counts(direct)
    else:   # the proxy converted what Orthanc could not; what it could not either is Failed
        assert_converted_or_failed_with_reason(proxy, "C-GET", proxied, len(got))
    assert_released_cleanly(proxied)


def assert_released_cleanly(result: RetrieveResult) -> None:
    """getscu released the association without a protocol error of the proxy's.

    DCMTK 3.6.7's getscu never reads the Identifier of a C-GET response (``DcmSCU::
    handleCGETSession`` receives the command only), so after a final response carrying
    the Failed SOP Instance UID List (required by PS3.4 C.4.3.1.3.1 for 0xB000/0xA702)
    it finds that PDU still unread when it releases — the same happens with any SCP that
    follows the standard. Any other "Release Failed" would be a PDU written late.
    """
    output = result.output
    if "Release Failed" not in output:
        return
    final = output.rsplit("Message Type                  : C-GET RSP", 1)[-1]
    assert "Data Set                      : present" in final, output[-4000:]
    assert result.final_status in (0xB000, 0xA702), output[-4000:]


def assert_converted_or_failed_with_reason(proxy: ProxyProcess, operation: str,
                                           result: RetrieveResult, arrived: int) -> None:
    op = proxy.wait_event("operation", lambda e: e.get("operation") == operation)
    assert op.get("transcoded"), op                     # the log says the proxy converted
    assert result.completed == arrived, op
    assert (result.completed or 0) + (result.failed or 0) == len(ENCODED_FILES)
    if result.failed:
        assert result.final_status == 0xB000
        assert op["failure_reasons"], op
    else:
        assert result.final_status == 0x0000


def test_a_receiver_that_accepts_none_of_the_study_s_classes_gets_failed_counts(
        pacs: OrthancArchive, encoded: tuple[str, list[Path]], no_class: RecordingSCP,
        proxy_factory: ProxyFactory) -> None:
    """Nothing of the study can be delivered: Failed = N with the reason, never an abort."""
    keys = [f"StudyInstanceUID={encoded[0]}"]
    direct = movescu(LOOPBACK, pacs.dicom_port, pacs.aet, WORKSTATION,
                     move_destination=no_class.aet, keys=keys)
    proxy = proxy_factory(rules(pacs, no_class))
    proxied = movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=no_class.aet,
                      keys=keys)
    assert not no_class.received
    assert direct.final_status is not None and direct.final_status & 0xF000 in (0xA000, 0xC000)
    assert proxied.final_status == 0xA702, proxied.output[-3000:]   # PS3.4 C.4.2.1.5
    assert (proxied.completed, proxied.failed) == (0, len(ENCODED_FILES))
    assert "Abort" not in proxied.output
    op = proxy.wait_event("operation", lambda e: e.get("operation") == "C-MOVE")
    assert any("accepted no context" in why for why in op["failure_reasons"]), op


def test_a_receiver_of_one_class_gets_that_class_and_the_rest_is_failed_with_the_reason(
        pacs: OrthancArchive, encoded: tuple[str, list[Path]], only_ct: RecordingSCP,
        proxy_factory: ProxyFactory) -> None:
    """Orthanc gives up a C-MOVE at the first instance it cannot deliver; through the
    proxy everything deliverable arrives and each of the others is counted Failed."""
    keys = [f"StudyInstanceUID={encoded[0]}"]
    direct = movescu(LOOPBACK, pacs.dicom_port, pacs.aet, WORKSTATION,
                     move_destination=only_ct.aet, keys=keys)
    want = set(only_ct.received)
    only_ct.received.clear()
    proxy = proxy_factory(rules(pacs, only_ct))
    proxied = movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=only_ct.aet,
                      keys=keys)
    got = set(only_ct.received)
    assert got >= want and len(got) == 1, direct.output[-2000:]
    assert proxied.final_status == 0xB000, proxied.output[-3000:]
    assert (proxied.completed, proxied.failed) == (1, len(ENCODED_FILES) - 1)
    op = proxy.wait_event("operation", lambda e: e.get("operation") == "C-MOVE")
    assert any("accepted no context" in why for why in op["failure_reasons"]), op


# -- retrieve = "move": the archive's association to the proxy is accepted as the receiver
# accepted, so the archive converts for it as it does directly -----------------------------


@pytest.fixture(scope="module")
def move_proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def move_pacs(encoded: tuple[str, list[Path]], direct_dest: StoreSCP,
              move_proxy_port: int) -> Iterator[OrthancArchive]:
    with OrthancArchive("FIDMOVE", known_modalities={
            "direct": direct_dest.modality,
            "proxy": ("QR_PROXY", LOOPBACK, move_proxy_port)}) as archive:
        archive.upload(encoded[1])
        yield archive


def test_move_mode_asks_the_archive_for_what_the_receiver_takes(
        move_pacs: OrthancArchive, encoded: tuple[str, list[Path]], direct_dest: StoreSCP,
        move_proxy_port: int, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    keys = [f"StudyInstanceUID={encoded[0]}"]
    for path in direct_dest.received_files():
        path.unlink()
    direct = movescu(LOOPBACK, move_pacs.dicom_port, move_pacs.aet, WORKSTATION,
                     move_destination=direct_dest.aet, keys=keys)
    dest = store_scp_factory("PROXIED", default_options=True)
    rules_ = rules(move_pacs, dest)
    rules_["archives"]["pacs"]["retrieve"] = "move"
    rules_["proxy"] = {"port": move_proxy_port}
    proxy = proxy_factory(rules_)
    proxied = movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=dest.aet,
                      keys=keys)
    _want, got = compare_moves(direct_dest, dest, encoded[1], direct, proxied)
    # Orthanc gives up its C-MOVE at the first instance it cannot convert (0xC000, no
    # counts, directly); through the proxy the workstation gets the true counts.
    assert proxied.completed == len(got), proxied.output[-3000:]
    assert (proxied.completed or 0) + (proxied.failed or 0) == len(ENCODED_FILES)
    assert proxied.final_status == (0xB000 if proxied.failed else 0x0000)
    upstream = [e for e in proxy.events("upstream") if e.get("operation") == "C-MOVE"]
    assert len(upstream) == 1, upstream                 # one C-MOVE, one archive job
    op = proxy.wait_event("operation", lambda e: e.get("operation") == "C-MOVE")
    assert not op.get("transcoded"), op                 # the archive converted, not the proxy
