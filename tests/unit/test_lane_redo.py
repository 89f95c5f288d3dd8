"""The lane loop redoing lost pages, driven step by step over scripted stages: which work finishes when, and which
worker is lost, is decided by the test, so the interleavings that lose data are reached on purpose, not by luck.

The safety property, checked after every step: a cursor the lane reports has every point before it written, and a
lease reported done has every point of its range written. A redone page must keep the end its first read found
(a re-read of [start, stop) finds no next page inside the range, and taking that for "the range is over" would
mark the lease done past pages still in flight)."""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.errors import ReembedError
from engine.flow.lane import LaneLoop, RedoPolicy
from engine.flow.lease import Lease, LeaseAck
from engine.flow.page import WriteAck
from engine.flow.seams import WorkerLost
from engine.qdrant import wire
from tests.unit.fakes import MemorySource

NO_PAUSE = RedoPolicy(base_delay_s=0.0, max_delay_s=0.0, unavailable_retry_s=0.0, max_attempts=50)


@dataclass(eq=False)
class Job:
    """One stage's work: done at once when submitted, handed back by `wait` only when the test lets it."""

    stage: str  # read | process
    shard: int
    seq: int
    attempt: int
    value: Any = None
    lost: WorkerLost | None = None
    apply: Any = None  # the write, applied when the work is seen to finish


@dataclass
class Script:
    """What happens to each piece of work: `lose(stage, seq, attempt)` -> a WorkerLost or None; `ready(job)` ->
    whether `wait` hands it back now."""

    lose: Any = lambda stage, seq, attempt: None
    ready: Any = lambda job: True
    attempts: dict = field(default_factory=dict)

    def attempt(self, stage: str, seq: int) -> int:
        key = (stage, seq)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        return self.attempts[key]


class ScriptedStages:
    """The Stages seam over an in-memory source and target; every write is counted per point."""

    def __init__(self, points: dict, script: Script) -> None:
        self.source = MemorySource(points)
        self.script = script
        self.written: dict = {}
        self.reads: list[tuple[int, Any, Any, bool]] = []  # (seq, start, stop, to_stop)
        self.checked_present: list[int] = []
        self._data: dict[Job, tuple] = {}

    def read(self, lease: Lease, seq, start, stop, limit, to_stop) -> Job:
        job = Job("read", lease.shard, seq, self.script.attempt("read", seq))
        self.reads.append((seq, start, stop, to_stop))
        job.lost = self.script.lose("read", seq, job.attempt)
        if job.lost is None:
            job.value = self.source.read_page(lease.shard, seq, start, stop, limit, to_stop)
        return job

    def process(self, read_handle: Job, meta, check_present) -> Job:
        _, _, body = read_handle.value
        job = Job("process", meta.shard, meta.seq, self.script.attempt("process", meta.seq))
        if check_present:
            self.checked_present.append(meta.seq)
        job.lost = self.script.lose("process", meta.seq, job.attempt)

        def apply() -> WriteAck:
            for pos in body.text_index:
                self.written[body.ids[pos]] = self.written.get(body.ids[pos], 0) + 1
            return WriteAck(shard=meta.shard, seq=meta.seq, written=len(body.text_index),
                            skipped=len(body.ids) - len(body.text_index))

        job.apply = apply
        return job

    def wait(self, handles: list[Job], timeout: float) -> list[Job]:
        return [h for h in handles if self.script.ready(h)]

    def result(self, handle: Job) -> Any:
        if handle.lost is not None:
            if handle.lost.reread is False and handle.stage == "process" and handle.attempt % 2:
                handle.apply()  # the writer applied the write, then its answer was lost
            raise handle.lost
        if handle.stage == "read":
            return handle.value[0]
        return handle.apply()

    def release(self, read_handle: Any) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def with_text(points: dict) -> list:
    return sorted((pid for pid, p in points.items() if isinstance(p.get("text"), str) and p["text"]),
                  key=wire.id_key)


