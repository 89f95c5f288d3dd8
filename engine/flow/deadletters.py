"""Dead letters: points that could not get a new vector (no usable text, too large for any request), with the
reason, in Parquet. Never silently dropped.

Each page's dead letters go to a part file named after the page's shard and start, so a page redone after a crash
rewrites its own part instead of adding duplicates; `finish` merges the parts into one file, one row per id.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.flow.page import PageMeta
from engine.qdrant.wire import PointIdValue

SCHEMA = pa.schema([("id", pa.string()), ("id_type", pa.string()), ("shard", pa.int32()), ("reason", pa.string())])


class DeadLetters:
    def __init__(self, root: str | os.PathLike, job_id: str) -> None:
        self.dir = Path(root) / job_id
        self.parts = self.dir / "dead-letter-parts"
        self.path = self.dir / "dead_letters.parquet"

    def record(self, shard: int, dead: list[tuple[PointIdValue, str]], meta: PageMeta) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1(repr((shard, meta.start)).encode()).hexdigest()[:16]
        table = pa.table(
            {
                "id": [str(pid) for pid, _ in dead],
                "id_type": ["int" if isinstance(pid, int) else "uuid" for pid, _ in dead],
                "shard": [shard] * len(dead),
                "reason": [why for _, why in dead],
            },
            schema=SCHEMA,
        )
        tmp = self.parts / f".s{shard}-{key}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.parts / f"s{shard}-{key}.parquet")

    def finish(self) -> tuple[str | None, int]:
        """Merge the parts; returns (path or None when there were none, number of distinct dead ids)."""
        if not self.parts.exists():
            return (str(self.path), self.count()) if self.path.exists() else (None, 0)
        rows: dict[str, dict[str, Any]] = {}
        tables = [pq.read_table(p) for p in sorted(self.parts.glob("*.parquet"))]
        if self.path.exists():
            tables.insert(0, pq.read_table(self.path))
        for table in tables:
            for row in table.to_pylist():
                seen = rows.get(row["id"])
                if seen is None:
                    rows[row["id"]] = row
                elif row["reason"] not in seen["reason"].split("; "):
                    seen["reason"] += "; " + row["reason"]
        merged = pa.Table.from_pylist(sorted(rows.values(), key=lambda r: (r["id_type"], r["id"])), schema=SCHEMA)
        tmp = self.path.with_suffix(".tmp")
        pq.write_table(merged, tmp)
        os.replace(tmp, self.path)
        for p in self.parts.glob("*.parquet"):
            p.unlink()
        self.parts.rmdir()
        return str(self.path), merged.num_rows

    def count(self) -> int:
        return pq.read_metadata(self.path).num_rows if self.path.exists() else 0
