"""The verdict functions of `reembed verify` (engine/verify/sampled.py, vectors.py, count_parity.py) on hand-made
tallies, for the cases mutation testing found unpinned: each check's name, status, offending ids and detail; the
boundaries of the vector checks (a cosine exactly at the threshold passes, a single token row is a multivector, NaN
equals NaN in a copy, the copy tolerances are the configured ones, sparse vectors compare by index whatever their
order); and the source look-ups that decide which missing points an unnamed-vector target may lack."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.flow.text import PayloadText
from engine.qdrant import values, wire
from engine.tunables import SHOW_IDS, SHOW_IN_DETAIL
from engine.verify.check import FAIL, PASS, SKIPPED, Check
from engine.verify.count_parity import CountJob, _absent_ok, count_shard, parity_check
from engine.verify.dead_letters import dead_letter_summary
from engine.verify.findings import ShardCount
from engine.verify.sampled import (
    SampleTally,
    _problem,
    _recompute_difference,
    copies_equal,
    dead_letters_listed,
    ids_present,
    payload_equality,
    vectors_recomputed,
    vectors_valid,
)
from engine.verify.vectors import copy_difference, multi_problem, vector_problem


def ctx(new="dense", multi=False, embedder=object(), dim=4, copied=None, not_from_text=None, min_cosine=0.99,
        dead=None):
    return SimpleNamespace(vectors=SimpleNamespace(new=new, new_is_multi=multi, copied=copied or {}),
                           embedder=embedder, dim=dim, not_from_text=not_from_text, dead_letter_path=dead,
                           options=SimpleNamespace(min_cosine=min_cosine))


def tally(**counts) -> SampleTally:
    t = SampleTally(checked=counts.pop("checked", 10))
    for name, value in counts.items():
        setattr(t, name, value)
    return t


def test_sampled_ids_present():
    t = tally()
    assert ids_present(t) == Check("sampled ids present", PASS, "a random sample of 10 points: all present in the target")
    t.missing.add(7)
    t.missing.add("a")
    assert ids_present(t) == Check("sampled ids present", FAIL,
                                   "2 of 10 sampled ids are missing from the target: 7, 'a'", [7, "a"])


def test_payload_equality_names_the_differing_keys():
    t = tally(full=True)
    assert payload_equality(t) == Check("payload equality", PASS, "every point: payload SHA-256 equal")
    t.payload.add(1, ["a", "b"])
    t.payload.add(2, [])
    assert payload_equality(t) == Check("payload equality", FAIL,
                                        "2 of 10 payloads differ: id 1 (keys a, b); id 2 (keys ?)", [1, 2])


def test_vectors_valid():
    assert vectors_valid(ctx(new=None), tally()) == Check("vectors valid", SKIPPED, "this job wrote no dense vector")
    t = tally(no_text=2, without_vector=3)
    assert vectors_valid(ctx(), t).detail == "a random sample of 10 points: finite, non-zero, 4-d (2 without text " \
                                            "carry none)"
    assert vectors_valid(ctx(embedder=None), t).detail.endswith("(3 carry no new vector)")
    assert "no zero token row, 4-d tokens" in vectors_valid(ctx(multi=True), t).detail
    t.vectors.add(5, "zero vector")
    t.vectors.add(6, "NaN or infinite values")
    assert vectors_valid(ctx(), t) == Check("vectors valid", FAIL,
                                            "2 bad vectors: id 5 zero vector; id 6 NaN or infinite values", [5, 6])


def test_vectors_recomputed():
    skipped = vectors_recomputed(ctx(embedder=None, not_from_text="a shortcut copies stored vectors"), tally())
    assert skipped == Check("vectors recomputed", SKIPPED, "a shortcut copies stored vectors")
    assert vectors_recomputed(ctx(new=None), tally(recomputed=3)) == \
        Check("vectors recomputed", SKIPPED, "this job wrote no dense vector to recompute")
    assert vectors_recomputed(ctx(), tally(recomputed=0)) == \
        Check("vectors recomputed", SKIPPED, "no sampled point had text and a valid vector")
    one = vectors_recomputed(ctx(), tally(recomputed=1, min_cosine=0.995))
    assert one == Check("vectors recomputed", PASS, "1 re-embedded, min cosine 0.995000 >= 0.99")
    t = tally(recomputed=4)
    t.recompute.add(9, "cosine 0.5000")
    assert vectors_recomputed(ctx(), t) == Check(
        "vectors recomputed", FAIL,
        "1 of 4 vectors differ from the model's embedding of their text (cosine < 0.99): id 9 cosine 0.5000", [9])


def test_copies_equal_names_each_copy():
    c = ctx(copied={"": "old", "a": ""})
    t = tally(copies_compared=6)
    assert copies_equal(c, t) == Check("copied vectors equal", PASS, "a random sample of 10 points: 6 copied vectors "
                                       "('(unnamed)' -> 'old', 'a' -> '(unnamed)') equal to the source's")
    t.copies.add(1, "'a': different values")
    t.copies.add(2, "'': missing in the target")
    assert copies_equal(c, t) == Check("copied vectors equal", FAIL, "2 of 6 copied vectors differ from the source's: "
                                       "id 1 'a': different values; id 2 '': missing in the target", [1, 2])


def test_the_sampled_vector_problem_follows_the_kind_of_vector():
    wide = np.ones((2, 5), dtype=np.float32)
    assert _problem(wide, 4, True) == "5-d token rows, the model makes 4-d"  # the dimension is checked for tokens too
    assert _problem(None, None, False) == "no new vector"  # a sparse-only or dimensionless target
    assert _problem(np.zeros(3), 0, False) is None
    assert _problem(np.ones(3), 4, False) == "3-d, the model makes 4-d"


def test_recomputation_passes_a_cosine_exactly_at_the_threshold():
    row = np.array([1.0, 0.0, 0.0])
    assert _recompute_difference(row, row, 1.0) == (1.0, None)
    tokens = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert _recompute_difference(tokens, tokens, 1.0) == (1.0, None)
    least, why = _recompute_difference(tokens, np.array([[1.0, 0.0], [1.0, 0.0]]), 0.5)
    assert least == pytest.approx(0.0) and why == "token 1 cosine 0.0000"
    assert _recompute_difference(np.ones((2, 3)), np.ones((4, 3)), 0.5) == (
        0.0, "2 tokens of 3-d, the model makes 4 of 3-d")


def test_vector_problems_are_named():
    assert vector_problem(None, 3) == "no new vector"
    assert vector_problem([1.0, 2.0, 3.0], 3) == "not a dense vector"  # type: ignore[arg-type]
    assert vector_problem(np.ones((1, 3)), 3) == "not a dense vector"
    assert vector_problem(np.ones(3), 3) is None


def test_multivector_problems_are_named():
    assert multi_problem(None, 3) == "no new multivector"
    assert multi_problem([[1.0, 2.0]], 2) == "not a multivector (no token rows)"  # type: ignore[arg-type]
    assert multi_problem(np.ones(3), 3) == "not a multivector (no token rows)"
    assert multi_problem(np.ones((0, 3)), 3) == "not a multivector (no token rows)"
    assert multi_problem(np.ones((1, 3)), 3) is None  # one token is a multivector
    assert multi_problem(np.ones((2, 7)), None) is None  # no dimension to check against
    assert multi_problem(np.ones((2, 4)), 3) == "4-d token rows, the model makes 3-d"
    rows = np.ones((3, 2))
    rows[1] = 0.0
    assert multi_problem(rows, 2) == "zero token row 1 of 3"


def test_sparse_copies_compare_by_index_whatever_the_order():
    src = (np.array([1, 3]), np.array([0.3, 0.1]))  # values not in index order
    assert copy_difference(src, (np.array([3, 1]), np.array([0.1, 0.3]))) is None
    assert copy_difference(src, (np.array([3, 1]), np.array([0.3, 0.1]))) == "different sparse values"
    assert copy_difference(src, (np.array([1, 4]), np.array([0.3, 0.1]))) == "different sparse indices"


@pytest.mark.parametrize("dense", [True, False])
def test_copies_are_equal_within_the_configured_tolerances_only(dense):
    def pair(a, b):
        if dense:
            return np.array([a, 1.0]), np.array([b, 1.0])
        return (np.array([0, 1]), np.array([a, 1.0])), (np.array([0, 1]), np.array([b, 1.0]))

    assert copy_difference(*pair(1.0, 1.0 + 5e-6)) is not None  # over rtol 1e-6 (numpy's default is 1e-5)
    assert copy_difference(*pair(0.0, 5e-8)) is None  # under atol 1e-7 (numpy's default is 1e-8)


def test_a_nan_copied_as_nan_is_equal():
    assert copy_difference(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) is None


class Source:
    """The Get of a source collection: payloads only when asked for, every call recorded."""

    def __init__(self, texts: dict) -> None:
        self.texts = texts
        self.calls: list[tuple] = []

    def get(self, collection, ids, *, with_payload=False, with_vectors=False, shard_key=None):
        self.calls.append((collection, list(ids), shard_key))
        out = []
        for pid in ids:
            p = pb.RetrievedPoint(id=wire.point_id(pid))
            if with_payload is True:
                for k, v in values.payload_from_python({"text": self.texts[pid]} if self.texts[pid] else {}).items():
                    p.payload[k].CopyFrom(v)
            out.append(p)
        return out


def test_missing_points_a_target_may_lack_are_read_from_the_source_in_batches_with_the_shard_key():
    src = Source({1: "a", 2: None, 3: "c", 4: None, 5: "e"})
    job = CountJob(clients=None, source="src", target="dst", get_batch=2, text=PayloadText(field="text"))
    assert _absent_ok(src, job, [1, 2, 3, 4, 5], "tenant") == {2, 4}
    assert src.calls == [("src", [1, 2], "tenant"), ("src", [3, 4], "tenant"), ("src", [5], "tenant")]
    assert _absent_ok(src, CountJob(clients=None, source="src", target="dst"), [1, 2], None) == set()


class Collections:
    """Two collections' ids (and the source's texts), read like Qdrant: scroll in id order, Get by id."""

    def __init__(self, source: dict, target: list) -> None:
        self.ids = {"src": sorted(source, key=wire.id_key), "dst": sorted(target, key=wire.id_key)}
        self.source = Source(source)
        self.scrolls: list[tuple] = []

    def scroll(self, collection, offset, limit, *, with_payload=False, with_vectors=False, flt=None, shard_key=None):
        self.scrolls.append((collection, shard_key))
        ids = self.ids[collection]
        start = 0 if offset is None else next((i for i, pid in enumerate(ids)
                                               if wire.id_key(pid) >= wire.id_key(offset)), len(ids))
        page = ids[start:start + limit]
        nxt = ids[start + limit] if start + limit < len(ids) else None
        return [pb.RetrievedPoint(id=wire.point_id(pid)) for pid in page], nxt

    def get(self, collection, ids, **kwargs):
        assert collection == "src"
        return self.source.get(collection, ids, **kwargs)


def count(source: dict, target: list, text=None, shard_key=None) -> tuple[ShardCount, Collections]:
    client = Collections(source, target)
    job = CountJob(clients=None, source="src", target="dst", source_page=3, target_page=3, get_batch=2, text=text)
    return count_shard(client, job, ShardCount(shard=0, lo=None, hi=None, shard_key=shard_key)), client


def test_an_empty_side_counts_every_id_of_the_other():
    sc, _ = count({}, [1, 2, 3])
    assert (sc.source, sc.target, sc.extra, sc.missing, sc.extra_ids) == (0, 3, 3, 0, [1, 2, 3])
    sc, _ = count({1: "a", 2: "b"}, [])
    assert (sc.source, sc.target, sc.missing, sc.extra, sc.missing_ids) == (2, 0, 2, 0, [1, 2])
    sc, _ = count({1: "a", 2: "b", 5: "c"}, [1, 2])  # the source's last id is the missing one
    assert (sc.missing, sc.missing_ids, sc.extra) == (1, [5], 0)


def test_many_missing_and_extra_ids_are_all_counted_and_the_first_few_named():
    n = SHOW_IDS + 3
    sc, _ = count({i: "t" for i in range(0, 2 * n, 2)}, list(range(1, 2 * n, 2)))
    assert sc.missing == n and sc.extra == n
    assert sc.missing_ids == list(range(0, 2 * SHOW_IDS, 2)) and sc.extra_ids == list(range(1, 2 * SHOW_IDS, 2))


def test_points_without_text_missing_from_an_unnamed_vector_target_are_expected_absences_read_with_the_shard_key():
    sc, client = count({1: "a", 2: None, 3: None, 4: "d", 6: "f"}, [1, 6], text=PayloadText(field="text"),
                       shard_key="tenant")
    assert (sc.expected_absent, sc.missing, sc.missing_ids) == (2, 1, [4])
    assert {key for _, key in client.scrolls} == {"tenant"}
    assert client.source.calls and all(key == "tenant" for _, _, key in client.source.calls)


def shard(n: int, **counts) -> ShardCount:
    return ShardCount(shard=n, lo=None, hi=None, **counts)


def test_the_parity_verdict():
    assert parity_check([shard(0, source=3, target=3), shard(1, source=2, target=2)]) == \
        Check("count parity", PASS, "2 shards, source 5 = target 5 points")
    absent = parity_check([shard(0, source=5, target=3, expected_absent=2)])
    assert absent.status == PASS and absent.detail.startswith("1 shards, source 5 = target 3 + 2 dead letters")
    bad = [shard(i, source=2, target=1, missing=1, missing_ids=[i]) for i in range(SHOW_IN_DETAIL + 2)]
    failed = parity_check(bad)
    assert failed.status == FAIL and failed.detail.endswith("; and 2 more shards")
    assert failed.ids == list(range(SHOW_IN_DETAIL))
    exactly = parity_check(bad[:SHOW_IN_DETAIL])
    assert exactly.detail.count("shard ") == SHOW_IN_DETAIL and "; shard 1 " in exactly.detail
    assert exactly.detail.endswith(f"shard {SHOW_IN_DETAIL - 1} [start, end): source 2, target 1, 1 missing from "
                                   f"the target ({SHOW_IN_DETAIL - 1})")


def test_multivectors_are_recomputed_token_by_token():
    multi = ctx(multi=True)
    assert vectors_recomputed(multi, tally(recomputed=2, min_cosine=0.999)).detail == \
        "2 re-embedded, token by token, min token cosine 0.999000 >= 0.99"
    t = tally(recomputed=5)
    t.recompute.add(1, "token 0 cosine 0.1000")
    t.recompute.add(2, "token 3 cosine 0.2000")
    assert vectors_recomputed(multi, t).detail == (
        "2 of 5 multivectors differ from the model's embedding of their text (cosine < 0.99): "
        "id 1 token 0 cosine 0.1000; id 2 token 3 cosine 0.2000")


def test_the_dead_letters_listed_verdict():
    found = SimpleNamespace(dead_ids=set())
    assert dead_letters_listed(ctx(embedder=None), found, tally()) == \
        Check("dead letters listed", SKIPPED, "the new vectors are not made from the text")
    away = dead_letters_listed(ctx(dead="s3://b/dead"), SimpleNamespace(dead_ids=None), tally(no_text=2))
    assert away == Check("dead letters listed", SKIPPED,
                         "dead-letter file s3://b/dead is not on this machine; 2 sampled points had no usable text")
    assert dead_letters_listed(ctx(), found, tally()) == \
        Check("dead letters listed", PASS, "no sampled point lacked usable text")
    assert dead_letters_listed(ctx(), found, tally(no_text=3)) == \
        Check("dead letters listed", PASS, "all 3 sampled points without usable text are listed")
    t = tally(no_text=3)
    t.not_listed.add(4)
    assert dead_letters_listed(ctx(), found, t) == Check(
        "dead letters listed", FAIL, "1 sampled points without usable text are not in the dead letters: 4", [4])


def _dead_letters(path, n_a: int = 1, n_b: int = 3) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    reasons = ["a"] * n_a + ["b"] * n_b
    ids = [str(i) for i in range(len(reasons))]
    pq.write_table(pa.table({"id": ids, "shard": [0] * len(ids), "reason": reasons, "text": ["x"] * len(ids)}), path)


def test_no_dead_letter_file_is_an_empty_summary():
    assert dead_letter_summary(None) == (
        {"path": None, "count": 0, "reasons": {}, "sample": [], "available": True}, set())


def test_a_dead_letter_summary_counts_by_reason_most_frequent_first_and_shows_the_first_rows(tmp_path, monkeypatch):
    _dead_letters(tmp_path / "dead.parquet", n_a=1, n_b=SHOW_IDS + 2)
    monkeypatch.chdir(tmp_path)
    summary, ids = dead_letter_summary("dead.parquet")  # a relative local path
    assert summary["count"] == SHOW_IDS + 3 and summary["available"] is True
    assert list(summary["reasons"].items()) == [("b", SHOW_IDS + 2), ("a", 1)]
    assert len(summary["sample"]) == SHOW_IDS and set(summary["sample"][0]) == {"id", "shard", "reason"}
    assert ids == {str(i) for i in range(SHOW_IDS + 3)}
    by_uri, _ = dead_letter_summary((tmp_path / "dead.parquet").as_uri())  # file://...
    assert by_uri["count"] == SHOW_IDS + 3 and by_uri["available"] is True


def test_a_dead_letter_file_out_of_reach_is_unavailable(tmp_path):
    summary, ids = dead_letter_summary(str(tmp_path / "nowhere.parquet"))
    assert summary["available"] is False and ids is None
