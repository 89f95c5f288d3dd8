"""A Runtime on threads in one process: the same Source, Embedder and Sink as the Ray actors, without Ray.

For unit tests of the coordinator (with injected worker loss) and for comparing a single-process run with the Ray
run on the same data.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from engine.embed.base import Embedder
from engine.flow.page import PageMeta
from engine.flow.sink import QdrantSink
from engine.flow.source import QdrantSource


class LocalRuntime:
    def __init__(self, source: QdrantSource, embedder: Embedder, sink: QdrantSink, threads: int = 2,
                 fault: Callable[[str, int, int], None] | None = None) -> None:
        self.source = source
        self.embedder = embedder
        self.sink = sink
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reembed-local")
        self.fault = fault  # test hook: called as fault(stage, shard, seq); raising WorkerLost simulates a lost worker
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._loop_thread.start()
        self._reads: set[Future] = set()
        self._bodies: dict[Future, tuple[list[str], Any]] = {}

    def read(self, shard, seq, start, stop, limit, to_stop) -> Future:
        def job():
            if self.fault:
                self.fault("read", shard, seq)
            return self.source.read_page(shard, seq, start, stop, limit, to_stop)

        fut = self.pool.submit(job)
        self._reads.add(fut)
        return fut

    def process(self, read_handle: Future, meta: PageMeta) -> Future:
        texts, body = self._bodies.pop(read_handle)

        def job():
            if self.fault:
                self.fault("embed", meta.shard, meta.seq)
            vectors = self.embedder.embed(texts) if texts else None
            if self.fault:
                self.fault("write", meta.shard, meta.seq)
            return asyncio.run_coroutine_threadsafe(
                self.sink.write(meta.shard, meta.seq, body, vectors), self.loop
            ).result()

        return self.pool.submit(job)

    def wait(self, handles: list[Future], timeout: float) -> list[Future]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Future) -> Any:
        if handle in self._reads:
            self._reads.discard(handle)
            meta, texts, body = handle.result()
            self._bodies[handle] = (texts, body)
            return meta
        return handle.result()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
        asyncio.run_coroutine_threadsafe(self.sink.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)