def check_acks(acks: list[LeaseAck], stages: ScriptedStages, points: dict, lease: Lease) -> None:
    """No reported cursor runs past an unwritten point, and no lease is done with a point of it unwritten."""
    lo = wire.id_key(lease.cursor) if lease.cursor is not None else None
    hi = wire.id_key(lease.hi) if lease.hi is not None else None
    for ack in acks:
        # A cursor of None that is not "done" would send a resumed job to the collection's start: only the end of
        # the range may be None, and then everything in it must be written.
        end = None if ack.done or ack.cursor is None else wire.id_key(ack.cursor)
        for pid in with_text(points):
            k = wire.id_key(pid)
            if (lo is None or k >= lo) and (hi is None or k < hi) and (end is None or k < end):
                assert pid in stages.written, (
                    f"shard {ack.shard} reported {'done' if ack.done else f'cursor {ack.cursor!r}'} but point "
                    f"{pid!r} was never written")


def drive(loop: LaneLoop, stages: ScriptedStages, points: dict, lease: Lease, max_steps: int = 2000,
          on_step=None) -> list[LeaseAck]:
    """Step the loop until the lease is done, checking every report."""
    acks: list[LeaseAck] = []
    for step in range(max_steps):
        if on_step is not None:
            on_step(step)
        loop.step(timeout=0.0)
        report = loop.report()
        assert report.error is None, report.error
        check_acks(report.acks, stages, points, lease)
        acks += report.acks
        if acks and acks[-1].done:
            return acks
    raise AssertionError(f"the lease was not done after {max_steps} steps: {acks[-3:]}")


