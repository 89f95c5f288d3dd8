"""Text kept outside Qdrant: a Parquet dataset (pyarrow.dataset: a file or a directory, local or s3:// / gs://)
with an id column and a text column, for collections whose payloads store no text.

Each page looks its ids up with one filtered scan (`id in [...]`); Parquet row-group statistics skip the groups
that cannot hold them, so a dataset sorted by id reads little beyond the rows it needs. An unsorted dataset still
gives the right answer, only slower.
"""

from __future__ import annotations

import logging
import uuid
from typing import Sequence

from engine.errors import PreconditionError

log = logging.getLogger(__name__)


def _open(path: str):
    import pyarrow.dataset as ds

    try:
        return ds.dataset(path, format="parquet")
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise PreconditionError(
            f"source.text_dataset {path!r} cannot be opened as Parquet ({str(exc).splitlines()[0]}); "
            "point it at a Parquet file or a directory of them"
        ) from None


class ExternalTexts:
    def __init__(self, path: str, id_column: str = "id", text_column: str = "text") -> None:
        import pyarrow as pa

        self.path, self.id_column, self.text_column = path, id_column, text_column
        self.dataset = _open(path)
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

    def _key(self, pid: int | str) -> int | str | None:
        if self._int_ids:
            return pid if isinstance(pid, int) else None  # a UUID point cannot match an integer column
        return str(pid) if isinstance(pid, int) else str(uuid.UUID(str(pid)))

    def lookup(self, ids: Sequence[int | str]) -> dict[int | str, tuple[str | None, str | None]]:
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
        out: dict[int | str, tuple[str | None, str | None]] = {}
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
