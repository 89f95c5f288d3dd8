"""The result of one verify: the checks and the details behind them, as the checkpoint, verify.json, the report
and the terminal need them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from engine.verify.check import FAIL, INFO, PASS, SKIPPED, Check
from engine.verify.findings import ShardCount


@dataclass
class VerifyResult:
    job_id: str
    passed: bool
    at: float
    source: str
    target: str
    checked_points: int
    full: bool  # every source point was checked, not a sample
    checks: list[Check]
    shards: list[ShardCount]
    index: dict[str, Any]
    quality: dict[str, Any]
    dead_letters: dict[str, Any]
    provenance: dict[str, Any]
    elapsed_s: float
    report: str | None = None

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    def lines(self) -> list[str]:
        """One line per check, for the terminal."""
        mark = {PASS: "PASS", FAIL: "FAIL", INFO: "info", SKIPPED: "skip"}
        return [f"[{mark.get(c.status, c.status)}] {c.name}: {c.detail}" for c in self.checks]
