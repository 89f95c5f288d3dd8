"""Lanes on threads in one process: the same Source, embedder and Sink as the Ray lanes, and the same lane loop,
without Ray.

For the unit tests of the coordinator and the lane loop (with injected worker loss, lanes that die or join), and for
comparing a single-process run with the Ray run on the same data.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from engine.flow.lane import LaneLoop, RedoPolicy
from engine.flow.lease import Lease
from engine.flow.page import PageMeta
from engine.flow.seams import LaneInfo, LaneReport, PoolChange, Sink, Source, WorkerLost
from engine.qdrant.wire import PointIdValue

Fault = Callable[[str, int, int], None]  # fault(stage, shard, seq): raise WorkerLost to simulate a lost worker


class LocalStages:
    """A lane's stages on a thread pool; the sink's coroutines on one event loop thread."""

    def __init__(self, source: Source, embedder: Any, sink: Sink, threads: int = 2, fault: Fault | None = None) -> None:
        self.source = source
        self.embedder = embedder
        self.sink = sink
        self.fault = fault
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reembed-local")
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._loop_thread.start()
        self._reads: set[Future] = set()
        self._data: dict[Future, tuple[list[Any], Any]] = {}

    def read(self, lease: Lease, seq: int, start: PointIdValue | None, stop: PointIdValue | None, limit: int,
             to_stop: bool) -> Future:
        def job() -> Any:
            if self.fault:
                self.fault("read", lease.shard, seq)
            return self.source.read_page(lease.shard, seq, start, stop, limit, to_stop, shard_key=lease.shard_key)

        fut = self.pool.submit(job)
        self._reads.add(fut)
        return fut

    def process(self, read_handle: Future, meta: PageMeta, check_present: bool) -> Future:
        inputs, body = self._data[read_handle]

        def job() -> Any:
            if self.fault:
                self.fault("embed", meta.shard, meta.seq)
            vectors = self.embedder.embed(inputs) if inputs else None
            if self.fault:
                self.fault("write", meta.shard, meta.seq)
            return asyncio.run_coroutine_threadsafe(
                self.sink.write(meta.shard, meta.seq, body, vectors, check_present=check_present), self.loop
            ).result()

        return self.pool.submit(job)

    def wait(self, handles: list[Future], timeout: float) -> list[Future]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Future) -> Any:
        if handle in self._reads:
            self._reads.discard(handle)
            meta, inputs, body = handle.result()
            self._data[handle] = (inputs, body)
            return meta
        return handle.result()

    def release(self, read_handle: Any) -> None:
        self._reads.discard(read_handle)
        self._data.pop(read_handle, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
        asyncio.run_coroutine_threadsafe(self.sink.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)


class _LocalLane:
    def __init__(self, info: LaneInfo, loop: LaneLoop, stages: LocalStages, news: threading.Event) -> None:
        self.info, self.loop, self.stages = info, loop, stages
        self.stopped = threading.Event()
        self.dead = False
        self.thread = threading.Thread(target=self._run, args=(news,), name=f"reembed-{info.lane}", daemon=True)

    def _run(self, news: threading.Event) -> None:
        while not self.stopped.is_set():
            self.loop.step(timeout=0.05)
            if self.loop.has_news():
                news.set()


class LocalLanePool:
    """Lanes as threads, each a LaneLoop over its own LocalStages (built by `make_stages`)."""

    def __init__(self, make_stages: Callable[[], LocalStages], lanes: int = 1, *, page_size: int, window: int,
                 policy: RedoPolicy | None = None) -> None:
        self.make_stages = make_stages
        self.page_size, self.window, self.policy = page_size, window, policy
        self._news = threading.Event()
        self._lanes: dict[str, _LocalLane] = {}
        self._new: list[LaneInfo] = []
        self._lost: list[str] = []
        self._count = 0
        for _ in range(lanes):
            self.add_lane()

    def add_lane(self) -> str:
        """A lane joins (as when a node joins the cluster); the coordinator sees it at its next refresh."""
        name = f"local-{self._count}"
        self._count += 1
        stages = self.make_stages()
        loop = LaneLoop(stages, page_size=self.page_size, window=self.window, policy=self.policy, name=name)
        lane = _LocalLane(LaneInfo(name, "local", 0.0), loop, stages, self._news)
        self._lanes[name] = lane
        lane.thread.start()
        self._new.append(lane.info)
        return name

    def kill_lane(self, name: str) -> None:
        """The lane dies with everything in flight (as when its node is lost)."""
        lane = self._lanes[name]
        lane.dead = True
        lane.stopped.set()
        self._news.set()

    def refresh(self) -> PoolChange:
        change = PoolChange(added=self._new, lost=self._lost)
        self._new, self._lost = [], []
        return change

    def assign(self, lane: str, lease: Lease) -> None:
        self._lanes[lane].loop.assign(lease)

    def split(self, lane: str, shard: int, at: PointIdValue) -> PointIdValue | None:
        return self._lanes[lane].loop.split(shard, at)

    def poll(self, timeout: float) -> list[tuple[str, LaneReport | None]]:
        if not any(not ln.dead and ln.loop.has_news() for ln in self._lanes.values()) and \
                not any(ln.dead for ln in self._lanes.values()):
            self._news.wait(timeout)
        self._news.clear()
        out: list[tuple[str, LaneReport | None]] = []
        for name, lane in list(self._lanes.items()):
            if lane.dead:
                del self._lanes[name]
                self._retire(lane)
                out.append((name, None))
            else:
                out.append((name, lane.loop.report()))
        return out

    def _retire(self, lane: _LocalLane) -> None:
        lane.stopped.set()
        lane.thread.join(timeout=30)
        lane.stages.shutdown()

    def close(self) -> None:
        for lane in self._lanes.values():
            self._retire(lane)
        self._lanes.clear()


__all__ = ["LocalLanePool", "LocalStages", "WorkerLost"]


class SyntheticStages:
    """Stages that cost nothing: a read of [start, stop) over an integer id space answers at once with `limit` ids
    (no payloads, no texts), a write acknowledges them. The control-plane benchmark (bench/coordinator.py) runs the
    real lane loop, pool and coordinator over it, so what it measures is their own cost per point."""

    def __init__(self, end: int) -> None:
        self.end = end  # the id space is [0, end)
        self._done: dict[int, Any] = {}
        self._next = 0

    def _handle(self, value: Any) -> int:
        self._next += 1
        self._done[self._next] = value
        return self._next

    def read(self, lease: Lease, seq: int, start: PointIdValue | None, stop: PointIdValue | None, limit: int,
             to_stop: bool) -> int:
        lo = int(start or 0)
        hi = min(int(stop) if stop is not None else self.end, self.end)
        end = hi if to_stop else min(hi, lo + limit)
        meta = PageMeta(shard=lease.shard, seq=seq, start=start, next_offset=end if end < hi else None,
                        n_points=end - lo, n_texts=0)
        return self._handle(meta)

    def process(self, read_handle: int, meta: PageMeta, check_present: bool) -> int:
        from engine.flow.page import WriteAck

        return self._handle(WriteAck(shard=meta.shard, seq=meta.seq, written=meta.n_points, skipped=0, requests=1))

    def wait(self, handles: list[int], timeout: float) -> list[int]:
        return list(handles)

    def result(self, handle: int) -> Any:
        return self._done.pop(handle)

    def release(self, read_handle: Any) -> None:
        self._done.pop(read_handle, None)
