"""Labelled queries for quality metrics (`reembed verify --eval FILE`): JSONL or Parquet rows of
{query, relevant_ids}, every bad row a one-line error naming the row and the fix."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.qdrant import wire


@dataclass
class EvalQuery:
    query: str
    relevant: set


def parse_point_id(value: Any, where: str) -> wire.PointIdValue:
    """An id from an eval file: an unsigned integer, a string of digits, or a UUID in any usual spelling."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: id {value!r} is a boolean; ids are unsigned integers or UUIDs")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: id {value} is negative; Qdrant ids are unsigned integers or UUIDs")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
    raise ConfigError(f"{where}: id {value!r} is neither an unsigned integer nor a UUID; fix the eval file")


def _parquet_rows(p: Path) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise ConfigError(f"eval file {str(p)!r} is not readable Parquet ({exc}); write it with pyarrow") from None
    missing = {"query", "relevant_ids"} - set(table.column_names)
    if missing:
        raise ConfigError(f"eval file {str(p)!r} lacks column(s) {', '.join(sorted(missing))}; it needs "
                          "query (string) and relevant_ids (list of ids)")
    return [(f"{p.name} row {i + 1}", r) for i, r in enumerate(table.select(["query", "relevant_ids"]).to_pylist())]


def _jsonl_rows(p: Path) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{p.name} line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{p.name} line {n} is not JSON ({exc.msg}); write one JSON object per "
                                  "line (JSONL), or use a .parquet file") from None
    return rows


def load_eval(path: str | os.PathLike) -> list[EvalQuery]:
    """Labelled queries: JSONL (one {"query": ..., "relevant_ids": [...]} per line) or Parquet with those columns."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"eval file {str(p)!r} does not exist; pass a JSONL or Parquet file of "
                          "{query, relevant_ids} rows")
    rows = _parquet_rows(p) if p.suffix.lower() in (".parquet", ".pq") else _jsonl_rows(p)
    out: list[EvalQuery] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{where} is not an object; write {{\"query\": ..., \"relevant_ids\": [...]}}")
        query, ids = row.get("query"), row.get("relevant_ids")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"{where}: query is missing or empty; give the query text")
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ConfigError(f"{where}: relevant_ids must be a non-empty list of point ids")
        out.append(EvalQuery(query, {parse_point_id(i, where) for i in ids}))
    if not out:
        raise ConfigError(f"eval file {str(p)!r} holds no queries")
    return out
