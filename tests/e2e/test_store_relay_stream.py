"""``store = "relay"``: a C-STORE's data set goes on to the archive as it arrives.

The workstation here is a raw socket speaking PS3.8 (A-ASSOCIATE-RQ, P-DATA-TF PDUs
encoded by pynetdicom, A-ABORT), because the point is a data set sent in two halves with
a pause between them, which no DICOM tool does on purpose. The archive is Orthanc, reached
through ``long_link`` with no delay: it counts the bytes the proxy has delivered to it.

- While the workstation holds back the second half, the first half has already reached
  the archive, and no file was written: socket → memory → socket. Once the rest is sent,
  the status and what the archive keeps equal the same request sent directly.
- A workstation that aborts in the middle of the data set: the archive's association is
  aborted too and keeps nothing, as direct; the C-STORE's line says why; the next
  association is served.
- A workstation that goes silent in the middle: aborted after ``network_timeout``, named
  in the log; the archive keeps nothing.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from proxy.tools.synthetic import make_studies, write_studies
from tests.e2e.conftest import OrthancFactory
from tests.e2e.fault_peers import associate_rq, closed_by_peer, pdu_header, read_pdu
from tests.e2e.long_link import LongLink, long_link
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess
from tests.e2e.test_fidelity_store_relay import ROUTE, held, relay_rules, storescu
from tests.e2e.test_store import body

ProxyFactory = Callable[..., ProxyProcess]
MODALITY = "MODALITY"
PDU = 16384
ASSOCIATE_AC, P_DATA, ABORT = 0x02, 0x04, 0x07


class Instance:
    """A 1024x1024 CT (2 MB) as the P-DATA-TF PDUs of one C-STORE-RQ."""

    def __init__(self, path: Path) -> None:
        self.path = path
        ds = dcmread(path)
        self.sop_class = str(ds.SOPClassUID)
        self.syntax = str(ds.file_meta.TransferSyntaxUID)
        self.data = body(path.read_bytes())
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = ds.SOPClassUID
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 0
        request.DataSet = BytesIO(self.data)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        self.command: list[bytes] = []
        self.fragments: list[tuple[bytes, int]] = []     # (PDU, data bytes it carries)
        for primitive in message.encode_msg(1, PDU):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            [(_, pdv)] = primitive.presentation_data_value_list
            if pdv[0] & 1:
                self.command.append(bytes(pdu.encode()))
            else:
                self.fragments.append((bytes(pdu.encode()), len(pdv) - 1))


@contextmanager
def workstation(port: int, called_ae: str, syntax: str, sop_class: str) -> Iterator[socket.socket]:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        sock.sendall(associate_rq(called_ae, MODALITY, [(sop_class, [syntax])], max_pdu=PDU))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == ASSOCIATE_AC, answer
        yield sock
    finally:
        sock.close()


def response_status(sock: socket.socket) -> int:
    """The Status of the C-STORE-RSP that comes next."""
    command = b""
    while True:
        answer = read_pdu(sock, timeout=30)
        assert answer is not None and answer[0] == P_DATA, answer
        at, pdus = 0, answer[1]
        while at < len(pdus):
            (length,) = struct.unpack_from(">L", pdus, at)
            control = pdus[at + 5]
            command += pdus[at + 6:at + 4 + length]
            at += 4 + length
            if control & 0b11 == 0b11:            # command, last fragment
                rsp: Dataset = read_dataset(BytesIO(command), True, True)
                return int(rsp.Status)


def send_whole(port: int, called: str, instance: Instance) -> int:
    with workstation(port, called, instance.syntax, instance.sop_class) as sock:
        sock.sendall(b"".join(instance.command) + b"".join(p for p, _ in instance.fragments))
        return response_status(sock)


def wait_for(done: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def receptions(proxy: ProxyProcess) -> list[Path]:
    """Files a C-STORE was received into (``rx-*``), anywhere under the proxy's spool."""
    return sorted((proxy.workdir / "spool").rglob("rx-*"))


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    [path] = write_studies(tmp_path / "ct", make_studies(1, instances_per_series=1, rows=1024,
                                                         cols=1024, seed="stream"))
    return Instance(path)


def relay_through(link: LongLink, archive: OrthancArchive, **proxy: Any) -> dict[str, Any]:
    rules = relay_rules(archive)
    rules["archives"]["pacs"]["port"] = link.port
    if proxy:
        rules["proxy"] = proxy
    return rules


def test_the_first_half_reaches_the_archive_before_the_second_is_sent(
        instance: Instance, orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory
        ) -> None:
    direct_archive, proxied_archive = (orthanc_factory("DIRECT"), orthanc_factory("PROXIED"))
    half = len(instance.fragments) // 2
    first_half = sum(n for _, n in instance.fragments[:half])
    with long_link(proxied_archive.dicom_port, 0.0) as link:
        proxy = proxy_factory(relay_through(link, proxied_archive))
        with workstation(proxy.port, ROUTE, instance.syntax, instance.sop_class) as sock:
            before = link.delivered_up             # the A-ASSOCIATE-RQ
            sock.sendall(b"".join(instance.command)
                         + b"".join(p for p, _ in instance.fragments[:half]))
            wait_for(lambda: link.delivered_up - before >= first_half,
                     f"the archive got {link.delivered_up - before} bytes of the "
                     f"{first_half} the workstation sent: the data set was held back")
            assert receptions(proxy) == []         # nothing went through a file
            sock.sendall(b"".join(p for p, _ in instance.fragments[half:]))
            proxied = response_status(sock)
    direct = send_whole(direct_archive.dicom_port, direct_archive.aet, instance)
    assert proxied == direct == 0
    assert held(proxied_archive) == held(direct_archive) != {}
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "C-STORE")
    assert line["status"] == "0x0000" and line["bytes"] > len(instance.data)


