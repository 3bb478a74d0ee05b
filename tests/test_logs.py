"""The log observer: one JSON object per event, contract fields, PHI hashed/dropped/kept."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydicom.valuerep import PersonName

from proxy.observe import events as ev
from proxy.observe.logs import PHI_KEYWORDS, LogObserver, PhiFilter, make_logger

ASSOC = ev.AssocInfo("a000042", "WS1", "RELAY", "10.0.0.9:51234", "RELAY")
NAME, PID, BIRTH = "DOE^JANE", "MRN0042", "19600101"


def observe(*events: ev.Event, phi: str = "hash", fmt: str = "json") -> list[dict[str, Any]]:
    stream = io.StringIO()
    observer = LogObserver(make_logger(fmt, "info", stream), PhiFilter(phi))
    for event in events:
        observer(event)
    text = stream.getvalue()
    if fmt != "json":
        return [{"text": line} for line in text.splitlines()]
    return [json.loads(line) for line in text.splitlines()]


def find_done(status: int | None = 0x0000, **details: Any) -> ev.OperationCompleted:
    query = {"PatientName": NAME, "PatientID": PID, "StudyDate": "20200101-20200105"}
    return ev.OperationCompleted(ASSOC, "C-FIND", status, 0.1234, ["site_a"],
                                 {"level": "STUDY", "matches": 3, "query": query, **details},
                                 None, [NAME, PID])


# -- PhiFilter ---------------------------------------------------------------------------

def test_token_is_short_stable_and_distinct() -> None:
    f = PhiFilter("hash")
    token = f.token(PID)
    assert token == f.token(PID) == f.token(f" {PID} ")     # padding does not change it
    assert token.startswith("phi:") and len(token) == len("phi:") + 12
    assert f.token("MRN0043") != token
    assert PID not in token


@pytest.mark.parametrize(("mode", "expected"), [
    ("hash", PhiFilter("hash").token(PID)), ("drop", "[dropped]"), ("clear", PID)])
def test_field_per_mode(mode: str, expected: str) -> None:
    assert PhiFilter(mode).field(PID) == expected
    assert PhiFilter(mode).field("") == ""          # nothing to hide in an empty key


def test_scrub_reaches_keys_nested_values_and_free_text() -> None:
    f = PhiFilter("hash")
    value = {
        "query": {"PatientName": NAME, "PatientBirthDate": BIRTH, "StudyDate": "2020"},
        "error": f"archive said: no patient {PID} ({NAME})",
        "list": [PID, {"note": f"id={PID}"}],
        "obj": PersonName(NAME),
        "count": 3, "flag": True, "none": None,
    }
    out = f.scrub(value, [NAME, PID])
    text = json.dumps(out)
    assert NAME not in text and PID not in text and BIRTH not in text
    assert out["query"]["PatientName"] == f.token(NAME)
    assert out["query"]["PatientBirthDate"] == f.token(BIRTH)   # a PHI key, even unlisted
    assert out["query"]["StudyDate"] == "2020"
    assert out["error"] == f"archive said: no patient {f.token(PID)} ({f.token(NAME)})"
    assert out["obj"] == f.token(NAME)
    assert (out["count"], out["flag"], out["none"]) == (3, True, None)


def test_scrub_prefers_the_longest_secret_and_ignores_one_letter_values() -> None:
    f = PhiFilter("hash")
    out = f.scrub({"msg": "DOE^JANE and DOE"}, ["DOE", "DOE^JANE", "J"])
    assert out["msg"] == f"{f.token('DOE^JANE')} and {f.token('DOE')}"


def test_clear_mode_changes_nothing() -> None:
    value = {"PatientID": PID, "msg": NAME}
    assert PhiFilter("clear").scrub(value, [NAME, PID]) == value


def test_phi_keywords_cover_the_contract() -> None:
    assert {"PatientName", "PatientID", "PatientBirthDate"} <= PHI_KEYWORDS


# -- line shape ----------------------------------------------------------------------------

def test_every_line_starts_with_timestamp_level_event() -> None:
    lines = observe(
        ev.ProxyStarted("QR_PROXY", "127.0.0.1", 11112, None, ["RELAY"]),
        ev.ConnectionRefused("10.0.0.1:1", "connection limit reached (4 open)"),
        ev.AssociationAccepted(ASSOC, 1, 0),
        ev.AssociationRejected(ASSOC, "called AE title 'X' is not a route", "call RELAY"),
        find_done(),
        ev.UpstreamCompleted("site_a", "C-FIND", 0x0000, 0.05, ASSOC, details={"matches": 3}),
        ev.AssociationReleased(ASSOC, 1.5),
        ev.AssociationAborted(ASSOC, 0.2, "the workstation aborted"),
        ev.ProxyStopping("SIGTERM", 0),
        ev.ProxyStopped(0),
    )
    assert [line["event"] for line in lines] == [
        "proxy_started", "connection_refused", "association_accepted", "association_rejected",
        "operation", "upstream", "association_released", "association_aborted",
        "proxy_stopping", "proxy_stopped"]
    for line in lines:
        assert list(line)[:3] == ["timestamp", "level", "event"]
        assert line["severity"] in ("info", "warning", "error")
        # ``level`` is the severity, except on operation lines with a Q/R level.
        assert line["level"] == (line.get("query_level") or line["severity"])
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0)
    for line in lines[2:8]:
        assert {k: line[k] for k in ("assoc_id", "calling_ae", "called_ae", "peer")} == {
            "assoc_id": "a000042", "calling_ae": "WS1", "called_ae": "RELAY",
            "peer": "10.0.0.9:51234"}
    rejected = lines[3]
    assert rejected["reason"].startswith("called AE title") and rejected["hint"] == "call RELAY"
    assert lines[7]["reason"] == "the workstation aborted"


def test_operation_line_carries_the_contract_fields() -> None:
    [line] = observe(find_done())
    assert line["operation"] == "C-FIND" and line["status"] == "0x0000"
    assert line["duration_ms"] == pytest.approx(123.4)
    assert line["archives"] == ["site_a"] and line["matches"] == 3
    # The contract lists ``level`` (the Q/R level) for C-FIND operation lines.
    assert line["query_level"] == "STUDY" and line["level"] == "STUDY"
    assert line["severity"] == "info"
    assert line["route"] == "RELAY"


@pytest.mark.parametrize(("status", "level", "text"), [
    (0x0000, "info", "0x0000"), (0xFE00, "info", "0xFE00"), (0xC000, "warning", "0xC000"),
    (0xA700, "warning", "0xA700"), (None, "warning", "none")])
def test_operation_status_is_hex_and_failures_warn(status: int | None, level: str,
                                                    text: str) -> None:
    [line] = observe(find_done(status))
    assert (line["status"], line["severity"]) == (text, level)


def test_upstream_line_names_the_archive_error_and_hint() -> None:
    [line] = observe(ev.UpstreamCompleted(
        "site_a", "C-FIND", None, 2.0, ASSOC, error="127.0.0.1:104: TCP connection refused",
        hint="check that PACS_A is running", details={"matches": 0}))
    assert (line["event"], line["level"], line["archive"], line["operation"]) == (
        "upstream", "warning", "site_a", "C-FIND")
    assert line["status"] == "none" and line["duration_ms"] == 2000.0
    assert "refused" in line["error"] and line["hint"].startswith("check that")


@pytest.mark.parametrize("mode", ["hash", "drop", "clear"])
def test_phi_modes_on_a_real_line(mode: str) -> None:
    error = f"archive rejected PatientID {PID}"
    done = find_done(0xC000)
    failed = ev.OperationCompleted(done.assoc, done.operation, done.status, done.duration_s,
                                   done.archives, {**done.details, "error": error}, done.hint,
                                   done.phi)
    [line] = observe(failed, phi=mode)
    text = json.dumps(line)
    if mode == "clear":
        assert NAME in text and PID in text
        return
    assert NAME not in text and PID not in text
    if mode == "hash":
        token = PhiFilter("hash").token(PID)
        assert line["query"]["PatientID"] == token and token in line["error"]
    else:
        assert line["query"]["PatientID"] == "[dropped]" and "[dropped]" in line["error"]
    assert line["query"]["StudyDate"] == "20200101-20200105"


def test_same_value_same_token_across_lines() -> None:
    lines = observe(find_done(), find_done(), ev.UpstreamCompleted(
        "site_a", "C-FIND", None, 1.0, ASSOC, error=f"no patient {PID}", phi=[PID]))
    token = PhiFilter("hash").token(PID)
    assert lines[0]["query"]["PatientID"] == lines[1]["query"]["PatientID"] == token
    assert token in lines[2]["error"]


def test_probes_are_not_logged_and_console_format_works() -> None:
    assert observe(ev.ArchiveProbed("site_a", True, 0.01)) == []
    [line] = observe(find_done(), fmt="console")
    assert "operation" in line["text"] and PID not in line["text"]


def test_a_failing_observer_never_breaks_the_bus(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[ev.Event] = []

    def broken(event: ev.Event) -> None:
        raise RuntimeError("boom")

    bus = ev.EventBus([broken, seen.append])
    bus.emit(ev.ProxyStopped(0))
    bus.emit(ev.ProxyStopped(1))
    assert len(seen) == 2                              # the next observer still ran
    err = capsys.readouterr().err
    assert err.count("failed on ProxyStopped: RuntimeError") == 1  # once, no traceback
    assert "Traceback" not in err


def test_a_site_key_makes_tokens_stable_but_not_plain_hashes() -> None:
    plain, keyed, other = PhiFilter("hash"), PhiFilter("hash", "s3cret"), PhiFilter("hash", "x")
    assert keyed.token("PAT0001") == keyed.token("PAT0001 ")
    assert keyed.token("PAT0001") != plain.token("PAT0001")
    assert keyed.token("PAT0001") != other.token("PAT0001")
