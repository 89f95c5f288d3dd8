"""The coordinator: leases shards to lanes, applies their cursor acknowledgements to the job state, saves it, and
keeps every lane busy — splitting the longest remaining ranges when the queue runs dry, taking leases back from
lanes that vanish, giving work to lanes that appear.

It never touches page data and its cost is per lane report, not per page: a report carries every cursor move of a
lane since its previous one. Ray-free: lanes come from a `LanePool` (Ray actors in production, threads in tests),
time from an injected clock.

Resume semantics: a shard's cursor in the saved state is where a resumed job reads it from. Only acknowledged,
ordered pages move it, so a crash, a lost lane or a resubmitted job redoes at most the pages that were in flight
(plus what was committed since the last save); leases given out again are marked `resumed`, so their first pages
count what was already written (`points_redone`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from engine.errors import ReembedError
from engine.flow.checkpoint import BackgroundSaver, CheckpointStore
from engine.flow.lease import Lease, LeaseAck, before
from engine.flow.seams import Clock, LaneInfo, LanePool, LaneReport, LaneStats
from engine.flow.state import JobState, LaneRecord, ShardState
from engine.qdrant.wire import PointIdValue

log = logging.getLogger(__name__)


class Splitter(Protocol):
    """Where a range can be split, from a sample of the collection's ids."""

    def pick(self, after: PointIdValue | None, before: PointIdValue | None,
             shard_key: str | int | None) -> tuple[int, PointIdValue] | None:
        """(estimated points strictly inside (after, before), a sampled id near their middle), or None when the
        sample holds fewer than two ids there."""
        ...


@dataclass(frozen=True)
class CoordinatorOptions:
    save_interval_s: float = 1.0  # a crash redoes in-flight pages + at most this long of commits
    poll_timeout_s: float = 0.5  # one wait for lane reports; bounds how late a new lane or a split is noticed
    refresh_interval_s: float = 1.0  # how often the pool is asked for new or lost lanes (a GCS query: cheap)
    streams_per_lane: int = 2  # leases a lane reads at once: a lease reads one page at a time (the next offset
    # comes from the previous page), so a second lease keeps the lane fed at a lease's end and on slow reads
    steal_min_points: int = 4096  # split only ranges with more than this left (STEAL_MIN_PAGES pages of the job)
    split_retry_s: float = 10.0  # a lease that refused a split is not asked again for this long
    stall_report_s: float = 30.0  # without progress this long, the progress line says what the job waits for
    lane_wait_s: float = 600.0  # with no lane at all this long (no node can host one), the job stops


@dataclass
class RunStats:
    """Counts of one run (the first, or a resume)."""

    pages_read: int = 0
    pages_written: int = 0
    pages_redone: int = 0
    points_redone: int = 0
    write_requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    tally: dict[str, int] = field(default_factory=dict)
    dead_count: int = 0
    splits: int = 0
    leases_returned: int = 0  # leases taken back from lanes that vanished
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (elapsed s, points committed)
    processed: int = 0  # points committed by this run (a resumed run starts past earlier runs' points)
    pipeline_s: float = 0.0
    driver_cpu_s: float = 0.0
    lanes: dict[str, LaneRecord] = field(default_factory=dict)
    status: str | None = None  # what the job is waiting for, while it waits
    pace: str | None = None  # how the writers pace themselves (one lane's word)
    in_flight: dict[str, tuple[int, int]] = field(default_factory=dict)  # lane -> (pages reading, processing)

    def add(self, lane: LaneStats) -> None:
        self.pages_read += lane.pages_read
        self.pages_written += lane.pages_written
        self.pages_redone += lane.pages_redone
        self.points_redone += lane.points_redone
        self.write_requests += lane.write_requests
        self.dead_count += lane.dead
        for cause, n in lane.retries.items():
            self.retries[cause] = self.retries.get(cause, 0) + n
        for key, n in lane.tally.items():
            self.tally[key] = self.tally.get(key, 0) + n


ProgressHook = Callable[[JobState, RunStats], None]