def test_a_workstation_aborting_mid_data_set_leaves_nothing_at_the_archive_as_direct(
        instance: Instance, orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory
        ) -> None:
    direct_archive, proxied_archive = (orthanc_factory("DIRECT"), orthanc_factory("PROXIED"))
    half = len(instance.fragments) // 2
    with long_link(proxied_archive.dicom_port, 0.0) as link:
        proxy = proxy_factory(relay_through(link, proxied_archive))
        for port, called in ((direct_archive.dicom_port, direct_archive.aet),
                             (proxy.port, ROUTE)):
            with workstation(port, called, instance.syntax, instance.sop_class) as sock:
                before = link.delivered_up
                sock.sendall(b"".join(instance.command)
                             + b"".join(p for p, _ in instance.fragments[:half]))
                if port == proxy.port:
                    wait_for(lambda start=before: link.delivered_up > start, "nothing forwarded")
                sock.sendall(pdu_header(ABORT, 4) + b"\0\0\0\0")
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "C-STORE")
        assert line["status"] == "0xA700", line
        assert "in the middle of the C-STORE data set" in line["error"], line
        proxy.wait_event("association_aborted")
        wait_for(lambda: link.open == 0, "the archive association outlived the workstation's")
        assert held(proxied_archive) == held(direct_archive) == {}
        seen = storescu(proxy.port, ROUTE, [instance.path])     # the next one is served
        assert list(seen.statuses.values()) == [0], seen.output
    assert len(held(proxied_archive)) == 1
    assert receptions(proxy) == []


def test_a_workstation_silent_mid_data_set_is_aborted_after_network_timeout(
        instance: Instance, orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory
        ) -> None:
    archive = orthanc_factory("PROXIED")
    half = len(instance.fragments) // 2
    with long_link(archive.dicom_port, 0.0) as link:
        proxy = proxy_factory(relay_through(link, archive, network_timeout=1))
        with workstation(proxy.port, ROUTE, instance.syntax, instance.sop_class) as sock:
            sock.sendall(b"".join(instance.command)
                         + b"".join(p for p, _ in instance.fragments[:half]))
            assert closed_by_peer(sock, 20) is not None
        aborted = proxy.wait_event("association_aborted")
        assert "network_timeout (1s)" in aborted["reason"], aborted
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "C-STORE")
        assert line["status"] == "0xA700" and "network_timeout" in line["error"], line
        wait_for(lambda: link.open == 0, "the archive association outlived the workstation's")
    assert held(archive) == {}


def test_a_header_longer_than_the_first_bytes_is_read_whole_before_forwarding(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    # A 12-lead ECG sent as stored: its waveform sequence comes before the end of the
    # header, so the first 64 KiB of its data set do not hold the header whole (pydicom
    # cannot read them); the proxy reads on until they do. The route's store_filter
    # takes ECG only: Success says Modality was read.
    path = Path(get_testdata_file("waveform_ecg.dcm"))  # type: ignore[arg-type]
    ecg = Instance(path)
    with pytest.raises(OSError, match="No tag to read"):
        dcmread(BytesIO(path.read_bytes()[:64 * 1024]), stop_before_pixels=True)
    direct_archive, proxied_archive = (orthanc_factory("DIRECT"), orthanc_factory("PROXIED"))
    proxy = proxy_factory(relay_rules(proxied_archive, store_filter={
        "pacs": {"modality": [str(dcmread(path).Modality)]}}))
    assert send_whole(proxy.port, ROUTE, ecg) == send_whole(
        direct_archive.dicom_port, direct_archive.aet, ecg) == 0
    assert held(proxied_archive) == held(direct_archive) != {}
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "C-STORE")
    assert "header_error" not in line and line["status"] == "0x0000"


def test_an_archive_that_stops_reading_mid_data_set_fails_that_store_after_its_timeout(
        orthanc_factory: OrthancFactory, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    # 64 MB: more than the 4 MiB the proxy holds plus what the loopback socket buffers
    # on the way take, so the proxy must stop reading the workstation while the archive
    # does not read: the workstation's send is held until the archive's timeout.
    [path] = write_studies(tmp_path / "big", make_studies(1, instances_per_series=1, rows=8192,
                                                          cols=4096, seed="stall"))
    big = Instance(path)
    archive = orthanc_factory("PROXIED")
    with long_link(archive.dicom_port, 0.0) as link:
        rules = relay_through(link, archive)
        rules["archives"]["pacs"]["timeout"] = 2
        proxy = proxy_factory(rules)
        link.stall_up_after = 1 << 20          # the archive stops reading after 1 MiB
        with workstation(proxy.port, ROUTE, big.syntax, big.sop_class) as sock:
            started = time.monotonic()
            sock.sendall(b"".join(big.command) + b"".join(p for p, _ in big.fragments))
            sent = time.monotonic() - started      # held back until the archive timed out
            status = response_status(sock)
        assert status == 0xA700 and 1.5 <= sent < 30, (status, sent)
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "C-STORE")
        assert line["status"] == "0xA700" and "within 2s" in line["error"], line
        assert line["bytes"] > len(big.data)          # the whole data set was read
        link.stall_up_after = None
        seen = storescu(proxy.port, ROUTE, [Path(get_testdata_file("CT_small.dcm"))])
        assert list(seen.statuses.values()) == [0], seen.output
    assert len(held(archive)) == 1                    # the small one; nothing of the big one
