"""Ranking metrics of the quality checks (recall@k, nDCG@k, MRR) and the self-retrieval query made from a text."""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.tunables import NDCG_AT, SPAN_WORDS


def recall_at(ranked: Sequence, relevant: set, k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def ndcg_at(ranked: Sequence, relevant: set, k: int = NDCG_AT) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(ranked[:k]) if pid in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def reciprocal_rank(ranked: Sequence, relevant: set) -> float:
    for i, pid in enumerate(ranked):
        if pid in relevant:
            return 1.0 / (i + 1)
    return 0.0


def span_query(text: str) -> str:
    """A query made from a text: its first half (at most SPAN_WORDS words)."""
    words = text.split()
    return " ".join(words[: max(1, min(SPAN_WORDS, len(words) // 2))])


def mean_metrics(rankings: Sequence[Sequence], relevant: Sequence[set], k: int) -> dict[str, float]:
    """Mean recall@k, nDCG@NDCG_AT and MRR over queries (ranking i judged against relevant[i])."""
    n = max(1, len(rankings))
    return {"recall": sum(recall_at(r, rel, k) for r, rel in zip(rankings, relevant)) / n,
            "ndcg": sum(ndcg_at(r, rel, NDCG_AT) for r, rel in zip(rankings, relevant)) / n,
            "mrr": sum(reciprocal_rank(r, rel) for r, rel in zip(rankings, relevant)) / n}
