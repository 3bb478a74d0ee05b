"""MPPS through the proxy (issue #14): a pynetdicom modality → the proxy → a pynetdicom RIS.

- RIS up: the RIS receives exactly what the modality sends it directly (operation,
  instance, transfer syntax, data set bytes) and the modality gets the same statuses,
  response UIDs and data sets — 0x0110 and 0x0112 included;
- an N-CREATE without Affected SOP Instance UID gets a 2.25 UID from the proxy, which the
  RIS receives and the modality is answered with;
- RIS down: N-CREATE and N-SETs get Success once journaled; when the RIS comes back each
  arrives once, in order; after SIGKILL and a restart, too;
- an N-SET for an instance the proxy never saw, with the RIS down: 0x0110 and a comment;
- one ``operation`` line and one ``upstream`` line per message, and the metrics; a
  command the proxy does not serve (N-GET) is one ``operation`` line too (0x0211).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from tests.e2e.mpps_peers import Modality, Received, Ris, mpps_create, mpps_set
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess

ProxyFactory = Callable[..., ProxyProcess]
ROUTE = "MPPS_PROXY"
MPPS = "1.2.840.10008.3.1.2.3.3"
UID = "1.2.826.0.1.3680043.10.543.90.1"
UNKNOWN = "1.2.826.0.1.3680043.10.543.90.999"


def rules(ris_port: int, spool: Path) -> dict[str, Any]:
    return {"archives": {"ris": {"ae_title": "RIS", "host": LOOPBACK, "port": ris_port,
                                 "timeout": 5}},
            "routes": [{"called_ae": ROUTE, "archives": ["ris"], "mpps_to": ["ris"]}],
            "spool": {"dir": str(spool), "retry_initial": 0.2, "retry_max": 0.5}}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.05)


def pending(spool: Path) -> list[str]:
    folder = spool / "mpps" / "ris" / "pending"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def sent_bytes(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The data set as the modality encodes it on its context."""
    data = encode(ds, syntax == ImplicitVRLittleEndian, True)
    assert data is not None
    return bytes(data)


def report_steps() -> list[tuple[str, str | None, Dataset]]:
    return [("N-CREATE", UID, mpps_create(1)), ("N-SET", UID, mpps_set("IN PROGRESS", 1)),
            ("N-SET", UID, mpps_set("COMPLETED", 2))]


