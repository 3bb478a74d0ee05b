"""Store-and-forward against an archive that misbehaves (``proxy.store.drain`` Rule 3).

The archive is a pynetdicom storage SCP answering per a script (a fault only a
scripted peer can inject); instances come in from DCMTK storescu.
- an archive aborting mid-association gets the instance it dropped, and the rest,
  once each and in order, over a new association;
- a retryable failure status (0x0110) is retried ``max_attempts`` times, then the
  instance is dead-lettered; a warning (0xB000) counts as delivered; neither holds
  up the instances behind it;
- an archive that never answers does not hold up shutdown; the instance stays pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.e2e.test_store import (
    forwarded,
    instances,
    rules_for,
    sop_uid,
    spool_files,
    storescu,
    wait_for,
)

ProxyFactory = Callable[..., ProxyProcess]
ABORT, HANG = "abort", "hang"
Script = Callable[[int, str], "int | str"]     # (C-STORE number from 0, SOP Instance UID)


class ScriptedStorage:
    """A pynetdicom CT storage SCP answering each C-STORE as ``script`` says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.aet = "SCRIPTED"
        self.stored: list[str] = []          # answered Success or a warning, in order
        self.requests: list[str] = []        # every C-STORE received, in order
        self.associations = 0
        self.released = threading.Event()    # set by close(): a hanging handler returns
        ae = AE(self.aet)
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian,
                                                  ImplicitVRLittleEndian])
        self.server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)])
        self.port = self.dicom_port = self.server.server_address[1]

    def _accepted(self, event: evt.Event) -> None:
        self.associations += 1

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        answer = self.script(len(self.requests), uid)
        self.requests.append(uid)
        if answer == ABORT:
            event.assoc.abort()
            return 0x0110
        if answer == HANG:
            self.released.wait(60)
            return 0x0110
        assert isinstance(answer, int)
        if answer == 0 or answer >> 12 == 0xB:
            self.stored.append(uid)
        return answer

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedStorage]]:
    peers: list[ScriptedStorage] = []

    def make(script: Script) -> ScriptedStorage:
        peers.append(ScriptedStorage(script))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def route(peer: ScriptedStorage, spool: Path, **spool_options: Any) -> dict[str, Any]:
    return rules_for(spool, {"scripted": archive_entry(peer)},
                     {"called_ae": "STORE", "archives": ["scripted"], "store_to": ["scripted"]},
                     **spool_options)


def test_an_archive_aborting_mid_association_gets_everything_once_in_order(
        proxy_factory: ProxyFactory, scripted: Callable[[Script], ScriptedStorage],
        tmp_path: Path) -> None:
    files = instances(6, "abort", tmp_path / "data")
    uids = [sop_uid(f) for f in files]
    peer = scripted(lambda n, uid: ABORT if n == 2 else 0x0000)
    proxy = proxy_factory(route(peer, tmp_path / "spool"))
    assert storescu(proxy.port, "STORE", files).acknowledged == list(map(str, files))

    wait_for(lambda: peer.stored == uids, "every instance at the archive, in order")
    assert peer.requests == uids[:3] + uids[2:]         # the dropped one sent again
    assert peer.associations == 2
    lost = [e for e in proxy.events("upstream") if e.get("sop_instance_uid") == uids[2]
            and e.get("error")]
    assert len(lost) == 1 and "aborted" in lost[0]["error"], lost
    wait_for(lambda: forwarded(proxy, "scripted") == uids, "six forward log lines")
    assert proxy.metric("dicom_proxy_suboperations_total", operation="C-STORE-forward",
                        result="completed") == 6
    assert not proxy.events("forward_dead_lettered")
    wait_for(lambda: spool_files(tmp_path / "spool", "pending") == [], "an empty spool")


def test_failure_statuses_are_retried_then_dead_lettered_and_warnings_delivered(
        proxy_factory: ProxyFactory, scripted: Callable[[Script], ScriptedStorage],
        tmp_path: Path) -> None:
    files = instances(4, "retry", tmp_path / "data")
    uids = [sop_uid(f) for f in files]
    answers = {uids[1]: 0x0110, uids[2]: 0xB000}        # processing failure; coercion
    peer = scripted(lambda n, uid: answers.get(uid, 0x0000))
    proxy = proxy_factory(route(peer, tmp_path / "spool", max_attempts=3))
    assert storescu(proxy.port, "STORE", files).acknowledged == list(map(str, files))

    wait_for(lambda: peer.stored == [uids[0], uids[2], uids[3]], "the others delivered")
    assert peer.requests == [uids[0], uids[1], uids[1], uids[1], uids[2], uids[3]]
    [dead] = proxy.events("forward_dead_lettered")
    assert dead["sop_instance_uid"] == uids[1] and dead["status"] == "0x0110"
    assert dead["reason"].startswith("gave up after 3 attempts; last: 0x0110")
    for result, n in (("completed", 2), ("warning", 1), ("failed", 1)):
        assert proxy.metric("dicom_proxy_suboperations_total", operation="C-STORE-forward",
                            result=result) == n, result
    statuses = [e["status"] for e in proxy.events("upstream") if e["operation"] == "C-STORE"]
    assert statuses == ["0x0000", "0x0110", "0x0110", "0x0110", "0xB000", "0x0000"]
    wait_for(lambda: spool_files(tmp_path / "spool", "pending") == [], "an empty spool")


def test_an_archive_that_never_answers_does_not_hold_up_shutdown(
        proxy_factory: ProxyFactory, scripted: Callable[[Script], ScriptedStorage],
        tmp_path: Path) -> None:
    files = instances(1, "hang", tmp_path / "data")
    peer = scripted(lambda n, uid: HANG)
    spool = tmp_path / "spool"
    proxy = proxy_factory(rules_for(spool, {"scripted": archive_entry(peer, timeout=120)},
                                    {"called_ae": "STORE", "archives": ["scripted"],
                                     "store_to": ["scripted"]}))
    assert storescu(proxy.port, "STORE", files).acknowledged == list(map(str, files))
    wait_for(lambda: peer.requests == [sop_uid(files[0])], "the C-STORE at the archive")

    started = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - started < 20            # grace + abort, not the 120 s timeout
    assert [p.name for p in spool_files(spool, "pending")] != []   # still to be delivered
    assert peer.stored == []
