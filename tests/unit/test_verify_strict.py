"""Verify inside strict mode and custom sharding: every request stays within the source's and target's limits (the
in-memory client refuses what a strict server refuses), HNSW recall without exact search is measured against the
points' own vectors and still fails a broken index, and every read of a keyed shard carries its shard key."""

from __future__ import annotations

import numpy as np
from qdrant_client import grpc as pb

from engine.flow.state import ShardState
from engine.flow.text import PayloadText
from engine.verify.check import FAIL, PASS
from engine.verify.context import VectorNames, VerifyContext, VerifyOptions
from engine.verify.runner import run_checks
from tests.unit.test_verify_checks import WordsEmbedder, failed, statuses
from tests.unit.test_verify_memory_client import MemoryQdrant, Spec

N = 60
STRICT = pb.StrictModeConfig(enabled=True, max_query_limit=7, read_rate_limit=9, search_allow_exact=False)


def _world(strict: pb.StrictModeConfig | None, keys: tuple = ()) -> tuple[MemoryQdrant, VerifyContext]:
    q = MemoryQdrant()
    q.create("src", {"": Spec(4)}, strict=strict)
    q.create("dst", {"dense": Spec(8)}, strict=strict)
    emb = WordsEmbedder()
    rng = np.random.default_rng(1)
    for i in range(N):
        text = f"doc{i} topic{i % 5} kind{i % 4}"
        key = keys[i % len(keys)] if keys else None
        q.add("src", i, {"text": text}, {"": rng.standard_normal(4)}, shard_key=key)
        q.add("dst", i, {"text": text}, {"dense": emb.embed([text])[0]}, shard_key=key)
    if keys:
        shards = [ShardState(j, None, None, None, True, N // len(keys), 0, shard_key=k) for j, k in enumerate(keys)]
    else:
        shards = [ShardState(0, None, 30, None, True, 30, 0), ShardState(1, 30, None, None, True, 30, 0)]
    ctx = VerifyContext(clients=q, source="src", target="dst", vectors=VectorNames(source="", dense="dense"),
                        text=PayloadText(field="text"), shards=shards,
                        options=VerifyOptions(sample=10**9, k=5, queries=20), embedder=emb, job_id="j")
    return q, ctx


def test_every_request_stays_inside_strict_mode():
    q, ctx = _world(STRICT)
    result = run_checks(ctx)  # the memory client raises on any request over a limit
    assert result.passed, result.lines()
    assert result.full and result.checked_points == N
    assert all(c.limit <= 7 for c in q.calls if c.method in ("scroll", "query", "sample"))
    assert all(c.ids <= 9 for c in q.calls if c.method == "get")
    assert not any(c.exact for c in q.calls) and not any(c.method == "count" and c.exact for c in q.calls)
    assert "label_free" in result.quality and result.quality["label_free"]["search"].startswith("hnsw")


def test_a_sample_inside_strict_mode():
    q, ctx = _world(STRICT)
    ctx.options = VerifyOptions(sample=25, k=5, queries=10)
    result = run_checks(ctx)
    assert result.passed and result.checked_points == 25 and not result.full
    assert all(c.limit <= 7 for c in q.calls if c.method == "sample")


def test_without_exact_search_hnsw_is_measured_against_the_points_own_vectors():
    q, ctx = _world(STRICT)
    result = run_checks(ctx)
    check = next(c for c in result.checks if c.name == "HNSW recall")
    assert check.status == PASS and "search_allow_exact: false" in check.detail and "own stored vector" in check.detail
    assert result.index["method"] == "self" and result.index["recall"] == 1.0
    q.collections["dst"].hnsw_misses = set(range(0, N, 3))
    result = run_checks(ctx)
    assert set(failed(result)) == {"HNSW recall"} and result.index["recall"] < 0.95


def test_exact_search_is_used_when_allowed():
    q, ctx = _world(pb.StrictModeConfig(enabled=True, max_query_limit=7))
    result = run_checks(ctx)
    assert result.index["method"] == "exact" and any(c.exact for c in q.calls if c.method == "query")


def test_keyed_shards_are_read_with_their_key():
    q, ctx = _world(None, keys=("red", "blue"))
    result = run_checks(ctx)
    assert statuses(result)["count parity"] == PASS
    assert [(s.shard_key, s.source) for s in result.shards] == [("red", 30), ("blue", 30)]
    parity_scrolls = [c for c in q.calls if c.method == "scroll" and c.limit >= 1000]
    assert parity_scrolls and all(c.shard_key in ("red", "blue") for c in parity_scrolls)
    q.drop("dst", 3)  # key "blue" (odd ids)
    result = run_checks(ctx)
    assert statuses(result)["count parity"] == FAIL
    assert "shard 1 [start, end) key 'blue': source 30, target 29, 1 missing from the target (3)" in \
        failed(result)["count parity"]

