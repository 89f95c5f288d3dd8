"""Hybrid quality: with labelled queries, recall@k / nDCG@10 / MRR of dense alone, sparse alone and their RRF fusion
(one Query with two prefetches), in the result and in report.html; BM25 queries from qdrant-edge's query encoder."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from engine.app.wiring import run_dir
from engine.flow.state import ShardState
from engine.flow.text import PayloadText
from engine.verify.context import HybridPlan, VectorNames, VerifyContext, VerifyOptions
from engine.verify.evalset import EvalQuery
from engine.verify.hybrid import SparseQueries
from engine.verify.report import write_report
from engine.verify.runner import run_checks
from tests.unit.test_verify_checks import WordsEmbedder
from tests.unit.test_verify_memory_client import MemoryQdrant, Spec
from tests.unit.test_verify_report import _cfg, _state

N = 30


class WordIds:
    """A sparse encoder: one index per word (crc32), weight 1."""

    def encode(self, texts):
        out = []
        for text in texts:
            idx = sorted({zlib.crc32(w.encode()) % 100_000 for w in text.split()})
            out.append((np.asarray(idx, dtype=np.uint32), np.ones(len(idx), dtype=np.float32)))
        return out

    def describe(self):
        return {"kind": "words"}


def _world():
    q = MemoryQdrant()
    q.create("docs", {"dense": Spec(8), "bm25": Spec(sparse=True)})
    emb, sparse = WordsEmbedder(), WordIds()
    for i in range(N):
        text = f"doc{i} topic{i % 5} kind{i % 4}"
        q.add("docs", i, {"text": text}, {"dense": emb.embed([text])[0], "bm25": sparse.encode([text])[0]})
    plan = HybridPlan(dense="dense", dense_queries=emb, sparse="bm25", sparse_queries=SparseQueries(sparse))
    ctx = VerifyContext(clients=q, source="docs", target="docs", vectors=VectorNames(dense=None, sparse="bm25"),
                        text=PayloadText(field="text"), shards=[ShardState(0, None, None, None, True, N, 0)],
                        options=VerifyOptions(sample=10**9, k=5, queries=5), hybrid=plan, job_id="j",
                        eval_queries=[EvalQuery(f"doc{i} topic{i % 5}", {i}) for i in range(0, N, 3)])
    return q, ctx


def test_dense_sparse_and_fusion_side_by_side(tmp_path):
    q, ctx = _world()
    result = run_checks(ctx)
    hy = result.quality["hybrid"]
    assert set(hy) >= {"dense", "sparse", "fusion"} and hy["queries"] == 10
    for side in ("dense", "sparse", "fusion"):
        assert set(hy[side]) == {"recall", "ndcg", "mrr"} and 0.0 <= hy[side]["ndcg"] <= 1.0
    assert hy["sparse"]["mrr"] == 1.0  # the query's own doc<i> term only that point has
    check = next(c for c in result.checks if c.name == "hybrid quality")
    assert check.status == "info" and "fusion (RRF)" in check.detail
    fused = [c for c in q.calls if c.method == "query" and c.prefetch == 2]
    assert len(fused) == 10, "one RRF query with a dense and a sparse prefetch per labelled query"
    cfg = _cfg(tmp_path)
    page = open(write_report(cfg, _state(cfg, tmp_path), run_dir(cfg, "abc123"),
                             verify=json.loads(json.dumps(result.to_dict())))).read()
    assert "Hybrid search, labelled queries (10)" in page and "<td>fusion</td>" in page
    assert f"<td>{hy['fusion']['ndcg']:.3f}</td>" in page


def test_without_a_dense_query_model_the_sparse_side_is_still_measured():
    _, ctx = _world()
    ctx.hybrid = HybridPlan(dense="dense", dense_queries=None, sparse="bm25",
                            sparse_queries=ctx.hybrid.sparse_queries, dense_origin="copied")
    hy = run_checks(ctx).quality["hybrid"]
    assert hy["dense"] is None and hy["fusion"] is None and hy["sparse"]["mrr"] == 1.0
    assert "verify.old_model" in hy["note"]


def test_bm25_queries_come_from_qdrant_edges_query_encoder():
    pytest.importorskip("qdrant_edge")
    from engine.embed.sparse import Bm25Encoder

    enc = Bm25Encoder()
    queries = SparseQueries(enc)
    (idx, vals), = queries(["shard routing"])
    doc_idx, doc_vals = enc.encode(["shard routing"])[0]
    assert sorted(idx.tolist()) == sorted(doc_idx.tolist()) and np.all(vals == 1.0)  # presence; IDF at search time
    assert not np.all(doc_vals == 1.0)  # documents carry BM25 term weights
