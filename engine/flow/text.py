"""Where a point's text comes from: one seam (`TextSource`) for every step that needs it — the readers, verify, the
shortcuts' sample, the plan's calibration, catch-up and the precondition checks.

Three kinds, described by one picklable `TextSpec` (built once from the config by the composition root, shipped to
Ray actors as is, opened where the text is needed):
- a payload field, by dot path ("doc.body");
- a template over payload fields ("{title}\\n\\n{body}");
- an external Parquet dataset (pyarrow.dataset: a file or a directory, local or s3:// / gs://) with an id column and a
  text column, for collections whose payloads store no text. Each page looks its ids up with one filtered scan
  (`id in [...]`); Parquet row-group statistics skip the groups that cannot hold them, so a dataset sorted by id
  reads little beyond the rows it needs. An unsorted dataset still gives the right answer, only slower.

`texts(points)` answers (text, None) or (None, reason) per point, so points without usable text are dead-lettered
with a cause instead of being dropped.
"""

from __future__ import annotations

import logging
import string
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from qdrant_client import grpc as pb

from engine.errors import PreconditionError
from engine.qdrant import wire
from engine.qdrant.values import lookup

log = logging.getLogger(__name__)

TextResult = tuple["str | None", "str | None"]  # (text, None) or (None, why there is no usable text)


class TextSource(Protocol):
    """Gives the text of each point of a page."""

    needs_payload: bool  # whether `texts` reads the points' payloads (a reader may then skip them otherwise)

    def describe(self) -> str: ...

    def texts(self, points: Sequence[pb.RetrievedPoint]) -> list[TextResult]:
        """One (text, reason) per point, in order."""
        ...


@dataclass(frozen=True)
class TextSpec:
    """Which text source a job uses, as plain data: exactly one of field, template or dataset."""

    field: str | None = None
    template: str | None = None
    dataset: str | None = None
    id_column: str = "id"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.field, self.template, self.dataset)) != 1:
            raise ValueError("a text spec needs exactly one of field, template or dataset")

    @property
    def needs_payload(self) -> bool:
        return self.dataset is None

    def describe(self) -> str:
        """Stable text for fingerprints and reports (a change of text source makes a different job)."""
        if self.field is not None:
            return f"field:{self.field}"
        if self.template is not None:
            return f"template:{self.template}"
        return f"parquet:{self.dataset}#{self.id_column}->{self.text_column}"

    def open(self) -> TextSource:
        if self.dataset is not None:
            return DatasetText(self.dataset, self.id_column, self.text_column)
        return PayloadText(field=self.field, template=self.template)


class PayloadText:
    """The text is in the payload: one field (dot path) or a template over several."""

    needs_payload = True

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

    def texts(self, points: Sequence[pb.RetrievedPoint]) -> list[TextResult]:
        return [self.extract(p.payload) for p in points]

    @staticmethod
    def _string(value: pb.Value | None, name: str) -> TextResult:
        if value is None:
            return None, f"missing field '{name}'"
        kind = value.WhichOneof("kind")
        if kind != "string_value":
            shown = "null" if kind in (None, "null_value") else kind
            return None, f"field '{name}' is {shown}, not a string"
        return value.string_value, None

    def extract(self, payload: Mapping[str, pb.Value]) -> TextResult:
        """The text of one payload."""
        if self.field is not None:
            text, reason = self._string(lookup(payload, self.field), self.field)
        else:
            values: dict[str, str] = {}
            for name in self.fields:
                part, reason = self._string(lookup(payload, name), name)
                if part is None:
                    return None, reason
                values[name] = part
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


def _open_dataset(path: str) -> Any:
    import pyarrow.dataset as ds

    try:
        return ds.dataset(path, format="parquet")
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise PreconditionError(
            f"source.text_dataset {path!r} cannot be opened as Parquet ({str(exc).splitlines()[0]}); "
            "point it at a Parquet file or a directory of them"
        ) from None


class DatasetText:
    """The text is outside Qdrant, in a Parquet dataset keyed by point id."""

    needs_payload = False

    def __init__(self, path: str, id_column: str = "id", text_column: str = "text") -> None:
        import pyarrow as pa

        self.path, self.id_column, self.text_column = path, id_column, text_column
        self.dataset = _open_dataset(path)
        schema = self.dataset.schema
        for col, key in ((id_column, "text_dataset_id_column"), (text_column, "text_dataset_text_column")):
            if schema.get_field_index(col) < 0:
                raise PreconditionError(
                    f"source.text_dataset {path!r} has no column {col!r} (columns: {', '.join(schema.names)}); "
                    f"set source.{key}"
                )
        id_type = schema.field(id_column).type
        if pa.types.is_integer(id_type):
            self._int_ids = True
        elif pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
            self._int_ids = False
        else:
            raise PreconditionError(
                f"column {id_column!r} of {path!r} is {id_type}; point ids must be integers or UUID text"
            )

    def describe(self) -> str:
        return f"parquet:{self.path}#{self.id_column}->{self.text_column}"

    def texts(self, points: Sequence[pb.RetrievedPoint]) -> list[TextResult]:
        ids = [wire.id_value(p.id) for p in points]
        found = self.lookup(ids)
        return [found[pid] for pid in ids]

    def _key(self, pid: int | str) -> int | str | None:
        if self._int_ids:
            return pid if isinstance(pid, int) else None  # a UUID point cannot match an integer column
        return str(pid) if isinstance(pid, int) else str(uuid.UUID(str(pid)))

    def lookup(self, ids: Sequence[int | str]) -> dict[int | str, TextResult]:
        """point id -> (text, None) or (None, reason) for every id asked for."""
        import pyarrow.compute as pc

        keys = {pid: self._key(pid) for pid in ids}
        wanted = sorted({k for k in keys.values() if k is not None}, key=str)
        found: dict[int | str, object] = {}
        if wanted:
            table = self.dataset.to_table(columns=[self.id_column, self.text_column],
                                          filter=pc.field(self.id_column).isin(wanted))
            for key, text in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
                if not self._int_ids:
                    try:
                        key = str(uuid.UUID(key)) if not str(key).isdigit() else key
                    except ValueError:
                        pass
                found.setdefault(key, text)  # a duplicated id: the first row wins, as a scan meets it
        out: dict[int | str, TextResult] = {}
        for pid, key in keys.items():
            if key is None or key not in found:
                out[pid] = (None, f"no row for this id in {self.path}")
                continue
            text = found[key]
            if not isinstance(text, str):
                out[pid] = (None, f"column '{self.text_column}' is {'null' if text is None else type(text).__name__}"
                                  ", not a string")
            elif not text.strip():
                out[pid] = (None, "empty text")
            else:
                out[pid] = (text, None)
        return out
