"""Qdrant's protobuf `Value` (json_with_int.proto) to and from plain Python, and dot-path lookup in payloads.

The converters are tuned for the embedded endpoint's hot paths (every scrolled point's payload passes through
`fill_payload`, every upserted point's through `payload_to_python`): they dispatch on exact types and fill messages
in place, since building a `Value` and copying it into a map costs a second serialisation. Qdrant keeps integers and
floats apart (`integer_value` vs `double_value`); so do we. The pipeline itself copies payloads verbatim as protobuf
and converts only the text it embeds.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, MutableMapping

from qdrant_client import grpc as pb

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def value_to_python(value: pb.Value) -> Any:
    """One protobuf Value to plain JSON-compatible Python (dict, list, str, int, float, bool, None)."""
    kind = value.WhichOneof("kind")
    # an if-chain in order of frequency: measured faster than a dispatch table on this path
    if kind == "string_value":
        return value.string_value
    if kind == "integer_value":
        return value.integer_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: value_to_python(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    return None  # null_value, or an unset Value, which Qdrant also reads as null


def payload_to_python(payload: Mapping[str, pb.Value]) -> dict[str, Any]:
    """A protobuf payload map (`map<string, Value>`) to a plain dict."""
    return {key: value_to_python(value) for key, value in payload.items()}


def fill_value(target: pb.Value, obj: Any) -> None:
    """Write plain Python `obj` into the (empty) protobuf Value `target` in place.

    Raises TypeError for anything that is not JSON (sets, bytes, objects), naming the type.
    """
    kind = type(obj)
    if kind is str:
        target.string_value = obj
    elif kind is bool:  # before int: bool is an int subclass
        target.bool_value = obj
    elif kind is int:
        if _INT64_MIN <= obj <= _INT64_MAX:
            target.integer_value = obj
        else:  # JSON numbers beyond int64 survive as doubles, as serde_json does
            target.double_value = float(obj)
    elif kind is float:
        target.double_value = obj
    elif obj is None:
        target.null_value = pb.NullValue.NULL_VALUE
    elif kind is dict:
        struct = target.struct_value
        struct.SetInParent()  # an empty object must still read back as an object, not null
        fields = struct.fields
        for key, item in obj.items():
            fill_value(fields[key], item)
    elif kind is list or kind is tuple:
        items = target.list_value
        items.SetInParent()
        values = items.values
        for item in obj:
            fill_value(values.add(), item)
    else:
        _fill_subclass(target, obj)


def _fill_subclass(target: pb.Value, obj: Any) -> None:
    # Exact-type dispatch above keeps the common case fast; subclasses (IntEnum, OrderedDict...) land here.
    if isinstance(obj, bool):
        target.bool_value = bool(obj)
    elif isinstance(obj, int):
        fill_value(target, int(obj))
    elif isinstance(obj, float):
        target.double_value = float(obj)
    elif isinstance(obj, str):
        target.string_value = str(obj)
    elif isinstance(obj, Mapping):
        fill_value(target, {str(k): v for k, v in obj.items()})
    elif isinstance(obj, (list, tuple)):
        fill_value(target, list(obj))
    else:
        raise TypeError(f"payload value of type {type(obj).__name__} is not JSON")


def fill_payload(target: MutableMapping[str, pb.Value], payload: Mapping[str, Any]) -> None:
    """Write a plain dict into a protobuf payload map field in place."""
    for key, item in payload.items():
        fill_value(target[key], item)


def python_to_value(obj: Any) -> pb.Value:
    """A new protobuf Value holding `obj` (for the few places that need a standalone message)."""
    value = pb.Value()
    fill_value(value, obj)
    return value


# Short names used across the engine.
to_python = value_to_python
from_python = python_to_value


def payload_from_python(obj: Mapping[str, Any]) -> dict[str, pb.Value]:
    return {str(k): python_to_value(v) for k, v in obj.items()}


def lookup(payload: Mapping[str, pb.Value], path: str) -> pb.Value | None:
    """Follow a dot path ("doc.body") through nested structs; None when any step is missing."""
    parts = path.split(".")
    current: Mapping[str, pb.Value] = payload
    value: pb.Value | None = None
    for i, part in enumerate(parts):
        if part not in current:
            return None
        value = current[part]
        if i < len(parts) - 1:
            if value.WhichOneof("kind") != "struct_value":
                return None
            current = value.struct_value.fields
    return value


def payload_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a (plain Python) payload as canonical JSON, sorted keys: equal digests mean equal payloads."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
