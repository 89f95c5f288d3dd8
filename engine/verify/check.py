"""What a verification says, and the one interface every verification implements.

A `Check` is one line of the verdict (pass / fail / info / skipped, a one-line detail and the first offending ids).
A `CheckStep` reads what it needs from the `VerifyContext` (what was migrated), reads the collections through
`Reads` (every request inside strict mode), takes the `Findings` earlier steps left (the sampled query points, the
collections' facts), adds its own findings, and returns its checks. The runner runs the steps in order; each step
is testable alone with an in-memory client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from engine.tunables import SHOW_IDS, SHOW_IN_DETAIL

if TYPE_CHECKING:
    from engine.verify.context import VerifyContext
    from engine.verify.findings import Findings
    from engine.verify.reads import Reads

PASS, FAIL, INFO, SKIPPED = "pass", "fail", "info", "skipped"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | info | skipped
    detail: str
    ids: list = field(default_factory=list)  # the first offending ids, for the report

    @property
    def failed(self) -> bool:
        return self.status == FAIL


class CheckStep(Protocol):
    """One verification over the context; `run` may add to `found` for the steps after it."""

    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]: ...


@dataclass
class Offenders:
    """Points that failed one check: how many, and the first few with why (memory bounded whatever the count)."""

    count: int = 0
    first: list[tuple[Any, Any]] = field(default_factory=list)  # (id, why)

    def add(self, pid: Any, why: Any = None) -> None:
        self.count += 1
        if len(self.first) < SHOW_IDS:
            self.first.append((pid, why))

    @property
    def ids(self) -> list:
        return [pid for pid, _ in self.first]

    def __bool__(self) -> bool:
        return self.count > 0


def show(ids: Sequence) -> str:
    """The first few ids, for a one-line detail."""
    shown = ", ".join(repr(i) for i in ids[:SHOW_IN_DETAIL])
    return shown + (", ..." if len(ids) > SHOW_IN_DETAIL else "")
