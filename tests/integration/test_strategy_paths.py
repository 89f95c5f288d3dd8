"""Every road of the migration guide end to end on the embedded endpoint, under an emulated Qdrant 1.16 and 1.18:
in_place (+ cleanup --drop-vector), side_by_side, hybrid (BM25), external Parquet text, the shortcuts, HNSW
deferral, and the refusals the guide asks for."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app import wiring
from engine.app.verify_job import run_verify
from engine.embed import build_embedder
from engine.errors import PreconditionError, ReembedError
from engine.migration.cutover import cleanup, drop_vector, swap
from tests.integration.pipeline_support import client_for, make_payloads, seed_collection
from tests.integration.strategy_support import dense, has_text, read_all, seed_named, seeded_endpoint, strategy_config

pytestmark = pytest.mark.integration
N = 300
EMB = build_embedder({"name": "hash:32"})


def _unit(v):
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def payloads():
    return make_payloads(N, seed=5)


def _sources(payloads, named=("named",)):
    """Seeds named dense vectors (old, image) under each of `named`, and the unnamed collection."""
    def seed(c):
        for name in named:
            seed_named(c, name, payloads, {"old": 16, "image": 4})
        seed_collection(c, "unnamed", payloads, dim=8)
    return seed


@pytest.fixture(scope="module")
def new_server(tmp_path_factory, ray_local, payloads):
    with seeded_endpoint(tmp_path_factory.mktemp("q118"), "1.18.0", _sources(payloads, ("named", "named_b", "named_c", "named_d"))) as proc:
        yield proc


@pytest.fixture(scope="module")
def old_server(tmp_path_factory, ray_local, payloads):
    with seeded_endpoint(tmp_path_factory.mktemp("q116"), "1.16.0", _sources(payloads)) as proc:
        yield proc


def _assert_untouched(before, after, keep=("old", "image")):
    """Same ids, same payloads, the kept vectors bit-identical."""
    assert set(before) == set(after)
    for pid, (payload, vecs) in before.items():
        payload2, vecs2 = after[pid]
        assert payload2 == payload, pid
        for name in keep:
            assert np.array_equal(dense(vecs[name]), dense(vecs2[name])), (pid, name)


def _assert_new_dense(points, payloads, name="dense"):
    for pid, (payload, vecs) in points.items():
        if has_text(payloads[pid]):
            got = dense(vecs[name])
            want = EMB.embed([payloads[pid]["text"]])[0]
            assert float(_unit(got) @ _unit(want)) > 0.999, pid
        else:
            assert name not in vecs, pid


def test_in_place_adds_vector_leaves_the_rest_and_drops_old(new_server, payloads, tmp_path):
    c = client_for(new_server.port)
    before = read_all(c, "named")
    cfg = strategy_config(new_server.port, tmp_path, strategy="in_place", source="named",
                          extra={"source.vector_name": "old"})
    out = jobs.run_job(cfg, progress=False)
    assert out["layout"] == "in_place" and out["target"] == "named"
    texts = sum(has_text(p) for p in payloads.values())
    assert out["points_written"] == texts and out["points_skipped"] == N - texts
    after = read_all(c, "named")
    _assert_untouched(before, after)
    _assert_new_dense(after, payloads)
    # HNSW of the new vector deferred with m=0 and restored, the collection green
    index = out["index"]
    assert index["kind"] == "vector_m" and index["restored"] and index["status"] == "Green"
    info = c.collection_info("named")
    assert info.config.params.vectors_config.params_map.map["dense"].hnsw_config.m == index["restore"] > 0
    assert not info.config.params.vectors_config.params_map.map["old"].HasField("hnsw_config")
    assert jobs.run_job(cfg, progress=False)["already_complete"]

    store = wiring.make_store(cfg, c)
    job_id = wiring.job_id_of(cfg)
    with pytest.raises(PreconditionError, match="--drop-vector"):
        cleanup(c, store, job_id, "named", "named", confirm=True, force=True)
    with pytest.raises(PreconditionError, match="--confirm"):
        drop_vector(c, store, job_id, "named", "old", confirm=False)
    with pytest.raises(PreconditionError, match="the one this job wrote"):
        drop_vector(c, store, job_id, "named", "dense", confirm=True, force=True)
    with pytest.raises(PreconditionError, match="not been verified"):
        drop_vector(c, store, job_id, "named", "old", confirm=True)
    # verify on an in-place layout: source and target are one collection, the new vector beside the old ones
    result = run_verify(cfg, sample=10**9)
    assert result.passed, [(ch.name, ch.detail) for ch in result.checks if ch.failed]
    drop_vector(c, store, job_id, "named", "old", confirm=True)  # verified: the gate opens without --force
    final = read_all(c, "named")
    assert all("old" not in v and "image" in v for _, v in final.values())
    _assert_untouched(before, final, keep=("image",))
    c.close()


def test_in_place_resumes_into_the_vector_it_created(new_server, payloads, tmp_path):
    cfg = strategy_config(new_server.port, tmp_path, strategy="in_place", source="named_b")
    first = jobs.run_job(cfg, progress=False)
    again = jobs.run_job(cfg, progress=False, restart=True)  # the vector exists and is this job's: reused
    assert again["points_written"] == first["points_written"]
    # a vector the job did not create is never taken over
    other = strategy_config(new_server.port, tmp_path, strategy="in_place", source="named_b", vector_name="image")
    with pytest.raises(PreconditionError, match="did not create"):
        jobs.run_job(other, progress=False)


@pytest.mark.parametrize("case,source,expect", [
    ("old server", "named", "1.18"),
    ("unnamed vector", "unnamed", "unnamed vector"),
])
def test_in_place_refused_where_the_guide_says(old_server, new_server, tmp_path, case, source, expect):
    server = old_server if case == "old server" else new_server
    c = client_for(server.port)
    before = {n: (c.count(n), str(c.collection_info(n).config.params)) for n in c.list_collections()}
    cfg = strategy_config(server.port, tmp_path, strategy="in_place", source=source)
    with pytest.raises(ReembedError) as info:
        jobs.run_job(cfg, progress=False)
    msg = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in msg
    assert "in_place" in msg and expect in msg and "new_collection" in msg
    assert {n: (c.count(n), str(c.collection_info(n).config.params)) for n in c.list_collections()} == before
    c.close()


def test_side_by_side_old_server_new_collection_with_both(old_server, payloads, tmp_path):
    c = client_for(old_server.port)
    with pytest.raises(PreconditionError, match="set target.collection"):
        jobs.run_job(strategy_config(old_server.port, tmp_path, strategy="side_by_side", source="named"),
                     progress=False)
    cfg = strategy_config(old_server.port, tmp_path, strategy="side_by_side", source="named", target="named_ab")
    out = jobs.run_job(cfg, progress=False)
    assert out["layout"] == "new_collection" and out["index"]["kind"] == "indexing_threshold"
    src, dst = read_all(c, "named"), read_all(c, "named_ab")
    _assert_untouched(src, dst)
    _assert_new_dense(dst, payloads)
    assert c.collection_info("named_ab").config.optimizer_config.indexing_threshold == out["index"]["restore"]
    # A/B: the same query against both vectors
    q = EMB.embed(["vector search engine"])[0]
    assert len(c.search("named_ab", q, using="dense", limit=5)) == 5
    assert len(c.search("named_ab", dst[next(iter(dst))][1]["old"].dense.data, using="old", limit=5)) == 5
    c.close()


def test_side_by_side_new_server_in_place(new_server, payloads, tmp_path):
    c = client_for(new_server.port)
    before = read_all(c, "named_c")
    out = jobs.run_job(strategy_config(new_server.port, tmp_path, strategy="side_by_side", source="named_c"),
                       progress=False)
    assert out["strategy"] == "side_by_side" and out["layout"] == "in_place"
    after = read_all(c, "named_c")
    _assert_untouched(before, after)
    _assert_new_dense(after, payloads)
    c.close()


def test_new_collection_into_one_unnamed_vector(old_server, payloads, tmp_path):
    # target.vector_name: null -> a target with one unnamed vector of the model's size, then verify and the swap
    c = client_for(old_server.port)
    cfg = strategy_config(old_server.port, tmp_path, strategy="new_collection", source="unnamed", target="flat",
                          vector_name=None, extra={"target.alias": "flat_live"})
    out = jobs.run_job(cfg, progress=False)
    texts = {pid for pid, p in payloads.items() if has_text(p)}
    assert out["layout"] == "new_collection" and out["points_written"] == len(texts)
    vc = c.collection_info("flat").config.params.vectors_config
    assert vc.HasField("params") and vc.params.size == EMB.dim and not vc.HasField("params_map")
    src, dst = read_all(c, "unnamed"), read_all(c, "flat")
    assert set(dst) == texts  # a point without text cannot be held without a vector: dead-lettered
    assert all(dst[pid][0] == src[pid][0] and set(dst[pid][1]) == {""} for pid in dst)
    _assert_new_dense(dst, payloads, name="")
    result = run_verify(cfg, sample=10**9)
    assert result.passed, [(ch.name, ch.detail) for ch in result.checks if ch.failed]
    swap(c, wiring.make_store(cfg, c), wiring.job_id_of(cfg), "flat_live", "unnamed", "flat")
    assert c.list_aliases()["flat_live"] == "flat"
    c.close()


def _assert_bm25(points, payloads, name="bm25"):
    for pid, (payload, vecs) in points.items():
        if has_text(payloads[pid]):
            assert vecs[name].HasField("sparse") and len(vecs[name].sparse.indices) > 0, pid
        else:
            assert name not in vecs


def test_hybrid_bm25_in_place_and_new_collection(new_server, old_server, payloads, tmp_path):
    c = client_for(new_server.port)
    before = read_all(c, "named_d")
    out = jobs.run_job(strategy_config(new_server.port, tmp_path, strategy="hybrid", source="named_d",
                                       vector_name=None), progress=False)
    assert out["layout"] == "in_place"
    after = read_all(c, "named_d")
    _assert_untouched(before, after)
    _assert_bm25(after, payloads)
    assert all("dense" not in v for _, v in after.values())  # no dense re-embed asked for
    sparse = c.collection_info("named_d").config.params.sparse_vectors_config.map["bm25"]
    assert sparse.modifier == pb.Modifier.Idf
    c.close()

    # old server, unnamed dense source: a new collection, the unnamed vector copied as "old", BM25 + a new dense
    c = client_for(old_server.port)
    cfg = strategy_config(old_server.port, tmp_path, strategy="hybrid", source="unnamed", target="unnamed_hybrid",
                          vector_name="dense")
    out = jobs.run_job(cfg, progress=False)
    src, dst = read_all(c, "unnamed"), read_all(c, "unnamed_hybrid")
    assert set(src) == set(dst)
    for pid, (payload, vecs) in src.items():
        assert dst[pid][0] == payload and np.array_equal(dense(vecs[""]), dense(dst[pid][1]["old"]))
    _assert_bm25(dst, payloads)
    _assert_new_dense(dst, payloads)
    c.close()


def test_external_parquet_text(new_server, payloads, tmp_path):
    c = client_for(new_server.port)
    bare = {pid: {"title": p["title"]} for pid, p in payloads.items()}  # a collection that stores no text
    seed_named(c, "bare", bare, {"old": 16})
    texts = {pid: p["text"] for pid, p in payloads.items() if has_text(p)}
    rows = [(str(pid), t) for pid, t in texts.items()][:-5]  # five points have no row at all
    pq.write_table(pa.table({"pid": [r[0] for r in rows], "body": [r[1] for r in rows]}), tmp_path / "texts.parquet")
    cfg = strategy_config(new_server.port, tmp_path, strategy="in_place", source="bare", extra={
        "source.text_field": None, "source.text_dataset": str(tmp_path / "texts.parquet"),
        "source.text_dataset_id_column": "pid", "source.text_dataset_text_column": "body"})
    out = jobs.run_job(cfg, progress=False)
    assert out["points_written"] == len(rows) and out["points_skipped"] == N - len(rows)
    have = {str(pid) for pid, (_, v) in read_all(c, "bare").items() if "dense" in v}
    assert have == {r[0] for r in rows}
    for pid, (_, vecs) in read_all(c, "bare").items():
        if "dense" in vecs:
            assert float(_unit(dense(vecs["dense"])) @ _unit(EMB.embed([texts[pid]])[0])) > 0.999
    dead = pq.read_table(out["dead_letters"]).to_pylist()
    assert len(dead) == N - len(rows) and all("no row" in r["reason"] for r in dead)
    c.close()


def test_shortcut_matryoshka_in_place(new_server, tmp_path):
    c = client_for(new_server.port)
    cfg = strategy_config(new_server.port, tmp_path, strategy="in_place", source="named_c", vector_name="old8",
                          extra={"source.vector_name": "old", "shortcut.kind": "matryoshka", "shortcut.dim": 8})
    out = jobs.run_job(cfg, progress=False)
    assert out["points_written"] == N  # every point has a stored vector: no text needed
    for pid, (_, vecs) in read_all(c, "named_c").items():
        want = _unit(dense(vecs["old"])[:8])
        assert np.allclose(dense(vecs["old8"]), want, atol=1e-6), pid
    c.close()


def test_shortcut_linear_map_new_collection_old_server(old_server, payloads, tmp_path):
    # Old vectors are a fixed linear image of the new model's: a learnable map, so recall must be high.
    a = np.random.default_rng(7).standard_normal((32, 40)).astype(np.float32)

    def old_of(pid, payload):
        text = payload.get("text") if has_text(payload) else f"no text {pid}"
        return _unit(EMB.embed([text])[0] @ a)

    c = client_for(old_server.port)
    seed_named(c, "mapped_src", payloads, {"old": 40}, old_of=old_of)
    cfg = strategy_config(old_server.port, tmp_path, strategy="new_collection", source="mapped_src",
                          target="mapped_dst", extra={"source.vector_name": "old", "shortcut.kind": "linear_map",
                                                      "shortcut.sample": 200})
    from engine.app.plan_cmd import make_plan

    plan = make_plan(cfg, calibration=False)
    assert plan["decision"]["strategy"] == "new_collection" and plan["shortcut"]["recall_at_10"] >= 0.9
    out = jobs.run_job(cfg, progress=False)
    assert out["points_written"] == N
    for pid, (_, vecs) in read_all(c, "mapped_dst").items():
        if has_text(payloads[pid]):
            want = EMB.embed([payloads[pid]["text"]])[0]
            assert float(_unit(dense(vecs["dense"])) @ _unit(want)) > 0.98, pid
    c.close()


def test_plan_reports_strategy_and_refusal(new_server, old_server, tmp_path):
    from engine.app.plan_cmd import make_plan

    plan = make_plan(strategy_config(new_server.port, tmp_path, strategy="auto", source="named"), calibration=True)
    assert plan["decision"]["strategy"] == "in_place" and plan["source"]["named_vectors"]
    assert plan["calibration"]["texts_per_s"] > 0 and plan["bytes_to_write"] > 0 and plan["shards"] >= 1
    with pytest.raises(PreconditionError, match="auto cannot add a vector"):
        make_plan(strategy_config(old_server.port, tmp_path, strategy="auto", source="named"))
    plan = make_plan(strategy_config(old_server.port, tmp_path, strategy="auto", source="named", target="n2"),
                     calibration=False)
    assert plan["decision"]["strategy"] == "new_collection"
