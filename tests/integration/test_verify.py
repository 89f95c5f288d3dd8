"""`reembed verify` against a real migration on the embedded endpoint: a clean target passes; one corrupted vector,
one changed payload or one deleted point fails, naming the point; swap and cleanup are gated on the latest verify;
the CLI exits 0/1 and says where the report is; Prometheus metrics of the run are exported by Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app import wiring
from engine.app.cli import main
from engine.app.verify_job import run_verify
from engine.app.wiring import run_dir
from engine.embed import build_embedder
from engine.embedded.process import EmbeddedProcess
from engine.errors import ConfigError, PreconditionError
from engine.flow.text import DatasetText, PayloadText
from engine.migration.cutover import cleanup, swap
from engine.qdrant import values, wire
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.verify.context import GrpcClients, VectorNames, VerifyContext, VerifyOptions
from engine.verify.runner import run_checks
from tests.integration.pipeline_support import client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.integration
N = 1200
ALL = 10**9  # a sample at least the collection size checks every point


# Ray pushes metrics every 10 s by default; the metrics test watches a run of a few seconds (conftest.ray_local).
RAY_ENV = {"RAY_metrics_report_interval_ms": "300"}


def _scrape() -> str:
    out = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            with urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{port}/metrics", timeout=5) as r:
                out.append(r.read().decode())
    return "\n".join(out)


def _total(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


GAUGE = "ray_reembed_pages_in_flight{"


class _Watcher:
    """Scrapes Prometheus while a run goes on (Ray exports a gauge only for a short while after it was set), and for
    up to 5 s after it, until the gauge has been seen."""

    def __init__(self) -> None:
        self.scrapes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline, seen = None, False
        while True:
            try:
                self.scrapes.append(_scrape())
                seen = seen or GAUGE in self.scrapes[-1]
            except OSError:
                pass
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + 5
                if seen or time.monotonic() > deadline:
                    return
            time.sleep(0.2)

    def __enter__(self) -> "_Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory, ray_local):
    """One finished migration src -> dst (hash:32, named vector), shared by the tests; each test restores what it
    breaks."""
    tmp = tmp_path_factory.mktemp("verify")
    with EmbeddedProcess(str(tmp / "qdrant")) as server:
        client = client_for(server.port)
        payloads = make_payloads(N, seed=5)
        seed_collection(client, "src", payloads)
        cfg = config(server.port, tmp, target="dst", verify__queries=40)
        with _Watcher() as watcher:
            summary = jobs.run_job(cfg, progress=False)
        yield {"server": server, "client": client, "cfg": cfg, "tmp": tmp, "payloads": payloads,
               "summary": summary, "scrapes": watcher.scrapes}
        client.close()


def _text_point(m) -> object:
    return next(pid for pid, p in m["payloads"].items() if isinstance(p.get("text"), str) and p["text"].strip())


def _snapshot(client, pid):
    return client.get("dst", [pid], with_payload=True, with_vectors=["dense"])[0]


def _restore(client, point: pb.RetrievedPoint) -> None:
    vec = np.asarray(point.vectors.vectors.vectors["dense"].dense.data, dtype=np.float32)
    blob = (pb.PointStruct(id=point.id, payload=point.payload).SerializeToString()
            + wire.vectors_field({"dense": wire.dense_vector(wire.f32_bytes(vec))}))
    client.upsert_raw(wire.upsert_request("dst", [blob], wait=True, insert_only=False), "restore")


def _context(m, state, *, target="dst", target_vector="dense", text=None, embedder=None, dim=None,
             not_from_text=None, k=10, queries=10) -> VerifyContext:
    """The verify room alone, without the app's wiring: what a test of one strategy shape needs."""
    return VerifyContext(
        clients=GrpcClients(Endpoint("127.0.0.1", m["server"].port), RetryPolicy()), source="src", target=target,
        vectors=VectorNames(source="", dense=target_vector), text=text or PayloadText(field="text"),
        shards=state.shards, options=VerifyOptions(sample=ALL, min_cosine=0.999, min_hnsw_recall=0.95, k=k,
                                                   queries=queries),
        embedder=embedder, dim=dim, not_from_text=not_from_text, dead_letter_path=state.dead_letters,
        job_id=state.job_id, model=state.model)


