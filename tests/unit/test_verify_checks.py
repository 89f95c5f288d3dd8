"""Each verify check against an in-memory Qdrant: a clean migration passes every check, and each planted fault (a
missing id, an extra id, a changed payload, a NaN or zero vector, a vector that is not the model's, an unlisted dead
letter, a copied vector that changed, an index that misses points) fails exactly the check that must find it.

Break a check (return PASS early) and its test fails."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.flow.state import ShardState
from engine.flow.text import PayloadText
from engine.verify.check import FAIL, PASS
from engine.verify.context import VectorNames, VerifyContext, VerifyOptions
from engine.verify.evalset import EvalQuery
from engine.verify.runner import run_checks
from tests.unit.test_verify_memory_client import MemoryQdrant, Spec

N = 40
NO_TEXT = (5, 27)  # points without usable text: no new vector, listed as dead letters


class WordsEmbedder:
    """A deterministic bag-of-words embedder: each word a fixed random direction (crc32-seeded)."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                out[i] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def describe(self):
        return {"name": f"words:{self.dim}", "dim": self.dim}


def text_of(i: int) -> str | None:
    return None if i in NO_TEXT else f"doc{i} about topic{i % 7} and theme{i % 3}"


def shards() -> list[ShardState]:
    return [ShardState(0, None, 20, None, True, 19, 1), ShardState(1, 20, None, None, True, 19, 1)]


@pytest.fixture()
def world(tmp_path):
    """A finished new-collection migration src -> dst (new vector "dense", the old one "old" copied) and its
    context; each test breaks one thing."""
    q = MemoryQdrant()
    q.create("src", {"old": Spec(4)})
    q.create("dst", {"dense": Spec(8), "old": Spec(4)})
    emb, old_model = WordsEmbedder(), WordsEmbedder(4)
    rng = np.random.default_rng(3)
    for i in range(N):
        text = text_of(i)
        payload = {"title": f"t{i}", **({"text": text} if text else {})}
        old = old_model.embed([text])[0] if text else rng.standard_normal(4).astype(np.float32)
        q.add("src", i, payload, {"old": old})
        q.add("dst", i, payload, {"old": old, **({"dense": emb.embed([text])[0]} if text else {})})
    dead = tmp_path / "dead"
    dead.mkdir()
    pq.write_table(pa.table({"id": [str(i) for i in NO_TEXT], "shard": [0, 1], "reason": ["no text"] * 2}),
                   dead / "shard-00000.parquet")
    ctx = VerifyContext(clients=q, source="src", target="dst",
                        vectors=VectorNames(source="old", dense="dense", copied={"old": "old"}),
                        text=PayloadText(field="text"), shards=shards(),
                        options=VerifyOptions(sample=10**9, k=5, queries=12), embedder=emb,
                        dead_letter_path=str(dead), job_id="j1", model={"name": "words:8", "dim": 8})
    return q, ctx


def statuses(result) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def failed(result) -> dict[str, str]:
    return {c.name: c.detail for c in result.checks if c.status == FAIL}


def test_a_clean_migration_passes_every_check(world):
    _, ctx = world
    result = run_checks(ctx)
    assert result.passed, result.lines()
    st = statuses(result)
    for name in ("count parity", "sampled ids present", "payload equality", "vectors valid", "vectors recomputed",
                 "dead letters listed", "copied vectors equal", "HNSW recall"):
        assert st[name] == PASS, (name, result.lines())
    assert result.full and result.checked_points == N
    assert [s.source for s in result.shards] == [20, 20] and [s.committed for s in result.shards] == [20, 20]
    assert result.index["method"] == "exact" and result.index["recall"] == 1.0


def test_a_missing_id_fails_count_parity_and_the_sample(world):
    q, ctx = world
    q.drop("dst", 23)
    f = failed(run_checks(ctx))
    assert set(f) == {"count parity", "sampled ids present"}
    assert "shard 1 [20, end): source 20, target 19, 1 missing from the target (23)" in f["count parity"]
    assert "1 of 40 sampled ids are missing" in f["sampled ids present"]


def test_an_extra_id_in_the_target_fails_count_parity(world):
    q, ctx = world
    q.add("dst", 1000, {"text": "stray"}, {"dense": np.ones(8)})
    f = failed(run_checks(ctx))
    assert set(f) == {"count parity"} and "1 in the target only (1000)" in f["count parity"]


