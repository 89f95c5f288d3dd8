"""Leases: a shard (an id range, with its shard key where the collection has custom sharding) owned by one lane at a
time, and the per-lease cursor that moves only over acknowledged pages, in order.

A lane reads a lease page by page from its cursor. Pages may finish in any order; the cursor moves over a gap-free
prefix of acknowledged pages only, so a crash at any instant loses nothing: everything before the cursor is in the
target, everything after it is read again (writes are idempotent, so re-reading the pages that were in flight
duplicates nothing). The lane reports each move as a `LeaseAck`; the coordinator applies acks to the job state and
saves it.

A lease's end can move closer (`split`): the coordinator gives the tail of a long lease to an idle lane. A split is
accepted only at or beyond the lease's read frontier (where the next first read starts), never behind a page that
was already read, so the two leases never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.qdrant.wire import PointIdValue, id_key


@dataclass(frozen=True)
class Lease:
    """What a lane is given: read [cursor, hi) of this shard (cursor None = from the collection's start)."""

    shard: int
    cursor: PointIdValue | None
    hi: PointIdValue | None  # exclusive; None = the end of the collection
    shard_key: str | int | None = None
    # Pages at the start of a lease that was worked on before (a resumed job, a lane that died) may already be in the
    # target: the writer checks which points already carry the new vector, so `points_redone` counts what is really
    # written twice.
    resumed: bool = False


@dataclass
class LeaseAck:
    """The lease's cursor moved: counts are increments since the previous ack of this lease."""

    shard: int
    cursor: PointIdValue | None  # the committed cursor now (None with done = the range is finished)
    done: bool
    written: int = 0
    skipped: int = 0
    pages: int = 0
    points_redone: int = 0


def before(a: PointIdValue | None, b: PointIdValue | None) -> bool:
    """a < b in Qdrant's id order, None being the collection's start for `a` and its end for `b`."""
    if b is None or a is None:
        return True
    return id_key(a) < id_key(b)


@dataclass
class LeaseCursor:
    """A lane's view of one lease: the read frontier, the committed cursor, and the acks waiting for a gap."""

    lease: Lease
    next_start: PointIdValue | None = None  # where the next first read begins
    committed: PointIdValue | None = None
    hi: PointIdValue | None = None
    next_seq: int = 0  # seq of the next first read
    commit_seq: int = 0  # seq of the next page the cursor waits for
    exhausted: bool = False  # a first read reached hi (or the collection's end): no more first reads
    reading: bool = False  # a first read is in flight (its next_offset decides where the next one starts)
    done: bool = False
    check_present: bool = False  # the writer counts points already written (see Lease.resumed)
    _acked: dict[int, tuple[PointIdValue | None, int, int, int]] = field(default_factory=dict)
    _delta: LeaseAck | None = None

    def __post_init__(self) -> None:
        self.next_start = self.committed = self.lease.cursor
        self.hi = self.lease.hi
        self.check_present = self.lease.resumed

    @property
    def shard(self) -> int:
        return self.lease.shard

    def first_read(self) -> tuple[int, PointIdValue | None, PointIdValue | None] | None:
        """(seq, start, stop) of the next first read, or None when one is in flight or the lease is read out."""
        if self.reading or self.exhausted:
            return None
        self.reading = True
        seq = self.next_seq
        self.next_seq += 1
        return seq, self.next_start, self.hi

    def first_read_done(self, next_offset: PointIdValue | None) -> None:
        """A first read came back: the next one starts where it ended."""
        self.reading = False
        self.next_start = next_offset
        if next_offset is None or (self.hi is not None and not before(next_offset, self.hi)):
            self.exhausted = True

    def split(self, at: PointIdValue) -> PointIdValue | None:
        """Shorten the lease to end at `at` or, if reading is already past it, at the read frontier. Returns the
        accepted split point, or None when the lease has nothing left to give (read out, or a first read in flight
        would decide where the frontier lands)."""
        if self.exhausted or self.reading or self.done:
            return None
        if not before(self.next_start, self.hi):
            return None
        point = at if before(self.next_start, at) else self.next_start
        if point is None or not before(point, self.hi):
            return None
        self.hi = point
        if point == self.next_start:
            self.exhausted = True  # the pages read so far end exactly here: nothing is left to read
            if self.commit_seq == self.next_seq:  # and all of them are committed: the lease is finished now
                self.done = True
                delta = self._delta or LeaseAck(self.shard, self.committed, True)
                delta.cursor, delta.done = self.committed, True
                self._delta = delta
        return point

    def ack(self, seq: int, next_offset: PointIdValue | None, written: int, skipped: int,
            already: int = 0) -> bool:
        """Record an acknowledged page; returns True when the committed cursor moved."""
        if seq < self.commit_seq:
            return False  # a page redone after a retry whose first attempt was already committed
        self._acked[seq] = (next_offset, written, skipped, already)
        if already == 0 and seq == self.commit_seq:
            self.check_present = False  # the first page found nothing written before: the rest were not either
        moved = False
        while self.commit_seq in self._acked:
            nxt, w, s, a = self._acked.pop(self.commit_seq)
            self.committed = nxt
            self.commit_seq += 1
            ends = nxt is None or (self.hi is not None and not before(nxt, self.hi))
            if ends and self.exhausted:
                self.done = True
            delta = self._delta or LeaseAck(self.shard, nxt, False)
            delta.cursor, delta.done = nxt, self.done
            delta.written += w
            delta.skipped += s
            delta.pages += 1
            delta.points_redone += a
            self._delta = delta
            moved = True
        return moved

    def take_ack(self) -> LeaseAck | None:
        """The accumulated move since the last call, or None."""
        delta, self._delta = self._delta, None
        return delta

    @property
    def pending(self) -> int:
        return len(self._acked)
