"""Qdrant's protobuf `Value` (json_with_int.proto) to and from plain Python, and text extraction from payloads.

The pipeline copies payloads verbatim as protobuf; only the text it embeds is converted, so this stays off the hot
path except for one field per point.
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping

from qdrant_client import grpc as pb

_NULL = 0  # google.protobuf.NullValue.NULL_VALUE


def to_python(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "struct_value":
        return {k: to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    return getattr(value, kind)


def payload_to_python(payload: Mapping[str, pb.Value]) -> dict[str, Any]:
    return {k: to_python(v) for k, v in payload.items()}


def from_python(obj: Any) -> pb.Value:
    if obj is None:
        return pb.Value(null_value=_NULL)
    if isinstance(obj, bool):  # before int: bool is an int subclass
        return pb.Value(bool_value=obj)
    if isinstance(obj, int):
        return pb.Value(integer_value=obj)
    if isinstance(obj, float):
        return pb.Value(double_value=obj)
    if isinstance(obj, str):
        return pb.Value(string_value=obj)
    if isinstance(obj, Mapping):
        return pb.Value(struct_value=pb.Struct(fields={str(k): from_python(v) for k, v in obj.items()}))
    if isinstance(obj, (list, tuple)):
        return pb.Value(list_value=pb.ListValue(values=[from_python(v) for v in obj]))
    raise TypeError(f"payload value of type {type(obj).__name__} is not JSON")


def payload_from_python(obj: Mapping[str, Any]) -> dict[str, pb.Value]:
    return {str(k): from_python(v) for k, v in obj.items()}


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


class TextSpec:
    """How a point's text is found: one payload field (dot path) or a template over several ("{title}\\n\\n{body}").

    `extract` returns (text, None) or (None, reason) so that points without usable text are dead-lettered with a
    cause instead of being dropped.
    """

    _FIELD = re.compile(r"^[^{}]+$")

    def __init__(self, field: str | None = None, template: str | None = None) -> None:
        if (field is None) == (template is None):
            raise ValueError("exactly one of field or template")
        self.field = field
        self.template = template
        self.fields: list[str] = []
        if template is not None:
            self.fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]

    def describe(self) -> str:
        return f"field:{self.field}" if self.field is not None else f"template:{self.template}"

    @staticmethod
    def _string(value: pb.Value | None, name: str) -> tuple[str | None, str | None]:
        if value is None:
            return None, f"missing field '{name}'"
        kind = value.WhichOneof("kind")
        if kind != "string_value":
            shown = "null" if kind in (None, "null_value") else kind
            return None, f"field '{name}' is {shown}, not a string"
        return value.string_value, None

    def extract(self, payload: Mapping[str, pb.Value]) -> tuple[str | None, str | None]:
        if self.field is not None:
            text, reason = self._string(lookup(payload, self.field), self.field)
        else:
            values: dict[str, str] = {}
            for name in self.fields:
                part, reason = self._string(lookup(payload, name), name)
                if reason is not None:
                    return None, reason
                values[name] = part  # type: ignore[assignment]
            text = _format(self.template or "", values)
            reason = None
        if reason is not None:
            return None, reason
        if not text or not text.strip():
            return None, "empty text"
        return text, None


def _format(template: str, values: Mapping[str, str]) -> str:
    # str.format would read "a.b" as attribute access; substitute the literal field names instead.
    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if name:
            out.append(values[name])
    return "".join(out)
