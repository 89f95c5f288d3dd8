"""Vector values as verify reads and compares them: a dense row, a multivector (one row per token) or a sparse
vector, taken from a retrieved point, checked for validity, compared with a recomputed or copied value, and turned
back into a query input.

How Qdrant writes them out (lib/api/src/conversions/vectors.rs): a dense vector as `VectorOutput.dense`
(older servers: the deprecated `data`), a multivector as `multi_dense` (one DenseVector per row), a sparse vector as
`sparse` (older servers: `data` + `indices`). Cosine collections store every row unit-normalised
(lib/segment/src/spaces/simple.rs CosineMetric::preprocess), so scores are dot products of unit rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qdrant_client import grpc as pb

from engine.qdrant.points import stored_vectors
from engine.tunables import COPY_ATOL, COPY_RTOL

Sparse = tuple[np.ndarray, np.ndarray]  # (indices uint32, values float32)
Value = np.ndarray | Sparse  # dense: 1-d float32; multivector: 2-d float32 [tokens, dim]; sparse: a pair


def as_value(vec: pb.VectorOutput) -> Value | None:
    """A stored vector as numpy: 1-d dense, 2-d multivector, or (indices, values) sparse; None when empty."""
    kind = vec.WhichOneof("vector")
    if kind == "multi_dense":
        rows = [np.asarray(v.data, dtype=np.float32) for v in vec.multi_dense.vectors]
        if not rows:
            return None
        width = {len(r) for r in rows}
        if len(width) != 1:  # cannot come from Qdrant, which refuses ragged rows; kept visible, not crashed on
            return np.asarray([], dtype=np.float32)
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)
    if kind == "sparse":
        return (np.asarray(vec.sparse.indices, dtype=np.uint32), np.asarray(vec.sparse.values, dtype=np.float32))
    if kind == "dense":
        data = vec.dense.data
    else:
        data = vec.data
        if vec.HasField("indices"):  # a sparse vector as servers before 1.10 wrote it
            return (np.asarray(vec.indices.data, dtype=np.uint32), np.asarray(data, dtype=np.float32))
    return np.asarray(data, dtype=np.float32) if len(data) else None


def stored_value(point: pb.RetrievedPoint, name: str) -> Value | None:
    vec = stored_vectors(point).get(name)
    return None if vec is None else as_value(vec)


def vector_problem(vec: np.ndarray | None, dim: int) -> str | None:
    """Why a dense vector is unusable (None when it is fine)."""
    if vec is None:
        return "no new vector"
    if not isinstance(vec, np.ndarray) or vec.ndim != 1:
        return "not a dense vector"
    if len(vec) != dim:
        return f"{len(vec)}-d, the model makes {dim}-d"
    if not np.all(np.isfinite(vec)):
        return "NaN or infinite values"
    if not np.any(vec):
        return "zero vector"
    return None


def multi_problem(mat: np.ndarray | None, dim: int | None) -> str | None:
    """Why a multivector is unusable: no rows, ragged rows, a wrong dimension, NaN/inf, or a zero row (a token that
    can never match anything under MaxSim)."""
    if mat is None:
        return "no new multivector"
    if not isinstance(mat, np.ndarray) or mat.ndim != 2 or mat.shape[0] == 0:
        return "not a multivector (no token rows)"
    if dim is not None and mat.shape[1] != dim:
        return f"{mat.shape[1]}-d token rows, the model makes {dim}-d"
    if not np.all(np.isfinite(mat)):
        return "NaN or infinite values"
    zero = np.flatnonzero(~np.any(mat, axis=1))
    if len(zero):
        return f"zero token row {int(zero[0])} of {mat.shape[0]}"
    return None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30))


def token_cosines(stored: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row-by-row cosine of two multivectors of the same shape."""
    a, b = stored.astype(np.float64), wanted.astype(np.float64)
    num = np.einsum("ij,ij->i", a, b)
    return num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def copy_difference(src: Value | None, tgt: Value | None) -> str | None:
    """How a copied vector differs from the source's (None when equal to float32 rounding)."""
    if src is None and tgt is None:
        return None
    if src is None:
        return "present in the target only"
    if tgt is None:
        return "missing in the target"
    if isinstance(src, tuple) or isinstance(tgt, tuple):
        if not (isinstance(src, tuple) and isinstance(tgt, tuple)):
            return "sparse in one collection only"
        so, to = np.argsort(src[0]), np.argsort(tgt[0])
        if not np.array_equal(src[0][so], tgt[0][to]):
            return "different sparse indices"
        if not np.allclose(src[1][so], tgt[1][to], rtol=COPY_RTOL, atol=COPY_ATOL):
            return "different sparse values"
        return None
    if src.shape != tgt.shape:
        return f"shape {tuple(tgt.shape)} instead of {tuple(src.shape)}"
    if not np.allclose(src, tgt, rtol=COPY_RTOL, atol=COPY_ATOL, equal_nan=True):
        return "different values"
    return None


def query_input(value: Value) -> pb.VectorInput:
    """A value as a Query input: dense, multi_dense (MaxSim) or sparse."""
    if isinstance(value, tuple):
        idx, vals = value
        return pb.VectorInput(sparse=pb.SparseVector(indices=[int(i) for i in idx], values=[float(v) for v in vals]))
    if value.ndim == 2:
        return pb.VectorInput(multi_dense=pb.MultiDenseVector(
            vectors=[pb.DenseVector(data=row.tolist()) for row in value.astype(np.float32)]))
    return pb.VectorInput(dense=pb.DenseVector(data=value.astype(np.float32).tolist()))


def lower_is_better(distance: int | None) -> bool:
    """Euclid and Manhattan scores are distances (smaller is nearer); Cosine and Dot are similarities."""
    return distance in (pb.Distance.Euclid, pb.Distance.Manhattan)


def self_score(value: np.ndarray, distance: int | None) -> float:
    """The score a stored vector gets as a query against itself: what it needs to be found at."""
    v = value.astype(np.float64)
    if lower_is_better(distance):
        return 0.0
    if v.ndim == 2:  # MaxSim: each query row's best match among the same rows
        if distance == pb.Distance.Cosine:
            v = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-30)
        return float(np.sum(np.max(v @ v.T, axis=1)))
    if distance == pb.Distance.Cosine:
        return 1.0
    return float(np.dot(v, v))


def value_rows(out: object) -> list[np.ndarray]:
    """An embedder's output as one value per text: rows of a dense matrix, or each text's token matrix."""
    from engine.embed.vectorset import MultiVectors

    if isinstance(out, MultiVectors):
        return [out.row(i) for i in range(len(out))]
    return list(np.asarray(out, dtype=np.float32))


def embed_queries(embedder: Any, texts: list[str]) -> list[np.ndarray]:
    """Queries embedded the way the model embeds queries: a late-interaction model marks and pads a query
    differently from a document (`embed_queries`); a dense model embeds both alike."""
    method = getattr(embedder, "embed_queries", None) or embedder.embed
    return value_rows(method(texts))
