"""Runs the checks of one verify in order and builds its result (storing it is the caller's: engine/app).

The runner reads the two collections' descriptions (and so their strict-mode limits) once, reads the job's dead
letters, then hands every step the same context, reads and findings. Steps, in order: count parity (which also
counts the source), the sampled checks (which leave the query points), index health, labelled and label-free
quality, hybrid quality, the dead-letter line, provenance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import closing

from engine.errors import PreconditionError
from engine.verify.check import Check, CheckStep
from engine.verify.context import VerifyContext
from engine.verify.count_parity import CountParity
from engine.verify.dead_letters import DeadLetters, dead_letter_summary
from engine.verify.findings import CollectionFacts, Findings
from engine.verify.hybrid import HybridQuality
from engine.verify.index_health import IndexHealth
from engine.verify.provenance import Provenance
from engine.verify.quality import LabelFree, Labelled
from engine.verify.reads import Reads
from engine.verify.result import VerifyResult
from engine.verify.sampled import SampledPoints

STEPS: tuple[CheckStep, ...] = (CountParity(), SampledPoints(), IndexHealth(), Labelled(), LabelFree(),
                                HybridQuality(), DeadLetters(), Provenance())


def _facts(client, name: str, what: str) -> CollectionFacts:
    info = client.collection_info(name)
    if info is None:
        raise PreconditionError(f"{what} collection {name!r} does not exist; "
                                + ("run the job first" if what == "target" else "check source.collection"))
    return CollectionFacts.of(name, info)


def run_checks(ctx: VerifyContext, steps: Sequence[CheckStep] = STEPS, *,
               clock: Callable[[], float] = time.monotonic, now: Callable[[], float] = time.time) -> VerifyResult:
    """Every check of one verify; the result is not stored anywhere."""
    t0 = clock()
    with closing(ctx.clients()) as client:
        target = _facts(client, ctx.target, "target")
        source = target if ctx.source == ctx.target else _facts(client, ctx.source, "source")
        found = Findings(source=source, target=target, unnamed_target=target.unnamed and ctx.vectors.dense == "")
        found.dead_letters, found.dead_ids = dead_letter_summary(ctx.dead_letter_path)
        reads = Reads(client, {ctx.source: source.strict, ctx.target: target.strict})
        checks: list[Check] = []
        for step in steps:
            checks.extend(step.run(ctx, reads, found))
    return VerifyResult(
        job_id=ctx.job_id, passed=not any(c.failed for c in checks), at=now(), source=ctx.source, target=ctx.target,
        checked_points=found.checked, full=found.full, checks=checks, shards=found.shards, index=found.index,
        quality=found.quality, dead_letters=found.dead_letters, provenance=found.provenance,
        elapsed_s=clock() - t0)
