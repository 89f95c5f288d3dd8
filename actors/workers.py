"""Ray actors: thin adapters around the engine's Source, Embedder and Sink. No logic lives here."""

from __future__ import annotations

import os
from typing import Any

import ray

from engine.page import PageBody, PageMeta, WriteAck
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.qdrant.values import TextSpec
from engine.sink import QdrantSink, SinkSpec
from engine.source import QdrantSource


class ScrollWorker:
    def __init__(self, endpoint: Endpoint, policy: RetryPolicy, collection: str, text_field: str | None,
                 text_template: str | None, copy_vectors: list[str] | None = None) -> None:
        self.source = QdrantSource(QdrantGrpc(endpoint, policy), collection,
                                   TextSpec(field=text_field, template=text_template), copy_vectors)

    @ray.method(num_returns=3)
    def read(self, shard: int, seq: int, start: Any, stop: Any, limit: int,
             to_stop: bool) -> tuple[PageMeta, list[str], PageBody]:
        return self.source.read_page(shard, seq, start, stop, limit, to_stop)

    def pid(self) -> int:
        return os.getpid()


class EmbedWorker:
    def __init__(self, spec: dict) -> None:
        from engine.embed import build_embedder

        self.embedder = build_embedder(spec)

    def describe(self) -> dict:
        return self.embedder.describe()

    def embed(self, texts: list[str]):
        return self.embedder.embed(texts)

    def pid(self) -> int:
        return os.getpid()


class UploadWorker:
    """An asyncio actor: one grpc.aio channel, a bounded number of requests in flight across its pages."""

    def __init__(self, endpoint: Endpoint, spec: SinkSpec, policy: RetryPolicy) -> None:
        self.sink = QdrantSink(endpoint, spec, policy)

    async def write(self, shard: int, seq: int, body: PageBody, vectors) -> WriteAck:
        return await self.sink.write(shard, seq, body, vectors)

    async def pid(self) -> int:
        return os.getpid()
