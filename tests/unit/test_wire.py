import uuid

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.flow.text import PayloadText
from engine.qdrant import values, wire


def _base(pid, payload):
    return pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload)).SerializeToString()


@pytest.mark.parametrize("name", ["dense", ""])
def test_point_with_vector_parses_as_protobuf(name):
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    blob = _base(7, {"text": "héllo", "n": {"a": [1, 2.5, None, True]}}) + wire.vectors_field(
        {name: wire.dense_vector(wire.f32_bytes(vec))})
    p = pb.PointStruct.FromString(blob)
    assert p.id.num == 7
    got = p.vectors.vectors.vectors[name].dense.data if name else p.vectors.vector.dense.data
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), vec)
    assert values.payload_to_python(p.payload) == {"text": "héllo", "n": {"a": [1, 2.5, None, True]}}


def test_upsert_request_header_and_points():
    blobs = [_base(i, {"i": i}) + wire.EMPTY_NAMED_VECTORS for i in range(3)]
    req = pb.UpsertPoints.FromString(wire.upsert_request("c", blobs, wait=True, insert_only=True))
    assert (req.collection_name, req.wait, req.update_mode) == ("c", True, pb.UpdateMode.InsertOnly)
    assert [p.id.num for p in req.points] == [0, 1, 2]
    assert req.points[0].HasField("vectors") and len(req.points[0].vectors.vectors.vectors) == 0


def test_update_vectors_request_with_uuid_and_sparse():
    u = str(uuid.UUID(int=12345))
    pv = wire.point_vectors(wire.point_id(u).SerializeToString(),
                            {"sp": wire.sparse_vector(np.array([3, 70000]), np.array([0.5, 2.0]))})
    req = pb.UpdatePointVectors.FromString(wire.update_vectors_request("c", [pv]))
    sp = req.points[0].vectors.vectors.vectors["sp"].sparse
    assert req.points[0].id.uuid == u and list(sp.indices) == [3, 70000] and list(sp.values) == [0.5, 2.0]


def test_id_order_ints_before_uuids():
    ids = [str(uuid.UUID(int=5)), 10, 2, str(uuid.UUID(int=1))]
    assert sorted(ids, key=wire.id_key) == [2, 10, str(uuid.UUID(int=1)), str(uuid.UUID(int=5))]


def test_split_by_size_respects_count_and_bytes():
    blobs = [b"x" * 100] * 10
    assert wire.split_by_size(blobs, 4, 10_000) == [(0, 4), (4, 8), (8, 10)]
    assert wire.split_by_size(blobs, 100, 250) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert wire.split_by_size([b"x" * 1000, b"y"], 10, 100) == [(0, 1), (1, 2)]  # oversize point alone


def test_varint_matches_protobuf():
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**35):
        msg = pb.PointId(num=n).SerializeToString()
        assert msg == b"\x08" + wire.varint(n)


@pytest.mark.parametrize("name", ["", "dense", "a-much-longer-vector-name" * 6])
@pytest.mark.parametrize("dim", [1, 31, 32, 384, 4096])
@pytest.mark.parametrize("field", [4, 2])
def test_dense_field_prefix_equals_the_built_field(name, dim, field):
    raw = np.arange(dim, dtype="<f4").tobytes()
    assert wire.dense_field_prefix(name, dim, field) + raw == wire.vectors_field(
        {name: wire.dense_vector(raw)}, field)


