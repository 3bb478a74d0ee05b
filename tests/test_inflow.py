"""proxy.inflow: a data set handed from the loop to a worker as it arrives."""

from __future__ import annotations

import random
import threading
import time

import pytest

from proxy.inflow import HOLD_BACK, Inflow, InflowBroken


class Calls:
    def __init__(self) -> None:
        self.resumed = 0
        self.stalled: list[str] = []

    def resume(self) -> None:
        self.resumed += 1

    def stall(self, why: str) -> None:
        self.stalled.append(why)


def inflow(calls: Calls, high: int = 100, idle: float = 5.0, deadline: float = 30.0) -> Inflow:
    return Inflow(high, idle, deadline, calls.resume, calls.stall)


def joined(views: list[memoryview]) -> bytes:
    return b"".join(bytes(v) for v in views)


def test_takes_hold_back_the_last_bytes_until_the_last_fragment() -> None:
    flow = inflow(Calls())
    flow.feed(b"abcd", False)
    flow.feed(b"efgh", False)
    views, last = flow.take()
    assert (joined(views), last) == (b"abcdef", False)
    flow.feed(b"", True)               # an empty last fragment still ends with data
    views, last = flow.take()
    assert (joined(views), last) == (b"gh", True)
    assert flow.received == 8 and flow.ended


def test_a_take_waits_for_more_than_the_held_back_bytes() -> None:
    flow = inflow(Calls())
    flow.feed(b"ab", False)
    got: list[tuple[bytes, bool]] = []
    reader = threading.Thread(target=lambda: got.append(
        (joined(flow.take()[0]), flow.ended)))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive()           # 2 bytes are all held back: nothing to hand out
    flow.feed(b"cd", True)
    reader.join(5)
    assert got == [(b"abcd", True)]


def test_feed_says_when_to_stop_reading_and_a_take_below_half_resumes_once() -> None:
    calls = Calls()
    flow = inflow(calls, high=10)
    assert flow.feed(b"x" * 6, False) is False
    assert flow.feed(b"x" * 6, False) is True          # 12 >= 10: hold reading
    assert flow.feed(b"x" * 2, False) is False         # already held: said once
    views, _ = flow.take()
    assert len(joined(views)) == 14 - HOLD_BACK and calls.resumed == 1
    flow.feed(b"y" * 2, True)
    assert joined(flow.take()[0]) == b"xxyy" and calls.resumed == 1


def test_head_reads_without_taking_and_raises_the_bound_for_a_long_header() -> None:
    calls = Calls()
    flow = inflow(calls, high=10)
    assert flow.feed(b"0123456789ab", False) is True   # held at 12 bytes
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(flow.head(20)))
    reader.start()
    deadline = time.monotonic() + 5
    while calls.resumed == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert calls.resumed == 1 and reader.is_alive()   # bound raised: reading resumed
    assert flow.feed(b"cdefghij", False) is False     # 20 bytes < the raised bound
    reader.join(5)
    assert got == [b"0123456789abcdefghij"]
    flow.feed(b"!", True)
    views, last = flow.take()
    assert joined(views) == b"0123456789abcdefghij!" and last


def test_head_of_a_short_data_set_is_all_of_it() -> None:
    flow = inflow(Calls())
    flow.feed(b"short", True)
    assert flow.head(64) == b"short"


def test_discard_drops_the_rest_never_holds_reading_and_wait_end_waits_for_the_end() -> None:
    calls = Calls()
    flow = inflow(calls, high=10)
    flow.feed(b"x" * 8, False)
    flow.discard()
    assert all(flow.feed(b"y" * 50, False) is False for _ in range(5))
    ended = threading.Event()
    waiter = threading.Thread(target=lambda: (flow.wait_end(), ended.set()))
    waiter.start()
    assert not ended.wait(0.05)
    flow.feed(b"z", True)
    assert ended.wait(5)
    assert flow.received == 8 + 250 + 1


def test_an_association_ending_mid_data_set_breaks_a_waiting_reader() -> None:
    flow = inflow(Calls())
    flow.feed(b"abcd", False)
    flow.take()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            flow.take()
        except InflowBroken as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    flow.broken("the workstation's association ended")
    reader.join(5)
    assert [str(e) for e in errors] == ["the workstation's association ended"]
    with pytest.raises(InflowBroken):
        flow.wait_end()


def test_the_first_reason_a_data_set_broke_off_is_the_one_reported() -> None:
    calls = Calls()
    flow = inflow(calls, idle=0.05)
    with pytest.raises(InflowBroken, match="network_timeout"):
        flow.head(10)
    flow.broken("the association ended")       # the abort the stall caused
    with pytest.raises(InflowBroken, match="network_timeout"):
        flow.wait_end()


def test_broken_after_the_end_changes_nothing() -> None:
    flow = inflow(Calls())
    flow.feed(b"abcd", True)
    flow.broken("closed after the last fragment")
    assert joined(flow.take()[0]) == b"abcd"
    flow.wait_end()


def test_a_workstation_silent_mid_data_set_stalls_the_reader_and_is_named() -> None:
    calls = Calls()
    flow = inflow(calls, idle=0.05)
    flow.feed(b"abcd", False)
    flow.take()
    with pytest.raises(InflowBroken, match="network_timeout"):
        flow.take()
    assert len(calls.stalled) == 1 and "network_timeout (0.05s)" in calls.stalled[0]


def test_a_data_set_incomplete_after_the_deadline_stalls_the_reader() -> None:
    calls = Calls()
    flow = inflow(calls, idle=5, deadline=0.05)
    with pytest.raises(InflowBroken, match="dimse_timeout"):
        flow.head(10)
    assert calls.stalled and "dimse_timeout (0.05s)" in calls.stalled[0]


def test_a_feeder_and_a_reader_on_two_threads_pass_every_byte_in_order() -> None:
    rng = random.Random(7)
    chunks = [rng.randbytes(rng.randrange(0, 5000)) for _ in range(400)]
    held = threading.Event()
    held.set()

    def resume() -> None:
        held.set()

    flow = Inflow(20_000, 5, 30, resume, lambda why: None)

    def feed() -> None:
        for i, chunk in enumerate(chunks):
            held.wait(5)
            if flow.feed(chunk, i == len(chunks) - 1):
                held.clear()           # as the loop's hold_reading(True) would

    feeder = threading.Thread(target=feed)
    feeder.start()
    out = bytearray()
    for views, last in flow.parts():
        out += joined(views)
        assert last or len(views) > 0
    feeder.join(5)
    assert bytes(out) == b"".join(chunks)