def _failed(result) -> dict[str, str]:
    return {c.name: c.detail for c in result.checks if c.failed}


def test_run_writes_a_report(migrated):
    report = migrated["summary"]["report"]
    assert report and report.endswith("report.html") and os.path.exists(report)
    data = json.loads(run_dir(migrated["cfg"], migrated["summary"]["job_id"]).local_path("report.json").read_text())
    run = data["runs"][-1]
    assert run["points"] == N and run["timeline"][-1][1] == N
    assert run["stages"]["stages"] == ["scroll", "process"]


def test_clean_migration_verifies(migrated):
    result = run_verify(migrated["cfg"], sample=ALL)
    assert result.passed, result.lines()
    assert result.full and result.checked_points == N
    assert sum(s.source for s in result.shards) == N == sum(s.target for s in result.shards)
    assert all(s.committed == s.source for s in result.shards)
    assert result.index["recall"] == 1.0 and result.index["queries"] == 40
    assert 0.0 <= result.quality["label_free"]["topk_overlap"] <= 1.0
    state = wiring.make_store(migrated["cfg"], migrated["client"]).load(result.job_id)
    assert state.verify.passed is True and state.verify.report == result.report
    data = json.loads(run_dir(migrated["cfg"], result.job_id).local_path("verify.json").read_text())
    assert data["passed"] is True and len(data["checks"]) == len(result.checks)
    # a sample smaller than the collection checks that many points
    small = run_verify(migrated["cfg"], sample=100)
    assert small.passed and not small.full and small.checked_points == 100


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def test_report_renders_in_headless_chromium(migrated, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package before the tests")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
    report = run_verify(migrated["cfg"], sample=200).report
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           Path(report).resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    background = np.all(pixels > 0.97, axis=-1)
    assert background.mean() < 0.97, "the page rendered (almost) blank"
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50, "no plots or styled text rendered"


def test_corrupted_vector_fails_naming_the_point(migrated):
    client, pid = migrated["client"], _text_point(migrated)
    before = _snapshot(client, pid)
    wrong = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    pv = wire.point_vectors(wire.point_id(pid).SerializeToString(), {"dense": wire.dense_vector(wire.f32_bytes(wrong))})
    client.update_vectors_raw(wire.update_vectors_request("dst", [pv]), "corrupt")
    try:
        result = run_verify(migrated["cfg"], sample=ALL)
        failed = _failed(result)
        assert set(failed) == {"vectors recomputed"}, result.lines()
        assert repr(pid) in failed["vectors recomputed"] and "1 of" in failed["vectors recomputed"]
    finally:
        _restore(client, before)
    assert run_verify(migrated["cfg"], sample=ALL).passed


def test_changed_payload_fails_naming_point_and_key(migrated):
    client, pid = migrated["client"], _text_point(migrated)
    before = _snapshot(client, pid)
    req = pb.SetPayloadPoints(collection_name="dst", wait=True, payload=values.payload_from_python({"title": "x"}),
                              points_selector=pb.PointsSelector(points=pb.PointsIdsList(ids=[wire.point_id(pid)])))
    client.points.SetPayload(req)
    try:
        result = run_verify(migrated["cfg"], sample=ALL)
        failed = _failed(result)
        assert set(failed) == {"payload equality"}, result.lines()
        assert f"id {pid!r} (keys title)" in failed["payload equality"]
    finally:
        _restore(client, before)


def test_deleted_point_fails_naming_shard_and_point(migrated):
    client, pid = migrated["client"], _text_point(migrated)
    before = _snapshot(client, pid)
    client.delete_points("dst", [pid])
    try:
        result = run_verify(migrated["cfg"], sample=ALL)
        failed = _failed(result)
        assert set(failed) == {"count parity", "sampled ids present"}, result.lines()
        assert "1 missing from the target" in failed["count parity"] and repr(pid) in failed["count parity"]
        assert repr(pid) in failed["sampled ids present"]
        bad = [s for s in result.shards if not s.ok]
        assert len(bad) == 1 and bad[0].missing_ids == [pid] and bad[0].target == bad[0].source - 1
    finally:
        _restore(client, before)


def test_extra_point_in_target_fails(migrated):
    client = migrated["client"]
    blob = (pb.PointStruct(id=wire.point_id(10**12), payload=values.payload_from_python({"text": "stray"}))
            .SerializeToString() + wire.vectors_field({"dense": wire.dense_vector(wire.f32_bytes(np.ones(32)))}))
    client.upsert_raw(wire.upsert_request("dst", [blob], wait=True, insert_only=False), "stray")
    try:
        failed = _failed(run_verify(migrated["cfg"], sample=10))
        assert "count parity" in failed and "1 in the target only (1000000000000)" in failed["count parity"]
    finally:
        client.delete_points("dst", [10**12])


def test_swap_and_cleanup_are_gated_on_the_latest_verify(migrated):
    cfg, client = migrated["cfg"], migrated["client"]
    store = wiring.make_store(cfg, client)
    job_id = wiring.job_id_of(cfg)
    pid = _text_point(migrated)
    before = _snapshot(client, pid)
    client.delete_points("dst", [pid])
    try:
        assert not run_verify(cfg, sample=ALL).passed
        with pytest.raises(PreconditionError, match="swap refused: the latest verify .* failed: count parity"):
            swap(client, store, job_id, "src_live", "src", "dst")
        assert "src_live" not in client.list_aliases()
        event = swap(client, store, job_id, "src_live", "src", "dst", force=True)
        assert event["forced"] is True and event["verify"]["passed"] is False
        assert client.list_aliases()["src_live"] == "dst"
        recorded = store.load(job_id).events[-1]
        assert recorded.action == "swap" and recorded.details["forced"] is True
        assert "count parity" in recorded.details["verify"]["failed"]
        with pytest.raises(PreconditionError, match="cleanup refused: the latest verify"):
            cleanup(client, store, job_id, "src", "dst", confirm=True)
        assert client.collection_exists("src")
    finally:
        _restore(client, before)
    assert run_verify(cfg, sample=ALL).passed
    event = swap(client, store, job_id, "src_live", "src", "dst")
    assert event["forced"] is False and event["verify"]["passed"] is True
    client.update_aliases([pb.AliasOperations(delete_alias=pb.DeleteAlias(alias_name="src_live"))])


def test_labelled_eval_and_old_model(migrated, tmp_path):
    cfg = migrated["cfg"]
    texts = [(pid, p["text"]) for pid, p in migrated["payloads"].items()
             if isinstance(p.get("text"), str) and p["text"].strip()][:15]
    path = tmp_path / "eval.jsonl"
    # The exact text as the query: the hash embedder maps it onto the point's own vector, so it ranks first.
    path.write_text("\n".join(json.dumps({"query": t, "relevant_ids": [pid]}) for pid, t in texts))
    cfg_old = cfg.model_copy(deep=True)
    cfg_old.verify.old_model = "hash:8"  # the same dimension as the seeded source vectors
    result = run_verify(cfg_old, sample=200, eval_file=str(path))
    assert result.passed, result.lines()
    lab = result.quality["labelled"]
    assert lab["queries"] == 15 and lab["new"] == {"recall": 1.0, "ndcg": 1.0, "mrr": 1.0}
    assert 0.0 <= lab["old"]["ndcg"] < 1.0  # the seeded source vectors are random, not hash:8 embeddings
    assert 0.0 <= result.quality["label_free"]["self_retrieval_old"] <= 1.0
    assert next(c for c in result.checks if c.name == "labelled quality").status == "info"
    cfg_old.verify.old_model = "hash:16"
    with pytest.raises(PreconditionError, match="makes 16-d vectors but the source vector"):
        run_verify(cfg_old, sample=10)
    cfg_gate = cfg.model_copy(deep=True)
    cfg_gate.verify.max_ndcg_drop = 0.0
    with pytest.raises(ConfigError, match="max_ndcg_drop .* needs an eval file"):
        run_verify(cfg_gate, sample=10)


def test_unfinished_job_and_other_model_are_refused(migrated):
    cfg = migrated["cfg"]
    with pytest.raises(PreconditionError, match="verify needs a finished run: job .* has no checkpoint"):
        run_verify(config(migrated["server"].port, migrated["tmp"], target="never_run"))
    other = config(migrated["server"].port, migrated["tmp"], target="dst", model="hash:64")
    with pytest.raises(PreconditionError, match="differs from the one the run used"):
        run_verify(other, sample=10)
    assert cfg.model.name == "hash:32"


def test_unnamed_target_keeps_dead_letters_out(migrated):
    """An unnamed-vector target cannot hold points without a vector (the sink dead-letters them), so they count as
    expected absences, not missing points. The target is built by hand here: the verifier alone is under test."""
    client, cfg = migrated["client"], migrated["cfg"]
    req = pb.CreateCollection(collection_name="dst_unnamed")
    req.vectors_config.params.CopyFrom(pb.VectorParams(size=32, distance=pb.Distance.Cosine))
    client.create_collection(req)
    emb = build_embedder({"name": "hash:32"})
    with_text = {pid: p for pid, p in migrated["payloads"].items() if isinstance(p.get("text"), str)
                 and p["text"].strip()}
    items = list(with_text.items())
    for i in range(0, len(items), 256):
        chunk = items[i:i + 256]
        vecs = emb.embed([p["text"] for _, p in chunk])
        blobs = [pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(p)).SerializeToString()
                 + wire.vectors_field({"": wire.dense_vector(wire.f32_bytes(v))}) for (pid, p), v in zip(chunk, vecs)]
        client.upsert_raw(wire.upsert_request("dst_unnamed", blobs, wait=True, insert_only=False), "copy")
    state = wiring.make_store(cfg, client).load(wiring.job_id_of(cfg))  # the real run's shards and dead letters
    result = run_checks(_context(migrated, state, target="dst_unnamed", target_vector="", embedder=emb))
    checks = result.checks
    assert not [c for c in checks if c.failed], [(c.name, c.detail) for c in checks]
    dead = N - len(with_text)
    assert sum(s.expected_absent for s in result.shards) == dead > 0
    assert sum(s.target for s in result.shards) == N - dead
    assert f"= target {N - dead:,} + {dead:,} dead letters without text" in checks[0].detail
    # a missing point that has text is still missing
    victim = items[0][0]
    client.delete_points("dst_unnamed", [victim])
    checks = run_checks(_context(migrated, state, target="dst_unnamed", target_vector="", embedder=emb)).checks
    failed = {c.name: c.detail for c in checks if c.failed}
    assert set(failed) == {"count parity", "sampled ids present"} and repr(victim) in failed["count parity"]
    client.delete_collection("dst_unnamed")


