"""Merging the answers of several shards into one, as Qdrant's collection layer does.

- scroll (lib/collection/src/collection/point_ops.rs `scroll_by`): every shard is asked for `limit + 1` points;
  the answers are sorted by id, deduplicated, cut to `limit + 1`; the extra point is the next page offset. With
  `order_by`, shards are merged on (order value, id) and there is no next offset;
- query (lib/collection/src/collection/query.rs): every shard answers `offset + limit` points; answers are merged
  best first (score, ties by id) and `offset` is skipped at the collection level; a root fusion gets each prefetch
  merged across shards first, then fused here (reciprocal_rank_fusion.rs, score_fusion.rs);
- facet: counts of the same value are added up.
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from engine.embedded.status import bad_request


def id_key(pid: Any) -> tuple[int, int]:
    """ExtendedPointId order: every integer id before every UUID, UUIDs by value."""
    if type(pid) is int:
        return (0, pid)
    return (1, (pid if isinstance(pid, uuid.UUID) else uuid.UUID(str(pid))).int)


@dataclass
class Scored:
    """A scored point after collection-level merging (qdrant-edge's ScoredPoint is read-only)."""

    id: Any
    score: float
    version: int
    payload: Any
    vector: Any
    order_value: Any


def scored(point: Any, score: Optional[float] = None) -> Scored:
    return Scored(point.id, point.score if score is None else score, point.version, point.payload, point.vector,
                  point.order_value)


def scroll_by_id(answers: Iterable[Sequence[Any]], limit: int) -> tuple[list[Any], Optional[Any]]:
    """Records of every shard merged by id; (page of `limit`, id of the next page's first point or None)."""
    merged: list[Any] = []
    seen: set[tuple[int, int]] = set()
    for record in sorted((r for answer in answers for r in answer), key=lambda r: id_key(r.id)):
        key = id_key(record.id)
        if key not in seen:
            seen.add(key)
            merged.append(record)
            if len(merged) == limit + 1:
                break
    if len(merged) <= limit:
        return merged, None
    return merged[:limit], merged[limit].id


def scroll_by_order(answers: Iterable[Sequence[Any]], limit: int, descending: bool) -> list[Any]:
    records = sorted(
        (r for answer in answers for r in answer), key=lambda r: (r.order_value, id_key(r.id)), reverse=descending
    )
    out: list[Any] = []
    last = None
    for record in records:
        key = (record.order_value, id_key(record.id))
        if key != last:
            out.append(record)
            last = key
    return out[:limit]


def best_first(answers: Iterable[Sequence[Any]], larger_is_better: Optional[bool]) -> list[Any]:
    """Shard answers merged in ScoredPointTies order; `None` (random sample) keeps them as they come."""
    points = [p for answer in answers for p in answer]
    if larger_is_better is None:
        return points
    return sorted(points, key=_rank_key, reverse=larger_is_better)


def _rank_key(point: Any) -> tuple[float, tuple[int, int]]:
    # an order_by query ranks by the payload value it reports; every other query by score
    value = point.order_value if point.order_value is not None else point.score
    return (value, id_key(point.id))


def rrf(responses: Sequence[Sequence[Any]], k: int, weights: Optional[Sequence[float]]) -> list[Scored]:
    """reciprocal_rank_fusion.rs rrf_scoring: 1 / ((position + 1) / weight + k - 1), summed per id."""
    if weights is not None and len(weights) != len(responses):
        raise bad_request(
            f"Validation error: Number of weights in RRF should match number of pre-fetches: got {len(weights)}, "
            f"expected {len(responses)}"
        )
    fused: dict[tuple[int, int], Scored] = {}
    for n, response in enumerate(responses):
        weight = 1.0 if weights is None else weights[n]
        for pos, point in enumerate(response):
            score = 0.0 if weight <= 0 else 1.0 / ((pos + 1) / weight + k - 1)
            key = id_key(point.id)
            if key in fused:
                fused[key].score += score
            else:
                fused[key] = scored(point, score)
    return sorted(fused.values(), key=lambda p: p.score, reverse=True)


def _distr_norm(points: Sequence[Any]) -> list[Scored]:
    """score_fusion.rs distr_norm: scale by mean +- 3 sample standard deviations."""
    if len(points) < 2:
        return [scored(p, 0.5) for p in points]
    scores = [p.score for p in points]
    mean, std = statistics.fmean(scores), statistics.stdev(scores)
    low, high = mean - 3 * std, mean + 3 * std
    if low == high:
        return [scored(p, 0.5) for p in points]
    return [scored(p, (p.score - low) / (high - low)) for p in points]


def dbsf(responses: Sequence[Sequence[Any]]) -> list[Scored]:
    fused: dict[tuple[int, int], Scored] = {}
    for response in responses:
        for point in _distr_norm(response):
            key = id_key(point.id)
            if key in fused:
                fused[key].score += point.score
            else:
                fused[key] = point
    return sorted(fused.values(), key=lambda p: (p.score, id_key(p.id)), reverse=True)


@dataclass(frozen=True)
class FacetHit:
    value: Any
    count: int


def facet_hits(answers: Iterable[Any], limit: int) -> list[FacetHit]:
    counts: dict[tuple[str, Any], int] = {}
    values: dict[tuple[str, Any], Any] = {}
    for answer in answers:
        for hit in answer.hits:
            key = (type(hit.value).__name__, hit.value)
            counts[key] = counts.get(key, 0) + hit.count
            values[key] = hit.value
    ordered = sorted(counts, key=lambda k: (-counts[k], str(k[1])))
    return [FacetHit(values[k], counts[k]) for k in ordered[:limit]]
