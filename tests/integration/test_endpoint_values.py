"""The endpoint's converters: payload JSON <-> protobuf Value, dense vectors from wire bytes, point ids."""

from __future__ import annotations

import uuid
from collections import OrderedDict

import grpc
import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.embedded.convert import dense_floats, fill_point_id, point_id_in
from engine.embedded.status import ApiError
from engine.qdrant.values import fill_payload, payload_to_python, python_to_value, value_to_python

PAYLOAD = {
    "text": "naïve – 日本語 – 💥",
    "int": 42,
    "neg": -(2**63),
    "max": 2**63 - 1,
    "float": 0.1,
    "whole": 2.0,
    "true": True,
    "false": False,
    "null": None,
    "empty_obj": {},
    "empty_list": [],
    "nested": {"a": [1, 2.5, "x", None, {"b": [[]]}], "c": {"d": {"e": True}}},
}


def _wire_round_trip(payload: dict) -> dict:
    point = pb.RetrievedPoint()
    fill_payload(point.payload, payload)
    return payload_to_python(pb.RetrievedPoint.FromString(point.SerializeToString()).payload)


def test_payload_survives_the_wire_exactly() -> None:
    back = _wire_round_trip(PAYLOAD)
    assert back == PAYLOAD
    for key in ("int", "neg", "max"):
        assert type(back[key]) is int
    assert type(back["whole"]) is float and type(back["true"]) is bool
    assert back["empty_obj"] == {} and back["empty_list"] == []  # not collapsed to null


def test_value_kinds_follow_python_types() -> None:
    assert python_to_value(True).WhichOneof("kind") == "bool_value"  # bool before int
    assert python_to_value(1).WhichOneof("kind") == "integer_value"
    assert python_to_value(1.0).WhichOneof("kind") == "double_value"
    assert python_to_value(None).WhichOneof("kind") == "null_value"
    assert python_to_value({}).WhichOneof("kind") == "struct_value"
    assert python_to_value(()).WhichOneof("kind") == "list_value"
    huge = python_to_value(2**70)  # beyond int64: kept as a double, as serde_json does
    assert huge.WhichOneof("kind") == "double_value" and huge.double_value == float(2**70)
    assert value_to_python(pb.Value()) is None  # an unset Value reads as null


def test_subclasses_and_tuples_convert_like_their_base() -> None:
    class Level(int):
        pass

    assert _wire_round_trip({"o": OrderedDict(b=1, a=2), "t": (1, "x"), "l": Level(3)}) == {"o": {"b": 1, "a": 2}, "t": [1, "x"], "l": 3}


def test_non_json_payload_is_refused_by_type() -> None:
    with pytest.raises(TypeError, match="payload value of type set is not JSON"):
        python_to_value({1, 2})
    with pytest.raises(TypeError, match="bytes"):
        python_to_value({"raw": b"\x00"})


@pytest.mark.parametrize("dim", [0, 1, 31, 32, 384, 4096])
def test_dense_floats_reads_the_packed_bytes(dim: int) -> None:
    values = np.random.default_rng(dim).standard_normal(dim, dtype=np.float32)
    dense = pb.DenseVector.FromString(pb.DenseVector(data=values.tolist()).SerializeToString())
    got = dense_floats(dense)
    assert len(got) == dim
    assert list(got) == values.tolist()


def test_point_ids_round_trip_and_bad_uuid_is_invalid_argument() -> None:
    u = uuid.uuid4()
    assert point_id_in(pb.PointId(num=2**64 - 1)) == 2**64 - 1
    assert point_id_in(pb.PointId(uuid=u.hex.upper())) == u  # any form uuid accepts, as Qdrant does
    out = pb.PointId()
    fill_point_id(out, u)
    assert out.uuid == str(u)
    with pytest.raises(ApiError) as err:
        point_id_in(pb.PointId(uuid="not-a-uuid"))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message == "Wrong input: Unable to parse UUID: not-a-uuid"
    with pytest.raises(ApiError):
        point_id_in(pb.PointId())
