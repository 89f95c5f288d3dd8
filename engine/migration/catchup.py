"""Catch-up: reconcile the target with a source that kept changing while the backfill ran.

Scroll is not a snapshot: points written behind a shard's cursor are missed, points deleted after they were copied
linger, and texts changed after they were embedded are stale. The rule is simple and safe to repeat: the target
mirrors the source's payload. Walking both collections in id order (payload only, no vectors):
  - in the source, not in the target        -> embed and insert (`insert_only`: a concurrent application write wins)
  - in both, payload differs                -> the source changed after the backfill: embed and overwrite
  - in the target, not in the source        -> deleted in the source: delete from the target
  - in both, payload equal                  -> untouched; this is every point the application dual-wrote itself
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from qdrant_client import grpc as pb

from engine.verify.checker import iterate, merge_by_id
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.values import TextSpec, payload_to_python

log = logging.getLogger(__name__)

BATCH = 128  # Qdrant guidance: 64-256 points per request


@dataclass
class CatchUpResult:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    dead: list[tuple[wire.PointIdValue, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted,
                "unchanged": self.unchanged, "dead_letters": len(self.dead)}


class _Writer:
    def __init__(self, client: QdrantGrpc, collection: str, vector_name: str, embedder, text: TextSpec,
                 result: CatchUpResult) -> None:
        self.client, self.collection, self.vector_name = client, collection, vector_name
        self.embedder, self.text, self.result = embedder, text, result
        self.pending: dict[bool, list[pb.RetrievedPoint]] = {True: [], False: []}  # insert_only -> points

    def add(self, point: pb.RetrievedPoint, insert_only: bool) -> None:
        self.pending[insert_only].append(point)
        if len(self.pending[insert_only]) >= BATCH:
            self.flush(insert_only)

    def flush(self, insert_only: bool) -> None:
        points = self.pending[insert_only]
        if not points:
            return
        extracted = [self.text.extract(p.payload) for p in points]
        texts = [t for t, _ in extracted if t is not None]
        vectors = self.embedder.embed(texts) if texts else []
        blobs, row = [], 0
        for p, (txt, reason) in zip(points, extracted):
            base = pb.PointStruct(id=p.id, payload=p.payload).SerializeToString()
            if txt is None:
                self.result.dead.append((wire.id_value(p.id), reason or "no text"))
                if not self.vector_name:
                    continue
                blobs.append(base + wire.EMPTY_NAMED_VECTORS)
            else:
                vec = wire.dense_vector(wire.f32_bytes(vectors[row]))
                row += 1
                blobs.append(base + wire.vectors_field({self.vector_name: vec}))
        if blobs:
            self.client.upsert_raw(wire.upsert_request(self.collection, blobs, wait=True, insert_only=insert_only),
                                   f"catch-up write of {len(blobs)} points to {self.collection!r}")
        self.pending[insert_only] = []


def catch_up(client: QdrantGrpc, source: str, target: str, vector_name: str, text: TextSpec,
             embedder) -> CatchUpResult:
    result = CatchUpResult()
    writer = _Writer(client, target, vector_name, embedder, text, result)
    doomed: list[wire.PointIdValue] = []
    for s, t in merge_by_id(iterate(client, source), iterate(client, target)):
        if t is None:
            writer.add(s, insert_only=True)
            result.inserted += 1
        elif s is None:
            doomed.append(wire.id_value(t.id))
            if len(doomed) >= BATCH:
                client.delete_points(target, doomed)
                result.deleted += len(doomed)
                doomed = []
        elif payload_to_python(s.payload) != payload_to_python(t.payload):
            writer.add(s, insert_only=False)
            result.updated += 1
        else:
            result.unchanged += 1
    writer.flush(True)
    writer.flush(False)
    if doomed:
        client.delete_points(target, doomed)
        result.deleted += len(doomed)
    log.info("catch-up %s -> %s: %s", source, target, result.as_dict())
    return result
