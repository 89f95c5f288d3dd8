"""The stored vectors of a retrieved point, by name, as Qdrant returns them ("" is the unnamed default vector)."""

from __future__ import annotations

import numpy as np
from qdrant_client import grpc as pb


def stored_vectors(point: pb.RetrievedPoint) -> dict[str, pb.VectorOutput]:
    """name -> stored vector of a scrolled point."""
    if not point.HasField("vectors"):
        return {}
    if point.vectors.HasField("vector"):
        return {"": point.vectors.vector}
    return dict(point.vectors.vectors.vectors.items())


def dense_row(vec: pb.VectorOutput) -> np.ndarray | None:
    """A dense vector's float32 row; None for a sparse, multi or empty vector."""
    data = vec.dense.data if vec.HasField("dense") else vec.data
    if not len(data) or vec.HasField("sparse") or vec.HasField("multi_dense"):
        return None
    return np.asarray(data, dtype=np.float32)


def stored_vector(point: pb.RetrievedPoint, name: str) -> np.ndarray | None:
    """The dense vector `name` of a point as a float32 row, or None when it has none."""
    vec = stored_vectors(point).get(name)
    if vec is None:
        return None
    data = vec.dense.data if vec.HasField("dense") else vec.data
    return np.asarray(data, dtype=np.float32) if len(data) else None