class Coordinator:
    def __init__(self, state: JobState, pool: LanePool, store: CheckpointStore, *,
                 options: CoordinatorOptions | None = None, splitter: Splitter | None = None,
                 clock: Clock = time.monotonic, on_progress: ProgressHook | None = None,
                 cpu_clock: Clock = time.process_time) -> None:
        self.state = state
        self.pool = pool
        self.store = store
        self.opt = options or CoordinatorOptions()
        self.splitter = splitter
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.on_progress = on_progress
        self.stats = RunStats()
        self._queue: deque[int] = deque()
        self._owner: dict[int, str] = {}  # shard -> lane holding its lease
        self._lanes: dict[str, LaneInfo] = {}
        self._held: dict[str, set[int]] = {}
        self._reading: dict[str, set[int]] = {}
        # Leases given to a lane that no report of it has shown yet: an assignment travels on its own (a Ray call),
        # so a report taken before it landed does not list the lease, and that must not take the lease away.
        self._unconfirmed: dict[str, set[int]] = {}
        self._frontier: dict[int, PointIdValue | None] = {}
        self._resumed: set[int] = set()
        self._no_split_until: dict[int, float] = {}
        self._waiting: dict[str, str] = {}  # lane -> what it waits for

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> RunStats:
        saver = BackgroundSaver(self.store, self.state.job_id)
        cpu0 = self.cpu_clock()
        try:
            self._run(saver)
        finally:
            saver.close()
            self.stats.driver_cpu_s = self.cpu_clock() - cpu0
        return self.stats

    def _run(self, saver: BackgroundSaver) -> None:
        t0 = self.clock()
        for s in self.state.shards:
            if not s.done:
                self._queue.append(s.shard)
                if s.cursor != s.lo:
                    self._resumed.add(s.shard)  # worked on by an earlier run: pages past the cursor may be written
        last_refresh = -float("inf")
        last_save = t0
        last_move, last_done = t0, self._done_points()
        no_lanes_since: float | None = None
        dirty = False
        while any(not s.done for s in self.state.shards):
            now = self.clock()
            if now - last_refresh >= self.opt.refresh_interval_s or not self._lanes:
                self._apply_pool_change()
                last_refresh = now
            if not self._lanes:
                no_lanes_since = no_lanes_since or now
                if now - no_lanes_since > self.opt.lane_wait_s:
                    raise ReembedError(
                        f"no lane could run for {self.opt.lane_wait_s:.0f} s (no node can host the embedding actor "
                        "and its readers and writers); check `ray status` and the lane shape in the log, add a node "
                        "or lower pipeline.embed_gpus_per_actor / pipeline.io_cpus_per_lane, then re-run to resume"
                    )
            else:
                no_lanes_since = None
            self._assign()
            for lane, report in self.pool.poll(self.opt.poll_timeout_s):
                if report is None:
                    self._lose(lane)
                elif self._apply(lane, report):
                    dirty = True
            now = self.clock()
            done_points = self._done_points()
            if done_points != last_done:
                last_move, last_done = now, done_points
            self.stats.status = self._status(now - last_move, no_lanes_since)
            if dirty and now - last_save >= self.opt.save_interval_s:
                self.state.lanes = [LaneRecord(**vars(r)) for r in self.stats.lanes.values()]
                saver.submit(self.state)
                last_save, dirty = now, False
                self.stats.timeline.append((now - t0, done_points))
            if self.on_progress is not None:
                self.on_progress(self.state, self.stats)
        saver.flush()
        self.state.lanes = [LaneRecord(**vars(r)) for r in self.stats.lanes.values()]
        self.store.save(self.state)
        self.stats.status = None
        self.stats.timeline.append((self.clock() - t0, self._done_points()))

    def _done_points(self) -> int:
        return self.state.written + self.state.skipped

    def _status(self, still_s: float, no_lanes_since: float | None) -> str | None:
        if no_lanes_since is not None:
            return f"waiting for a lane: no node can host one yet ({still_s:.0f} s)"
        qdrant = sorted(w for w in self._waiting.values() if w.startswith("waiting for Qdrant"))
        if qdrant and still_s >= self.opt.poll_timeout_s:
            return qdrant[0]  # an outage or a rate limit: said at once, not after the stall delay
        if still_s < self.opt.stall_report_s:
            return None
        waits = sorted(set(self._waiting.values()))
        what = "; ".join(waits) if waits else "lanes working on pages in flight"
        return f"no progress for {still_s:.0f} s: waiting for {what}"

    # --- lanes coming and going ----------------------------------------------------------------------------------
    def _apply_pool_change(self) -> None:
        change = self.pool.refresh()
        for info in change.added:
            self._lanes[info.lane] = info
            self._held.setdefault(info.lane, set())
            self._reading.setdefault(info.lane, set())
            self.stats.lanes.setdefault(info.lane, LaneRecord(lane=info.lane, node_id=info.node_id, gpus=info.gpus))
            log.info("lane %s joined (node %s, %g GPU)", info.lane, info.node_id[:12], info.gpus)
        for lane in change.lost:
            self._lose(lane)

    def _lose(self, lane: str) -> None:
        if lane not in self._lanes:
            return
        shards = sorted(self._held.pop(lane, set()))
        self._reading.pop(lane, None)
        self._unconfirmed.pop(lane, None)
        self._waiting.pop(lane, None)
        self.stats.in_flight.pop(lane, None)
        info = self._lanes.pop(lane)
        for shard in reversed(shards):
            del self._owner[shard]
            self._resumed.add(shard)
            self._queue.appendleft(shard)  # first in line: they hold the job's oldest unfinished ranges
        self.stats.leases_returned += len(shards)
        log.warning("lane %s (node %s) is gone; %d lease(s) return to the queue from their last committed cursor",
                    lane, info.node_id[:12], len(shards))

    # --- leases --------------------------------------------------------------------------------------------------
    def _lease(self, shard: ShardState) -> Lease:
        return Lease(shard=shard.shard, cursor=shard.cursor, hi=shard.hi, shard_key=shard.shard_key,
                     resumed=shard.shard in self._resumed)

    def _give(self, lane: str, shard_id: int) -> None:
        shard = self.state.shards[shard_id]
        self.pool.assign(lane, self._lease(shard))
        self._owner[shard_id] = lane
        self._held[lane].add(shard_id)
        self._reading[lane].add(shard_id)
        self._unconfirmed.setdefault(lane, set()).add(shard_id)
        self._frontier[shard_id] = shard.cursor

    def _assign(self) -> None:
        hungry = [lane for lane in self._lanes if len(self._reading[lane]) < self.opt.streams_per_lane]
        # Lanes with the least to do first, so every lane gets a lease before any gets a second.
        for lane in sorted(hungry, key=lambda ln: len(self._reading[ln])):
            while len(self._reading[lane]) < self.opt.streams_per_lane:
                if self._queue:
                    self._give(lane, self._queue.popleft())
                elif not self._steal_for(lane):
                    break

    def _steal_for(self, lane: str) -> bool:
        """Split the longest remaining range in flight and give its tail to `lane`."""
        if self.splitter is None:
            return False
        now = self.clock()
        best: tuple[int, int, PointIdValue] | None = None
        for shard_id, owner in self._owner.items():
            if shard_id not in self._reading.get(owner, ()) or self._no_split_until.get(shard_id, 0) > now:
                continue
            shard = self.state.shards[shard_id]
            picked = self.splitter.pick(self._frontier.get(shard_id, shard.cursor), shard.hi, shard.shard_key)
            if picked is None:
                self._no_split_until[shard_id] = now + self.opt.split_retry_s
                continue
            estimate, at = picked
            if estimate > self.opt.steal_min_points and (best is None or estimate > best[0]):
                best = (estimate, shard_id, at)
        if best is None:
            return False
        estimate, shard_id, at = best
        owner = self._owner[shard_id]
        point = self.pool.split(owner, shard_id, at)
        if point is None:
            self._no_split_until[shard_id] = now + self.opt.split_retry_s
            return False
        old = self.state.shards[shard_id]
        new = ShardState(shard=len(self.state.shards), lo=point, hi=old.hi, cursor=point, shard_key=old.shard_key,
                         split_from=old.shard)
        old.hi = point
        self.state.shards.append(new)
        self.stats.splits += 1
        log.info("split shard %d at %r (about %d points left): the tail is shard %d, leased to lane %s", shard_id,
                 point, estimate, new.shard, lane)
        self._give(lane, new.shard)
        return True

    # --- reports -------------------------------------------------------------------------------------------------
    def _apply(self, lane: str, report: LaneReport) -> bool:
        if report.error is not None:
            raise ReembedError(report.error) if report.error_exit_code == 1 else _with_code(report)
        if lane not in self._lanes:
            return False  # a report that raced the lane's loss: its leases are already back in the queue
        moved = False
        record = self.stats.lanes[lane]
        for ack in report.acks:
            moved |= self._ack(lane, ack, record)
        self.stats.add(report.stats)
        record.pages_redone += report.stats.pages_redone
        record.points_redone += report.stats.points_redone
        self._frontier.update(report.frontiers)
        self.stats.in_flight[lane] = (report.reads_in_flight, report.processing)
        unconfirmed = self._unconfirmed.setdefault(lane, set())
        unconfirmed -= {*report.held, *(ack.shard for ack in report.acks)}
        self._held[lane] = {s for s in self._held[lane] if s in report.held or s in unconfirmed}
        self._reading[lane] = {s for s in report.reading if s in self._held[lane]} | unconfirmed
        for shard in list(self._owner):
            if self._owner[shard] == lane and shard not in self._held[lane]:
                del self._owner[shard]
        if report.qdrant_waiting:
            self._waiting[lane] = report.qdrant_waiting
        elif report.waiting:
            self._waiting[lane] = f"lane {lane}: {report.waiting}"
        else:
            self._waiting.pop(lane, None)
        if report.pace:
            self.stats.pace = report.pace
        return moved

    def _ack(self, lane: str, ack: LeaseAck, record: LaneRecord) -> bool:
        shard = self.state.shards[ack.shard]
        if self._owner.get(ack.shard) != lane:
            return False  # a lease taken back from this lane meanwhile
        if not ack.done and not before(shard.cursor, ack.cursor) and ack.cursor != shard.cursor:
            return False
        shard.cursor = ack.cursor
        shard.written += ack.written
        shard.skipped += ack.skipped
        shard.pages += ack.pages
        record.points += ack.written + ack.skipped
        record.pages += ack.pages
        if ack.done:
            shard.done = True
            self._resumed.discard(ack.shard)
        return True


def _with_code(report: LaneReport) -> ReembedError:
    err = ReembedError(report.error)
    err.exit_code = report.error_exit_code
    return err