def test_run_metrics_reach_prometheus(migrated):
    during = "\n".join(migrated["scrapes"])
    assert GAUGE in during, "the pages-in-flight gauge was never exported during the run"
    counters = ("ray_reembed_points_scrolled_total", "ray_reembed_points_embedded_total",
                "ray_reembed_points_written_total", "ray_reembed_batch_latency_seconds_count")
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = _scrape()
        if all(f"{n}{{" in text for n in counters):
            break
        time.sleep(0.5)
    missing = [n for n in counters if f"{n}{{" not in text]
    assert not missing, f"not exported: {missing}"
    # Actors are killed at the end of a run, so their last increments may not have been pushed: bounded, not equal.
    assert 0 < _total(text, "ray_reembed_points_scrolled_total") <= 2 * N
    assert 0 < _total(text, "ray_reembed_points_written_total") <= 2 * N
    assert 'stage="upload"' in text and 'stage="embed"' in text and 'stage="scroll"' in text


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_verify_exit_codes_and_report(migrated, tmp_path, capsys):
    cfg = migrated["cfg"]
    path = tmp_path / "job.yaml"
    data = cfg.redacted()
    data["qdrant"].pop("api_key")
    path.write_text(yaml.safe_dump(data))
    ok = _cli("verify", "--config", str(path), "--sample", "all")
    assert ok.returncode == 0, ok.stderr[-2000:]
    last = json.loads(ok.stdout.strip().splitlines()[-1])
    assert last["passed"] is True and os.path.exists(last["report"])
    assert "verify PASSED; report: " in ok.stdout
    client, pid = migrated["client"], _text_point(migrated)
    before = _snapshot(client, pid)
    client.delete_points("dst", [pid])
    try:
        capsys.readouterr()
        assert main(["verify", "--config", str(path), "--sample", "all"]) == 1  # the process exit status
        out = capsys.readouterr().out
        assert "verify FAILED (count parity, sampled ids present); report: " in out
        assert "[FAIL] count parity: shard" in out
    finally:
        _restore(client, before)
    assert main(["report", "--config", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("report: ") and "Verify FAILED" in open(out.split("report: ", 1)[1]).read()


def test_other_strategy_shapes(migrated, tmp_path):
    """The verifier's seams the strategies use: text from an external Parquet dataset, new vectors that are not an
    embedding of the text (shortcuts: validity only), and jobs that wrote no dense vector (sparse only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    client, cfg = migrated["client"], migrated["cfg"]
    state = wiring.make_store(cfg, client).load(wiring.job_id_of(cfg))
    uuids = {pid: p for pid, p in migrated["payloads"].items() if isinstance(pid, str)}
    ints = {pid: p for pid, p in migrated["payloads"].items() if isinstance(pid, int)}
    common = dict(k=5, queries=5)

    def texts_of(points):
        return [p["text"] if isinstance(p.get("text"), str) else None for p in points.values()]

    pq.write_table(pa.table({"id": list(ints), "text": texts_of(ints)}), tmp_path / "ints.parquet")
    emb = build_embedder({"name": "hash:32"})
    checks = run_checks(_context(migrated, state, target_vector="dense",
                                 text=DatasetText(str(tmp_path / "ints.parquet")), embedder=emb, **common)).checks
    status = {c.name: c.status for c in checks}
    # UUID points have no row in an integer-keyed dataset: to the verifier they have no text, yet carry a vector.
    assert status["vectors valid"] == "fail" and status["vectors recomputed"] == "pass"
    pq.write_table(pa.table({"id": list(uuids), "text": texts_of(uuids)}), tmp_path / "uuids.parquet")
    assert next(c for c in run_checks(_context(migrated, state, target_vector="dense",
                                               text=DatasetText(str(tmp_path / "uuids.parquet")), embedder=emb,
                                               **common)).checks if c.name == "vectors recomputed").status == "pass"

    checks = run_checks(_context(migrated, state, target_vector="dense", embedder=None, dim=32,
                                 not_from_text="a shortcut", **common)).checks
    status = {c.name: (c.status, c.detail) for c in checks}
    assert not [c for c in checks if c.failed], status
    assert status["vectors recomputed"] == ("skipped", "a shortcut") and status["vectors valid"][0] == "pass"
    assert status["HNSW recall"][0] == "pass"

    checks = run_checks(_context(migrated, state, target_vector=None, embedder=None, **common)).checks
    status = {c.name: c.status for c in checks}
    assert not [c for c in checks if c.failed]
    assert status["vectors valid"] == status["vectors recomputed"] == status["HNSW recall"] == "skipped"
    assert status["payload equality"] == status["count parity"] == "pass"


def test_verify_inside_the_targets_strict_mode(migrated):
    """The endpoint enforces strict mode: with a query limit below every page size verify uses and exact search
    forbidden, verify still passes (no request refused) and says how it measured HNSW recall instead."""
    client, cfg = migrated["client"], migrated["cfg"]

    def strict(enabled: bool) -> None:
        client.update_collection(pb.UpdateCollection(collection_name="dst", strict_mode_config=pb.StrictModeConfig(
            enabled=enabled, max_query_limit=50, search_allow_exact=False)))

    strict(True)
    try:
        for sample in (ALL, 120):
            result = run_verify(cfg, sample=sample)
            assert result.passed, result.lines()
            hnsw = next(c for c in result.checks if c.name == "HNSW recall")
            assert "search_allow_exact: false" in hnsw.detail and result.index["method"] == "self"
            assert result.index["recall"] == 1.0
    finally:
        strict(False)
