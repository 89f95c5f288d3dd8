"""Qdrant write requests assembled at the protobuf wire level.

Why: building `PointStruct` messages with `DenseVector(data=vec.tolist())` costs the client more CPU than everything
else in the data plane (measured: raw float bytes halve the client's CPU). A protobuf message is a concatenation of its
fields, and concatenating two serialised messages merges them, so a point is its (id, payload) bytes, taken once from
the scroll, followed by a vectors field whose packed floats are the numpy row's raw little-endian bytes.

Field numbers (qdrant_client/proto/points.proto): PointStruct{id=1, payload=3, vectors=4}; Vectors{vector=1,
vectors=2}; NamedVectors{vectors=1 (map)}; Vector{dense=101, sparse=102, multi_dense=103}; DenseVector{data=1};
MultiDenseVector{vectors=1}; SparseVector{values=1, indices=2}; UpsertPoints{points=3}; UpdatePointVectors{points=3};
PointVectors{id=1, vectors=2}.
"""

from __future__ import annotations

import uuid
from typing import Iterable, Sequence, Union

import numpy as np
from qdrant_client import grpc as pb

PointIdValue = int | str

_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def varint(n: int) -> bytes:
    # Fast paths for the lengths a point or request carries (< 2 MiB): this runs for every field of every point.
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
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


def dense_field_prefix(name: str, n_floats: int, field: int = 4) -> bytes:
    """What precedes a dense vector's raw float32 bytes in a `Vectors` field holding that one vector:
    `vectors_field({name: dense_vector(raw)}, field) == dense_field_prefix(name, len(raw) // 4, field) + raw`.

    Every length in it depends only on the vector's size, so a sink computes it once per page, not per point
    (measured: 4.8 -> 0.7 µs per 384-d point against building each field).
    """
    nbytes = 4 * n_floats
    return vectors_field({name: dense_vector(bytes(nbytes))}, field)[: -nbytes or None]


# --- multivectors (late interaction) ------------------------------------------------------------------------------
# Vector{multi_dense=103} -> MultiDenseVector{vectors=1 (repeated DenseVector)} -> DenseVector{data=1, packed}.
_T_MULTI = _tag(103)