def test_a_changed_payload_fails_naming_the_key(world):
    q, ctx = world
    payload, vectors = q.collections["dst"].points[8]
    q.collections["dst"].points[8] = ({**payload, "title": "changed"}, vectors)
    f = failed(run_checks(ctx))
    assert set(f) == {"payload equality"} and "id 8 (keys title)" in f["payload equality"]


@pytest.mark.parametrize("bad,why", [(np.array([1, np.nan, 0, 0, 0, 0, 0, 0], dtype=np.float32), "NaN"),
                                     (np.zeros(8, dtype=np.float32), "zero vector"),
                                     (np.ones(5, dtype=np.float32), "5-d, the model makes 8-d")])
def test_an_invalid_vector_fails_vectors_valid(world, bad, why):
    q, ctx = world
    q.set_vector("dst", 11, "dense", bad)
    f = failed(run_checks(ctx))
    assert set(f) == {"vectors valid"} and f"id 11 {why}" in f["vectors valid"]


def test_a_vector_that_is_not_the_models_fails_recomputation(world):
    q, ctx = world
    wrong = np.random.default_rng(9).standard_normal(8).astype(np.float32)
    q.set_vector("dst", 14, "dense", wrong / np.linalg.norm(wrong))
    f = failed(run_checks(ctx))
    assert set(f) == {"vectors recomputed"}
    assert "1 of 38 vectors differ from the model's embedding" in f["vectors recomputed"] and "id 14 cosine" in \
        f["vectors recomputed"]


def test_a_point_without_text_that_carries_a_vector_fails(world):
    q, ctx = world
    q.set_vector("dst", 5, "dense", np.ones(8, dtype=np.float32))
    f = failed(run_checks(ctx))
    assert set(f) == {"vectors valid"} and "id 5 has a new vector but no usable text" in f["vectors valid"]


def test_an_unlisted_dead_letter_fails(world, tmp_path):
    _, ctx = world
    only_one = tmp_path / "dead_one.parquet"
    pq.write_table(pa.table({"id": ["5"], "shard": [0], "reason": ["no text"]}), only_one)
    ctx.dead_letter_path = str(only_one)
    f = failed(run_checks(ctx))
    assert set(f) == {"dead letters listed"} and "27" in f["dead letters listed"]


def test_a_changed_copy_fails_copied_vectors_equal(world):
    q, ctx = world
    q.set_vector("dst", 30, "old", np.ones(4, dtype=np.float32))
    f = failed(run_checks(ctx))
    assert set(f) == {"copied vectors equal"} and "id 30 'old' different values" in f["copied vectors equal"]


def test_low_hnsw_recall_fails(world):
    q, ctx = world
    q.collections["dst"].hnsw_misses = set(range(0, N, 2))  # the index cannot reach half the points
    result = run_checks(ctx)
    f = failed(result)
    assert set(f) == {"HNSW recall"} and "vs exact search" in f["HNSW recall"]
    assert result.index["recall"] < 0.95


def test_a_sample_reads_that_many_points_by_id(world):
    q, ctx = world
    ctx.options = VerifyOptions(sample=10, k=5, queries=4)
    result = run_checks(ctx)
    assert result.passed and not result.full and result.checked_points == 10
    assert any(c.method == "sample" for c in q.calls) and not any(c.method == "count" for c in q.calls)


def test_shards_go_through_the_injected_map(world):
    _, ctx = world
    seen = []

    def backwards(fn, items):  # results in another order than asked, as a Ray map returns them
        seen.extend(items)
        return [fn(i) for i in reversed(items)]

    ctx.map_shards = backwards
    result = run_checks(ctx)
    assert [s.shard for s in seen] == [0, 1] and [s.shard for s in result.shards] == [0, 1] and result.passed


def test_labelled_gate_fails_when_the_new_model_is_worse(world):
    _, ctx = world

    class Noise(WordsEmbedder):
        def embed(self, texts):
            rows = np.random.default_rng(len(texts)).standard_normal((len(texts), self.dim))
            return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    ctx.eval_queries = [EvalQuery(text_of(i), {i}) for i in range(12) if text_of(i)]
    ctx.options = VerifyOptions(sample=10**9, k=5, queries=12, max_ndcg_drop=0.05)
    ctx.old_embedder = WordsEmbedder(4)  # the model of the source's "old" vectors
    result = run_checks(ctx)
    assert result.quality["labelled"]["new"]["ndcg"] == result.quality["labelled"]["old"]["ndcg"] == 1.0
    assert statuses(result)["labelled quality"] == PASS
    ctx.query_embedder = Noise()  # queries that do not match the new vectors: nDCG falls below old - 0.05
    result = run_checks(ctx)
    assert result.quality["labelled"]["new"]["ndcg"] < 0.95
    assert set(failed(result)) == {"labelled quality"} and "new nDCG < old - 0.05" in failed(result)["labelled quality"]


