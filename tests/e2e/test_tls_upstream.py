"""The proxy ORIGINATES DICOM over TLS toward an archive and a Move Destination with
``tls = true``: REAL Orthanc (``DicomTlsEnabled``, asking for the proxy's certificate)
and REAL DCMTK storescp (``+tls``), the workstation speaking clear DICOM to the proxy.

Every answer through the proxy is compared with the same request made DIRECTLY to the
TLS archive (DCMTK ``+tls``). A certificate the proxy must refuse (wrong name, a CA it
does not trust) is seen as the workstation sees it (a failure status) and as the operator
sees it (one ``tls_failed`` line, side ``archive``, and the handshake counter).
"""

from __future__ import annotations

import io
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pydicom import Dataset, dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from tests.e2e.data import SyntheticSet
from tests.e2e.dcmtk import StoreSCP, findscu, getscu, movescu, tool
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import REPO, ProxyProcess, archive_entry, to_toml
from tests.tls_certs import Issued, Pki, make_pki

ProxyFactory = Callable[..., ProxyProcess]
HANDSHAKES = "dicom_proxy_tls_handshakes_total"
KEYS = ["StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"]
SUCCESS = 0x0000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki-upstream"))


@pytest.fixture(scope="module")
def pacs_cert(pki: Pki) -> Issued:
    return pki.ca.issue("pacs", "PACS archive")


def tls_archive(name: str, pacs_cert: Issued, pki: Pki) -> OrthancArchive:
    """Orthanc speaking DICOM over TLS only; it wants a certificate from the site CA."""
    return OrthancArchive(name, extra_config={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pacs_cert.cert),
        "DicomTlsPrivateKey": str(pacs_cert.key),
        "DicomTlsTrustedCertificates": str(pki.ca.path),
        "DicomTlsRemoteCertificateRequired": True})


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet, pki: Pki,
            pacs_cert: Issued) -> Iterator[OrthancArchive]:
    with tls_archive("PACS_TLSUP", pacs_cert, pki) as pacs:
        pacs.upload(synthetic_studies.paths)
        yield pacs


def ws_tls(pki: Pki) -> list[str]:
    return ["+tls", str(pki.workstation.key), str(pki.workstation.cert), "+cf", str(pki.ca.path)]


def direct_get(archive: OrthancArchive, pki: Pki, paths: tuple[Path, ...],
               study_uid: str) -> dict[str, Dataset]:
    """The same C-GET straight to the TLS archive."""
    return tls_get(archive.dicom_port, archive.aet, pki, paths, study_uid)


def tls_workstation(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.path))
    context.load_cert_chain(str(pki.workstation.cert), str(pki.workstation.key))
    return context


def tls_get(port: int, called: str, pki: Pki, paths: tuple[Path, ...],
            study_uid: str) -> dict[str, Dataset]:
    """A C-GET over TLS as a workstation (DCMTK 3.6.7's getscu and movescu have no TLS
    options, so a pynetdicom workstation does it)."""
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}
    ae = AE("WS_CLEAR")
    ae.add_requested_context(GET)
    for uid in classes:
        ae.add_requested_context(uid)
    got: dict[str, Dataset] = {}

    def on_store(event: evt.Event) -> int:
        got[str(event.dataset.SOPInstanceUID)] = event.dataset
        return 0

    assoc = ae.associate(LOOPBACK, port, ae_title=called,
                         ext_neg=[build_role(uid, scp_role=True) for uid in classes],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)],
                         tls_args=(tls_workstation(pki), "localhost"))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    statuses = [status.Status for status, _ in assoc.send_c_get(query, GET) if status]
    assoc.release()
    assert statuses[-1] == SUCCESS
    return got


def rules(archive: OrthancArchive, pki: Pki, ca: Path | None = None,
          **archive_extra: Any) -> dict[str, Any]:
    return {
        "tls": {"cert": str(pki.proxy.cert), "key": str(pki.proxy.key),
                "ca": str(ca or pki.ca.path)},
        "archives": {"pacs": archive_entry(archive, tls=True, **archive_extra)},
        "routes": [{"called_ae": "RELAY", "archives": ["pacs"]}],
    }


