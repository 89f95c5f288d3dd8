"""Dead letters: points that could not get a new vector (no usable text, too large for any request, deleted while
the job ran), with the reason, in Parquet. Never silently dropped.

Each page's dead letters go to a part file named after the page's shard and start, written by whichever lane
handled the page (the run directory is a path every node sees, or a URI), so a page redone after a crash rewrites
its own part instead of adding duplicates. `finish` merges each shard's parts (and what an earlier run of the job
left for that shard) into one file per shard with pyarrow.dataset, one row per id; the `dead_letters/` folder is
then one Parquet dataset. Memory is bounded by one shard's dead letters, never by the collection.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.flow.page import PageMeta
from engine.flow.rundir import RunDir
from engine.qdrant.wire import PointIdValue

SCHEMA = pa.schema([("id", pa.string()), ("id_type", pa.string()), ("shard", pa.int32()), ("reason", pa.string())])
PARTS = "dead-letter-parts"
MERGED = "dead_letters"
_PART = re.compile(r"s(-?\d+)-[0-9a-f]+\.parquet$")


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class DeadLetters:
    def __init__(self, root: str, job_id: str) -> None:
        self.dir = RunDir(root, job_id)

    def record(self, shard: int, dead: list[tuple[PointIdValue, str]], meta: PageMeta) -> None:
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
        self.dir.write_bytes(f"{PARTS}/s{shard}-{key}.parquet", _table_bytes(table))

    def finish(self) -> tuple[str | None, int]:
        """Merge the parts, per shard; returns (the dead-letter dataset's path, or None when there are none, and the
        number of distinct dead ids)."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for path in self.dir.list(PARTS, ".parquet"):
            match = _PART.search(path)
            if match:
                by_shard[int(match.group(1))].append(path)
        for shard, parts in sorted(by_shard.items()):
            name = f"{MERGED}/shard-{shard:05d}.parquet" if shard >= 0 else f"{MERGED}/catch-up.parquet"
            sources = ([self.dir.join(name)] if self.dir.exists(name) else []) + parts
            merged = _merge(pa.concat_tables([pq.read_table(p, filesystem=self.dir.fs) for p in sources]))
            self.dir.write_bytes(name, _table_bytes(merged))
            for p in parts:
                self.dir.delete(p)
        if not self.dir.list(PARTS):
            self.dir.delete_dir(PARTS)
        if not self.dir.exists(MERGED):
            return None, 0
        return self.dir.display(MERGED), self.count()

    def count(self) -> int:
        if not self.dir.exists(MERGED):
            return 0
        return int(self.dir.dataset(MERGED).count_rows())


def _merge(table: pa.Table) -> pa.Table:
    """One row per id; the reasons of its rows joined, each once, in the order met."""
    if table.num_rows == 0:
        return table.cast(SCHEMA)
    grouped = table.group_by(["id", "id_type", "shard"], use_threads=False).aggregate([("reason", "list")])
    reasons = []
    for row in grouped.column("reason_list").to_pylist():
        seen: list[str] = []
        for part in row:
            for reason in str(part).split("; "):
                if reason not in seen:
                    seen.append(reason)
        reasons.append("; ".join(seen))
    out = pa.table({"id": grouped.column("id"), "id_type": grouped.column("id_type"),
                    "shard": grouped.column("shard"), "reason": pa.array(reasons, pa.string())}, schema=SCHEMA)
    order = pc.sort_indices(out, sort_keys=[("id_type", "ascending"), ("id", "ascending")])
    return out.take(order)