def test_a_redone_page_keeps_its_first_reads_end():
    """Page 0 is lost after its read; page 1 is still being written when page 0's redo lands. The redo re-reads
    exactly [start, 10), finds nothing after it inside that range, and must still commit the cursor at 10."""
    points = {i: {"text": f"t{i}"} for i in range(20)}
    held = {"page 1": True}
    script = Script(lose=lambda stage, seq, attempt: WorkerLost("embedder died") if (stage, seq, attempt) == (
        "process", 0, 1) else None,
                    ready=lambda job: not (job.stage == "process" and job.seq == 1 and held["page 1"]))
    stages = ScriptedStages(points, script)
    loop = LaneLoop(stages, page_size=10, window=2, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    acks: list[LeaseAck] = []
    for _ in range(10):
        loop.step(timeout=0.0)
        report = loop.report()
        check_acks(report.acks, stages, points, lease)
        acks += report.acks
    assert (0, None, 10, True) in stages.reads  # the redo read exactly the page's first range again
    assert [(a.cursor, a.done) for a in acks] == [(10, False)]  # committed at the page's end, not "done"
    held["page 1"] = False
    acks += drive(loop, stages, points, lease)
    assert acks[-1].done and acks[-1].cursor is None
    assert set(stages.written) == set(points)
    assert sum(a.written for a in acks) == 20 and sum(a.pages for a in acks) == 2


def test_a_lost_first_read_is_issued_again_with_the_same_range():
    points = {i: {"text": f"t{i}"} for i in range(30)}
    script = Script(lose=lambda stage, seq, attempt: WorkerLost("reader died") if stage == "read" and seq == 1
                    and attempt == 1 else None)
    stages = ScriptedStages(points, script)
    loop = LaneLoop(stages, page_size=10, window=4, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    acks = drive(loop, stages, points, lease)
    first_reads = [r for r in stages.reads if r[0] == 1]
    assert first_reads == [(1, 10, None, False)] * 2  # the same seq, start and stop, as a first read again
    assert [a.cursor for a in acks][-1] is None and set(stages.written) == set(points)


def test_a_lost_write_is_redone_from_the_data_already_read_and_counts_what_was_there():
    points = {i: {"text": f"t{i}"} for i in range(30)}
    script = Script(lose=lambda stage, seq, attempt: WorkerLost("writer restarted", reread=False)
                    if stage == "process" and seq == 1 and attempt == 1 else None)
    stages = ScriptedStages(points, script)
    loop = LaneLoop(stages, page_size=10, window=4, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    drive(loop, stages, points, lease)
    assert [r[0] for r in stages.reads] == [0, 1, 2]  # no page was read twice
    assert stages.checked_present == [1]  # the redo asked what the lost write had already applied
    assert stages.written[15] == 2 and stages.written[5] == 1


def test_a_restarting_worker_costs_no_attempt_and_a_poisoned_page_ends_the_job():
    points = {i: {"text": f"t{i}"} for i in range(20)}
    transient = Script(lose=lambda stage, seq, attempt: WorkerLost("restarting", transient=True)
                       if stage == "process" and seq == 0 and attempt <= 20 else None)
    stages = ScriptedStages(points, transient)
    loop = LaneLoop(stages, page_size=10, window=2, clock=Clock(),
                    policy=RedoPolicy(base_delay_s=0.0, max_delay_s=0.0, unavailable_retry_s=0.0, max_attempts=2))
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    drive(loop, stages, points, lease)  # 20 losses of a restarting worker, yet only 2 attempts allowed
    poisoned = Script(lose=lambda stage, seq, attempt: WorkerLost("bad input") if stage == "process" and seq == 0
                      else None)
    stages = ScriptedStages(points, poisoned)
    loop = LaneLoop(stages, page_size=10, window=2, clock=Clock(),
                    policy=RedoPolicy(base_delay_s=0.0, max_delay_s=0.0, unavailable_retry_s=0.0, max_attempts=3))
    loop.assign(lease)
    for _ in range(30):
        loop.step(timeout=0.0)
    report = loop.report()
    assert report.error is not None and "page 0 of shard 0 failed 3 times" in report.error
    assert all(a.cursor is not None or not a.done for a in report.acks)
    assert poisoned.attempts[("process", 0)] == 3


def _random_script(rng: random.Random) -> Script:
    """Losses at every stage (re-read or not, restarting or not) and work finishing in random order."""
    def lose(stage, seq, attempt):
        roll = rng.random()
        if roll < 0.12:
            return WorkerLost("lost", reread=rng.random() < 0.5, transient=rng.random() < 0.3)
        return None

    return Script(lose=lose, ready=lambda job: rng.random() < 0.45)


@pytest.mark.parametrize("seed", range(40))
def test_no_interleaving_of_losses_reports_a_cursor_past_an_unwritten_point(seed):
    rng = random.Random(seed)
    ids = list(range(0, 150, 2)) + [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(40)]
    points = {pid: ({"text": f"t{pid}"} if k % 11 else {"other": 1}) for k, pid in enumerate(ids)}
    ordered = sorted(points, key=wire.id_key)
    lo = ordered[rng.randrange(0, 20)] if seed % 3 else None
    hi = ordered[rng.randrange(len(ordered) - 20, len(ordered))] if seed % 2 else None
    stages = ScriptedStages(points, _random_script(rng))
    loop = LaneLoop(stages, page_size=rng.choice([3, 7, 16]), window=rng.choice([1, 2, 5]), policy=NO_PAUSE,
                    clock=Clock())
    lease = Lease(shard=0, cursor=lo, hi=hi)
    loop.assign(lease)
    acks = drive(loop, stages, points, lease, max_steps=20000)
    inside = [pid for pid in with_text(points) if (lo is None or wire.id_key(pid) >= wire.id_key(lo))
              and (hi is None or wire.id_key(pid) < wire.id_key(hi))]
    assert set(stages.written) == set(inside)  # nothing lost, nothing outside the lease written
    assert acks[-1].done
    assert sum(a.written for a in acks) == len(inside)
    cursors = [wire.id_key(a.cursor) for a in acks if a.cursor is not None]
    assert cursors == sorted(cursors)  # the committed cursor only ever moves forward


def test_two_leases_on_one_lane_commit_each_in_order():
    points = {i: {"text": f"t{i}"} for i in range(60)}
    rng = random.Random(7)
    stages = ScriptedStages(points, Script(ready=lambda job: rng.random() < 0.5,
                                           lose=lambda stage, seq, attempt: WorkerLost("x") if rng.random() < 0.1
                                           else None))
    loop = LaneLoop(stages, page_size=4, window=3, policy=NO_PAUSE, clock=Clock())
    leases = [Lease(shard=0, cursor=None, hi=30), Lease(shard=1, cursor=30, hi=None)]
    for lease in leases:
        loop.assign(lease)
    done: set[int] = set()
    for _ in itertools.count():
        loop.step(timeout=0.0)
        report = loop.report()
        assert report.error is None
        for ack in report.acks:
            check_acks([ack], stages, points, leases[ack.shard])
            if ack.done:
                done.add(ack.shard)
        if done == {0, 1}:
            break
    assert set(stages.written) == set(points)


def test_a_page_of_a_lease_that_keeps_failing_is_named_in_the_error():
    points = {i: {"text": f"t{i}"} for i in range(10)}
    stages = ScriptedStages(points, Script(lose=lambda stage, seq, attempt: WorkerLost("gone")))
    loop = LaneLoop(stages, page_size=5, window=1, clock=Clock(), name="lane-7",
                    policy=RedoPolicy(base_delay_s=0.0, max_delay_s=0.0, unavailable_retry_s=0.0, max_attempts=2))
    loop.assign(Lease(shard=3, cursor=None, hi=None))
    for _ in range(10):
        loop.step(timeout=0.0)
    report = loop.report()
    assert report.error is not None and report.error.startswith("lane-7: page 0 of shard 3 failed 2 times")
    assert report.acks == [] and report.error_exit_code == ReembedError.exit_code


def test_a_lane_runs_no_further_ahead_of_its_committed_cursor_than_its_window():
    """A page that waits (its write retried for minutes) holds the commit back: the pages after it are written but
    not committed, and a crash redoes all of them. They count against the window, so that stays bounded."""
    points = {i: {"text": f"t{i}"} for i in range(100)}
    held = {"page 1": True}
    stages = ScriptedStages(points, Script(ready=lambda job: not (job.stage == "process" and job.seq == 1
                                                                  and held["page 1"])))
    loop = LaneLoop(stages, page_size=5, window=3, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    for _ in range(50):
        loop.step(timeout=0.0)
    written_pages = len({pid // 5 for pid in stages.written})
    assert written_pages <= 1 + 3 - 1  # page 0 (committed), page 1 waits in the window, at most 1 more
    held["page 1"] = False
    drive(loop, stages, points, lease)
    assert set(stages.written) == set(points)


class ManualClock:
    """Time that moves only when the test moves it (and starts far from zero, as a monotonic clock does)."""

    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _restarting(points: dict, losses: int, policy: RedoPolicy, clock: ManualClock):
    """A lane whose page 0 write is lost `losses` times to a restarting worker."""
    script = Script(lose=lambda stage, seq, attempt: WorkerLost("restarting", transient=True, reread=False)
                    if stage == "process" and seq == 0 and attempt <= losses else None)
    stages = ScriptedStages(points, script)
    loop = LaneLoop(stages, page_size=10, window=1, policy=policy, clock=clock)
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    return loop, stages, script, lease


def test_a_restarting_worker_is_waited_for_exactly_its_budget_counted_from_the_first_loss():
    points = {i: {"text": f"t{i}"} for i in range(10)}
    clock = ManualClock()
    policy = RedoPolicy(unavailable_retry_s=5.0, max_unavailable_s=10.0)
    loop, stages, script, lease = _restarting(points, 3, policy, clock)
    loop.step(timeout=0.0)  # read
    loop.step(timeout=0.0)  # the write is lost at 5000: the wait starts
    assert script.attempts[("process", 0)] == 1
    for _ in range(3):
        clock.now = 5004.9
        loop.step(timeout=0.0)
        assert script.attempts[("process", 0)] == 1  # not redone before unavailable_retry_s has passed
    clock.now = 5005.0
    loop.step(timeout=0.0)  # redone, lost again at 5005
    clock.now = 5010.0
    loop.step(timeout=0.0)  # redone, lost again at 5010: 10 s after the first loss, exactly the budget
    assert script.attempts[("process", 0)] == 3
    report = loop.report()
    assert report.error is None and report.stats.pages_redone == 1  # one loss, however long the restart
    assert report.waiting == "a restarting worker (restarting) for 10 s"
    clock.now = 5015.0
    acks = drive(loop, stages, points, lease)
    assert acks[-1].done and loop.report().waiting is None


def test_a_restarting_worker_past_its_budget_ends_the_job():
    points = {i: {"text": f"t{i}"} for i in range(10)}
    clock = ManualClock()
    loop, _, _, _ = _restarting(points, 10, RedoPolicy(unavailable_retry_s=5.0, max_unavailable_s=10.0), clock)
    for now in [5000.0, 5000.0, 5005.0, 5010.0, 5015.0]:
        clock.now = now
        loop.step(timeout=0.0)
    report = loop.report()
    assert report.error is not None and "workers unavailable for 10 s" in report.error