def test_find_and_get_through_the_proxy_answer_as_the_tls_archive_does(
        archive: OrthancArchive, pki: Pki, pacs_cert: Issued, proxy_factory: ProxyFactory,
        synthetic_studies: SyntheticSet, tmp_path: Path) -> None:
    proxy = proxy_factory(rules(archive, pki, retrieve="get"))
    direct = findscu(LOOPBACK, archive.dicom_port, archive.aet, "WS_CLEAR", keys=KEYS,
                     tls=ws_tls(pki))
    through = findscu(LOOPBACK, proxy.port, "RELAY", "WS_CLEAR", keys=KEYS)
    assert direct.ok, direct.output[-2000:]
    assert through.ok, through.output[-2000:]
    assert len(direct.identifiers) == len(synthetic_studies.studies)
    for keyword in KEYS:
        assert sorted(through.values(keyword)) == sorted(direct.values(keyword))
    # The archive's certificate, as the handshake verified it, is exported with its expiry.
    expires = x509.load_pem_x509_certificate(pacs_cert.cert.read_bytes()).not_valid_after_utc
    assert proxy.metric("dicom_proxy_tls_certificate_expiry_seconds", role="archive",
                        subject=pacs_cert.subject) == expires.timestamp()
    study = synthetic_studies.studies[0]
    direct_got = direct_get(archive, pki, study.paths, study.study_uid)
    through_got = getscu(LOOPBACK, proxy.port, "RELAY", "WS_CLEAR",
                         keys=[f"StudyInstanceUID={study.study_uid}"],
                         output_dir=tmp_path / "through")
    assert through_got.final_status == SUCCESS, through_got.output[-2000:]
    assert set(direct_got) == set(study.sop_uids)
    through = {str(ds.SOPInstanceUID): ds for ds in through_got.datasets}
    assert set(through) == set(direct_got)
    for uid, ds in through.items():
        assert ds == direct_got[uid]
    assert proxy.metric(HANDSHAKES, side="archive", result="ok") >= 2
    assert proxy.metric(HANDSHAKES, side="archive", result="failed") == 0
    assert not proxy.events("tls_failed")


def test_tls_on_both_sides_answers_as_the_tls_archive_does(
        archive: OrthancArchive, pki: Pki, proxy_factory: ProxyFactory,
        synthetic_studies: SyntheticSet) -> None:
    """The issue's "any mix": a TLS workstation, through the proxy's TLS port, to the TLS
    archive — every leg encrypted, the answer the archive's own."""
    config = rules(archive, pki, retrieve="get")
    config["proxy"] = {"tls_port": 0}
    proxy = proxy_factory(config)
    assert proxy.tls_port
    direct = findscu(LOOPBACK, archive.dicom_port, archive.aet, "WS_TLS", keys=KEYS,
                     tls=ws_tls(pki))
    through = findscu(LOOPBACK, proxy.tls_port, "RELAY", "WS_TLS", keys=KEYS, tls=ws_tls(pki))
    assert direct.ok, direct.output[-2000:]
    assert through.ok, through.output[-2000:]
    assert len(through.identifiers) == len(synthetic_studies.studies)
    for keyword in KEYS:
        assert sorted(through.values(keyword)) == sorted(direct.values(keyword))
    assert proxy.metric(HANDSHAKES, side="workstation", result="ok") >= 1
    assert proxy.metric(HANDSHAKES, side="archive", result="ok") >= 1
    accepted = proxy.wait_event("association_accepted", lambda e: e["calling_ae"] == "WS_TLS")
    assert accepted.get("tls") is True
    assert not proxy.events("tls_failed")


def test_move_reaches_a_tls_destination(
        archive: OrthancArchive, pki: Pki, proxy_factory: ProxyFactory,
        synthetic_studies: SyntheticSet) -> None:
    dest_cert = pki.ca.issue("dest", "Destination WS")
    with StoreSCP("WS_DEST", extra_args=["+tls", str(dest_cert.key), str(dest_cert.cert),
                                         "+cf", str(pki.ca.path)]) as dest:
        dest.start()
        config = rules(archive, pki, retrieve="get")
        config["destinations"] = {"ws": {"ae_title": "WS_DEST", "host": LOOPBACK,
                                         "port": dest.port, "tls": True,
                                         "tls_server_name": "localhost"}}
        proxy = proxy_factory(config)
        study = synthetic_studies.studies[0]
        result = movescu(LOOPBACK, proxy.port, "RELAY", "WS_MOVER", move_destination="WS_DEST",
                         keys=[f"StudyInstanceUID={study.study_uid}"])
        assert result.final_status == SUCCESS, result.output[-3000:]
        expected = set(study.sop_uids)
        assert result.completed == len(expected) and not result.failed
        dest.wait_for_files(len(expected))
        assert dest.received_sop_uids() == expected
    assert proxy.metric(HANDSHAKES, side="destination", result="ok") >= 1
    assert proxy.metric(HANDSHAKES, side="destination", result="failed") == 0


