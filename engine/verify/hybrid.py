"""Hybrid quality: with labelled queries (`--eval`) on a hybrid job, recall@k, nDCG@10 and MRR of the dense vector
alone, the sparse vector alone, and their fusion, side by side.

The fusion is the query Qdrant's hybrid search sends: one prefetch per side (FUSION_PREFETCH candidates each) fused
by Reciprocal Rank Fusion in the Query API (lib/api/src/grpc/proto/points.proto `Query.rrf`;
lib/segment/src/common/score_fusion.rs). All three rankings use the default (HNSW) search, as the application would,
so the columns compare like for like. The dense side is the job's new dense vector (queries embedded by the new
model), or the dense vector the job kept or copied beside the new sparse one (queries embedded by verify.old_model,
the model that made it). Sparse queries come from the job's sparse encoder: for BM25, qdrant-edge's query encoder
(term presence; the collection's IDF modifier weighs the terms at search time, as Qdrant splits BM25); a SPLADE
model encodes queries as it encodes documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import ModelError
from engine.tunables import FUSION_PREFETCH, NDCG_AT
from engine.verify.check import INFO, Check
from engine.verify.context import VerifyContext
from engine.verify.findings import Findings
from engine.verify.ranking import mean_metrics
from engine.verify.reads import Reads
from engine.verify.vectors import Sparse, embed_queries


class SparseQueries:
    """Query-side sparse vectors of the job's sparse encoder (engine/embed/sparse.py)."""

    def __init__(self, encoder: Any) -> None:
        desc = encoder.describe()
        self.kind = desc.get("kind")
        self._encoder = encoder
        self._bm25 = None
        if self.kind == "bm25":
            try:
                import qdrant_edge
            except ImportError:
                raise ModelError("hybrid quality with BM25 needs the qdrant-edge-py package for its query encoder; "
                                 "install it (pip install qdrant-edge-py)") from None
            self._bm25 = qdrant_edge.Bm25(qdrant_edge.Bm25Config(
                k=desc["k"], b=desc["b"], avg_len=desc["avg_len"], language=desc["language"]))

    def __call__(self, texts: Sequence[str]) -> list[Sparse]:
        if self._bm25 is None:
            return [(np.asarray(i, dtype=np.uint32), np.asarray(v, dtype=np.float32))
                    for i, v in self._encoder.encode(list(texts))]
        out = []
        for text in texts:
            vec = self._bm25.embed_query(text)
            out.append((np.asarray(vec.indices, dtype=np.uint32), np.asarray(vec.values, dtype=np.float32)))
        return out


def hybrid_check(out: dict[str, Any]) -> Check:
    k = out["k"]
    parts = [f"{side} recall@{k} {m['recall']:.3f}, nDCG@{NDCG_AT} {m['ndcg']:.3f}, MRR {m['mrr']:.3f}"
             for side, m in (("dense", out.get("dense")), ("sparse", out.get("sparse")),
                             ("fusion (RRF)", out.get("fusion"))) if m is not None]
    note = f" ({out['note']})" if out.get("note") else ""
    return Check("hybrid quality", INFO, f"{out['queries']} labelled queries: " + "; ".join(parts) + note)


class HybridQuality:
    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        plan = ctx.hybrid
        if plan is None or not ctx.eval_queries:
            return []
        k = ctx.options.k
        top = max(k, NDCG_AT)
        texts = [q.query for q in ctx.eval_queries]
        relevant = [q.relevant for q in ctx.eval_queries]
        out: dict[str, Any] = {"queries": len(texts), "k": k, "ndcg_at": NDCG_AT, "dense_vector": plan.dense,
                               "dense_origin": plan.dense_origin, "sparse_vector": plan.sparse, "fusion": None,
                               "method": "rrf", "prefetch": FUSION_PREFETCH, "search": "hnsw"}
        sparse = plan.sparse_queries(texts)
        sparse_ranked = [[i for i, _ in reads.nearest(ctx.target, v, plan.sparse, top)] for v in sparse]
        out["sparse"] = mean_metrics(sparse_ranked, relevant, k)
        if plan.dense_queries is None:
            out["dense"] = None
            out["note"] = (f"the dense vector {plan.dense!r} was {plan.dense_origin} from the old model: set "
                           "verify.old_model to embed queries for it and measure the dense side and the fusion")
        else:
            dense = embed_queries(plan.dense_queries, texts)
            dense_ranked = [[i for i, _ in reads.nearest(ctx.target, v, plan.dense, top)] for v in dense]
            out["dense"] = mean_metrics(dense_ranked, relevant, k)
            fused = [[i for i, _ in reads.fused(ctx.target, [(d, plan.dense), (s, plan.sparse)], top,
                                                FUSION_PREFETCH)] for d, s in zip(dense, sparse)]
            out["fusion"] = mean_metrics(fused, relevant, k)
        found.quality["hybrid"] = out
        return [hybrid_check(out)]
