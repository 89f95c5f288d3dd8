"""The lane loop: one lane's work on the leases it holds — a bounded window of pages in flight, the ordered commit of
each lease's cursor, and redoing the pages whose worker was lost.

A lane is one embedding actor and the reader(s) and writer(s) that feed it, on one node. This loop runs beside them
(in the lane's conductor actor on that node, or in a thread for the in-process runtime) over a `Stages` executor,
so page data stays on the node and the coordinator on the driver sees only cursor acknowledgements, batched per
poll. Ray-free: time comes from an injected clock and every pause is a deadline, never a sleep.

Losses: a page whose embedding or write was lost is embedded and written again from the data already read (a
restarting embedding actor does not make the page be read again); a page whose read data is gone too is read again,
exactly the range it covered. A restarting worker costs a page no attempt, only time, bounded by the policy; a page
that keeps failing ends the job with one line naming it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from engine.errors import ReembedError
from engine.flow.lease import Lease, LeaseCursor
from engine.flow.page import PageMeta, WriteAck
from engine.flow.seams import Clock, DeadLetterSink, LaneReport, LaneStats, Stages, WorkerLost
from engine.qdrant.wire import PointIdValue

log = logging.getLogger(__name__)

SPLIT_WAIT_S = 5.0  # how long a split request waits for the lease's read in flight (reads take milliseconds)


@dataclass(frozen=True)
class RedoPolicy:
    """How lost pages are redone."""

    max_attempts: int = 6  # a page whose workers die this often points at a poisoned input or a broken node
    base_delay_s: float = 0.5  # first pause before redoing a page; doubled per attempt (0.5 .. 8 s over 6 attempts)
    max_delay_s: float = 8.0
    # A restarting actor (a GPU node reloading its model, a preempted spot node being replaced) refuses work for a
    # while; that is not the page's fault, so it costs no attempt, only this much waiting before the job gives up.
    unavailable_retry_s: float = 1.0
    max_unavailable_s: float = 600.0

    def delay(self, attempts: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 2))


@dataclass
class _Page:
    shard: int
    seq: int
    start: PointIdValue | None
    stop: PointIdValue | None  # the lease's end for a first read; the page's own end for a re-read
    to_stop: bool = False
    meta: PageMeta | None = None
    read: Any = None  # the read's handle, kept until the page is committed so a lost embed/write needs no re-read
    attempts: int = 1
    unavailable_since: float | None = None
    check_present: bool = False
    reread: bool = True  # when redone: read again (else embed and write again from `read`)


class LaneLoop:
    """Thread-safe: `step` runs on one thread; `assign`, `split` and `report` may be called from others."""

    def __init__(self, stages: Stages, *, page_size: int, window: int, policy: RedoPolicy | None = None,
                 clock: Clock = time.monotonic, on_dead: DeadLetterSink | None = None, name: str = "lane") -> None:
        self.stages = stages
        self.page_size = page_size
        self.window = max(1, window)
        self.policy = policy or RedoPolicy()
        self.clock = clock
        self.on_dead = on_dead
        self.name = name
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._leases: dict[int, LeaseCursor] = {}
        self._reads: dict[Any, _Page] = {}
        self._procs: dict[Any, _Page] = {}
        self._deferred: list[tuple[float, _Page]] = []  # pages waiting out a pause before they are redone
        self._stats = LaneStats()
        self._waiting_since: float | None = None
        self._waiting_for: str | None = None
        self._error: ReembedError | None = None
        self._rr = 0
        # Splits asked for while the lease's first read was in flight: applied when it returns (where the next read
        # starts is only known then), and the answer handed to the waiting caller.
        self._split_asked: dict[int, PointIdValue] = {}
        self._split_answer: dict[int, PointIdValue | None] = {}

    # --- commands from the coordinator ---------------------------------------------------------------------------
    def assign(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.shard] = LeaseCursor(lease)
            self._changed.notify_all()

    def split(self, shard: int, at: PointIdValue, timeout: float = SPLIT_WAIT_S) -> PointIdValue | None:
        """End the lease of `shard` at `at` or at its read frontier; None when there is nothing to give.

        When the lease's first read is in flight, the answer waits for it (the frontier is known only then)."""
        with self._lock:
            cursor = self._leases.get(shard)
            if cursor is None:
                return None
            if not cursor.reading:
                point = cursor.split(at)
                self._changed.notify_all()
                return point
            self._split_asked[shard] = at
            self._split_answer.pop(shard, None)
            self._changed.wait_for(lambda: shard in self._split_answer, timeout)
            self._split_asked.pop(shard, None)
            return self._split_answer.pop(shard, None)

    # --- the loop ------------------------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing to read and nothing in flight."""
        with self._lock:
            return not self._reads and not self._procs and not self._deferred and \
                all(c.exhausted or c.done for c in self._leases.values())

    def step(self, timeout: float = 0.5) -> None:
        """Submit what the window allows, wait up to `timeout` for results, and handle them."""
        with self._lock:
            if self._error is not None:
                return
            self._submit()
            pending = [*self._reads, *self._procs]
            next_due = min((due for due, _ in self._deferred), default=None)
        if not pending:
            # Nothing to wait on: the caller waits for an assignment or for the next deferred page to fall due.
            with self._lock:
                wait = timeout if next_due is None else max(0.0, min(timeout, next_due - self.clock()))
                if wait > 0:
                    self._changed.wait(wait)
            return
        ready = self.stages.wait(pending, timeout)
        with self._lock:
            try:
                for handle in ready:
                    if handle in self._reads:
                        self._on_read(handle, self._reads.pop(handle))
                    elif handle in self._procs:
                        self._on_processed(handle, self._procs.pop(handle))
            except ReembedError as exc:
                self._error = exc
            self._changed.notify_all()

    def _submit(self) -> None:
        now = self.clock()
        due = [item for item in self._deferred if item[0] <= now]
        for item in due:
            self._deferred.remove(item)
            page = item[1]
            if page.reread or page.read is None or page.meta is None:
                self._submit_read(page)
            else:
                self._submit_process(page)
        # Fill the window round-robin over the held leases, one first read in flight per lease.
        shards = [s for s, c in self._leases.items() if not c.exhausted and not c.done]
        for _ in range(len(shards)):
            if len(self._reads) + len(self._procs) + len(self._deferred) + self._waiting_commit() >= self.window:
                return
            cursor = self._leases[shards[self._rr % len(shards)]]
            self._rr += 1
            first = cursor.first_read()
            if first is None:
                continue
            seq, start, stop = first
            self._submit_read(_Page(cursor.shard, seq, start, stop, check_present=cursor.check_present))

    def _waiting_commit(self) -> int:
        """Pages written but not yet committed (a page before them is still in flight): they count against the
        window, so a lane never runs further ahead of its committed cursor than the window."""
        return sum(c.pending for c in self._leases.values())

    def _submit_read(self, page: _Page) -> None:
        if page.read is not None:
            self.stages.release(page.read)
            page.read = None
        lease = self._leases[page.shard].lease
        handle = self.stages.read(lease, page.seq, page.start, page.stop, self.page_size, page.to_stop)
        self._reads[handle] = page

    def _submit_process(self, page: _Page) -> None:
        assert page.meta is not None
        self._procs[self.stages.process(page.read, page.meta, page.check_present)] = page

    def _on_read(self, handle: Any, page: _Page) -> None:
        cursor = self._leases[page.shard]
        first_read = page.meta is None
        try:
            meta: PageMeta = self.stages.result(handle)
        except WorkerLost as exc:
            self.stages.release(handle)
            # A lost first read stays the lease's first read (still `reading`): issued again with the same seq,
            # start and stop after the pause.
            self._redo(page, exc, reread=True)
            return
        self._clear_waiting()
        if first_read:
            cursor.first_read_done(meta.next_offset)
            if page.shard in self._split_asked:
                self._split_answer[page.shard] = cursor.split(self._split_asked.pop(page.shard))
        else:
            # A re-read keeps the first read's end, so the lease's later pages still line up.
            assert page.meta is not None
            meta.next_offset = page.meta.next_offset
        page.meta = meta
        page.read = handle
        self._stats.pages_read += 1
        self._submit_process(page)

    def _on_processed(self, handle: Any, page: _Page) -> None:
        try:
            ack: WriteAck = self.stages.result(handle)
        except WorkerLost as exc:
            self._redo(page, exc, reread=exc.reread)
            return
        self._clear_waiting()
        meta = page.meta
        assert meta is not None
        self.stages.release(page.read)
        page.read = None
        st = self._stats
        st.pages_written += 1
        st.write_requests += ack.requests
        st.points_redone += ack.already_present
        if ack.already_present and page.attempts == 1 and page.unavailable_since is None:
            st.pages_redone += 1  # written before, by a lane or a run that was lost: a redo nobody counted yet
        for cause, n in [*ack.retries.items(), *meta.retries.items()]:
            st.retries[cause] = st.retries.get(cause, 0) + n
        for key, n in meta.tally.items():
            st.tally[key] = st.tally.get(key, 0) + n
        dead = list(meta.dead) + list(ack.dead)
        if dead:
            st.dead += len(dead)
            if self.on_dead is not None:
                self.on_dead(page.shard, dead, meta)
        self._leases[page.shard].ack(page.seq, meta.next_offset, ack.written, ack.skipped + meta.unread,
                                     ack.already_present)

    def _redo(self, page: _Page, cause: WorkerLost, reread: bool) -> None:
        now = self.clock()
        page.reread = reread or page.read is None
        if cause.transient:
            page.unavailable_since = page.unavailable_since or now
            waited = now - page.unavailable_since
            if waited > self.policy.max_unavailable_s:
                raise ReembedError(
                    f"{self.name}: page {page.seq} of shard {page.shard}: workers unavailable for "
                    f"{self.policy.max_unavailable_s:.0f} s (last: {cause}); check the cluster (ray status), then "
                    "re-run to resume"
                )
            delay = self.policy.unavailable_retry_s
            if self._waiting_since is None:
                self._waiting_since = now
                log.warning("%s: a worker is restarting (%s); its pages wait for it", self.name, cause)
            self._waiting_for = f"a restarting worker ({cause})"
        else:
            page.attempts += 1
            page.unavailable_since = None
            if page.attempts > self.policy.max_attempts:
                raise ReembedError(
                    f"{self.name}: page {page.seq} of shard {page.shard} failed {self.policy.max_attempts} times "
                    f"(last: {cause}); check the worker logs (ray logs) for the cause, then re-run to resume"
                )
            delay = self.policy.delay(page.attempts)
            log.warning("%s: redoing page %d of shard %d in %.1fs (attempt %d): %s", self.name, page.seq,
                        page.shard, delay, page.attempts, cause)
        if page.unavailable_since is None or page.unavailable_since == now:
            self._stats.pages_redone += 1  # one per real loss, however long a restart keeps the page waiting
        # The write may have happened before the loss: the redo asks the writer what is already there.
        page.check_present = True
        if page.meta is not None and page.reread:
            # Re-read exactly the range the page covered the first time.
            page.stop = page.meta.next_offset if page.meta.next_offset is not None else page.stop
            page.to_stop = True
        self._deferred.append((now + delay, page))

    def _clear_waiting(self) -> None:
        if self._waiting_since is not None:
            log.info("%s: workers back after %.0f s", self.name, self.clock() - self._waiting_since)
        self._waiting_since = None
        self._waiting_for = None

    # --- reporting -----------------------------------------------------------------------------------------------
    def report(self) -> LaneReport:
        """Everything since the previous report."""
        with self._lock:
            acks = [a for a in (c.take_ack() for c in self._leases.values()) if a is not None]
            stats, self._stats = self._stats, LaneStats()
            for shard in [s for s, c in self._leases.items() if c.done]:
                del self._leases[shard]
            rep = LaneReport(
                acks=acks, stats=stats,
                frontiers={s: c.next_start for s, c in self._leases.items()},
                held=sorted(self._leases),
                reading=sorted(s for s, c in self._leases.items() if not c.exhausted),
                reads_in_flight=len(self._reads), processing=len(self._procs) + len(self._deferred),
            )
            if self._waiting_since is not None:
                rep.waiting = f"{self._waiting_for} for {self.clock() - self._waiting_since:.0f} s"
            if self._error is not None:
                rep.error, rep.error_exit_code = str(self._error), self._error.exit_code
            return rep

    def has_news(self) -> bool:
        """Whether a report now would carry a cursor move, an error or a finished lease."""
        with self._lock:
            return self._error is not None or any(c._delta is not None or c.done for c in self._leases.values())

    def wait_news(self, timeout: float) -> None:
        """Block (for a poll) until there is news or `timeout` passes."""
        deadline = self.clock() + timeout
        with self._lock:
            while not self.has_news():
                left = deadline - self.clock()
                if left <= 0:
                    return
                self._changed.wait(left)