def test_get_and_move_from_a_tls_workstation_over_tls_legs(
        archive: OrthancArchive, pki: Pki, proxy_factory: ProxyFactory,
        synthetic_studies: SyntheticSet) -> None:
    """C-GET and C-MOVE with TLS on every leg: workstation → proxy, proxy → archive,
    proxy → Move Destination; what arrives is what a direct TLS C-GET brings."""
    study = synthetic_studies.studies[0]
    dest_cert = pki.ca.issue("dest-both", "Destination WS both")
    with StoreSCP("WS_DEST2", extra_args=["+tls", str(dest_cert.key), str(dest_cert.cert),
                                          "+cf", str(pki.ca.path)]) as dest:
        dest.start()
        config = rules(archive, pki, retrieve="get")
        config["proxy"] = {"tls_port": 0}
        config["destinations"] = {"ws": {"ae_title": "WS_DEST2", "host": LOOPBACK,
                                         "port": dest.port, "tls": True,
                                         "tls_server_name": "localhost"}}
        proxy = proxy_factory(config)
        direct = direct_get(archive, pki, study.paths, study.study_uid)
        through = tls_get(proxy.tls_port, "RELAY", pki, study.paths, study.study_uid)
        assert set(through) == set(direct) == set(study.sop_uids)
        for uid, ds in through.items():
            assert ds == direct[uid]

        ae = AE("WS_TLS_MOVER")
        ae.add_requested_context(MOVE)
        assoc = ae.associate(LOOPBACK, proxy.tls_port, ae_title="RELAY",
                             tls_args=(tls_workstation(pki), "localhost"))
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study.study_uid
        final = [status for status, _ in assoc.send_c_move(query, "WS_DEST2", MOVE)
                 if status][-1]
        assoc.release()
        assert final.Status == SUCCESS
        assert final.NumberOfCompletedSuboperations == len(study.sop_uids)
        dest.wait_for_files(len(study.sop_uids))
        assert dest.received_sop_uids() == set(study.sop_uids)
    assert proxy.metric(HANDSHAKES, side="workstation", result="ok") == 2
    assert proxy.metric(HANDSHAKES, side="destination", result="ok") >= 1
    assert not proxy.events("tls_failed")


@pytest.mark.parametrize(("setting", "reason"), [
    ("wrong_name", "name mismatch"),
    ("rogue_ca", "unknown CA"),
])
def test_a_refused_archive_certificate(archive: OrthancArchive, pki: Pki,
                                       proxy_factory: ProxyFactory, setting: str,
                                       reason: str) -> None:
    if setting == "wrong_name":      # Orthanc's certificate names localhost and 127.0.0.1
        config = rules(archive, pki, tls_server_name="pacs.elsewhere.example")
        name = "pacs.elsewhere.example"
    else:                            # the proxy trusts only a CA that did not sign it
        config = rules(archive, pki, ca=pki.rogue_ca.path)
        name = LOOPBACK
    proxy = proxy_factory(config)
    result = findscu(LOOPBACK, proxy.port, "RELAY", "WS_CLEAR", keys=KEYS)
    assert not result.ok and result.final_status is not None, result.output[-2000:]
    assert result.final_status & 0xF000 in (0xA000, 0xC000), hex(result.final_status)
    line = proxy.wait_event("tls_failed")
    assert (line["side"], line["reason"]) == ("archive", reason)
    assert line["peer"] == f"{LOOPBACK}:{archive.dicom_port}"
    assert line["level"] == "warning" and line["hint"]
    if setting == "wrong_name":
        assert name in line["hint"]
    upstream = proxy.wait_event("upstream", lambda e: reason in str(e.get("error", "")))
    assert "TLS handshake" in upstream["error"]
    assert proxy.metric(HANDSHAKES, side="archive", result="failed") == 1
    assert proxy.metric(HANDSHAKES, side="archive", result="ok") == 0


def body(data: bytes) -> bytes:
    """A Part-10 file's data set as encoded (after preamble and file meta)."""
    f = io.BytesIO(data)
    read_preamble(f, False)
    _read_file_meta_info(f)
    return data[f.tell():]


