"""The coordinator and the lane loop over lanes on threads, with in-memory seams: every id ends up written exactly as
the source holds it, whatever pages or lanes are lost on the way, the cursor only ever moves over acknowledged
pages, idle lanes steal the tail of long ranges, and lanes that join get work. No test waits on real time: redo
pauses are zero and the coordinator's waits end on lane news."""

import asyncio
import json
import random
import threading
import time
import uuid

import pytest

from engine.errors import ReembedError
from engine.flow.checkpoint import UriCheckpointStore
from engine.flow.coordinator import Coordinator, CoordinatorOptions
from engine.flow.lane import RedoPolicy
from engine.flow.local_runtime import LocalLanePool, LocalStages
from engine.flow.seams import WorkerLost
from engine.flow.shards import boundaries_from_sample, shard_states
from engine.flow.state import JobState
from engine.qdrant import wire
from tests.unit.fakes import LenEmbedder, MemorySink, MemorySource

NO_PAUSE = RedoPolicy(base_delay_s=0.0, max_delay_s=0.0, unavailable_retry_s=0.0)
# With faults at three stages of every attempt, a page fails an attempt 39 % of the time at a 15 % rate: six in a row
# (the default limit) would end one run in ten. The fault tests give pages room; the limit has its own test.
PATIENT = RedoPolicy(base_delay_s=0.0, max_delay_s=0.0, unavailable_retry_s=0.0, max_attempts=30)
FAST = CoordinatorOptions(save_interval_s=0.0, poll_timeout_s=0.05, refresh_interval_s=0.0, split_retry_s=0.0,
                          steal_min_points=20)


def make_points(n, seed=0):
    rng = random.Random(seed)
    pts: dict = {}
    for i in range(n):
        pid = i * 3 if i % 2 else str(uuid.UUID(int=rng.getrandbits(128)))
        if i % 17 == 0:
            pts[pid] = {"other": 1}  # no text: dead letter
        else:
            pts[pid] = {"text": "x" * (1 + i % 50)}
    return pts


