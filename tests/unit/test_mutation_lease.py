"""A lease's cursor (engine/flow/lease.py) and splitting a lease (`LeaseCursor.split`, engine/flow/lane.py
`LaneLoop.split`), the cases mutation testing found unpinned: a first read ending at or past the lease's end ends its
reading whatever the source did; the counts of several pages committed between two reports add up; a resumed lease
stops asking what was written before only once its first page found nothing; a split never moves a lease's end further out (two leases would then overlap), a
split exactly at the frontier of a lease whose pages are all committed finishes it at once and reports it with the
counts not yet reported, and a split that timed out while the lease's first read was in flight is forgotten (applied
later, the range [at, hi) would be in no lease at all: never written, yet reported done)."""

from __future__ import annotations

from engine.flow.lane import LaneLoop
from engine.flow.lease import Lease, LeaseAck, LeaseCursor
from tests.unit.test_lane_redo import NO_PAUSE, Clock, Script, ScriptedStages, drive


def test_a_split_beyond_the_leases_end_is_refused_and_leaves_the_end_as_it_was():
    cursor = LeaseCursor(Lease(shard=4, cursor=0, hi=100))
    assert cursor.split(150) is None and cursor.hi == 100
    assert cursor.split(100) is None and cursor.hi == 100  # the end itself leaves nothing to give
    assert cursor.split(60) == 60 and cursor.hi == 60
    assert cursor.split(80) is None and cursor.hi == 60  # a second split cannot undo the first


def test_a_split_at_the_frontier_of_a_fully_committed_lease_finishes_it_now():
    cursor = LeaseCursor(Lease(shard=4, cursor=10, hi=100))
    assert cursor.split(5) == 10  # behind the frontier: the split lands on it
    assert cursor.exhausted and cursor.done and cursor.hi == 10
    assert cursor.take_ack() == LeaseAck(shard=4, cursor=10, done=True)


def test_a_finishing_split_keeps_the_counts_of_the_commits_not_yet_reported():
    cursor = LeaseCursor(Lease(shard=2, cursor=None, hi=None))
    assert cursor.first_read() == (0, None, None)
    cursor.first_read_done(20)
    assert cursor.ack(0, 20, written=15, skipped=5, already=3)
    assert cursor.split(20) == 20
    assert cursor.take_ack() == LeaseAck(shard=2, cursor=20, done=True, written=15, skipped=5, pages=1,
                                         points_redone=3)
    assert cursor.take_ack() is None


def test_a_split_with_pages_still_uncommitted_ends_the_reading_but_not_the_lease():
    cursor = LeaseCursor(Lease(shard=1, cursor=0, hi=None))
    cursor.first_read()
    cursor.first_read_done(30)
    assert cursor.split(30) == 30 and cursor.exhausted and not cursor.done
    assert cursor.take_ack() is None
    assert cursor.ack(0, 30, written=30, skipped=0) and cursor.done
    assert cursor.take_ack() == LeaseAck(shard=1, cursor=30, done=True, written=30, pages=1)


def test_a_lane_splits_a_lease_whose_first_read_is_not_in_flight_where_it_is_asked():
    points = {i: {"text": f"t{i}"} for i in range(100)}
    stages = ScriptedStages(points, Script())
    loop = LaneLoop(stages, page_size=10, window=2, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    assert loop.split(0, 50) == 50
    assert loop.split(9, 50) is None  # a shard the lane does not hold
    acks = drive(loop, stages, points, Lease(shard=0, cursor=None, hi=50))  # checked against the shortened range
    assert acks[-1].done and set(stages.written) == set(range(50))


def test_a_split_that_timed_out_during_a_first_read_is_not_applied_when_the_read_returns():
    points = {i: {"text": f"t{i}"} for i in range(100)}
    held = {"reads": True}
    stages = ScriptedStages(points, Script(ready=lambda job: not (job.stage == "read" and held["reads"])))
    loop = LaneLoop(stages, page_size=10, window=1, policy=NO_PAUSE, clock=Clock())
    lease = Lease(shard=0, cursor=None, hi=None)
    loop.assign(lease)
    loop.step(timeout=0.0)  # the first read is now in flight
    assert loop.split(0, 50, timeout=0.0) is None  # its answer did not come in time: the coordinator keeps [50, end)
    held["reads"] = False
    acks = drive(loop, stages, points, lease)
    assert acks[-1].done and acks[-1].cursor is None
    assert set(stages.written) == set(points)  # the lane did not quietly end its lease at 50


def test_a_first_read_ending_at_or_past_the_leases_end_ends_its_reading():
    cursor = LeaseCursor(Lease(shard=0, cursor=0, hi=50))
    cursor.first_read()
    cursor.first_read_done(40)
    assert not cursor.exhausted and not cursor.reading and cursor.first_read() == (1, 40, 50)
    cursor.first_read_done(50)
    assert cursor.exhausted and cursor.first_read() is None
    past = LeaseCursor(Lease(shard=0, cursor=0, hi=50))
    past.first_read()
    past.first_read_done(75)  # a source that did not cut at the end: nothing past it is read
    assert past.exhausted and past.first_read() is None


def test_pages_committed_between_two_reports_add_up():
    cursor = LeaseCursor(Lease(shard=3, cursor=None, hi=None, resumed=True))
    for _ in range(3):
        cursor.first_read()
    assert not cursor.ack(1, 20, written=9, skipped=1, already=3)  # waits for page 0
    assert cursor.pending == 1 and cursor.take_ack() is None
    assert cursor.ack(0, 10, written=8, skipped=2, already=2)
    assert cursor.take_ack() == LeaseAck(shard=3, cursor=20, done=False, written=17, skipped=3, pages=2,
                                         points_redone=5)


def test_a_resumed_lease_checks_for_earlier_writes_until_its_first_committed_page_finds_none():
    cursor = LeaseCursor(Lease(shard=0, cursor=None, hi=None, resumed=True))
    assert cursor.check_present
    cursor.ack(1, 20, written=10, skipped=0, already=0)  # not the page the cursor waits for: proves nothing
    assert cursor.check_present
    cursor.ack(0, 10, written=10, skipped=0, already=4)  # the first page found some: keep checking
    assert cursor.check_present
    cursor.ack(2, 30, written=10, skipped=0, already=0)  # the next page to commit found none: the rest are new
    assert not cursor.check_present


def test_a_split_asked_during_a_first_read_is_answered_when_the_read_returns():
    import threading

    points = {i: {"text": f"t{i}"} for i in range(100)}
    held = {"reads": True}
    stages = ScriptedStages(points, Script(ready=lambda job: not (job.stage == "read" and held["reads"])))
    loop = LaneLoop(stages, page_size=10, window=1, policy=NO_PAUSE, clock=Clock())
    loop.assign(Lease(shard=0, cursor=None, hi=None))
    loop.step(timeout=0.0)  # the first read is now in flight
    answer: list = []
    asking = threading.Thread(target=lambda: answer.append(loop.split(0, 50, timeout=30.0)))
    asking.start()
    while True:  # until the split has asked (it then waits for the read); no clock involved
        with loop._lock:
            if 0 in loop._split_asked:
                break
    held["reads"] = False
    loop.step(timeout=0.0)  # the read returns: the split is applied where the frontier allows, and answered
    asking.join()
    assert answer == [50]
    acks = drive(loop, stages, points, Lease(shard=0, cursor=None, hi=50))
    assert acks[-1].done and set(stages.written) == set(range(50))
