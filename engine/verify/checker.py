"""The "nothing lost, nothing duplicated" checker (in the style of Jepsen's set checker): compares the whole target
with the source and counts every way they can disagree.

Reads both collections in id order with the same page size, merging them like sorted sets, so memory stays flat
whatever the collection size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from qdrant_client import grpc as pb

from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.flow.text import TextSource
from engine.qdrant.points import stored_vector
from engine.qdrant.scan import iterate, merge_by_id
from engine.qdrant.values import payload_to_python



@dataclass
class CheckReport:
    source_points: int = 0
    target_points: int = 0
    missing: list = field(default_factory=list)  # in the source, not in the target
    phantom: list = field(default_factory=list)  # in the target, not in the source
    payload_mismatch: list = field(default_factory=list)
    missing_vector: list = field(default_factory=list)  # has text, but no new vector in the target
    unexpected_vector: list = field(default_factory=list)  # no usable text, yet a new vector
    bad_vector: list = field(default_factory=list)  # zero, NaN or wrong dimension
    vector_mismatch: list = field(default_factory=list)  # differs from the model's embedding of the text
    min_cosine: float = 1.0

    def problems(self) -> int:
        return sum(len(x) for x in (self.missing, self.phantom, self.payload_mismatch, self.missing_vector,
                                    self.unexpected_vector, self.bad_vector, self.vector_mismatch))

    def counts(self) -> dict[str, int | float]:
        return {
            "source_points": self.source_points, "target_points": self.target_points,
            "missing": len(self.missing), "phantom": len(self.phantom),
            "payload_mismatch": len(self.payload_mismatch), "missing_vector": len(self.missing_vector),
            "unexpected_vector": len(self.unexpected_vector), "bad_vector": len(self.bad_vector),
            "vector_mismatch": len(self.vector_mismatch), "min_cosine": round(self.min_cosine, 6),
        }


def check(client: QdrantGrpc, source: str, target: str, vector_name: str, text: TextSource, embedder=None,
          min_cosine: float = 0.999, batch: int = 256) -> CheckReport:
    """Compare every point; `embedder` (optional) recomputes vectors from the source text."""
    rep = CheckReport()
    sel = pb.WithVectorsSelector(include=pb.VectorsSelector(names=[vector_name])) if vector_name else True
    src_it = iterate(client, source, False)
    tgt_it = iterate(client, target, sel)
    pending: list[tuple[wire.PointIdValue, str, np.ndarray]] = []

    def flush() -> None:
        if not pending or embedder is None:
            pending.clear()
            return
        want = embedder.embed([t for _, t, _ in pending])
        for (pid, _, got), w in zip(pending, want):
            cos = float(np.dot(got, w) / (np.linalg.norm(got) * np.linalg.norm(w) + 1e-12))
            rep.min_cosine = min(rep.min_cosine, cos)
            if cos < min_cosine:
                rep.vector_mismatch.append(pid)
        pending.clear()

    for s, t in merge_by_id(src_it, tgt_it):
        if t is None:
            rep.source_points += 1
            rep.missing.append(wire.id_value(s.id))
            continue
        if s is None:
            rep.target_points += 1
            rep.phantom.append(wire.id_value(t.id))
            continue
        pid = wire.id_value(s.id)
        rep.source_points += 1
        rep.target_points += 1
        if payload_to_python(s.payload) != payload_to_python(t.payload):
            rep.payload_mismatch.append(pid)
        txt, _reason = text.texts([s])[0]
        vec = stored_vector(t, vector_name)
        if txt is None:
            if vec is not None:
                rep.unexpected_vector.append(pid)
        elif vec is None:
            rep.missing_vector.append(pid)
        elif not np.all(np.isfinite(vec)) or not np.any(vec) or (embedder and len(vec) != embedder.dim):
            rep.bad_vector.append(pid)
        else:
            pending.append((pid, txt, vec))
            if len(pending) >= batch:
                flush()
    flush()
    if math.isinf(rep.min_cosine):
        rep.min_cosine = 1.0
    return rep


def collection_checksum(client: QdrantGrpc, collection: str) -> tuple[int, str]:
    """(points, sha256 over ids, payloads and every vector in id order): proves a collection was not written."""
    import hashlib
    import json

    digest = hashlib.sha256()
    n = 0
    for p in iterate(client, collection, True):
        n += 1
        digest.update(repr(wire.id_value(p.id)).encode())
        digest.update(json.dumps(payload_to_python(p.payload), sort_keys=True).encode())
        digest.update(p.vectors.SerializeToString(deterministic=True))
    return n, digest.hexdigest()
