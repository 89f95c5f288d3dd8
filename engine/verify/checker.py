"""The "nothing lost, nothing duplicated" checker (in the style of Jepsen's set checker): compares the whole target
with the source and counts every way they can disagree.

Reads both collections in id order with the same page size, merging them like sorted sets, so memory stays flat
whatever the collection size.

The new vector may be a multivector (a late-interaction model): it is then compared token row by token row with the
model's own token matrix. Vectors a side-by-side job copied (`copied`) are compared verbatim: every value of the
dense, sparse or multivector the target holds equals the source's, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from qdrant_client import grpc as pb

from engine.embed.vectorset import MultiVectors
from engine.flow.text import TextSource
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.points import stored_vector, stored_vectors
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
    copy_mismatch: list = field(default_factory=list)  # a copied vector that is not the source's, value for value
    min_cosine: float = 1.0

    def problems(self) -> int:
        return sum(len(x) for x in (self.missing, self.phantom, self.payload_mismatch, self.missing_vector,
                                    self.unexpected_vector, self.bad_vector, self.vector_mismatch, self.copy_mismatch))

    def counts(self) -> dict[str, int | float]:
        return {
            "source_points": self.source_points, "target_points": self.target_points,
            "missing": len(self.missing), "phantom": len(self.phantom),
            "payload_mismatch": len(self.payload_mismatch), "missing_vector": len(self.missing_vector),
            "unexpected_vector": len(self.unexpected_vector), "bad_vector": len(self.bad_vector),
            "vector_mismatch": len(self.vector_mismatch), "copy_mismatch": len(self.copy_mismatch),
            "min_cosine": round(self.min_cosine, 6),
        }


def stored_matrix(point: pb.RetrievedPoint, name: str) -> np.ndarray | None:
    """The multivector `name` of a point as a float32 [rows, dim] matrix; None when it holds none. Reads both ways
    Qdrant has sent one: `multi_dense` (1.10+) and the older flat `data` with `vectors_count`."""
    vec = stored_vectors(point).get(name)
    if vec is None:
        return None
    if vec.HasField("multi_dense"):
        rows = [np.asarray(v.data, dtype=np.float32) for v in vec.multi_dense.vectors]
        if not rows or len({len(r) for r in rows}) != 1:
            return None
        return np.stack(rows)
    if vec.HasField("vectors_count") and vec.vectors_count and len(vec.data) % vec.vectors_count == 0:
        return np.asarray(vec.data, dtype=np.float32).reshape(vec.vectors_count, -1)
    return None


def vector_values(vec: pb.VectorOutput) -> tuple:
    """A stored vector's kind and exact values (float32 bytes), whichever way the server spelled it: equal tuples
    mean the same vector bit for bit."""
    kind = vec.WhichOneof("vector")
    if kind == "dense":
        return ("dense", np.asarray(vec.dense.data, dtype="<f4").tobytes())
    if kind == "sparse":
        return ("sparse", tuple(vec.sparse.indices), np.asarray(vec.sparse.values, dtype="<f4").tobytes())
    if kind == "multi_dense":
        return ("multi", tuple(np.asarray(v.data, dtype="<f4").tobytes() for v in vec.multi_dense.vectors))
    data = np.asarray(vec.data, dtype="<f4")
    if vec.HasField("indices"):
        return ("sparse", tuple(vec.indices.data), data.tobytes())
    if vec.HasField("vectors_count") and vec.vectors_count:
        return ("multi", tuple(row.tobytes() for row in data.reshape(vec.vectors_count, -1)))
    return ("dense", data.tobytes())


def _selector(names: list[str]) -> bool | pb.WithVectorsSelector:
    if not names:
        return False
    if "" in names:
        return True  # an unnamed-vector collection has that one vector only
    return pb.WithVectorsSelector(include=pb.VectorsSelector(names=sorted(set(names))))


def check(client: QdrantGrpc, source: str, target: str, vector_name: str, text: TextSource, embedder=None,
          min_cosine: float = 0.999, batch: int = 256, copied: Mapping[str, str] | None = None) -> CheckReport:
    """Compare every point; `embedder` (optional) recomputes vectors from the source text. The new vector is read
    as a multivector where the target stores one. `copied` (source name -> target name, "" the unnamed vector):
    vectors copied verbatim, each compared value for value with the source's."""
    rep = CheckReport()
    copied = dict(copied or {})
    sel = pb.WithVectorsSelector(include=pb.VectorsSelector(names=sorted({vector_name, *copied.values()}))) \
        if vector_name else True
    src_it = iterate(client, source, _selector(list(copied)))
    tgt_it = iterate(client, target, sel)
    pending: list[tuple[wire.PointIdValue, str, np.ndarray]] = []

    def flush() -> None:
        if not pending or embedder is None:
            pending.clear()
            return
        want = embedder.embed([t for _, t, _ in pending])
        for k, (pid, _, got) in enumerate(pending):
            if isinstance(want, MultiVectors) != (got.ndim == 2):
                rep.vector_mismatch.append(pid)  # a multivector where the model makes one vector, or the reverse
                continue
            if isinstance(want, MultiVectors):
                w = want.row(k)
                if got.shape != w.shape:
                    rep.vector_mismatch.append(pid)
                    continue
                # MaxSim compares token by token: every row must match its own row of the model's matrix.
                norms = np.linalg.norm(got, axis=1) * np.linalg.norm(w, axis=1) + 1e-12
                cos = float(np.min(np.sum(got * w, axis=1) / norms)) if len(w) else 1.0
            else:
                w = want[k]
                cos = float(np.dot(got, w) / (np.linalg.norm(got) * np.linalg.norm(w) + 1e-12))
            rep.min_cosine = min(rep.min_cosine, cos)
            if cos < min_cosine:
                rep.vector_mismatch.append(pid)
        pending.clear()

    for s, t in merge_by_id(src_it, tgt_it):
        if t is None:
            assert s is not None  # merge_by_id never yields (None, None)
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
        if copied:
            have, want_copy = stored_vectors(t), stored_vectors(s)
            if any((src in want_copy) != (dst in have) or (src in want_copy and vector_values(want_copy[src])
                                                            != vector_values(have[dst]))
                   for src, dst in copied.items()):
                rep.copy_mismatch.append(pid)
        txt, _reason = text.texts([s])[0]
        vec = stored_matrix(t, vector_name)
        if vec is None:
            vec = stored_vector(t, vector_name)
        width = vec.shape[-1] if vec is not None and vec.size else 0
        if txt is None:
            if vec is not None:
                rep.unexpected_vector.append(pid)
        elif vec is None:
            rep.missing_vector.append(pid)
        elif not np.all(np.isfinite(vec)) or not np.all(np.any(vec, axis=-1)) or (embedder and width != embedder.dim):
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
