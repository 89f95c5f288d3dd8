"""The coordinator loop: bounded pages in flight, ordered commit, re-reading pages whose worker was lost.

It drives a `Runtime` (Ray actors in production, threads in unit tests) and never touches page data itself: the
runtime hands it page metadata and write acknowledgements only, so the driver stays small however big the
collection is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from engine import tunables
from engine.flow.checkpoint import BackgroundSaver, CheckpointStore, JobState, OrderedCommit
from engine.errors import ReembedError
from engine.flow.page import PageMeta, WriteAck
from engine.qdrant.wire import PointIdValue

log = logging.getLogger(__name__)

MAX_PAGE_ATTEMPTS = 6  # a page whose workers die this often points at a poisoned input or a broken node
REDO_BASE_DELAY_S = 0.5  # first pause before redoing a page; doubled per attempt (0.5 .. 8 s over 6 attempts)
REDO_MAX_DELAY_S = 8.0
# A restarting actor (a GPU node reloading its model, a preempted spot node being replaced) refuses tasks for a
# while; that is not the page's fault, so it costs no attempt, only this much waiting before the job gives up.
UNAVAILABLE_RETRY_S = 1.0
MAX_UNAVAILABLE_S = 600.0


class WorkerLost(Exception):
    """A worker died or lost its result; the page is safe to redo (every write is idempotent).

    `transient` marks a worker that is restarting rather than one that failed on this page."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Runtime(Protocol):
    def read(self, shard: int, seq: int, start: PointIdValue | None, stop: PointIdValue | None, limit: int,
             to_stop: bool) -> Any: ...

    def process(self, read_handle: Any, meta: PageMeta) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any: ...


@dataclass
class _Page:
    shard: int
    seq: int
    start: PointIdValue | None
    stop: PointIdValue | None  # shard end for a first read; the page's own end for a re-read
    meta: PageMeta | None = None
    attempts: int = 1
    to_stop: bool = False
    unavailable_since: float | None = None


@dataclass
class RunStats:
    pages_read: int = 0
    pages_written: int = 0
    pages_redone: int = 0
    points_redone: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    dead_count: int = 0
    dead_sample: list[tuple[int, PointIdValue, str]] = field(default_factory=list)  # the first few, for logs
    write_requests: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (elapsed s, points committed)
    processed: int = 0  # points committed by this run (a resumed run starts past earlier runs' points)
    pipeline_s: float = 0.0