# --- added: offenders counted, not only found; faults after a point the pass skips; every way a copy differs -------

def test_several_missing_and_extra_ids_are_each_counted_in_their_shard(world):
    q, ctx = world
    for pid in (2, 3, 33):
        q.drop("dst", pid)
    for pid in (1000, 1001):
        q.add("dst", pid, {"text": "stray"}, {"dense": np.ones(8)})
    result = run_checks(ctx)
    f = failed(result)
    assert "shard 0 [start, 20): source 20, target 18, 2 missing from the target (2, 3)" in f["count parity"]
    assert "shard 1 [20, end): source 20, target 21, 1 missing from the target (33) and 2 in the target only " \
           "(1000, 1001)" in f["count parity"]
    assert [(s.missing, s.extra, s.source, s.target) for s in result.shards] == [(2, 0, 20, 18), (1, 2, 20, 21)]
    assert "3 of 40 sampled ids are missing" in f["sampled ids present"]
    assert set(next(c for c in result.checks if c.name == "count parity").ids) == {2, 3, 33, 1000, 1001}


def test_faults_on_the_last_points_are_found_after_points_the_pass_skips(world):
    """Points without text (5, 27) and a missing point come first; what follows them is still checked."""
    q, ctx = world
    q.drop("dst", 30)
    q.set_vector("dst", 38, "dense", np.zeros(8, dtype=np.float32))
    wrong = np.random.default_rng(4).standard_normal(8).astype(np.float32)
    q.set_vector("dst", 39, "dense", wrong / np.linalg.norm(wrong))
    payload, vectors = q.collections["dst"].points[36]
    q.collections["dst"].points[36] = ({**payload, "extra": 1}, vectors)
    q.set_vector("dst", 37, "old", np.ones(4, dtype=np.float32))
    f = failed(run_checks(ctx))
    assert "id 38 zero vector" in f["vectors valid"]
    assert "id 39 cosine" in f["vectors recomputed"]
    assert "id 36 (keys extra)" in f["payload equality"]
    assert "id 37 'old' different values" in f["copied vectors equal"]
    assert "(30)" in f["sampled ids present"] or "30" in f["sampled ids present"]


def test_offenders_of_one_check_are_all_counted(world):
    q, ctx = world
    for pid in (3, 4, 6):
        q.set_vector("dst", pid, "dense", np.zeros(8, dtype=np.float32))
    for pid in (10, 11):
        payload, vectors = q.collections["dst"].points[pid]
        q.collections["dst"].points[pid] = ({**payload, "title": "x"}, vectors)
    q.set_vector("dst", 5, "dense", np.ones(8, dtype=np.float32))
    q.set_vector("dst", 27, "dense", np.ones(8, dtype=np.float32))
    f = failed(run_checks(ctx))
    assert f["vectors valid"].startswith("5 bad vectors: ")
    assert f["payload equality"].startswith("2 of 40 payloads differ: id 10 (keys title); id 11 (keys title)")


@pytest.mark.parametrize("plant,why", [
    (lambda q: q.collections["dst"].points[12][1].pop("old"), "id 12 'old' missing in the target"),
    (lambda q: q.set_vector("dst", 12, "old", np.ones(5, dtype=np.float32)), "id 12 'old' shape (5,) instead of (4,)"),
])
def test_every_way_a_copied_vector_can_differ_is_named(world, plant, why):
    q, ctx = world
    plant(q)
    f = failed(run_checks(ctx))
    assert set(f) == {"copied vectors equal"} and why in f["copied vectors equal"]
    assert f["copied vectors equal"].startswith("1 of 40 copied vectors differ")


