"""Verify on the embedded endpoint for the shapes the unit tier fakes: a late-interaction multivector checked token
by token and searched by MaxSim, and a hybrid collection (dense + BM25 sparse with IDF) measured dense / sparse /
RRF fusion side by side with qdrant-edge's BM25 query encoder."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from engine.embed import build_embedder
from engine.embed.sparse import Bm25Encoder
from engine.embed.vectorset import MultiVectors
from engine.embedded.process import EmbeddedProcess
from engine.flow.state import ShardState
from engine.flow.text import PayloadText
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.verify.context import GrpcClients, HybridPlan, VectorNames, VerifyContext, VerifyOptions
from engine.verify.evalset import EvalQuery
from engine.verify.hybrid import SparseQueries
from engine.verify.runner import run_checks

pytestmark = pytest.mark.integration
N = 60
TOPICS = ["shard", "alias", "vector", "payload", "index", "cluster"]


def text_of(i: int) -> str:
    return f"point{i} talks about {TOPICS[i % 6]} and {TOPICS[(i + 2) % 6]} number{i % 9}"


class TokenEmbedder:
    """One unit row per word, like a late-interaction model (a query gets a marker row first)."""

    dim = 4

    def _rows(self, text: str) -> np.ndarray:
        rows = np.stack([np.random.default_rng(zlib.crc32(w.encode())).standard_normal(4) for w in text.split()])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def embed(self, texts):
        return MultiVectors.from_rows([self._rows(t) for t in texts], 4)

    def embed_queries(self, texts):
        return MultiVectors.from_rows([self._rows("[Q] " + t) for t in texts], 4)

    def describe(self):
        return {"name": "tokens:4", "dim": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedProcess(str(tmp_path_factory.mktemp("shapes") / "qdrant")) as srv:
        yield srv


def _context(server, collection: str, vectors: VectorNames, **kw) -> VerifyContext:
    return VerifyContext(clients=GrpcClients(Endpoint("127.0.0.1", server.port), RetryPolicy()), source=collection,
                         target=collection, vectors=vectors, text=PayloadText(field="text"),
                         shards=[ShardState(0, None, 30, None, True, 30, 0),
                                 ShardState(1, 30, None, None, True, 30, 0)],
                         options=VerifyOptions(sample=10**9, k=5, queries=20), job_id="j", **kw)


def test_multivector_target_token_by_token(server):
    client = QdrantClient(host="127.0.0.1", grpc_port=server.port, prefer_grpc=True, check_compatibility=False)
    emb = TokenEmbedder()
    maxsim = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
    client.create_collection("mv", vectors_config={
        "dense": models.VectorParams(size=8, distance=models.Distance.COSINE),
        "colbert": models.VectorParams(size=4, distance=models.Distance.COSINE, multivector_config=maxsim)})
    rng = np.random.default_rng(0)
    client.upsert("mv", [models.PointStruct(id=i, payload={"text": text_of(i)}, vector={
        "dense": rng.standard_normal(8).tolist(), "colbert": emb.embed([text_of(i)]).row(0).tolist()})
        for i in range(N)], wait=True)
    ctx = _context(server, "mv", VectorNames(source="dense", dense="colbert", multi="colbert"), embedder=emb)
    result = run_checks(ctx)
    assert result.passed, result.lines()
    checks = {c.name: c for c in result.checks}
    assert "token by token" in checks["vectors recomputed"].detail and result.index["recall"] == 1.0
    rows = emb.embed([text_of(7)]).row(0).copy()
    rows[2] = -rows[2]
    client.update_vectors("mv", [models.PointVectors(id=7, vector={"colbert": rows.tolist()})], wait=True)
    failed = {c.name: c.detail for c in run_checks(ctx).checks if c.failed}
    assert set(failed) == {"vectors recomputed"} and "id 7 token 2 cosine" in failed["vectors recomputed"]
    client.close()


def test_hybrid_dense_sparse_and_fusion(server):
    client = QdrantClient(host="127.0.0.1", grpc_port=server.port, prefer_grpc=True, check_compatibility=False)
    dense, bm25 = build_embedder({"name": "hash:32"}), Bm25Encoder()
    client.create_collection(
        "hy", vectors_config={"dense": models.VectorParams(size=32, distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)})
    texts = [text_of(i) for i in range(N)]
    vecs, docs = dense.embed(texts), bm25.encode(texts)
    client.upsert("hy", [models.PointStruct(id=i, payload={"text": texts[i]}, vector={
        "dense": vecs[i].tolist(),
        "bm25": models.SparseVector(indices=docs[i][0].tolist(), values=docs[i][1].tolist())})
        for i in range(N)], wait=True)
    plan = HybridPlan(dense="dense", dense_queries=dense, sparse="bm25", sparse_queries=SparseQueries(bm25))
    evals = [EvalQuery(f"point{i} {TOPICS[i % 6]}", {i}) for i in range(0, N, 4)]
    ctx = _context(server, "hy", VectorNames(dense=None, sparse="bm25"), hybrid=plan, eval_queries=evals)
    result = run_checks(ctx)
    assert result.passed, result.lines()
    hy = result.quality["hybrid"]
    assert hy["sparse"]["mrr"] == 1.0  # the query's rare term point<i> only that point has, weighed by IDF
    assert 0.0 <= hy["dense"]["ndcg"] <= 1.0 and hy["fusion"]["ndcg"] >= hy["dense"]["ndcg"]
    assert next(c for c in result.checks if c.name == "hybrid quality").status == "info"
    client.close()
