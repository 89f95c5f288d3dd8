"""Verify's pure pieces: payload digests, vector checks, ranking metrics, eval files, config fields, the cutover gate
and the metrics' no-Ray behaviour."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.metrics import STAGE_SERIES_MAX, Metrics, StageSampler
from engine.config import config_from_dict
from engine.errors import ConfigError, PreconditionError
from engine.flow.state import JobState, VerifySummary
from engine.migration.cutover import verify_gate
from engine.qdrant.values import payload_digest
from engine.verify.check import Check
from engine.verify.evalset import load_eval, parse_point_id
from engine.verify.quality import labelled_check
from engine.verify.ranking import ndcg_at, recall_at, reciprocal_rank, span_query
from engine.verify.sampled import differing_keys
from engine.verify.vectors import vector_problem


def test_payload_digest_ignores_key_order_and_sees_every_change():
    a = {"text": "x", "meta": {"i": 1, "tags": ["a", "b"]}, "n": None}
    b = {"n": None, "meta": {"tags": ["a", "b"], "i": 1}, "text": "x"}
    assert payload_digest(a) == payload_digest(b)
    for changed in ({**a, "text": "y"}, {**a, "meta": {"i": 1.0, "tags": ["a", "b"]}},
                    {**a, "meta": {"i": 1, "tags": ["b", "a"]}}, {k: v for k, v in a.items() if k != "n"}):
        assert payload_digest(changed) != payload_digest(a)
    assert differing_keys(a, {**a, "text": "y", "extra": 1}) == ["extra", "text"]


def test_vector_problem_names_each_fault():
    good = np.ones(4, dtype=np.float32)
    assert vector_problem(good, 4) is None
    assert vector_problem(None, 4) == "no new vector"
    assert "3-d" in vector_problem(np.ones(3, dtype=np.float32), 4)
    assert "NaN" in vector_problem(np.array([1, np.nan, 0, 0], dtype=np.float32), 4)
    assert "NaN" in vector_problem(np.array([1, np.inf, 0, 0], dtype=np.float32), 4)
    assert vector_problem(np.zeros(4, dtype=np.float32), 4) == "zero vector"


def test_ranking_metrics_on_known_rankings():
    ranked = [5, 1, 9, 2]
    assert recall_at(ranked, {1, 2}, 2) == 0.5
    assert recall_at(ranked, {1, 2}, 4) == 1.0
    assert reciprocal_rank(ranked, {9}) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, {7}) == 0.0
    # one relevant at rank 2: DCG 1/log2(3), ideal 1
    assert ndcg_at(ranked, {1}) == pytest.approx(1 / math.log2(3))
    assert ndcg_at([1, 2], {1, 2}) == pytest.approx(1.0)
    assert ndcg_at([3, 4], {1}) == 0.0


def test_span_query_is_the_first_half_of_the_text():
    assert span_query("a b c d e f") == "a b c"
    assert span_query("single") == "single"
    assert len(span_query(" ".join(["w"] * 500)).split()) == 32


def test_point_ids_in_eval_files():
    u = uuid.uuid4()
    assert parse_point_id(7, "x") == 7
    assert parse_point_id("42", "x") == 42
    assert parse_point_id(str(u).upper(), "x") == str(u)
    assert parse_point_id(u.hex, "x") == str(u)
    for bad in (-1, True, "doc-7", 1.5):
        with pytest.raises(ConfigError, match="x:"):
            parse_point_id(bad, "x")


def test_load_eval_jsonl_and_parquet(tmp_path):
    u = str(uuid.uuid4())
    rows = [{"query": "what is a shard", "relevant_ids": [1, "2"]}, {"query": "alias swap", "relevant_ids": [u]}]
    jl = tmp_path / "q.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = load_eval(jl)
    assert [q.query for q in got] == ["what is a shard", "alias swap"]
    assert got[0].relevant == {1, 2} and got[1].relevant == {u}
    pq.write_table(pa.table({"query": ["q1"], "relevant_ids": [[3, 4]]}), tmp_path / "q.parquet")
    assert load_eval(tmp_path / "q.parquet")[0].relevant == {3, 4}


@pytest.mark.parametrize("content,expect", [
    ("{not json}\n", "line 1 is not JSON"),
    ('{"query": "", "relevant_ids": [1]}\n', "query is missing or empty"),
    ('{"query": "q", "relevant_ids": []}\n', "non-empty list"),
    ('{"query": "q", "relevant_ids": ["nope"]}\n', "neither an unsigned integer nor a UUID"),
    ("[1, 2]\n", "is not an object"),
    ("\n", "holds no queries"),
])
def test_bad_eval_files_are_one_line_config_errors(tmp_path, content, expect):
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expect):
        load_eval(path)


def test_missing_eval_file_and_parquet_columns(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_eval(tmp_path / "none.jsonl")
    pq.write_table(pa.table({"q": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match="lacks column"):
        load_eval(tmp_path / "bad.parquet")


def test_verify_config_fields():
    cfg = config_from_dict({"verify": {"k": 5, "queries": 60, "old_model": "hashed-bow:256",
                                       "eval_file": "q.jsonl", "max_ndcg_drop": 0.02}}, env={})
    assert (cfg.verify.k, cfg.verify.queries, cfg.verify.old_model) == (5, 60, "hashed-bow:256")
    assert cfg.verify.max_ndcg_drop == 0.02
    defaults = config_from_dict({}, env={}).verify
    assert (defaults.k, defaults.queries, defaults.old_model, defaults.max_ndcg_drop) == (10, 100, None, None)
    for bad, expect in (({"k": 0}, "verify.k=0 is out of range"), ({"queries": 0}, "verify.queries"),
                        ({"old_model": "  "}, "verify.old_model"), ({"max_ndcg_drop": 1.5}, "max_ndcg_drop"),
                        ({"quries": 3}, "did you mean 'queries'")):
        with pytest.raises(ConfigError, match=expect):
            config_from_dict({"verify": bad}, env={})


def _state(verify=None) -> JobState:
    st = JobState(job_id="j1", fingerprint="f", boundaries=[], shards=[], finished=True)
    if verify is not None:
        st.verify = VerifySummary.from_dict({"checked_points": 0, "full": False, **verify})
    return st


def test_gate_refuses_without_a_passing_verify_unless_forced():
    with pytest.raises(PreconditionError, match="swap refused: job j1 has not been verified"):
        verify_gate(_state(), "swap", force=False)
    failed = {"passed": False, "at": 1.7e9, "failed": ["payload equality"], "report": "/r/report.html"}
    with pytest.raises(PreconditionError, match="cleanup refused: the latest verify .* failed: payload equality"):
        verify_gate(_state(failed), "cleanup", force=False)
    assert verify_gate(_state(failed), "swap", force=True) == {"passed": False, "at": 1.7e9,
                                                               "failed": ["payload equality"]}
    assert verify_gate(_state(), "swap", force=True) is None
    ok = verify_gate(_state({"passed": True, "at": 1.7e9, "failed": []}), "swap", force=False)
    assert ok["passed"] is True


def test_labelled_check_is_information_unless_a_drop_is_configured():
    lab = {"queries": 3, "new": {"recall": 0.5, "ndcg": 0.4, "mrr": 0.3},
           "old": {"recall": 0.6, "ndcg": 0.6, "mrr": 0.5}}
    assert labelled_check(lab, 10, None).status == "info"
    check = labelled_check(lab, 10, 0.1)
    assert check.status == "fail" and "new nDCG < old - 0.1" in check.detail
    assert labelled_check(lab, 10, 0.25).status == "pass"
    assert labelled_check(None, 10, 0.1) is None
    assert Check("x", "fail", "d").failed and not Check("x", "info", "d").failed


def test_metrics_are_noops_without_ray():
    m = Metrics()
    m.page_read(10, 1, 0.01)
    m.embedded(10, 0.2)
    m.page_written(9, 1, 0, 1, {"UNAVAILABLE": 2}, 0.05)
    m.in_flight("scroll", 3)
    assert m._objs is None


def test_stage_sampler_keeps_a_bounded_series():
    now = [0.0]
    s = StageSampler(("scroll", "process"), interval_s=1.0, clock=lambda: now[0])
    for i in range(5000):
        now[0] = 10.0 + i * 0.5
        s(scroll=i % 3, process=i % 5)
    series = s.series()
    assert series["stages"] == ["scroll", "process"]
    samples = series["samples"]
    assert 0 < len(samples) <= STAGE_SERIES_MAX
    assert samples[0][0] == 0.0  # time counts from the first call
    assert all(b[0] > a[0] for a, b in zip(samples, samples[1:]))
