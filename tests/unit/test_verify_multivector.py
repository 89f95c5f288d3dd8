"""Late-interaction (ColBERT) targets verified token by token: recomputed multivectors compared row by row (same token
count, cosine per token), validity per row (finite, non-zero, the model's dimension), MaxSim HNSW vs exact; and
copied multivectors compared verbatim with the source's."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from engine.embed.vectorset import MultiVectors
from engine.flow.state import ShardState
from engine.flow.text import PayloadText
from engine.verify.check import PASS
from engine.verify.context import VectorNames, VerifyContext, VerifyOptions
from engine.verify.runner import run_checks
from tests.unit.test_verify_checks import failed, statuses
from tests.unit.test_verify_memory_client import MemoryQdrant, Spec

N = 30
DIM = 4


class TokenEmbedder:
    """One unit row per word (crc32-seeded), like a late-interaction model; queries get a marker row first."""

    dim = DIM

    def _rows(self, text: str) -> np.ndarray:
        rows = np.stack([np.random.default_rng(zlib.crc32(w.encode())).standard_normal(DIM) for w in text.split()])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def embed(self, texts):
        return MultiVectors.from_rows([self._rows(t) for t in texts], DIM)

    def embed_queries(self, texts):
        return MultiVectors.from_rows([self._rows("[Q] " + t) for t in texts], DIM)

    def describe(self):
        return {"name": "tokens:4", "kind": "late_interaction", "dim": DIM}


@pytest.fixture()
def world():
    """side_by_side into a new collection: the source's multivector "colbert_old" copied, the new "colbert" made."""
    q = MemoryQdrant()
    q.create("src", {"colbert_old": Spec(3, multi=True)})
    q.create("dst", {"colbert": Spec(DIM, multi=True), "colbert_old": Spec(3, multi=True)})
    emb = TokenEmbedder()
    rng = np.random.default_rng(2)
    for i in range(N):
        text = f"w{i} about t{i % 4} in s{i % 3}"
        old = rng.standard_normal((2 + i % 3, 3)).astype(np.float32)
        q.add("src", i, {"text": text}, {"colbert_old": old})
        q.add("dst", i, {"text": text}, {"colbert_old": old, "colbert": emb.embed([text]).row(0)})
    ctx = VerifyContext(clients=q, source="src", target="dst",
                        vectors=VectorNames(source="colbert_old", dense="colbert", multi="colbert",
                                            copied={"colbert_old": "colbert_old"}),
                        text=PayloadText(field="text"), shards=[ShardState(0, None, None, None, True, N, 0)],
                        options=VerifyOptions(sample=10**9, k=5, queries=10), embedder=emb, job_id="j")
    return q, ctx


def test_a_clean_multivector_target_passes(world):
    q, ctx = world
    result = run_checks(ctx)
    assert result.passed, result.lines()
    st = {c.name: c for c in result.checks}
    assert "token by token" in st["vectors recomputed"].detail and st["vectors recomputed"].status == PASS
    assert "no zero token row, 4-d tokens" in st["vectors valid"].detail
    assert st["copied vectors equal"].status == PASS and result.index["recall"] == 1.0
    assert any(c.method == "query" and c.exact for c in q.calls)  # MaxSim exact search was the reference
    assert 0.0 < result.quality["label_free"]["self_retrieval_new"] <= 1.0  # queries by embed_queries, MaxSim


def test_a_changed_token_row_fails_recomputation(world):
    q, ctx = world
    stored = q.collections["dst"].points[7][1]["colbert"].copy()
    stored[1] = -stored[1]
    q.set_vector("dst", 7, "colbert", stored)
    f = failed(run_checks(ctx))
    assert set(f) == {"vectors recomputed"} and "id 7 token 1 cosine -1.0000" in f["vectors recomputed"]


def test_a_different_token_count_fails_recomputation(world):
    q, ctx = world
    stored = q.collections["dst"].points[9][1]["colbert"]
    q.set_vector("dst", 9, "colbert", stored[:-1])
    f = failed(run_checks(ctx))
    assert set(f) == {"vectors recomputed"} and "id 9 4 tokens of 4-d, the model makes 5 of 4-d" in \
        f["vectors recomputed"]


@pytest.mark.parametrize("row,why", [(np.zeros(DIM), "zero token row 2"), (np.full(DIM, np.nan), "NaN")])
def test_an_invalid_token_row_fails_validity(world, row, why):
    q, ctx = world
    stored = q.collections["dst"].points[4][1]["colbert"].copy()
    stored[2] = row
    q.set_vector("dst", 4, "colbert", stored)
    f = failed(run_checks(ctx))
    assert set(f) == {"vectors valid"} and f"id 4 {why}" in f["vectors valid"]


def test_a_changed_copied_multivector_fails(world):
    q, ctx = world
    old = q.collections["dst"].points[12][1]["colbert_old"]
    q.set_vector("dst", 12, "colbert_old", old[:1])
    f = failed(run_checks(ctx))
    assert set(f) == {"copied vectors equal"} and "'colbert_old' shape (1, 3) instead of" in f["copied vectors equal"]


def test_maxsim_index_misses_fail_hnsw_recall(world):
    q, ctx = world
    q.collections["dst"].hnsw_misses = set(range(0, N, 2))
    result = run_checks(ctx)
    assert statuses(result)["HNSW recall"] == "fail" and set(failed(result)) == {"HNSW recall"}