def delivered(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """The proxy's upstream lines for MPPS messages the RIS answered."""
    return [e for e in proxy.events("upstream")
            if e.get("operation") in ("N-CREATE", "N-SET") and e.get("status") != "none"]


def test_ris_up_the_ris_receives_what_the_modality_sends_directly(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    ris = Ris().start()
    try:
        steps = [*report_steps(),
                 ("N-SET", UID, mpps_set("DISCONTINUED")),       # after COMPLETED: 0x0110
                 ("N-SET", UNKNOWN, mpps_set("COMPLETED"))]      # no such instance: 0x0112
        direct = Modality().report(ris.port, "RIS", steps)
        direct_rx = ris.wait_for(len(steps))
        ris.reset()
        proxy = proxy_factory(rules(ris.port, tmp_path / "spool"))
        proxied = Modality().report(proxy.port, ROUTE, steps)
        proxied_rx = ris.wait_for(len(steps))

        assert [a.status for a in direct] == [0x0000, 0x0000, 0x0000, 0x0110, 0x0112]
        assert [a.status for a in proxied] == [a.status for a in direct]
        assert [a.comment for a in proxied] == [a.comment for a in direct]
        assert [a.affected for a in proxied] == [a.affected for a in direct]
        assert [a.data for a in proxied] == [a.data for a in direct]
        assert proxied_rx == direct_rx                     # operation, UID, syntax, bytes
        assert proxied_rx[0].data == sent_bytes(steps[0][2])
        assert not pending(tmp_path / "spool")

        # (5) one operation line and one upstream line per message; the metrics.
        wait_for(lambda: len(proxy.operations("N-SET")) == 4, "four N-SET operation lines")
        creates, sets = proxy.operations("N-CREATE"), proxy.operations("N-SET")
        assert [e["status"] for e in creates + sets] == \
            ["0x0000", "0x0000", "0x0000", "0x0110", "0x0112"]
        assert all(e["archives"] == ["ris"] and e["delivery"] == {"ris": "forwarded"}
                   and isinstance(e["duration_ms"], float) for e in creates + sets)
        ups = delivered(proxy)
        assert [(e["archive"], e["operation"], e["status"]) for e in ups] == \
            [("ris", "N-CREATE", "0x0000"), ("ris", "N-SET", "0x0000"),
             ("ris", "N-SET", "0x0000"), ("ris", "N-SET", "0x0110"), ("ris", "N-SET", "0x0112")]
        m = proxy.metric
        assert m("dicom_proxy_operations_total", operation="N-CREATE", called_ae=ROUTE,
                 status="success") == 1
        assert m("dicom_proxy_operations_total", operation="N-SET", called_ae=ROUTE,
                 status="success") == 2
        assert m("dicom_proxy_operations_total", operation="N-SET", called_ae=ROUTE,
                 status="failure") == 2
        assert m("dicom_proxy_upstream_requests_total", archive="ris", operation="N-SET") == 4
        assert m("dicom_proxy_operation_duration_seconds_count", operation="N-CREATE",
                 called_ae=ROUTE) == 1
    finally:
        ris.stop()


def test_an_n_create_without_instance_uid_gets_one_from_the_proxy(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    ris = Ris().start()
    try:
        [direct] = Modality().report(ris.port, "RIS", [("N-CREATE", None, mpps_create(2))])
        ris.reset()
        proxy = proxy_factory(rules(ris.port, tmp_path / "spool"))
        [created] = Modality().report(proxy.port, ROUTE, [("N-CREATE", None, mpps_create(2))])
        assert created.status == direct.status == 0x0000
        assert created.affected is not None and created.affected.startswith("2.25.")
        assert created.affected != direct.affected
        [rx] = ris.wait_for(1)
        assert rx.sop_instance == created.affected and rx.data == sent_bytes(mpps_create(2))
        assert created.data is not None and created.data == direct.data  # the RIS's list
        [done] = Modality().report(proxy.port, ROUTE,
                                   [("N-SET", created.affected, mpps_set("COMPLETED"))])
        assert done.status == 0x0000 and done.affected == created.affected
    finally:
        ris.stop()


def test_ris_down_every_message_arrives_once_in_order_when_it_is_back(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ris = Ris(port=free_port())                          # not started: the RIS is down
    proxy = proxy_factory(rules(ris.port, spool))
    steps = report_steps()
    answers = Modality().report(proxy.port, ROUTE, steps)
    assert [a.status for a in answers] == [0x0000] * 3
    assert [a.affected for a in answers] == [UID] * 3
    assert len(pending(spool)) == 3                        # on disk before Success
    wait_for(lambda: len(proxy.operations()) == 3, "three operation lines")
    assert [e["delivery"] for e in proxy.operations()] == [{"ris": "journaled"}] * 3
    assert proxy.metric("dicom_proxy_mpps_pending", archive="ris") == 3
    try:
        ris.start()
        rx = ris.wait_for(3)
        wait_for(lambda: len(delivered(proxy)) == 3 and not pending(spool),
                 "the journal delivered")
        wait_for(lambda: proxy.metric("dicom_proxy_mpps_pending", archive="ris") == 0,
                 "the pending gauge back to 0")
        assert rx == [Received(op, UID, ExplicitVRLittleEndian, sent_bytes(ds))
                      for op, _, ds in steps]
        assert [e["status"] for e in delivered(proxy)] == ["0x0000"] * 3
        assert ris.calling_aets and set(ris.calling_aets) == {"QR_PROXY"}
        # The queue is empty again: the next message goes at once, with the RIS's answer.
        [late] = Modality().report(proxy.port, ROUTE, [("N-SET", UNKNOWN, mpps_set("X"))])
        assert late.status == 0x0112 and len(ris.wait_for(4)) == 4
    finally:
        ris.stop()


def test_journaled_messages_survive_sigkill_and_are_delivered_once(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ris = Ris(port=free_port())
    first = proxy_factory(rules(ris.port, spool), check_exit=False)
    steps = report_steps()
    assert [a.status for a in Modality().report(first.port, ROUTE, steps)] == [0] * 3
    first.kill()                                          # SIGKILL: no chance to tidy up
    assert len(pending(spool)) == 3
    try:
        ris.start()
        second = proxy_factory(rules(ris.port, spool))
        rx = ris.wait_for(3)
        wait_for(lambda: len(delivered(second)) == 3 and not pending(spool),
                 "the journal delivered after the restart")
        assert rx == [Received(op, UID, ExplicitVRLittleEndian, sent_bytes(ds))
                      for op, _, ds in steps]
        opened = second.wait_event("mpps_journal_opened")
        assert opened["pending"] == {"ris": 3}
        assert len(ris.received) == 3
    finally:
        ris.stop()


def test_an_n_set_for_an_instance_the_proxy_never_saw_is_refused_while_the_ris_is_down(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    proxy = proxy_factory(rules(free_port(), spool))
    [answer] = Modality().report(proxy.port, ROUTE, [("N-SET", UNKNOWN, mpps_set("COMPLETED"))])
    assert answer.status == 0x0110
    assert answer.comment == "RIS unreachable; instance not created through the proxy"
    assert not pending(spool)
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "N-SET")
    assert line["status"] == "0x0110" and line["delivery"] == {"ris": "refused"}
    assert "N-CREATE" in line["hint"]
    up = proxy.wait_event("upstream", lambda e: e.get("operation") == "N-SET")
    assert up["archive"] == "ris" and up["status"] == "none" and up["error"]


def test_a_command_the_proxy_does_not_serve_is_one_operation_line(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    proxy = proxy_factory(rules(free_port(), tmp_path / "spool"))
    [answer] = Modality().report(proxy.port, ROUTE, [("N-GET", UID, Dataset())])
    assert answer.status == 0x0211
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "N-GET")
    assert line["status"] == "0x0211" and line["hint"]
    assert proxy.metric("dicom_proxy_operations_total", operation="N-GET",
                        status="failure") == 1


def test_a_ris_refusal_of_a_journaled_message_is_a_dead_letter(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ris = Ris(port=free_port())
    proxy = proxy_factory(rules(ris.port, spool))
    steps = [*report_steps()[::2], ("N-SET", UID, mpps_set("DISCONTINUED"))]
    assert [a.status for a in Modality().report(proxy.port, ROUTE, steps)] == [0] * 3
    try:
        ris.start()
        dead = proxy.wait_event("mpps_dead_lettered")
        assert [r.operation for r in ris.wait_for(3)] == ["N-CREATE", "N-SET", "N-SET"]
        assert dead["archive"] == "ris" and dead["status"] == "0x0110"
        assert dead["operation"] == "N-SET" and dead["sop_instance_uid"] == UID
        assert Path(dead["path"]).read_bytes().endswith(sent_bytes(steps[2][2]))
        wait_for(lambda: not pending(spool), "the journal emptied")
        assert [e["status"] for e in delivered(proxy)] == ["0x0000", "0x0000", "0x0110"]
        assert proxy.metric("dicom_proxy_mpps_dead_letters", archive="ris") == 1
    finally:
        ris.stop()


def test_the_first_mpps_to_archive_answers_and_one_that_is_down_gets_its_copy_later(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first, second = Ris("RIS").start(), Ris("RIS2", port=free_port())
    config = rules(first.port, spool)
    config["archives"]["ris2"] = {"ae_title": "RIS2", "host": LOOPBACK, "port": second.port,
                                  "timeout": 5}
    config["routes"][0]["mpps_to"] = ["ris", "ris2"]
    try:
        proxy = proxy_factory(config)
        steps = [*report_steps(), ("N-SET", UNKNOWN, mpps_set("COMPLETED"))]
        answers = Modality().report(proxy.port, ROUTE, steps)
        assert [a.status for a in answers] == [0, 0, 0, 0x0112]      # the first RIS's
        assert len(first.wait_for(4)) == 4
        wait_for(lambda: len(proxy.operations()) == 4, "four operation lines")
        assert [e["delivery"] for e in proxy.operations()] == [
            {"ris": "forwarded", "ris2": "journaled"}] * 3 + [
            {"ris": "forwarded", "ris2": "refused"}]
        second.start()
        rx = second.wait_for(3)
        assert rx == first.received[:3]                               # the same, in order
        wait_for(lambda: not (spool / "mpps" / "ris2" / "pending").exists()
                 or not any((spool / "mpps" / "ris2" / "pending").iterdir()),
                 "ris2's journal emptied")
    finally:
        first.stop()
        second.stop()


def test_a_message_behind_a_queued_one_waits_its_turn_though_the_ris_is_back(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """Order: with its N-CREATE still journaled, an N-SET is journaled behind it even when
    the RIS would answer at once (it would answer 0x0112: no such instance yet)."""
    spool = tmp_path / "spool"
    ris = Ris(port=free_port())
    config = rules(ris.port, spool)
    config["spool"].update(retry_initial=4.0, retry_max=4.0)   # the retry comes 2-4 s later
    proxy = proxy_factory(config)
    [create, update, _] = report_steps()
    assert Modality().report(proxy.port, ROUTE, [create])[0].status == 0
    proxy.wait_event("upstream", lambda e: e.get("operation") == "N-CREATE"
                     and e.get("delivery") == "association")   # the deliverer tried: backoff
    try:
        ris.start()
        [answer] = Modality().report(proxy.port, ROUTE, [update])
        assert answer.status == 0x0000
        assert proxy.wait_event("operation", lambda e: e.get("operation") == "N-SET")[
            "delivery"] == {"ris": "journaled"}
        assert [(r.operation, r.sop_instance) for r in ris.wait_for(2)] == [
            ("N-CREATE", UID), ("N-SET", UID)]
        wait_for(lambda: len(delivered(proxy)) == 2, "both delivered")
        assert [e["status"] for e in delivered(proxy)] == ["0x0000", "0x0000"]
    finally:
        ris.stop()


def test_doctor_checks_that_the_ris_accepts_mpps(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from tests.e2e.test_doctor import proxy_section, run_doctor
    ris = Ris().start()
    echo_only = AE("NOMPPS")
    echo_only.add_supported_context(Verification)
    server = echo_only.start_server((LOOPBACK, 0), block=False)
    try:
        config: dict[str, Any] = {
            "proxy": proxy_section(),
            "archives": {"ris": {"ae_title": "RIS", "host": LOOPBACK, "port": ris.port},
                         "nompps": {"ae_title": "NOMPPS", "host": LOOPBACK,
                                    "port": server.server_address[1]}},
            "routes": [{"called_ae": ROUTE, "archives": ["ris"], "mpps_to": ["ris"],
                        "destinations": []},
                       {"called_ae": "OTHER", "archives": ["nompps"], "mpps_to": ["nompps"],
                        "destinations": []}]}
        config["routes"][0]["archives"] = ["nompps"]      # ris: MPPS only, never queried
        code, lines, _ = run_doctor(tmp_path, config)
        [ok] = [line for line in lines if "archive ris" in line]
        assert ok.startswith("ok") and "accepts MPPS from QR_PROXY" in ok
        fails = [line for line in lines if "archive nompps" in line and "Performed" in line]
        assert len(fails) == 1 and fails[0].startswith("FAIL") and code == 1
    finally:
        ris.stop()
        server.shutdown()


def test_an_n_create_the_ris_kept_but_never_answered_is_not_delivered_twice(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """The RIS got the N-CREATE but its answer never came within the archive's timeout:
    the modality gets Success once it is journaled; the redelivery meets 0x0111 Duplicate
    SOP Instance — the first attempt did arrive — and counts as delivered (no dead
    letter), so the N-SETs behind it follow."""
    spool = tmp_path / "spool"
    ris = Ris().start()
    ris.silent_creates = 1
    config = rules(ris.port, spool)
    config["archives"]["ris"]["timeout"] = 2
    proxy = proxy_factory(config)
    steps = report_steps()
    try:
        answers = Modality().report(proxy.port, ROUTE, steps)
        assert [a.status for a in answers] == [0] * 3
        wait_for(lambda: len(proxy.operations()) == 3, "three operation lines")
        assert [e["delivery"] for e in proxy.operations()] == [{"ris": "journaled"}] * 3
        rx = ris.wait_for(4)
        wait_for(lambda: not pending(spool) and len(delivered(proxy)) == 3,
                 "the journal delivered")
        assert [(r.operation, r.data) for r in rx] == [
            ("N-CREATE", sent_bytes(steps[0][2])), *((op, sent_bytes(ds)) for op, _, ds in steps)]
        assert [e["status"] for e in delivered(proxy)] == ["0x0111", "0x0000", "0x0000"]
        assert not proxy.events("mpps_dead_lettered")
        assert ris.instances[UID].PerformedProcedureStepStatus == "COMPLETED"
    finally:
        ris.stop()
