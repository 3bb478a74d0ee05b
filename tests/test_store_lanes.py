"""proxy.store.drain.Lanes: what an archive's forwarding associations share (Rule 6)."""

from __future__ import annotations

import threading

from proxy.store.drain import Lanes
from proxy.store.spool import Entry, InstanceMeta

META = InstanceMeta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")


def entries(n: int) -> list[Entry]:
    return [Entry(f"{i:020d}", 100) for i in range(n)]


def test_an_entry_taken_by_one_lane_is_skipped_by_the_others_until_released() -> None:
    lanes = Lanes(2)
    queue = entries(6)
    first = lanes.take(0, [(e, META) for e in queue[:4]])
    assert [e for e, _ in first] == queue[:4]
    assert lanes.free(1, queue) == queue[4:]          # the other lane sees the rest
    assert lanes.free(0, queue) == queue              # its own are still its own
    assert lanes.others(1) == 4 and lanes.others(0) == 0
    assert lanes.take(1, [(e, META) for e in queue[2:]]) == [(e, META) for e in queue[4:]]
    lanes.release(0)                                  # its association ended
    assert lanes.free(1, queue) == queue and lanes.others(1) == 0


def test_two_lanes_racing_for_one_queue_never_take_the_same_entry() -> None:
    lanes = Lanes(2)
    queue = [(e, META) for e in entries(2000)]
    got: dict[int, list[str]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def run(lane: int) -> None:
        start.wait()
        for at in range(0, len(queue), 4):
            got[lane] += [e.id for e, _ in lanes.take(lane, queue[at:at + 4])]

    threads = [threading.Thread(target=run, args=(lane,)) for lane in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(got[0]) & set(got[1])
    assert len(got[0]) + len(got[1]) == len(queue)
