"""Multivectors on the wire: the MultiDenseVector bytes the sink builds (new collections: insert_only PointStruct; in
place: UpdateVectors' PointVectors), read back with the official protobuf classes; requests cut by bytes for
~90 KB ColBERT points; the source's verbatim copy of a stored multivector (VectorOutput bytes as a Vector); and the
vectorizer handing a late-interaction model's token matrices over as VectorSet.multi."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.embed.vectorset import MultiVectors, VectorSet
from engine.flow.page import PageBody
from engine.flow.sink import QdrantSink, SinkSpec
from engine.flow.source import QdrantSource
from engine.flow.text import PayloadText
from engine.qdrant import retry, values, wire

RNG = np.random.default_rng(7)


def _matrices(lengths, dim=8):
    return [RNG.standard_normal((n, dim)).astype(np.float32) for n in lengths]


def _rows(vector: pb.Vector | pb.VectorOutput) -> np.ndarray:
    assert vector.WhichOneof("vector") == "multi_dense"
    return np.array([list(v.data) for v in vector.multi_dense.vectors], dtype=np.float32)


def test_multi_dense_vector_decodes_with_the_official_classes():
    for shape in ((3, 1), (3, 8), (180, 128), (200, 1)):
        m = RNG.standard_normal(shape).astype(np.float32)
        vec = pb.Vector.FromString(wire.multi_dense_vector(m))
        assert np.array_equal(_rows(vec), m)  # bit for bit: the raw float32 bytes are the packed field
        body, step = wire.multi_dense_body(m)
        assert step * shape[0] == len(body)
        # rows [a, b) of the matrix are a slice of the body: what the sink writes per point
        part = pb.Vector.FromString(wire.multi_dense_vector_from_body(body[step:3 * step]))
        assert np.array_equal(_rows(part), m[1:3])
    one = np.ones((1, 1), np.float32)
    assert np.array_equal(_rows(pb.Vector.FromString(wire.multi_dense_vector(one))), one)
    with pytest.raises(ValueError, match="at least one row"):
        wire.multi_dense_vector(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="dim >= 1"):
        wire.multi_dense_vector(np.zeros(4, np.float32))


@pytest.mark.parametrize("name", ["", "colbert", "a" * 300])
@pytest.mark.parametrize("field", [2, 4])
def test_vector_field_prefix_equals_the_nested_encoding(name, field):
    for rows in (1, 40, 2000):  # lengths whose varints take 1, 2 and 3 bytes
        vec = wire.multi_dense_vector(RNG.standard_normal((rows, 16)).astype(np.float32))
        assert wire.vector_field_prefix(name, len(vec), field) + vec == wire.vectors_field({name: vec}, field)


def _body(n: int) -> PageBody:
    blobs = [pb.PointStruct(id=wire.point_id(i), payload=values.payload_from_python({"i": i})).SerializeToString()
             for i in range(n)]
    return PageBody(ids=list(range(n)), blobs=blobs, text_index=[k for k in range(n) if k != 1])


def test_sink_writes_multivectors_into_a_new_collection():
    mats = _matrices([3, 5, 1])
    body = _body(4)  # point 1 has no text: kept with its payload, no vector
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name="colbert"))
    ids, points = sink.encode(body, VectorSet(dense=None, sparse=None, multi=MultiVectors.from_rows(mats)))
    assert ids == [0, 1, 2, 3]
    parsed = [pb.PointStruct.FromString(p) for p in points]
    assert [values.payload_to_python(p.payload) for p in parsed] == [{"i": i} for i in range(4)]
    for p, m in zip([parsed[0], parsed[2], parsed[3]], mats):
        assert list(p.vectors.vectors.vectors) == ["colbert"]
        assert np.array_equal(_rows(p.vectors.vectors.vectors["colbert"]), m)
    assert not parsed[1].vectors.vectors.vectors
    # an unnamed multivector collection: Vectors.vector
    unnamed = QdrantSink(None, SinkSpec(collection="c", vector_name=""))
    _, points = unnamed.encode(_body(2), MultiVectors.from_rows(mats[:1]))  # a bare MultiVectors is accepted too
    assert np.array_equal(_rows(pb.PointStruct.FromString(points[0]).vectors.vector), mats[0])


def test_sink_writes_multivectors_in_place_beside_a_sparse_vector():
    mats = _matrices([2, 4, 6])
    sparse = [(np.array([1, 9], np.uint32), np.array([0.5, 1.5], np.float32))] * 3
    body = _body(4)
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name="colbert", sparse_name="bm25", mode="update_vectors"))
    ids, points = sink.encode(body, VectorSet(dense=None, sparse=sparse, multi=MultiVectors.from_rows(mats)))
    assert ids == [0, 2, 3]
    for raw, m in zip(points, mats):
        pv = pb.PointVectors.FromString(raw)
        named = pv.vectors.vectors.vectors
        assert np.array_equal(_rows(named["colbert"]), m)
        assert list(named["bm25"].sparse.indices) == [1, 9]
    request = pb.UpdatePointVectors.FromString(wire.update_vectors_request("c", points))
    assert [wire.id_value(p.id) for p in request.points] == [0, 2, 3]


def test_sink_refuses_what_qdrant_would():
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name="colbert"))
    empty = MultiVectors(np.zeros((2, 4), np.float32), np.array([0, 0, 2, 2], np.int64))  # text 0 has no rows
    with pytest.raises(ValueError, match="no token vectors for point 0"):
        sink.encode(_body(4), empty)
    both = VectorSet(dense=np.zeros((3, 4), np.float32), sparse=None, multi=MultiVectors.from_rows(_matrices([1] * 3)))
    with pytest.raises(ValueError, match="one of them"):
        sink.encode(_body(4), both)


def test_colbert_points_are_cut_into_requests_by_bytes():
    """A ColBERT document (180 tokens x 128 floats) is ~92 KB: 256 of them would be a 23 MB request, so the split by
    max_request_bytes decides, not upload_batch."""
    n = 256
    mv = MultiVectors.from_rows(_matrices([180] * n, dim=128))
    body = PageBody(ids=list(range(n)), blobs=[pb.PointStruct(id=wire.point_id(i)).SerializeToString()
                                               for i in range(n)], text_index=list(range(n)))
    spec = SinkSpec(collection="c", vector_name="colbert")
    _, points = QdrantSink(None, spec).encode(body, VectorSet(dense=None, sparse=None, multi=mv))
    assert 90_000 < len(points[0]) < 95_000
    ranges = wire.split_by_size(points, spec.upload_batch, spec.max_request_bytes)
    assert len(ranges) >= 3 and ranges[0][0] == 0 and ranges[-1][1] == n
    for a, b in ranges:
        request = wire.upsert_request("c", points[a:b])
        assert len(request) <= spec.max_request_bytes + 1024
        decoded = pb.UpsertPoints.FromString(request)
        assert decoded.update_mode == pb.UpdateMode.InsertOnly and len(decoded.points) == b - a
        assert np.array_equal(_rows(decoded.points[0].vectors.vectors.vectors["colbert"]), mv.row(a))


class _Scroller:
    """The one client call read_page makes on a single-shard source."""

    def __init__(self, points):
        self.points = points
        self.stats = retry.RetryStats()
        self.asked = None

    def scroll(self, collection, offset, limit, *, with_payload, with_vectors, shard_key=None):
        self.asked = with_vectors
        return self.points, None


def _stored(pid: int, text: str, named: dict[str, pb.VectorOutput]) -> pb.RetrievedPoint:
    p = pb.RetrievedPoint(id=wire.point_id(pid), payload=values.payload_from_python({"text": text}))
    for name, vec in named.items():
        p.vectors.vectors.vectors[name].CopyFrom(vec)
    return p


def test_source_copies_a_stored_multivector_verbatim_as_a_valid_vector():
    """VectorOutput and Vector share their field numbers (multi_dense = 103, and the deprecated data = 1 /
    vectors_count = 3), so the bytes Qdrant sends for a stored multivector are a valid input, in either spelling."""
    m = RNG.standard_normal((3, 4)).astype(np.float32)
    current = pb.VectorOutput(multi_dense=pb.MultiDenseVector(vectors=[pb.DenseVector(data=r) for r in m]))
    legacy = pb.VectorOutput(data=m.ravel().tolist(), vectors_count=3)  # how servers before 1.10 answered
    dense = pb.VectorOutput(dense=pb.DenseVector(data=[1.0, 2.0]))
    points = [_stored(1, "a", {"colbert": current, "dense": dense}), _stored(2, "b", {"colbert": legacy}),
              _stored(3, "c", {"dense": dense})]
    client = _Scroller(points)
    src = QdrantSource(client, "src", PayloadText(field="text"), copy_vectors={"colbert": "colbert", "dense": "old"})
    _, texts, body = src.read_page(0, 0, None, None, 10)
    assert texts == ["a", "b", "c"]
    assert list(client.asked.include.names) == ["colbert", "dense"]
    structs = [pb.PointStruct.FromString(b) for b in body.blobs]
    assert np.array_equal(_rows(structs[0].vectors.vectors.vectors["colbert"]), m)
    assert list(structs[0].vectors.vectors.vectors["old"].dense.data) == [1.0, 2.0]
    copied_legacy = structs[1].vectors.vectors.vectors["colbert"]
    assert copied_legacy.vectors_count == 3 and np.allclose(copied_legacy.data, m.ravel())
    assert list(structs[2].vectors.vectors.vectors) == ["old"]  # a point without a multivector copies none


class _TokenModel:
    """A stand-in late-interaction embedder: one row per word."""

    dim = 4

    def embed(self, texts):
        return MultiVectors.from_rows([np.full((len(t.split()), 4), float(len(t)), np.float32) for t in texts], dim=4)

    def describe(self):
        return {"kind": "late_interaction", "dim": 4}


def test_vectorizer_hands_token_matrices_over_as_vectorset_multi(monkeypatch):
    import engine.embed
    from engine.embed.vectorize import build_vectorizer

    monkeypatch.setattr(engine.embed, "build_embedder", lambda spec: _TokenModel())
    out = build_vectorizer({"dense": {"name": "colbert-dir", "kind": "late_interaction"}}).embed(["a b", "c d e"])
    assert isinstance(out, VectorSet) and out.dense is None and out.sparse is None
    assert out.multi.lengths.tolist() == [2, 3] and len(out) == 2
    hybrid = build_vectorizer({"dense": {"name": "colbert-dir", "kind": "late_interaction"},
                               "sparse": {"model": "bm25"}}).embed(["a b", "c d e"])
    assert hybrid.multi.lengths.tolist() == [2, 3] and len(hybrid.sparse) == 2
