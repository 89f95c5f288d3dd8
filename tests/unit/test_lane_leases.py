"""What the coordinator hands a lane and takes back: each lease carries its shard's key (with custom sharding every
read and write of the range must name it, or it would read other keys' points), starts at the shard's committed
cursor, says whether the range was worked on before (so the lane counts what it writes twice), and comes back from a
lane that vanished from its last committed cursor, to the front of the queue. Over a scripted pool: which lane
reports what, and when, is the test's."""

from __future__ import annotations

import pytest

from engine.errors import ReembedError
from engine.flow.coordinator import Coordinator, CoordinatorOptions
from engine.flow.lease import Lease, LeaseAck
from engine.flow.seams import LaneInfo, LaneReport, LaneStats, PoolChange
from engine.flow.state import JobState, ShardState

FAST = CoordinatorOptions(save_interval_s=0.0, poll_timeout_s=0.0, refresh_interval_s=0.0, streams_per_lane=1)


class Store:
    def __init__(self) -> None:
        self.saved: list[dict] = []

    def save(self, state: JobState) -> None:
        self.saved.append(state.to_dict())

    def save_snapshot(self, job_id, data) -> None:
        self.saved.append(data)


class ScriptedPool:
    """Lanes that finish a lease at the first poll after getting it, unless `script(lane, lease)` says otherwise:
    it returns the LeaseAcks to report (or None: the lane dies)."""

    def __init__(self, lanes=("l0",), script=None) -> None:
        self.added = [LaneInfo(name, f"node-{name}", 1.0) for name in lanes]
        self.lost: list[str] = []
        self.assigned: list[tuple[str, Lease]] = []
        self.pending: dict[str, list[Lease]] = {}
        self.script = script or (lambda lane, lease: [LeaseAck(lease.shard, None, True, written=10, pages=1)])

    def refresh(self) -> PoolChange:
        change = PoolChange(added=self.added, lost=self.lost)
        self.added, self.lost = [], []
        return change

    def assign(self, lane: str, lease: Lease) -> None:
        self.assigned.append((lane, lease))
        self.pending.setdefault(lane, []).append(lease)

    def split(self, lane, shard, at):
        return None

    def poll(self, timeout: float):
        out = []
        for lane, leases in list(self.pending.items()):
            acks = []
            for lease in leases:
                reported = self.script(lane, lease)
                if reported is None:
                    del self.pending[lane]
                    out.append((lane, None))
                    break
                acks += reported
            else:
                done = {a.shard for a in acks if a.done}
                self.pending[lane] = [lease for lease in leases if lease.shard not in done]
                held = sorted(lease.shard for lease in self.pending[lane])
                out.append((lane, LaneReport(acks=acks, stats=LaneStats(pages_written=len(acks)), held=held,
                                             reading=held)))
        return out

    def close(self) -> None:
        pass


def job(shards: list[ShardState]) -> JobState:
    return JobState(job_id="j", fingerprint="f", boundaries=[s.lo for s in shards[1:]], shards=shards)


def test_every_lease_carries_its_shards_key_cursor_and_end():
    shards = [ShardState(0, None, 50, None, shard_key="tenant-a"), ShardState(1, 50, None, 75, shard_key=7),
              ShardState(2, None, None, None, done=True, shard_key="tenant-b")]
    pool = ScriptedPool()
    state = job(shards)
    Coordinator(state, pool, Store(), options=FAST).run()
    leases = {lease.shard: lease for _, lease in pool.assigned}
    assert sorted(leases) == [0, 1]  # a finished shard is not leased again
    assert (leases[0].cursor, leases[0].hi, leases[0].shard_key, leases[0].resumed) == (None, 50, "tenant-a", False)
    # Shard 1 was worked on before (its cursor is past its start): the lane checks what is already written.
    assert (leases[1].cursor, leases[1].hi, leases[1].shard_key, leases[1].resumed) == (75, None, 7, True)
    assert all(s.done for s in state.shards) and state.written == 20 and [s.pages for s in state.shards] == [1, 1, 0]


def test_a_vanished_lane_returns_its_lease_from_the_last_committed_cursor_to_the_front():
    died = []

    def script(lane, lease):
        if lane == "l0" and lease.shard == 0:
            if not died:
                died.append(lane)
                return [LeaseAck(0, 30, False, written=30, pages=3)]  # committed up to 30, then the node is lost
            return None
        return [LeaseAck(lease.shard, None, True, written=5, pages=1)]

    pool = ScriptedPool(lanes=("l0", "l1"), script=script)
    state = job([ShardState(0, None, 100, None), ShardState(1, 100, 200, 100), ShardState(2, 200, None, 200)])
    coordinator = Coordinator(state, pool, Store(), options=FAST)
    stats = coordinator.run()
    again = [lease for lane, lease in pool.assigned if lease.shard == 0][1:]
    assert again and again[0].cursor == 30 and again[0].resumed is True  # from the committed cursor, checking
    assert stats.leases_returned == 1 and state.shards[0].written == 35 and all(s.done for s in state.shards)
    assert [lane for lane, lease in pool.assigned if lease.shard == 0][1] == "l1"


def test_an_ack_for_a_shard_the_lane_does_not_hold_changes_nothing():
    """A report that raced the loss of a lease (or names another lane's shard) must not move that shard."""
    first = []

    def script(lane, lease):
        if lane == "l0" and not first:
            first.append(1)
            return [LeaseAck(lease.shard, 10, False, written=10, pages=1), LeaseAck(1 - lease.shard, None, True,
                                                                                     written=99)]
        return [LeaseAck(lease.shard, None, True, written=1, pages=1)]

    state = job([ShardState(0, None, 100, None), ShardState(1, 100, None, 100)])
    Coordinator(state, ScriptedPool(lanes=("l0", "l1"), script=script), Store(), options=FAST).run()
    assert [s.written for s in state.shards] == [11, 1] and all(s.done for s in state.shards)


def test_a_cursor_never_moves_back():
    acks = iter([[LeaseAck(0, 60, False, written=60, pages=6)], [LeaseAck(0, 40, False, written=0)],
                 [LeaseAck(0, None, True, written=40, pages=4)]])
    seen = []

    class Remember(Store):
        def save_snapshot(self, job_id, data):
            seen.append(data["shards"][0]["cursor"])

    state = job([ShardState(0, None, None, None)])
    Coordinator(state, ScriptedPool(script=lambda lane, lease: next(acks)), Remember(), options=FAST).run()
    assert seen and 40 not in seen and state.shards[0].done and state.written == 100


def test_a_lane_error_ends_the_job_with_its_exit_code():
    class Failing(ScriptedPool):
        def poll(self, timeout):
            return [(lane, LaneReport(error="lane l0: page 3 of shard 0 failed 6 times", error_exit_code=2))
                    for lane in self.pending]

    with pytest.raises(ReembedError, match="page 3 of shard 0 failed 6 times") as err:
        Coordinator(job([ShardState(0, None, None, None)]), Failing(), Store(), options=FAST).run()
    assert err.value.exit_code == 2