def stored(archive: OrthancArchive, uid: str, timeout: float = 60) -> tuple[str, bytes]:
    """(Orthanc ID, file) of the instance ``uid`` once the archive holds it."""
    deadline = time.monotonic() + timeout
    while not (found := archive.rest("POST", "/tools/lookup", uid.encode())):
        assert time.monotonic() < deadline, f"{uid} never reached the archive"
        time.sleep(0.1)
    data: bytes = archive.rest("GET", f"/instances/{found[0]['ID']}/file")
    return found[0]["ID"], data


@pytest.mark.parametrize(("mode", "workstation"), [
    ("spool", "clear"), ("relay", "clear"),
    ("relay", "tls"),          # storescu +tls to the proxy's TLS port: TLS on both legs
])
def test_a_store_reaches_the_tls_archive_as_a_direct_tls_store_does(
        archive: OrthancArchive, pki: Pki, proxy_factory: ProxyFactory,
        synthetic_studies: SyntheticSet, tmp_path: Path, mode: str, workstation: str) -> None:
    config = rules(archive, pki)
    config["routes"] = [{"called_ae": "STORE", "archives": ["pacs"], "store_to": ["pacs"],
                         "store": mode}]
    if workstation == "tls":
        config["proxy"] = {"tls_port": 0}
    proxy = proxy_factory(config)
    ds = dcmread(synthetic_studies.paths[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "new.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = str(ds.SOPInstanceUID)

    def store(port: int, called: str, *flags: str) -> str:
        argv = [tool("storescu"), *flags, "-aet", "MODALITY", "-aec", called, "-to", "10",
                "-ta", "10", "-td", "30", LOOPBACK, str(port), str(path)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    if workstation == "tls":
        store(proxy.tls_port, "STORE", *ws_tls(pki))
        assert proxy.metric(HANDSHAKES, side="workstation", result="ok") == 1
    else:
        store(proxy.port, "STORE")
    orthanc_id, via_proxy = stored(archive, uid)
    archive.rest("DELETE", f"/instances/{orthanc_id}")
    store(archive.dicom_port, archive.aet, *ws_tls(pki))
    orthanc_id, direct = stored(archive, uid)
    archive.rest("DELETE", f"/instances/{orthanc_id}")
    assert body(via_proxy) == body(direct)
    assert proxy.metric(HANDSHAKES, side="archive", result="ok") >= 1
    assert not proxy.events("tls_failed")


def run_doctor(tmp_path: Path, config: dict[str, Any]) -> tuple[int, list[str]]:
    path = tmp_path / "rules.toml"
    config = {"proxy": {"ae_title": "QR_PROXY", "host": LOOPBACK, "port": 0}, **config}
    path.write_text(to_toml(config))
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "doctor", "--rules", str(path),
                           "--timeout", "5"], capture_output=True, text=True, timeout=90,
                          cwd=REPO, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout.splitlines()


def test_doctor_reaches_the_tls_archive_and_names_a_refused_certificate(
        archive: OrthancArchive, pki: Pki, pacs_cert: Issued, tmp_path: Path) -> None:
    code, lines = run_doctor(tmp_path, rules(archive, pki))
    assert code == 0, lines
    assert any(line.startswith("ok   archive pacs:") and "answers C-ECHO, C-FIND" in line
               for line in lines), lines
    assert f"ok   archive pacs: TLS certificate {pacs_cert.subject} (chains to [tls] ca, " \
        f"carries {LOOPBACK}) expires in 364 days" in lines, lines
    code, lines = run_doctor(tmp_path, rules(archive, pki, tls_server_name="pacs.example"))
    assert code == 1
    [line] = [x for x in lines if x.startswith("FAIL archive pacs:")]
    assert f"TLS handshake with archive {archive.aet} at {LOOPBACK}:{archive.dicom_port} " \
        "failed: name mismatch" in line and "pacs.example" in line, line


def test_doctor_warns_of_an_archive_certificate_about_to_expire(pki: Pki,
                                                                  tmp_path: Path) -> None:
    soon = pki.ca.issue("pacs-soon", "PACS expiring soon", days=(-300, 10.5))
    with tls_archive("PACS_SOON", soon, pki) as pacs:
        code, lines = run_doctor(tmp_path, rules(pacs, pki))
    assert code == 0, lines                       # a warning, not a failure: it still works
    [line] = [x for x in lines if x.startswith("WARN archive pacs:")]
    assert line == (f"WARN archive pacs: TLS certificate {soon.subject} (chains to [tls] ca, "
                    f"carries {LOOPBACK}) expires in 10 days: associations will then fail; "
                    f"fix: renew the certificate of {pacs.aet} at {LOOPBACK}:"
                    f"{pacs.dicom_port} before it does"), line