@pytest.mark.parametrize("mode", ["insert_only", "update_vectors"])
@pytest.mark.parametrize("name", ["", "new"])
def test_sink_encode_matches_protobuf_messages(mode, name):
    """The sink's byte-level points parse to exactly the messages qdrant-client's protobuf classes would build."""
    from engine.flow.page import PageBody
    from engine.flow.sink import QdrantSink, SinkSpec

    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((3, 24)).astype(np.float32)
    payloads = [{"text": f"t{i}", "k": [i, {"x": None}]} for i in range(4)]
    ids = [1, str(uuid.UUID(int=9)), 3, 4]
    body = PageBody(ids=ids, blobs=[_base(i, p) for i, p in zip(ids, payloads)], text_index=[0, 1, 3])
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name=name, mode=mode))
    got_ids, points = sink.encode(body, vecs)
    kept = [0, 1, 3] if (mode == "update_vectors" or name == "") else [0, 1, 2, 3]
    assert got_ids == [ids[k] for k in kept]
    rows = {0: vecs[0], 1: vecs[1], 3: vecs[2]}
    for k, blob in zip(kept, points):
        if mode == "update_vectors":
            want = pb.PointVectors(id=wire.point_id(ids[k]))
            target = want.vectors
        else:
            want = pb.PointStruct(id=wire.point_id(ids[k]), payload=values.payload_from_python(payloads[k]))
            target = want.vectors
        if k in rows:
            vec = target.vector if name == "" else target.vectors.vectors[name]
            vec.dense.data.extend(rows[k].tolist())
        else:
            target.vectors.SetInParent()  # a point without usable text keeps its payload, with no vector
        cls = pb.PointVectors if mode == "update_vectors" else pb.PointStruct
        assert cls.FromString(blob) == want, k


@pytest.mark.parametrize(
    "payload,spec,expected",
    [
        ({"text": "a b"}, PayloadText(field="text"), ("a b", None)),
        ({"doc": {"body": "x"}}, PayloadText(field="doc.body"), ("x", None)),
        ({}, PayloadText(field="text"), (None, "missing field 'text'")),
        ({"text": 3}, PayloadText(field="text"), (None, "field 'text' is integer_value, not a string")),
        ({"text": None}, PayloadText(field="text"), (None, "field 'text' is null, not a string")),
        ({"text": "  \n"}, PayloadText(field="text"), (None, "empty text")),
        ({"t": "T", "b": {"c": "B"}}, PayloadText(template="{t}\n\n{b.c}"), ("T\n\nB", None)),
        ({"t": "T"}, PayloadText(template="{t} {b}"), (None, "missing field 'b'")),
    ],
)
def test_text_spec(payload, spec, expected):
    assert spec.extract(values.payload_from_python(payload)) == expected
    point = pb.RetrievedPoint(id=wire.point_id(1), payload=values.payload_from_python(payload))
    assert spec.texts([point]) == [expected]


def test_point_struct_from_retrieved_keeps_id_and_payload_only():
    payload = {"text": "x" * 300, "n": [1, 2.5, {"deep": None}], "flag": True, "": "empty key"}
    for pid in (7, 2**40, str(uuid.UUID(int=77))):
        p = pb.RetrievedPoint(id=wire.point_id(pid), payload=values.payload_from_python(payload))
        p.vectors.vectors.vectors["old"].dense.data.extend([0.5, -1.0])
        p.shard_key.keyword = "tenant"
        p.order_value.int = 3
        # Fields a newer server might add: varint, fixed64, fixed32 and a two-byte tag must be skipped, not kept.
        extra = (wire.varint(40 << 3 | 0) + wire.varint(300) + wire.varint(41 << 3 | 1) + b"\0" * 8
                 + wire.varint(42 << 3 | 5) + b"\0" * 4 + wire.varint(43 << 3 | 2) + b"\x02ab")
        got = pb.PointStruct.FromString(wire.point_struct_from_retrieved(p.SerializeToString() + extra))
        assert got == pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
    assert wire.point_struct_from_retrieved(pb.RetrievedPoint(id=wire.point_id(1)).SerializeToString()) == \
        pb.PointStruct(id=wire.point_id(1)).SerializeToString()
    with pytest.raises(ValueError, match="truncated"):
        wire.point_struct_from_retrieved(pb.RetrievedPoint(id=wire.point_id(1)).SerializeToString() + b"\x12\x05ab")