class ExactSplitter:
    """Split points from the real ids (a perfect sample)."""

    def __init__(self, points):
        self.keys = sorted((wire.id_key(p), p) for p in points)

    def pick(self, after, before, shard_key):
        inside = [p for k, p in self.keys if (after is None or k > wire.id_key(after))
                  and (before is None or k < wire.id_key(before))]
        return (len(inside), inside[len(inside) // 2]) if len(inside) >= 2 else None


class SpyStore(UriCheckpointStore):
    """Checks every saved checkpoint: no cursor (or done flag) runs past a point whose write the sink had not
    acknowledged when the snapshot was taken.

    Judged at the snapshot's moment, not the save's: the background saver writes a snapshot later, when the page a
    wrong cursor jumped over may have been written meanwhile. So the spy wraps the sink and notes when each point's
    first write was acknowledged (time.time(), the clock of the snapshot's `updated_at`); a point inside a saved
    cursor must have been acknowledged before that snapshot was taken.

    And it makes the gap that an ordered commit must wait for: the write of each lease's second page (seq 1) is held
    until the next save has been checked (or HOLD_S at most, so a lease whose last pages wait cannot stall the run),
    so the pages after it are acknowledged first, and a commit out of order is caught by the save that follows it.
    One page per lease: a lane keeps reading past a page that waits, so holding more would let the pages written
    beyond a dying lane's cursor outgrow its window, which test_a_dying_lane_... bounds."""

    HOLD_S = 0.005

    def __init__(self, root, source_points, sink):
        super().__init__(root)
        self.with_text = {pid for pid, p in source_points.items() if isinstance(p.get("text"), str)}
        self.sink = sink
        self.saves = 0
        self.violations = []
        self.acked_at: dict = {}  # point -> when the sink first acknowledged a write of it
        self.held = 0
        self._holding: list = []  # (event loop, future) of the writes held now
        self._lock = threading.Lock()
        write = sink.write

        async def gated_write(shard, seq, body, vectors, check_present=False):
            if seq == 1:
                loop = asyncio.get_running_loop()
                release = loop.create_future()
                with self._lock:
                    self._holding.append((loop, release))
                    self.held += 1
                await asyncio.wait([release], timeout=self.HOLD_S)
            ack = await write(shard, seq, body, vectors, check_present=check_present)
            now = time.time()
            for pos in body.text_index:
                self.acked_at.setdefault(body.ids[pos], now)
            return ack

        sink.write = gated_write

    def save_text(self, job_id, text):
        state = json.loads(text)
        taken = state["updated_at"]
        for s in state["shards"]:
            lo = wire.id_key(s["lo"]) if s["lo"] is not None else None
            end = s["hi"] if s["done"] else s["cursor"]
            if not s["done"] and s["cursor"] == s["lo"]:
                continue
            hi = wire.id_key(end) if end is not None else None
            for pid in self.with_text:
                k = wire.id_key(pid)
                if (lo is None or k >= lo) and (hi is None or k < hi) and \
                        self.acked_at.get(pid, float("inf")) > taken:
                    self.violations.append((s["shard"], pid))
        self.saves += 1
        if self.violations:
            # Fails the run at once (the saver hands it to the coordinator), not after a run that may never end.
            shard, pid = self.violations[0]
            raise AssertionError(f"checkpoint {self.saves} has shard {shard} past point {pid!r}, whose write was "
                                 "not acknowledged when the snapshot was taken")
        with self._lock:
            holding, self._holding = self._holding, []
        for loop, release in holding:
            loop.call_soon_threadsafe(lambda f=release: f.done() or f.set_result(None))
        super().save_text(job_id, text)


def run(pts, *, shards=5, lanes=1, fault=None, page=37, window=6, store=None, sink=None, state=None,
        on_pool=None, splitter=True, options=FAST, policy=NO_PAUSE):
    sink = sink or MemorySink()
    source = MemorySource(pts)
    pool = LocalLanePool(lambda: LocalStages(source, LenEmbedder(), sink, threads=3, fault=fault), lanes,
                         page_size=page, window=window, policy=policy)
    if state is None:
        cuts = boundaries_from_sample(list(pts), shards)
        state = JobState(job_id="t", fingerprint="f", boundaries=cuts, shards=shard_states(cuts))
    if on_pool is not None:
        on_pool(pool)
    try:
        stats = Coordinator(state, pool, store, options=options,
                            splitter=ExactSplitter(pts) if splitter else None).run()
    finally:
        pool.close()
    return state, stats, sink, source


@pytest.mark.parametrize("fault_rate", [0.0, 0.15])
def test_every_point_written_once_per_success_and_cursor_ordered(tmp_path, fault_rate):
    pts = make_points(1200)
    rng = random.Random(42)
    lost = []
    lock = threading.Lock()

    def fault(stage, shard, seq):
        with lock:
            hit = rng.random() < fault_rate
        if hit:
            lost.append((stage, shard, seq))
            raise WorkerLost(f"injected {stage}")

    sink = MemorySink()
    store = SpyStore(str(tmp_path), pts, sink)
    state, stats, sink, _ = run(pts, lanes=2, fault=fault, store=store, sink=sink, policy=PATIENT)
    with_text = {pid for pid, p in pts.items() if "text" in p}
    assert set(sink.target) == with_text  # nothing lost, nothing extra
    for pid in with_text:  # every write carried the right vector
        assert set(sink.target[pid]) == {float(len(pts[pid]["text"]))}
    assert state.written == len(with_text) and state.skipped == len(pts) - len(with_text)
    assert all(s.done for s in state.shards)
    assert stats.dead_count == len(pts) - len(with_text)
    saved = store.load("t")
    assert saved is not None and saved.written == len(with_text)
    assert store.saves > 3 and store.violations == []
    if fault_rate:
        assert lost and stats.pages_redone == len(lost)


def test_resume_from_a_saved_cursor_skips_committed_pages(tmp_path):
    pts = {i: {"text": f"t{i}"} for i in range(500)}
    state = JobState(job_id="r", fingerprint="f", boundaries=[250], shards=shard_states([250]))
    state.shards[0].cursor, state.shards[0].written = 100, 100  # pages up to id 100 were committed earlier
    state.shards[1].done, state.shards[1].written = True, 250
    state, stats, sink, _ = run(pts, state=state, store=UriCheckpointStore(str(tmp_path)), page=64, window=4,
                                splitter=False)
    assert set(sink.target) == set(range(100, 250))
    assert state.written == 500
    assert stats.points_redone == 0  # the resumed lease checked its first page: nothing there was written before


def test_resumed_lease_counts_what_is_really_written_twice(tmp_path):
    pts = {i: {"text": f"t{i}"} for i in range(300)}
    sink = MemorySink()
    for pid in range(100, 160):  # written by the run that crashed after saving cursor 100
        sink.target[pid] = [float(len(f"t{pid}"))]
    state = JobState(job_id="r", fingerprint="f", boundaries=[], shards=shard_states([]))
    state.shards[0].cursor, state.shards[0].written = 100, 100
    state, stats, sink, _ = run(pts, state=state, sink=sink, store=UriCheckpointStore(str(tmp_path)), page=50,
                                window=1, splitter=False)
    assert stats.points_redone == 60
    assert state.written == 300


def test_a_page_that_always_fails_stops_the_job(tmp_path):
    pts = {i: {"text": "a"} for i in range(50)}

    def fault(stage, shard, seq):
        if seq == 0 and stage == "write":
            raise WorkerLost("poisoned")

    state = JobState(job_id="p", fingerprint="f", boundaries=[], shards=shard_states([]))
    with pytest.raises(ReembedError, match="failed 6 times"):
        run(pts, state=state, fault=fault, store=UriCheckpointStore(str(tmp_path)), page=10, window=2,
            splitter=False)
    assert state.shards[0].cursor is None  # nothing past the failed page was committed


def test_a_lost_embed_or_write_is_redone_without_reading_the_page_again(tmp_path):
    pts = {i: {"text": f"t{i}"} for i in range(200)}
    failed = set()

    def fault(stage, shard, seq):
        if stage == "write" and (shard, seq) not in failed:
            failed.add((shard, seq))
            raise WorkerLost("writer restarted", reread=False)

    state, stats, sink, source = run(pts, shards=1, fault=fault, store=UriCheckpointStore(str(tmp_path)), page=20,
                                     window=2, splitter=False)
    assert set(sink.target) == set(pts)
    assert stats.pages_redone == len(failed) == 10
    assert source.reads == 10  # each page read once: the redo re-embedded and re-wrote the data already read


def test_a_dying_lane_returns_its_leases_and_the_job_finishes_exactly(tmp_path):
    pts = make_points(2000, seed=3)
    sink = MemorySink()
    store = SpyStore(str(tmp_path), pts, sink)
    killed: list[str] = []

    def on_pool(pool):
        original = pool.poll

        def poll(timeout):
            out = original(timeout)
            if not killed and len(sink.target) > 300:
                killed.append("local-0")
                pool.kill_lane("local-0")
            return out

        pool.poll = poll

    state, stats, sink, _ = run(pts, shards=4, lanes=2, store=store, sink=sink, on_pool=on_pool, page=25)
    with_text = {pid for pid, p in pts.items() if "text" in p}
    assert killed and set(sink.target) == with_text
    assert state.written == len(with_text) and all(s.done for s in state.shards)
    assert stats.leases_returned >= 1
    assert store.violations == []
    # What was written twice is at most the dead lane's pages in flight (window 6 pages of 25).
    assert stats.points_redone <= 6 * 25


def test_an_idle_lane_steals_the_tail_of_a_long_range(tmp_path):
    pts = {i: {"text": f"t{i}"} for i in range(3000)}
    sink = MemorySink()
    store = SpyStore(str(tmp_path), pts, sink)
    state, stats, sink, _ = run(pts, shards=1, lanes=3, store=store, sink=sink, page=40)
    assert set(sink.target) == set(pts) and all(len(v) == 1 for v in sink.target.values())
    assert stats.splits >= 2
    assert len(state.shards) == 1 + stats.splits and all(s.done for s in state.shards)
    assert sum(1 for r in stats.lanes.values() if r.points > 0) == 3  # every lane worked
    # The split shards tile the id space: each starts where another ends.
    ends = sorted((wire.id_key(s.lo) if s.lo is not None else (-1, -1)) for s in state.shards)
    assert len(set(ends)) == len(ends)
    assert state.written == 3000 and store.violations == []


def test_a_lane_that_joins_mid_run_gets_work(tmp_path):
    pts = {i: {"text": f"t{i}"} for i in range(4000)}
    joined: list[str] = []

    def on_pool(pool):
        original = pool.poll

        def poll(timeout):
            if not joined and pool._count == 1:
                joined.append(pool.add_lane())
            return original(timeout)

        pool.poll = poll

    state, stats, sink, _ = run(pts, shards=1, lanes=1, on_pool=on_pool, store=UriCheckpointStore(str(tmp_path)),
                                page=40)
    assert joined and stats.lanes[joined[0]].points > 0
    assert set(sink.target) == set(pts) and state.written == 4000


def test_no_lane_at_all_ends_the_job_with_one_line(tmp_path):
    clock = [0.0]

    def tick():
        clock[0] += 100.0
        return clock[0]

    class NoLanes:
        def refresh(self):
            from engine.flow.seams import PoolChange

            return PoolChange()

        def assign(self, lane, lease):
            raise AssertionError("no lane to assign to")

        def split(self, lane, shard, at):
            raise AssertionError("no lane to split")

        def poll(self, timeout):
            return []

        def close(self):
            pass

    state = JobState(job_id="n", fingerprint="f", boundaries=[], shards=shard_states([]))
    with pytest.raises(ReembedError, match="no lane could run"):
        Coordinator(state, NoLanes(), UriCheckpointStore(str(tmp_path)), clock=tick,
                    options=CoordinatorOptions(lane_wait_s=300)).run()


def test_a_lease_that_lands_after_the_next_report_is_still_committed_once(tmp_path):
    """An assignment travels on its own (a Ray call to the lane), so the lane's next report may have been taken
    before the lease landed and not list it. That report must not take the lease away: a lease dropped so is
    never queued again, and the acknowledgements the lane sends for it later are ignored (the job never ends)."""
    pts = make_points(2400, seed=5)
    sink = MemorySink()
    store = SpyStore(str(tmp_path), pts, sink)
    late: list = []  # (lane, lease) given by the coordinator and not yet landed on the lane
    landed: list = []
    quiet = [0]  # polls in a row in which no lane acknowledged anything and no lease landed
    quiet_limit = 500  # 5 s of idle polls at 10 ms: far past any pause of a healthy run of this size

    def on_pool(pool):
        assign, poll = pool.assign, pool.poll

        def late_assign(lane, lease):
            late.append((lane, lease))

        def poll_then_land(timeout):
            reports = poll(timeout)  # taken before this round's leases land: they list none of them
            pending, late[:] = list(late), []
            for lane, lease in pending:
                assign(lane, lease)
                landed.append(lease.shard)
            if pending or any(report is not None and report.acks for _, report in reports):
                quiet[0] = 0
            else:
                quiet[0] += 1
                if quiet[0] > quiet_limit:  # fails the run rather than letting a dropped lease hang it
                    raise AssertionError(f"no lane acknowledged anything for {quiet_limit} polls: a lease given "
                                         "before a report was dropped by it")
            return reports

        pool.assign, pool.poll = late_assign, poll_then_land

    options = CoordinatorOptions(save_interval_s=0.0, poll_timeout_s=0.01, refresh_interval_s=0.0, split_retry_s=0.0,
                                 steal_min_points=20)
    state, stats, sink, _ = run(pts, shards=3, lanes=3, store=store, sink=sink, on_pool=on_pool, page=30,
                                options=options)
    with_text = {pid for pid, p in pts.items() if "text" in p}
    assert sorted(set(landed)) == [s.shard for s in state.shards]  # every lease, the split tails too, landed late
    assert stats.splits >= 1
    assert set(sink.target) == with_text and all(len(v) == 1 for v in sink.target.values())  # each written once
    assert all(s.done for s in state.shards) and state.written == len(with_text)
    assert state.skipped == len(pts) - len(with_text) and store.violations == []