def multi_dense_body(matrix: np.ndarray) -> tuple[bytes, int]:
    """The body of a MultiDenseVector holding the rows of a [rows, dim] matrix, and the bytes each row takes in it.

    Every row has the same dimension, so every row's DenseVector entry has the same header: the body is built in
    one numpy pass (header columns beside the raw float32 columns), and rows [a, b) of the matrix are exactly
    body[a * step:b * step]. A sink encodes a page's token matrices once and slices each point's multivector out.
    """
    arr = np.ascontiguousarray(matrix, dtype="<f4")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"a multivector is a [rows, dim] matrix with dim >= 1, not shape {arr.shape}")
    rows, dim = arr.shape
    dense = _tag(1) + varint(4 * dim)  # DenseVector.data, packed
    head = _tag(1) + varint(len(dense) + 4 * dim) + dense  # MultiDenseVector.vectors entry
    step = len(head) + 4 * dim
    out = np.empty((rows, step), dtype=np.uint8)
    out[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
    out[:, len(head):] = arr.view(np.uint8).reshape(rows, 4 * dim)
    return out.tobytes(), step


def multi_dense_header(body_len: int) -> bytes:
    """What precedes a MultiDenseVector body of `body_len` bytes in a `Vector` message. Qdrant refuses an empty
    multivector ("multi vector must not be empty", common/validation.rs validate_multi_vector_by_length), so an
    empty body is refused here, where the caller can still name the point."""
    if body_len <= 0:
        raise ValueError("a multivector needs at least one row; Qdrant refuses an empty one")
    return _T_MULTI + varint(body_len)


def multi_dense_vector_from_body(body: bytes) -> bytes:
    """A `Vector` message holding a multivector, from a MultiDenseVector body (see multi_dense_body)."""
    return multi_dense_header(len(body)) + body


def multi_dense_vector(matrix: np.ndarray) -> bytes:
    """A `Vector` message holding a multivector (one row per token) from a [rows, dim] float32 matrix."""
    return multi_dense_vector_from_body(multi_dense_body(matrix)[0])


def vector_field_prefix(name: str, vector_len: int, field: int = 4) -> bytes:
    """What precedes a serialised `Vector` of `vector_len` bytes in a `Vectors` field holding that one vector:
    `vectors_field({name: vec}, field) == vector_field_prefix(name, len(vec), field) + vec`.

    Lets a sink append a point's ~90 KB multivector once instead of copying it through every nesting level.
    """
    if name == "":
        inner = _tag(1) + varint(vector_len)  # Vectors.vector
    else:
        entry = _ld(1, name.encode()) + _tag(2) + varint(vector_len)  # map entry {key, value}
        entry_len = len(entry) + vector_len
        named = _tag(1) + varint(entry_len) + entry  # NamedVectors.vectors
        inner = _tag(2) + varint(len(named) + vector_len) + named  # Vectors.vectors
    return _tag(field) + varint(len(inner) + vector_len) + inner


# PointStruct.vectors = NamedVectors{}: a point kept without any vector (no usable text), valid for named-vector
# collections.
EMPTY_NAMED_VECTORS = _ld(4, _ld(2, b""))


_RETRIEVED_ID = 0x0A  # RetrievedPoint.id = 1 (length-delimited)
_RETRIEVED_PAYLOAD = 0x12  # RetrievedPoint.payload = 2: one length-delimited map entry per key
_STRUCT_PAYLOAD_TAG = b"\x1a"  # PointStruct.payload = 3


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = raw[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def point_struct_from_retrieved(raw: bytes) -> bytes:
    """PointStruct bytes {id, payload} from a serialised RetrievedPoint, every other field (vectors, shard key,
    order value) dropped.

    The two messages number their fields differently (payload is 2 in RetrievedPoint, 3 in PointStruct), so the
    top-level fields are walked and the payload's map entries re-tagged; the entries' bytes are copied as they are,
    never parsed (measured: 6.1 -> 2.8 µs per point of a 450-character text with 5 metadata fields, against
    building a PointStruct message from the parsed one).
    """
    parts: list[bytes] = []
    i, n = 0, len(raw)
    while i < n:
        start = i
        tag = raw[i]
        if tag & 0x80:  # a field number >= 16: not one of id/payload, but skipped properly
            tag, i = _read_varint(raw, i)
        else:
            i += 1
        kind = tag & 7
        if kind == 2:
            length, i = _read_varint(raw, i)
            i += length
        elif kind == 0:
            _, i = _read_varint(raw, i)
        elif kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        else:
            raise ValueError(f"RetrievedPoint bytes hold wire type {kind}, which protobuf does not define")
        if tag == _RETRIEVED_PAYLOAD:
            parts += (_STRUCT_PAYLOAD_TAG, raw[start + 1:i])
        elif tag == _RETRIEVED_ID:
            parts.append(raw[start:i])
    if i != n:
        raise ValueError("truncated RetrievedPoint bytes")
    return b"".join(parts)


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


ShardKeyValue = Union[str, int]


def shard_key_selector(key: ShardKeyValue) -> pb.ShardKeySelector:
    """A selector of one shard key (custom sharding): a keyword or a number."""
    sk = pb.ShardKey(number=key) if isinstance(key, int) else pb.ShardKey(keyword=key)
    return pb.ShardKeySelector(shard_keys=[sk])


def upsert_request(collection: str, points: Iterable[bytes], *, wait: bool = True, insert_only: bool = True,
                   shard_key: ShardKeyValue | None = None) -> bytes:
    """UpsertPoints as bytes; `points` are complete serialised PointStruct messages."""
    head = pb.UpsertPoints(
        collection_name=collection,
        wait=wait,
        update_mode=pb.UpdateMode.InsertOnly if insert_only else pb.UpdateMode.Upsert,
    )
    if shard_key is not None:
        head.shard_key_selector.CopyFrom(shard_key_selector(shard_key))
    return head.SerializeToString() + _repeated(3, points)


def _repeated(field: int, messages: Iterable[bytes]) -> bytes:
    """A repeated message field; one join, no per-message concatenated temporaries."""
    t = _tag(field)
    parts: list[bytes] = []
    for m in messages:
        parts += (t, varint(len(m)), m)
    return b"".join(parts)


def update_vectors_request(collection: str, points: Iterable[bytes], *, wait: bool = True,
                           shard_key: ShardKeyValue | None = None) -> bytes:
    """UpdatePointVectors as bytes; `points` are serialised PointVectors messages."""
    head = pb.UpdatePointVectors(collection_name=collection, wait=wait)
    if shard_key is not None:
        head.shard_key_selector.CopyFrom(shard_key_selector(shard_key))
    return head.SerializeToString() + _repeated(3, points)


def point_vectors(pid_bytes: bytes, named: dict[str, bytes]) -> bytes:
    """PointVectors{id, vectors} from a serialised PointId and named `Vector` bytes."""
    return point_vectors_raw(pid_bytes, vectors_field(named, field=2))


def point_vectors_raw(pid_bytes: bytes, vectors_fields: bytes) -> bytes:
    """PointVectors{id, vectors} from a serialised PointId and ready `Vectors` field bytes (field number 2)."""
    return _ld(1, pid_bytes) + vectors_fields


def split_by_size(blobs: Sequence[bytes], max_points: int, max_bytes: int) -> list[tuple[int, int]]:
    """Index ranges [a, b) of at most max_points points and about max_bytes each (a lone oversize point stands
    alone)."""
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
