"""A job's dead letters as verify and the report see them: how many, why, the first rows, and their ids (to prove
every sampled point without usable text is listed). A Parquet dataset: a folder of per-shard files, or one file,
local or behind a pyarrow.fs URI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.tunables import SHOW_IDS
from engine.verify.check import INFO, Check

if TYPE_CHECKING:
    from engine.verify.context import VerifyContext
    from engine.verify.findings import Findings
    from engine.verify.reads import Reads


def dead_letter_summary(path: str | None) -> tuple[dict[str, Any], set[str] | None]:
    """(count, reasons, first rows) of a job's dead letters, and its ids (None when they are not reachable)."""
    out: dict[str, Any] = {"path": path, "count": 0, "reasons": {}, "sample": [], "available": True}
    if not path:
        return out, set()
    import pyarrow.dataset as ds
    from pyarrow import fs

    try:
        filesystem, where = fs.FileSystem.from_uri(path) if "://" in path else (fs.LocalFileSystem(), path)
        if filesystem.get_file_info(where).type == fs.FileType.NotFound:
            raise FileNotFoundError(path)
        table = ds.dataset(where, filesystem=filesystem, format="parquet").to_table(columns=["id", "shard", "reason"])
    except (OSError, ValueError):
        out["available"] = False
        return out, None
    reasons: dict[str, int] = {}
    for reason in table.column("reason").to_pylist():
        for part in str(reason).split("; "):
            reasons[part] = reasons.get(part, 0) + 1
    out.update(count=table.num_rows, reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
               sample=table.slice(0, SHOW_IDS).to_pylist())
    return out, set(table.column("id").to_pylist())


def dead_letters_check(dead: dict[str, Any]) -> Check:
    """The information line: how many points the run could not embed, and where they are listed."""
    if not dead.get("path"):
        return Check("dead letters", INFO, "none")
    if not dead.get("available"):
        return Check("dead letters", INFO, f"{dead['path']} is not on this machine")
    return Check("dead letters", INFO, f"{dead['count']:,} points listed in {dead['path']}")


class DeadLetters:
    """The dead-letter information line (the runner read the summary before the sampled checks, which use its ids)."""

    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        return [dead_letters_check(found.dead_letters)]
