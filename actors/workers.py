"""Ray actors: thin adapters around the engine's Source, Embedder and Sink. No logic lives here."""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from actors.metrics import metrics
from engine.flow.page import PageBody, PageMeta, WriteAck
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.qdrant.values import TextSpec
from engine.flow.sink import QdrantSink, SinkSpec
from engine.flow.source import QdrantSource


class ScrollWorker:
    def __init__(self, endpoint: Endpoint, policy: RetryPolicy, collection: str, text_field: str | None,
                 text_template: str | None, copy_vectors: dict[str, str] | None = None,
                 vector_input: str | None = None, text_dataset: dict | None = None) -> None:
        text = None if text_field is None and text_template is None else TextSpec(field=text_field,
                                                                                  template=text_template)
        external = None
        if text_dataset is not None:
            from engine.flow.text import ExternalTexts

            external = ExternalTexts(text_dataset["path"], text_dataset["id_column"], text_dataset["text_column"])
        self.source = QdrantSource(QdrantGrpc(endpoint, policy), collection, text, copy_vectors,
                                   vector_input=vector_input, external=external)

    @ray.method(num_returns=3)
    def read(self, shard: int, seq: int, start: Any, stop: Any, limit: int,
             to_stop: bool) -> tuple[PageMeta, list[str], PageBody]:
        t0 = time.perf_counter()
        meta, texts, body = self.source.read_page(shard, seq, start, stop, limit, to_stop)
        metrics().page_read(meta.n_points, len(meta.dead), time.perf_counter() - t0)
        return meta, texts, body

    def pid(self) -> int:
        return os.getpid()


class EmbedWorker:
    def __init__(self, spec: dict, vectorizer: dict | None = None) -> None:
        if vectorizer is not None:  # hybrid (sparse) or a shortcut: see engine/embed/vectorize.py
            from engine.embed.vectorize import build_vectorizer

            self.embedder = build_vectorizer(vectorizer)
        else:
            from engine.embed import build_embedder

            self.embedder = build_embedder(spec)

    def describe(self) -> dict:
        return self.embedder.describe()

    def embed(self, texts: list):
        t0 = time.perf_counter()
        vectors = self.embedder.embed(texts)
        metrics().embedded(len(texts), time.perf_counter() - t0)
        return vectors

    def pid(self) -> int:
        return os.getpid()


class UploadWorker:
    """An asyncio actor: one grpc.aio channel, a bounded number of requests in flight across its pages."""

    def __init__(self, endpoint: Endpoint, spec: SinkSpec, policy: RetryPolicy) -> None:
        self.sink = QdrantSink(endpoint, spec, policy)

    async def write(self, shard: int, seq: int, body: PageBody, vectors) -> WriteAck:
        t0 = time.perf_counter()
        ack = await self.sink.write(shard, seq, body, vectors)
        metrics().page_written(ack.written, ack.skipped, len(ack.dead), ack.requests, ack.retries,
                               time.perf_counter() - t0)
        return ack

    async def pid(self) -> int:
        return os.getpid()
