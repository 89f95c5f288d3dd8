"""Ray actors: thin adapters around the engine's Source, vectorizer and Sink, one kind per lane role. No logic here."""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from actors.metrics import metrics
from engine.flow.page import PageBody, PageMeta, WriteAck
from engine.flow.seams import SourceFactory
from engine.flow.sink import QdrantSink, SinkSpec
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy


class ReaderWorker:
    def __init__(self, endpoint: Endpoint, policy: RetryPolicy, spec: SourceFactory, job_id: str) -> None:
        metrics().set_job(job_id)
        self.client = QdrantGrpc(endpoint, policy)  # the source's own client: its stats say what it waits for
        self.source = spec.open(self.client)

    @ray.method(num_returns=3)
    def read(self, shard: int, seq: int, start: Any, stop: Any, limit: int, to_stop: bool,
             shard_key: Any = None) -> tuple[PageMeta, list[Any], PageBody]:
        t0 = time.perf_counter()
        meta, inputs, body = self.source.read_page(shard, seq, start, stop, limit, to_stop, shard_key=shard_key)
        metrics().page_read(meta.n_points, len(meta.dead), time.perf_counter() - t0)
        return meta, inputs, body

    @ray.method(concurrency_group="status")
    def status(self) -> str | None:
        """What the reader waits for, if it waits for Qdrant: a thread of its own (the "status" concurrency group),
        so it is answered while every read thread is stuck in its retries through an outage."""
        waiting = self.client.stats.waiting()
        return waiting.describe(time.monotonic()) if waiting is not None else None

    def pid(self) -> int:
        return os.getpid()


class EmbedWorker:
    def __init__(self, vectorizer: dict, job_id: str) -> None:
        from engine.embed.vectorize import build_vectorizer

        metrics().set_job(job_id)
        self.embedder = build_vectorizer(vectorizer)

    def describe(self) -> dict:
        return self.embedder.describe()

    def embed(self, inputs: list) -> Any:
        t0 = time.perf_counter()
        vectors = self.embedder.embed(inputs)
        metrics().embedded(len(inputs), time.perf_counter() - t0)
        return vectors

    def pid(self) -> int:
        return os.getpid()


class WriterWorker:
    """An asyncio actor: one grpc.aio channel, a bounded number of requests in flight across its pages."""

    def __init__(self, endpoint: Endpoint, spec: SinkSpec, policy: RetryPolicy, job_id: str) -> None:
        metrics().set_job(job_id)
        self.sink = QdrantSink(endpoint, spec, policy)

    async def write(self, shard: int, seq: int, body: PageBody, vectors: Any, check_present: bool = False
                    ) -> WriteAck:
        t0 = time.perf_counter()
        ack = await self.sink.write(shard, seq, body, vectors, check_present=check_present)
        metrics().page_written(ack.written, ack.skipped, len(ack.dead), ack.requests, ack.retries,
                               time.perf_counter() - t0)
        return ack

    async def status(self) -> tuple[str, str | None]:
        """How the writer paces itself, and what it waits for, if it waits for Qdrant."""
        waiting = self.sink.stats.waiting()
        return self.sink.controller.pace().describe(), waiting.describe(time.monotonic()) if waiting else None

    async def set_rate(self, points_per_s: float | None) -> None:
        """This writer's share of the job's points/s cap (it changes as lanes come and go)."""
        self.sink.controller.set_rate(points_per_s)

    async def observe_search_p99(self, p99_ms: float | None) -> None:
        self.sink.controller.observe_search_p99(p99_ms)

    async def pid(self) -> int:
        return os.getpid()
