"""The report from a checkpoint state alone: report.json contents, a self-contained report.html with plots, text
escaped, and a clear note instead of plots when matplotlib is missing."""

from __future__ import annotations

import builtins
import json

import pyarrow as pa
import pyarrow.parquet as pq

from engine.app.wiring import run_dir
from engine.config import config_from_dict
from engine.flow.coordinator import RunStats
from engine.flow.state import CheckSummary, Event, JobState, RunRecord, ShardState, VerifySummary
from engine.verify.report import PLOTS_HINT, TIMELINE_MAX, record_run, write_report


def _cfg(tmp_path):
    return config_from_dict({
        "source": {"collection": "docs"}, "target": {"collection": "docs_v2", "alias": "docs_live"},
        "model": {"name": "hash:32"}, "dead_letter": {"dir": str(tmp_path / "runs")},
    }, env={})


STAGES = {"stages": ["scroll", "process"], "samples": [[0.0, 1, 2], [0.5, 2, 6], [1.0, 0, 1]]}


def _state(cfg, tmp_path) -> JobState:
    stats = RunStats(pages_written=12, pages_redone=1, retries={"UNAVAILABLE": 3, "RESOURCE_EXHAUSTED": 1},
                     dead_count=2, processed=1000, pipeline_s=2.0,
                     timeline=[(0.1 * i, 100 + 45 * i) for i in range(1, 21)])
    st = JobState(job_id="abc123", fingerprint="f", boundaries=[500],
                  shards=[ShardState(0, None, 500, None, True, 498, 1), ShardState(1, 500, None, None, True, 500, 1)],
                  finished=True, model={"name": "hash:32", "dim": 32, "pooling": None}, server="1.18.0")
    st.runs = record_run([], stats, STAGES)
    dead_dir = run_dir(cfg, "abc123").local_path("dead_letters")
    dead_dir.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["7", "9"], "id_type": ["int", "int"], "shard": [0, 1],
                             "reason": ["empty text", "missing field 'text'"]}), dead_dir / "shard-00000.parquet")
    st.dead_letters = str(dead_dir)
    st.events.append(Event("swap", 1.7e9, {"alias": "docs_live", "forced": True}))
    return st


VERIFY = {
    "passed": False, "at": 1.7e9, "checked_points": 1000, "full": True,
    "checks": [{"name": "payload equality", "status": "fail", "detail": "id 5 (keys <script>alert(1)</script>)"},
               {"name": "count parity", "status": "pass", "detail": "2 shards"}],
    "shards": [{"shard": 0, "lo": None, "hi": 500, "source": 499, "target": 499, "committed": 499, "missing": 0,
                "extra": 0, "missing_ids": [], "extra_ids": []}],
    "index": {"k": 10, "recall": 1.0, "note": "no HNSW index"},
    "quality": {"label_free": {"k": 10, "topk_overlap": 0.3, "top1_match": 0.2, "self_retrieval_new": 0.9,
                               "old_scores": [0.5, 0.6, 0.7], "new_scores": [0.2, 0.3]},
                "labelled": {"queries": 4, "k": 10, "ndcg_at": 10, "new": {"recall": 0.8, "ndcg": 0.7, "mrr": 0.6},
                             "old": {"recall": 0.5, "ndcg": 0.4, "mrr": 0.3}}},
}


def test_record_run_compacts_the_timeline(tmp_path):
    stats = RunStats(processed=5000, pipeline_s=10.0, timeline=[(i * 0.01, i) for i in range(1, 5001)])
    old = RunRecord(ended_at=1.0, pipeline_s=1.0, points=1, points_per_s=1.0)
    runs = record_run([old], stats)
    assert len(runs) == 2 and runs[0] == old
    tl = runs[1].timeline
    assert len(tl) == TIMELINE_MAX + 1 and tl[0] == [0.0, 0] and tl[-1] == [50.0, 5000]
    assert runs[1].points_per_s == 500.0 and runs[1].stages is None


def test_report_json_and_html(tmp_path):
    cfg = _cfg(tmp_path)
    state = _state(cfg, tmp_path)
    path = write_report(cfg, state, run_dir(cfg, "abc123"), verify=VERIFY)
    assert path == str(run_dir(cfg, "abc123").local_path("report.html"))
    data = json.loads(run_dir(cfg, "abc123").local_path("report.json").read_text())
    assert data["job"]["points_written"] == 998 and data["job"]["target"] == "docs_v2"
    assert data["retries"] == {"UNAVAILABLE": 3, "RESOURCE_EXHAUSTED": 1}
    assert data["dead_letters"]["count"] == 2 and data["dead_letters"]["reasons"]["empty text"] == 1
    assert data["verify"]["passed"] is False and data["events"][0]["action"] == "swap"
    assert data["config"]["qdrant"]["api_key"] is None
    page = open(path).read()
    assert "Verify FAILED" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    # throughput, stages, retries, dead letters, recall and score plots, all embedded
    assert page.count("data:image/png;base64,") == 6
    assert "src=\"http" not in page and "<link" not in page


def test_report_without_verify_says_so(tmp_path):
    cfg = _cfg(tmp_path)
    page = open(write_report(cfg, _state(cfg, tmp_path), run_dir(cfg, "abc123"))).read()
    assert "Not verified yet" in page


def test_report_uses_the_checkpoint_summary_when_details_are_elsewhere(tmp_path):
    cfg = _cfg(tmp_path)
    state = _state(cfg, tmp_path)
    state.verify = VerifySummary(passed=True, at=1.7e9, checked_points=10, full=False, failed=[],
                                 checks=[CheckSummary("count parity", "pass", "ok")])
    page = open(write_report(cfg, state, run_dir(cfg, "abc123"))).read()
    assert "Verify PASSED" in page and "on the machine that ran it" in page


def test_report_without_matplotlib_has_tables_and_a_hint(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    cfg = _cfg(tmp_path)
    page = open(write_report(cfg, _state(cfg, tmp_path), run_dir(cfg, "abc123"), verify=VERIFY)).read()
    assert "data:image/png" not in page
    assert PLOTS_HINT.split(":")[0] in page and "reembed[report]" in page
    assert "payload equality" in page