def test_a_copy_the_source_does_not_have_is_found():
    from engine.verify.vectors import copy_difference

    a = np.array([1.0, 2.0], dtype=np.float32)
    assert copy_difference(None, None) is None and copy_difference(a, a.copy()) is None
    assert copy_difference(None, a) == "present in the target only"
    assert copy_difference(a, None) == "missing in the target"
    assert copy_difference(a, a + 1e-3) == "different values"
    sparse = (np.array([3, 1], dtype=np.uint32), np.array([0.5, 0.25], dtype=np.float32))
    same_reordered = (np.array([1, 3], dtype=np.uint32), np.array([0.25, 0.5], dtype=np.float32))
    assert copy_difference(sparse, same_reordered) is None
    assert copy_difference(sparse, (np.array([1, 4], dtype=np.uint32), sparse[1])) == "different sparse indices"
    assert copy_difference(sparse, (sparse[0], np.array([0.5, 0.3], dtype=np.float32))) == "different sparse values"
    assert copy_difference(sparse, a) == "sparse in one collection only"


def test_an_unnamed_vector_target_may_lack_exactly_the_points_without_text(tmp_path):
    q = MemoryQdrant()
    q.create("src", {"": Spec(4)})
    q.create("dst", {"": Spec(8)})
    emb = WordsEmbedder()
    for i in range(N):
        text = text_of(i)
        q.add("src", i, {"title": f"t{i}", **({"text": text} if text else {})}, {"": np.ones(4)})
        if text:
            q.add("dst", i, {"title": f"t{i}", "text": text}, {"": emb.embed([text])[0]})
    dead = tmp_path / "dead.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in NO_TEXT], "shard": [0, 1], "reason": ["no text"] * 2}), dead)
    ctx = VerifyContext(clients=q, source="src", target="dst", vectors=VectorNames(source="", dense=""),
                        text=PayloadText(field="text"), shards=shards(),
                        options=VerifyOptions(sample=10**9, k=5, queries=12), embedder=emb,
                        dead_letter_path=str(dead), job_id="j1", model={"name": "words:8", "dim": 8})
    result = run_checks(ctx)
    assert result.passed, result.lines()
    parity = next(c for c in result.checks if c.name == "count parity")
    assert "source 40 = target 38 + 2 dead letters without text" in parity.detail
    assert [s.expected_absent for s in result.shards] == [1, 1]
    q.drop("dst", 8)  # a point with text missing is still missing
    f = failed(run_checks(ctx))
    assert "1 missing from the target (8)" in f["count parity"] and "1 of 40 sampled ids" in f["sampled ids present"]


def test_the_dead_letter_line_counts_and_names_where_they_are(world):
    _, ctx = world
    result = run_checks(ctx)
    line = next(c for c in result.checks if c.name == "dead letters")
    assert line.status == "info" and line.detail == f"2 points listed in {ctx.dead_letter_path}"
    assert result.dead_letters["count"] == 2 and result.dead_letters["reasons"] == {"no text": 2}
    assert [r["id"] for r in result.dead_letters["sample"]] == ["5", "27"]


def test_dead_letters_out_of_reach_skip_the_listing_check_but_not_the_others(world, tmp_path):
    _, ctx = world
    ctx.dead_letter_path = str(tmp_path / "elsewhere")
    result = run_checks(ctx)
    st = statuses(result)
    assert st["dead letters listed"] == "skipped" and result.passed
    line = next(c for c in result.checks if c.name == "dead letters")
    assert line.detail.endswith("is not on this machine")


def test_no_dead_letter_path_means_none_and_every_point_without_text_is_then_unlisted(world):
    from engine.verify.dead_letters import dead_letter_summary, dead_letters_check

    summary, ids = dead_letter_summary(None)
    assert ids == set() and dead_letters_check(summary).detail == "none"
    _, ctx = world
    ctx.dead_letter_path = None
    f = failed(run_checks(ctx))
    assert set(f) == {"dead letters listed"} and "2 sampled points without usable text" in f["dead letters listed"]


def test_dead_letter_reasons_joined_by_a_semicolon_count_apart(tmp_path):
    from engine.verify.dead_letters import dead_letter_summary

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["1", "2", "3"], "shard": [0, 0, 1],
                             "reason": ["empty text", "empty text; too long", "too long"]}), path)
    summary, ids = dead_letter_summary(str(path))
    assert ids == {"1", "2", "3"} and summary["count"] == 3 and summary["available"] is True
    assert summary["reasons"] == {"empty text": 2, "too long": 2} and len(summary["sample"]) == 3
