"""What a lane reports besides its cursors (engine/flow/lane.py), the cases mutation testing found unpinned: the
counts it hands the coordinator add up over pages (read, written, requests, points and pages redone, retries by
cause, the readers' tallies, dead letters), every dead letter goes to the dead-letter sink under its page's shard, the
points a page could not even read count as skipped, the report says what is in flight, a read handle no longer needed
is released (object-store memory on a cluster), and a page waiting out a pause still holds its place in the window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.flow.lane import LaneLoop, RedoPolicy
from engine.flow.lease import Lease
from engine.flow.page import PageMeta, WriteAck
from engine.flow.seams import WorkerLost
from tests.unit.test_lane_redo import NO_PAUSE, Clock, Job, ManualClock, Script, ScriptedStages, drive


@dataclass(eq=False)
class Handle:
    stage: str
    seq: int
    start: Any = None


@dataclass
class CountingStages:
    """Pages of 10 ids each, [10 * seq, 10 * seq + 10), four to a lease; every read and write reports counts."""

    pages: int = 4
    released: list = field(default_factory=list)

    def read(self, lease, seq, start, stop, limit, to_stop) -> Handle:
        return Handle("read", seq, start)

    def process(self, read_handle, meta, check_present) -> Handle:
        return Handle("process", meta.seq)

    def wait(self, handles, timeout):
        return list(handles)

    def result(self, handle: Handle):
        s = handle.seq
        if handle.stage == "read":
            nxt = 10 * (s + 1) if s + 1 < self.pages else None
            return PageMeta(shard=7, seq=s, start=handle.start, next_offset=nxt, n_points=10, n_texts=8,
                            dead=[(10 * s, "no text")], retries={"unavailable": 1}, tally={"inserted": s + 1},
                            unread=1)
        return WriteAck(shard=7, seq=s, written=8, skipped=1, dead=[(10 * s + 9, "too large")], requests=2,
                        retries={"unavailable": 2, "aborted": 1}, already_present=3)

    def release(self, read_handle) -> None:
        self.released.append(read_handle)


def test_a_lanes_counts_add_up_over_its_pages_and_its_dead_letters_go_to_the_sink_by_shard():
    stages = CountingStages()
    dead: list = []
    loop = LaneLoop(stages, page_size=10, window=1, policy=NO_PAUSE, clock=Clock(),
                    on_dead=lambda shard, points, meta: dead.append((shard, points, meta.seq)))
    loop.assign(Lease(shard=7, cursor=None, hi=None))
    acks = []
    for _ in range(20):
        loop.step(timeout=0.0)
    report = loop.report()
    acks += report.acks
    st = report.stats
    assert (st.pages_read, st.pages_written, st.write_requests) == (4, 4, 8)
    assert (st.points_redone, st.pages_redone, st.dead) == (12, 4, 8)  # already there on a first attempt: a redo
    assert st.retries == {"unavailable": 12, "aborted": 4} and st.tally == {"inserted": 10}
    assert dead == [(7, [(10 * s, "no text"), (10 * s + 9, "too large")], s) for s in range(4)]
    assert acks[-1].done and sum(a.written for a in acks) == 32
    assert sum(a.skipped for a in acks) == 8  # the writer's skipped plus the points the reader could not read
    assert [h.seq for h in stages.released] == [0, 1, 2, 3]  # each page's read data, once it is written


def test_a_page_redone_after_a_loss_is_not_counted_again_when_its_write_finds_points_already_there():
    stages = CountingStages(pages=1)
    lost = {"once": True}
    original = stages.result

    def result(handle):
        if handle.stage == "process" and lost.pop("once", False):
            raise WorkerLost("writer died", reread=False)
        return original(handle)

    stages.result = result  # type: ignore[method-assign]
    loop = LaneLoop(stages, page_size=10, window=1, policy=NO_PAUSE, clock=Clock())
    loop.assign(Lease(shard=7, cursor=None, hi=None))
    for _ in range(10):
        loop.step(timeout=0.0)
    st = loop.report().stats
    assert st.pages_redone == 1 and st.points_redone == 3  # counted once, at the loss


def test_the_report_says_what_is_in_flight_and_where_each_lease_reads_next():
    points = {i: {"text": f"t{i}"} for i in range(40)}
    held = {"read": True, "process": True}
    stages = ScriptedStages(points, Script(ready=lambda job: not held[job.stage]))
    loop = LaneLoop(stages, page_size=10, window=3, policy=NO_PAUSE, clock=Clock())
    loop.assign(Lease(shard=0, cursor=None, hi=None))
    loop.assign(Lease(shard=1, cursor=100, hi=None))
    report = loop.report()
    assert report.frontiers == {0: None, 1: 100} and report.held == [0, 1] and report.reading == [0, 1]
    loop.step(timeout=0.0)  # a first read of each lease, both held
    report = loop.report()
    assert (report.reads_in_flight, report.processing) == (2, 0)
    held["read"] = False
    loop.step(timeout=0.0)  # both read; their writes are held
    report = loop.report()
    assert (report.reads_in_flight, report.processing) == (0, 2)
    assert report.frontiers == {0: 10, 1: None}  # lease 1 holds fewer than a page: read out


def test_read_data_is_released_when_a_page_is_read_again_and_when_a_read_is_lost():
    points = {i: {"text": f"t{i}"} for i in range(20)}
    script = Script(lose=lambda stage, seq, attempt: WorkerLost("gone") if (stage, seq, attempt) in
                    {("process", 0, 1), ("read", 0, 2), ("read", 1, 1)} else None)
    stages = ScriptedStages(points, script)
    released: list = []
    stages.release = released.append  # type: ignore[method-assign]
    loop = LaneLoop(stages, page_size=10, window=2, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    drive(loop, stages, points, lease)
    assert all(isinstance(h, Job) for h in released)  # only real handles: a lost re-read left none to release
    lost_read = [h for h in released if h.stage == "read" and h.seq == 1 and h.attempt == 1]
    first_read_of_0 = [h for h in released if h.stage == "read" and h.seq == 0 and h.attempt == 1]
    assert lost_read and first_read_of_0  # the lost read's handle, and page 0's data before its re-read


def test_a_page_waiting_out_a_pause_holds_its_place_in_the_window():
    points = {i: {"text": f"t{i}"} for i in range(100)}
    script = Script(lose=lambda stage, seq, attempt: WorkerLost("gone") if (stage, seq, attempt) == (
        "process", 0, 1) else None)
    stages = ScriptedStages(points, script)
    clock = ManualClock()
    loop = LaneLoop(stages, page_size=10, window=2, clock=clock,
                    policy=RedoPolicy(base_delay_s=60.0, max_delay_s=60.0, max_attempts=5))
    loop.assign(Lease(shard=0, cursor=None, hi=None))
    for _ in range(20):
        loop.step(timeout=0.0)  # page 0 waits a minute; the clock does not move
    assert len(stages.reads) <= 2  # page 0 (deferred) and one more: never more than the window ahead
    assert loop.report().processing == 1  # the deferred page is still work in hand


def test_every_lease_gets_its_reads_and_a_slow_one_holds_back_no_other():
    points = {i: {"text": f"t{i}"} for i in range(90)}
    stages = ScriptedStages(points, Script(ready=lambda job: not (job.stage == "read" and job.shard == 0)))
    loop = LaneLoop(stages, page_size=10, window=6, policy=NO_PAUSE, clock=Clock())
    for shard in range(3):
        loop.assign(Lease(shard=shard, cursor=30 * shard, hi=30 * shard + 30))
    loop.step(timeout=0.0)
    assert sorted(r[1] for r in stages.reads) == [0, 30, 60]  # a first read of each lease
    loop.step(timeout=0.0)  # lease 0's read is still out: the other two go on
    assert (1, 40, 60, False) in stages.reads and (1, 70, 90, False) in stages.reads
