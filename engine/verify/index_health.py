"""Index health: does the target's HNSW index find what exact search finds?

For sampled points as queries (their stored new vectors; multivectors by MaxSim), recall@k of the default (HNSW)
search against `exact=true` search on the new vector, gated by verify.min_hnsw_recall (Qdrant's guidance: 0.95).

When the target's strict mode forbids exact search (`search_allow_exact: false`), exact search cannot be the
reference. Verify then measures against the one neighbour it knows without asking the server: each sampled point's
own stored vector. Used as a query, the point scores `self_score` against itself (1 for cosine, 0 distance for
Euclid, its MaxSim against itself for a multivector). If HNSW's k-th result scores worse than that and the point is
not among the results, HNSW missed a point that belongs in the exact top k: a definite miss. A query whose k results
all score at least as well as the point itself (duplicates, or a Dot-product vector of larger norm) cannot tell and
is left out. Recall is found / (found + definite misses), gated by the same threshold, and the check says that this
is what it measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.verify.check import FAIL, PASS, SKIPPED, Check
from engine.verify.context import VerifyContext
from engine.verify.findings import Findings, QueryPoint
from engine.verify.reads import Reads
from engine.verify.vectors import lower_is_better, self_score


def _exact_recall(reads: Reads, ctx: VerifyContext, using: str | None, points: list[QueryPoint]) -> list[float]:
    k = ctx.options.k
    out = []
    for q in points:
        approx = [pid for pid, _ in reads.nearest(ctx.target, q.new, using, k)]
        exact = [pid for pid, _ in reads.nearest(ctx.target, q.new, using, k, exact=True)]
        out.append(len(set(approx) & set(exact)) / max(1, len(exact)))
    return out


def self_found(hits: list[tuple[Any, float]], q: QueryPoint, k: int, distance: int | None) -> bool | None:
    """Whether HNSW found the query point where its own score ranks it (None: the answer cannot tell)."""
    if any(pid == q.pid for pid, _ in hits):
        return True
    if len(hits) < k:
        return False  # fewer than k results, so every point scoring anything belonged in them
    mine = self_score(np.asarray(q.new), distance)
    kth = hits[-1][1]
    tol = 1e-4 * max(1.0, abs(mine))
    if lower_is_better(distance):
        return False if kth > mine + tol else None
    return False if kth < mine - tol else None


class IndexHealth:
    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        info = found.target.info
        k, minimum = ctx.options.k, ctx.options.min_hnsw_recall
        indexed, count = int(info.indexed_vectors_count), int(info.points_count)
        points = found.query_points
        out: dict[str, Any] = {"k": k, "queries": len(points), "indexed_vectors": indexed, "points": count}
        found.index = out
        if not points:
            return [Check("HNSW recall", SKIPPED, "no valid sampled vector to query with")]
        using = ctx.vectors.new or None
        note = ""
        if indexed == 0:
            note = (" (the target has no HNSW index yet, indexed_vectors_count = 0, as on the embedded endpoint or "
                    "below the indexing threshold: every search is exact, so this is 1.0 by construction)")
            out["note"] = note.strip(" ()")
        if reads.exact_allowed(ctx.target):
            recalls = _exact_recall(reads, ctx, using, points)
            recall = float(np.mean(recalls))
            out.update(method="exact", recall=recall, min_query_recall=float(np.min(recalls)))
            status = PASS if recall >= minimum else FAIL
            return [Check("HNSW recall", status, f"recall@{k} of HNSW vs exact search over {len(points)} queries "
                          f"{recall:.3f} ({'>=' if status == PASS else '<'} {minimum}){note}")]
        distance = found.target.distance(ctx.vectors.new)
        asked = reads.strict(ctx.target).sample_limit(k)  # a query limit below k returns fewer results
        verdicts = [self_found(reads.nearest(ctx.target, q.new, using, asked), q, asked, distance) for q in points]
        judged = [v for v in verdicts if v is not None]
        why = (f"exact search is forbidden by {ctx.target!r}'s strict mode (search_allow_exact: false), so HNSW is "
               "measured against each sampled point's own stored vector")
        out.update(method="self", judged=len(judged))
        if not judged:
            return [Check("HNSW recall", SKIPPED, f"{why}, and no query could tell (every top-{k} scored at least as "
                          "well as the point itself)")]
        recall = sum(judged) / len(judged)
        out.update(recall=recall)
        status = PASS if recall >= minimum else FAIL
        return [Check("HNSW recall", status, f"{why}: found where its own score ranks it by {sum(judged)} of "
                      f"{len(judged)} queries, recall@{k} {recall:.3f} ({'>=' if status == PASS else '<'} "
                      f"{minimum}){note}")]