class Coordinator:
    def __init__(
        self,
        state: JobState,
        runtime: Runtime,
        store: CheckpointStore,
        *,
        page_size: int,
        window: int,
        on_progress: Callable[[JobState, RunStats], None] | None = None,
        on_dead: Callable[[int, list[tuple[PointIdValue, str]], PageMeta], None] | None = None,
        save_interval_s: float = tunables.CHECKPOINT_MIN_INTERVAL_S,
    ) -> None:
        self.state = state
        self.runtime = runtime
        self.store = store
        self.page_size = page_size
        self.window = max(1, window)
        self.on_progress = on_progress
        self.on_dead = on_dead
        self.save_interval_s = save_interval_s
        self.stats = RunStats()

    def run(self) -> RunStats:
        saver = BackgroundSaver(self.store, self.state.job_id)
        try:
            return self._run(saver)
        finally:
            saver.close()

    def _run(self, saver: BackgroundSaver) -> RunStats:
        shards = [s for s in self.state.shards if not s.done]
        commits = {s.shard: OrderedCommit(s) for s in shards}
        next_start: dict[int, PointIdValue | None] = {s.shard: s.cursor for s in shards}
        next_seq = {s.shard: 0 for s in shards}
        exhausted: set[int] = set()
        reading: set[int] = set()  # shards with a first read in flight: the next one needs its next_offset
        reads: dict[Any, _Page] = {}
        procs: dict[Any, _Page] = {}
        last_save = 0.0
        dirty = False
        t0 = time.monotonic()
        order = [s.shard for s in shards]
        rr = 0

        def submit_read(page: _Page) -> None:
            h = self.runtime.read(page.shard, page.seq, page.start, page.stop, self.page_size, page.to_stop)
            reads[h] = page

        deferred: list[tuple[float, _Page]] = []  # pages waiting out a pause before they are read again

        def redo(page: _Page, cause: WorkerLost) -> None:
            now = time.monotonic()
            if cause.transient:
                page.unavailable_since = page.unavailable_since or now
                if now - page.unavailable_since > MAX_UNAVAILABLE_S:
                    raise ReembedError(
                        f"page {page.seq} of shard {page.shard}: workers unavailable for {MAX_UNAVAILABLE_S:.0f} s "
                        f"(last: {cause}); check the cluster (ray status), then re-run to resume"
                    )
                delay = UNAVAILABLE_RETRY_S
            else:
                page.attempts += 1
                page.unavailable_since = None
                if page.attempts > MAX_PAGE_ATTEMPTS:
                    raise ReembedError(
                        f"page {page.seq} of shard {page.shard} failed {MAX_PAGE_ATTEMPTS} times (last: {cause}); "
                        "check the worker logs (ray logs) for the cause, then re-run to resume"
                    )
                delay = min(REDO_MAX_DELAY_S, REDO_BASE_DELAY_S * 2 ** (page.attempts - 2))
            self.stats.pages_redone += 1
            if page.meta is not None:
                self.stats.points_redone += page.meta.n_points
                # Re-read exactly the range the page covered the first time.
                page.stop = page.meta.next_offset if page.meta.next_offset is not None else page.stop
                page.to_stop = True
            log.warning("redoing page %d of shard %d in %.1fs (attempt %d): %s", page.seq, page.shard, delay,
                        page.attempts, cause)
            deferred.append((now + delay, page))

        while any(not s.done for s in shards):
            now = time.monotonic()
            for item in [d for d in deferred if d[0] <= now]:
                deferred.remove(item)
                submit_read(item[1])
            # Fill the window round-robin over shards, one first-read in flight per shard.
            for _ in range(len(order)):
                if len(reads) + len(procs) + len(deferred) >= self.window:
                    break
                shard = order[rr % len(order)]
                rr += 1
                if shard in exhausted or shard in reading:
                    continue
                st = self.state.shards[shard]
                page = _Page(shard, next_seq[shard], next_start[shard], st.hi)
                next_seq[shard] += 1
                reading.add(shard)
                submit_read(page)
            pending = list(reads) + list(procs)
            if not pending:
                if not deferred:
                    raise ReembedError("internal: no work in flight but shards unfinished; re-run to resume")
                time.sleep(max(0.0, min(t for t, _ in deferred) - time.monotonic()))
                continue
            for h in self.runtime.wait(pending, timeout=0.5):
                if h in reads:
                    page = reads.pop(h)
                    first_read = page.meta is None
                    try:
                        meta: PageMeta = self.runtime.result(h)
                    except WorkerLost as exc:
                        redo(page, exc)  # a lost first read stays the shard's first read
                        continue
                    if first_read:
                        page.meta = meta
                        reading.discard(page.shard)
                        next_start[page.shard] = meta.next_offset
                        if meta.exhausted:
                            exhausted.add(page.shard)
                    else:
                        # A re-read keeps the first read's end so the shard's later pages still line up.
                        meta.next_offset = page.meta.next_offset  # type: ignore[union-attr]
                        page.meta = meta
                    self.stats.pages_read += 1
                    procs[self.runtime.process(h, meta)] = page
                else:
                    page = procs.pop(h)
                    try:
                        ack: WriteAck = self.runtime.result(h)
                    except WorkerLost as exc:
                        redo(page, exc)
                        continue
                    meta = page.meta  # type: ignore[assignment]
                    self.stats.pages_written += 1
                    self.stats.write_requests += ack.requests
                    for cause, n in [*ack.retries.items(), *meta.retries.items()]:
                        self.stats.retries[cause] = self.stats.retries.get(cause, 0) + n
                    dead = list(meta.dead) + list(ack.dead)
                    if dead and self.on_dead is not None:
                        self.on_dead(page.shard, dead, meta)
                    self.stats.dead_count += len(dead)
                    room = 20 - len(self.stats.dead_sample)
                    if room > 0:
                        self.stats.dead_sample.extend((page.shard, pid, why) for pid, why in dead[:room])
                    if commits[page.shard].ack(page.seq, meta.next_offset, ack.written, ack.skipped):
                        dirty = True
            now = time.monotonic()
            if dirty and now - last_save >= self.save_interval_s:
                saver.submit(self.state)
                last_save, dirty = now, False
                self.stats.timeline.append((now - t0, self.state.written + self.state.skipped))
            if self.on_progress is not None:
                self.on_progress(self.state, self.stats)
        saver.flush()
        self.store.save(self.state)
        self.stats.timeline.append((time.monotonic() - t0, self.state.written + self.state.skipped))
        return self.stats
