"""Qdrant write requests assembled at the protobuf wire level.

Why: building `PointStruct` messages with `DenseVector(data=vec.tolist())` costs the client more CPU than everything
else in the data plane (FACTS.md: raw float bytes halve it). A protobuf message is a concatenation of its fields,
and concatenating two serialised messages merges them, so a point is its (id, payload) bytes, taken once from the
scroll, followed by a vectors field whose packed floats are the numpy row's raw little-endian bytes.

Field numbers (qdrant_client/proto/points.proto): PointStruct{id=1, payload=3, vectors=4}; Vectors{vector=1,
vectors=2}; NamedVectors{vectors=1 (map)}; Vector{dense=101, sparse=102}; DenseVector{data=1};
SparseVector{values=1, indices=2}; UpsertPoints{points=3}; UpdatePointVectors{points=3}; PointVectors{id=1,
vectors=2}.
"""

from __future__ import annotations

import uuid
from typing import Iterable, Sequence

import numpy as np
from qdrant_client import grpc as pb

PointIdValue = int | str



def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(field: int, wire_type: int = 2) -> bytes:
    return varint((field << 3) | wire_type)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _tag(field) + varint(len(payload)) + payload


_T_DENSE = _tag(101)
_T_SPARSE = _tag(102)


def f32_bytes(vec: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(vec, dtype="<f4")
    return arr.tobytes()


def dense_vector(raw_f32: bytes) -> bytes:
    """A `Vector` message holding a dense vector, from raw little-endian float32 bytes."""
    inner = _ld(1, raw_f32)  # DenseVector.data, packed
    return _T_DENSE + varint(len(inner)) + inner


def sparse_vector(indices: np.ndarray, values: np.ndarray) -> bytes:
    """A `Vector` message holding a sparse vector."""
    idx = b"".join(varint(int(i)) for i in indices)
    inner = _ld(1, f32_bytes(values)) + _ld(2, idx)
    return _T_SPARSE + varint(len(inner)) + inner


def vectors_field(named: dict[str, bytes], field: int = 4) -> bytes:
    """A `Vectors` field (PointStruct.vectors = 4, PointVectors.vectors = 2) from name -> `Vector` bytes.

    The name "" means the collection's unnamed default vector.
    """
    if list(named) == [""]:
        body = _ld(1, named[""])
    else:
        entries = b"".join(_ld(1, _ld(1, name.encode()) + _ld(2, vec)) for name, vec in named.items())
        body = _ld(2, entries)
    return _ld(field, body)


# PointStruct.vectors = NamedVectors{}: a point kept without any vector (no usable text), valid for named-vector
# collections.
EMPTY_NAMED_VECTORS = _ld(4, _ld(2, b""))


def point_id(pid: PointIdValue) -> pb.PointId:
    if isinstance(pid, int):
        return pb.PointId(num=pid)
    return pb.PointId(uuid=str(pid))


def id_value(pid: pb.PointId) -> PointIdValue:
    return pid.num if pid.WhichOneof("point_id_options") == "num" else str(uuid.UUID(pid.uuid))


def id_key(pid: PointIdValue) -> tuple[int, int]:
    """Qdrant's scroll order: every integer id before every UUID; UUIDs by their 128-bit value."""
    if isinstance(pid, int):
        return (0, pid)
    return (1, uuid.UUID(pid).int)


def upsert_request(collection: str, points: Iterable[bytes], *, wait: bool = True, insert_only: bool = True) -> bytes:
    """UpsertPoints as bytes; `points` are complete serialised PointStruct messages."""
    head = pb.UpsertPoints(
        collection_name=collection,
        wait=wait,
        update_mode=pb.UpdateMode.InsertOnly if insert_only else pb.UpdateMode.Upsert,
    ).SerializeToString()
    t = _tag(3)
    return head + b"".join(t + varint(len(p)) + p for p in points)


def update_vectors_request(collection: str, points: Iterable[bytes], *, wait: bool = True) -> bytes:
    """UpdatePointVectors as bytes; `points` are serialised PointVectors messages."""
    head = pb.UpdatePointVectors(collection_name=collection, wait=wait).SerializeToString()
    t = _tag(3)
    return head + b"".join(t + varint(len(p)) + p for p in points)


def point_vectors(pid_bytes: bytes, named: dict[str, bytes]) -> bytes:
    """PointVectors{id, vectors} from a serialised PointId and named `Vector` bytes."""
    return _ld(1, pid_bytes) + vectors_field(named, field=2)


def split_by_size(blobs: Sequence[bytes], max_points: int, max_bytes: int) -> list[tuple[int, int]]:
    """Index ranges [a, b) of at most max_points points and about max_bytes each (a lone oversize point stands alone)."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, blob in enumerate(blobs):
        n = len(blob) + 6  # tag + length prefix
        if i > start and (i - start >= max_points or size + n > max_bytes):
            ranges.append((start, i))
            start, size = i, 0
        size += n
    if start < len(blobs):
        ranges.append((start, len(blobs)))
    return ranges
