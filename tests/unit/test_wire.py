import uuid

import numpy as np
import pytest
from qdrant_client import grpc as pb

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
    for n in (0, 1, 127, 128, 300, 2**21, 2**35):
        msg = pb.PointId(num=n).SerializeToString()
        assert msg == b"\x08" + wire.varint(n)


@pytest.mark.parametrize(
    "payload,spec,expected",
    [
        ({"text": "a b"}, values.TextSpec(field="text"), ("a b", None)),
        ({"doc": {"body": "x"}}, values.TextSpec(field="doc.body"), ("x", None)),
        ({}, values.TextSpec(field="text"), (None, "missing field 'text'")),
        ({"text": 3}, values.TextSpec(field="text"), (None, "field 'text' is integer_value, not a string")),
        ({"text": None}, values.TextSpec(field="text"), (None, "field 'text' is null, not a string")),
        ({"text": "  \n"}, values.TextSpec(field="text"), (None, "empty text")),
        ({"t": "T", "b": {"c": "B"}}, values.TextSpec(template="{t}\n\n{b.c}"), ("T\n\nB", None)),
        ({"t": "T"}, values.TextSpec(template="{t} {b}"), (None, "missing field 'b'")),
    ],
)
def test_text_spec(payload, spec, expected):
    assert spec.extract(values.payload_from_python(payload)) == expected
