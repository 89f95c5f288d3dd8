"""Shared helpers for the pipeline integration and chaos tests: a seeded source collection with every kind of id and
of bad text, configs pointing at an embedded endpoint, and the exact-state assertion."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import numpy as np
from qdrant_client import grpc as pb

from engine.embed import build_embedder
from engine.flow.text import PayloadText
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from engine.verify.checker import check
from tests.config_support import job_config

WORDS = ("vector search engine model embedding shard replica payload index point cluster query filter collection "
         "alias migration throughput latency recall precision batch token sentence paragraph über naïve café 東京").split()


def make_payloads(n: int, seed: int = 0, bad_every: int = 29) -> dict:
    """n points: ints and UUIDs mixed, nested payloads, unicode, and every kind of unusable text."""
    rng = random.Random(seed)
    pts = {}
    for i in range(n):
        pid = i * 7 + 1 if i % 3 else str(uuid.UUID(int=rng.getrandbits(128)))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
        payload = {"text": text, "meta": {"i": i, "tags": ["a", "b"][: i % 3], "score": i / 7, "ok": i % 2 == 0,
                                           "none": None}, "title": f"doc {i} ☃"}
        if i % bad_every == 0:
            kind = (i // bad_every) % 4
            if kind == 0:
                del payload["text"]
            elif kind == 1:
                payload["text"] = ""
            elif kind == 2:
                payload["text"] = 12345
            else:
                payload["text"] = None
        pts[pid] = payload
    return pts


def seed_collection(client: QdrantGrpc, name: str, payloads: dict, dim: int = 8) -> None:
    req = pb.CreateCollection(collection_name=name)
    req.vectors_config.params.CopyFrom(pb.VectorParams(size=dim, distance=pb.Distance.Cosine))
    client.create_collection(req)
    client.create_field_index(name, "title", pb.FieldType.FieldTypeKeyword)
    items = list(payloads.items())
    rng = np.random.default_rng(0)
    for i in range(0, len(items), 256):
        blobs = []
        for pid, payload in items[i:i + 256]:
            base = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
            vec = rng.standard_normal(dim).astype(np.float32)
            blobs.append(base.SerializeToString() + wire.vectors_field({"": wire.dense_vector(vec.tobytes())}))
        client.upsert_raw(wire.upsert_request(name, blobs, wait=True, insert_only=False), "seed")


def config(port: int, tmp: Path, *, source="src", target="dst", model="hash:32", shards=4, page=128,
           strategy="new_collection", **extra):
    data = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": source, "text_field": "text"},
        "target": {"collection": target, "alias": f"{source}_live", "vector_name": "dense"},
        "model": {"name": model},
        "strategy": strategy,
        "pipeline": {"shards": shards, "scroll_page": page, "upload_batch": 64, "embed_actors": 1,
                     "upload_actors": 2, "scroll_actors": 2},
        "retry": {"max_attempts": 30, "base_delay_s": 0.05, "max_delay_s": 1.0, "deadline_s": 120},
        "dead_letter": {"dir": str(tmp / "runs")},
    }
    return job_config(data, extra=extra)


def client_for(port: int) -> QdrantGrpc:
    return QdrantGrpc(Endpoint("127.0.0.1", port))


def assert_exact(port: int, source: str, target: str, model: str = "hash:32", min_cosine: float = 0.999):
    client = client_for(port)
    try:
        rep = check(client, source, target, "dense", PayloadText(field="text"), build_embedder({"name": model}),
                    min_cosine=min_cosine)
    finally:
        client.close()
    assert rep.problems() == 0, rep.counts()
    return rep


def committed_points(port: int, job_id: str) -> int:
    """Points a job's checkpoint (in the target Qdrant) says are committed; 0 before its first save."""
    from engine.flow.checkpoint import QdrantCheckpointStore

    client = client_for(port)
    try:
        state = QdrantCheckpointStore(client, "_reembed").load(job_id)
        return 0 if state is None else state.written + state.skipped
    except Exception:  # noqa: BLE001 - the checkpoint collection may not exist yet
        return 0
    finally:
        client.close()
