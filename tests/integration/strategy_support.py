"""Seeding and reading helpers for the strategy tests: sources with named, unnamed and sparse vectors."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from qdrant_client import grpc as pb

from engine.embedded.process import EmbeddedProcess
from engine.flow.source import dense_row, stored_vectors
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc
from tests.config_support import job_config
from tests.integration.pipeline_support import client_for


def seed_named(client: QdrantGrpc, name: str, payloads: dict, vectors: dict[str, int], *, old_of=None) -> None:
    """A source with named dense vectors {name: dim}; `old_of(pid, payload)` gives the 'old' vector if set."""
    req = pb.CreateCollection(collection_name=name)
    for vname, dim in vectors.items():
        req.vectors_config.params_map.map[vname].CopyFrom(pb.VectorParams(size=dim, distance=pb.Distance.Cosine))
    client.create_collection(req)
    client.create_field_index(name, "title", pb.FieldType.FieldTypeKeyword)
    rng = np.random.default_rng(1)
    items = list(payloads.items())
    for i in range(0, len(items), 128):
        blobs = []
        for pid, payload in items[i:i + 128]:
            named = {}
            for vname, dim in vectors.items():
                vec = old_of(pid, payload) if (old_of is not None and vname == "old") else \
                    rng.standard_normal(dim).astype(np.float32)
                named[vname] = wire.dense_vector(np.asarray(vec, "<f4").tobytes())
            base = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
            blobs.append(base.SerializeToString() + wire.vectors_field(named))
        client.upsert_raw(wire.upsert_request(name, blobs, wait=True, insert_only=False), "seed")


def read_all(client: QdrantGrpc, name: str) -> dict:
    """id -> (payload as python, {vector name: stored VectorOutput})."""
    out, offset = {}, None
    while True:
        pts, offset = client.scroll(name, offset, 512, with_payload=True, with_vectors=True)
        for p in pts:
            out[wire.id_value(p.id)] = (values.payload_to_python(p.payload), stored_vectors(p))
        if offset is None:
            return out


def dense(vec) -> np.ndarray:
    return dense_row(vec)


def strategy_config(port: int, tmp, *, strategy: str, source="src", target=None, vector_name="dense", extra=None):
    data = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": source, "text_field": "text"},
        "target": {"vector_name": vector_name},
        "model": {"name": "hash:32"},
        "strategy": strategy,
        "pipeline": {"shards": 2, "scroll_page": 128, "upload_batch": 64, "embed_actors": 1, "upload_actors": 1,
                     "scroll_actors": 1},
        "retry": {"max_attempts": 10, "base_delay_s": 0.05, "max_delay_s": 0.5, "deadline_s": 60},
        "dead_letter": {"dir": str(tmp / "runs")},
    }
    return job_config(data, target, extra, sep=".")


@contextmanager
def seeded_endpoint(root: Path, version: str, seed: Callable[[QdrantGrpc], None]) -> Iterator[EmbeddedProcess]:
    """An embedded endpoint emulating Qdrant `version`, its sources written by `seed` before it is handed out."""
    with EmbeddedProcess(str(root), emulate_version=version) as proc:
        client = client_for(proc.port)
        seed(client)
        client.close()
        yield proc


def has_text(payload: dict) -> bool:
    """Whether a seeded point has a text the job embeds (make_payloads leaves some without, or blank)."""
    text = payload.get("text")
    return isinstance(text, str) and bool(text.strip())
