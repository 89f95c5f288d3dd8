"""The migration pipeline on Ray against the embedded endpoint: exact final state, dead letters, idempotent re-runs,
cutover, actor loss and server faults."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import ray
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app import wiring
from engine.app.verify_job import run_verify
from engine.embedded.process import EmbeddedProcess
from engine.errors import ModelError, PreconditionError
from engine.migration.cutover import cleanup, rollback, swap
from tests.integration.pipeline_support import assert_exact, client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.integration
N = 2500


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local):
    with EmbeddedProcess(str(tmp_path_factory.mktemp("qdrant"))) as proc:
        yield proc


@pytest.fixture(scope="module")
def seeded(server):
    payloads = make_payloads(N)
    client = client_for(server.port)
    seed_collection(client, "src", payloads)
    client.close()
    return payloads


def _dead_expected(payloads):
    return {str(pid) for pid, p in payloads.items() if not isinstance(p.get("text"), str) or not p["text"].strip()}


def test_run_gives_exact_state_and_dead_letters(server, seeded, tmp_path):
    cfg = config(server.port, tmp_path, target="dst_basic")
    out = jobs.run_job(cfg, progress=False)
    dead = _dead_expected(seeded)
    assert out["points_total"] == N
    assert out["points_written"] == N - len(dead) and out["points_skipped"] == len(dead)
    assert_exact(server.port, "src", "dst_basic")
    table = pq.read_table(out["dead_letters"]).to_pylist()
    assert {r["id"] for r in table} == dead and all(r["reason"] for r in table)
    # payload indexes copied before ingest
    info = client_for(server.port).collection_info("dst_basic")
    assert "title" in info.payload_schema
    # Qdrant reports PayloadSchemaType and creates by FieldType, numbered one apart: a carried keyword index once
    # came back as an integer index.
    assert info.payload_schema["title"].data_type == pb.PayloadSchemaType.Keyword

    # re-running a finished job changes nothing and says so
    again = jobs.run_job(cfg, progress=False)
    assert again["already_complete"] and again["points_written"] == out["points_written"]


def test_cutover_swap_rollback_cleanup(server, seeded, tmp_path):
    cfg = config(server.port, tmp_path, target="dst_cut")
    client = client_for(server.port)
    store = wiring.make_store(cfg, client)
    job_id = wiring.job_id_of(cfg)
    with pytest.raises(PreconditionError, match="has not finished"):
        swap(client, store, job_id, "src_live", "src", "dst_cut")
    jobs.run_job(cfg, progress=False)
    with pytest.raises(PreconditionError, match="verify"):
        swap(client, store, job_id, "src_live", "src", "dst_cut")  # the gate: no passing verify yet
    assert run_verify(cfg, sample=200).passed
    swap(client, store, job_id, "src_live", "src", "dst_cut")
    assert client.list_aliases()["src_live"] == "dst_cut"
    with pytest.raises(PreconditionError, match="--confirm"):
        cleanup(client, store, job_id, "src", "dst_cut", confirm=False)
    rollback(client, store, job_id, "src_live", "src")
    assert client.list_aliases()["src_live"] == "src"
    with pytest.raises(PreconditionError, match="still the target of alias"):
        cleanup(client, store, job_id, "src", "dst_cut", confirm=True)
    actions = [e.action for e in store.load(job_id).events]
    assert actions == ["swap", "rollback"]
    client.close()


def test_killing_embed_and_upload_actors_mid_run(server, seeded, tmp_path, monkeypatch):
    cfg = config(server.port, tmp_path, target="dst_kill", page=32)
    killed = []
    pools = []
    real_progress = jobs.Progress.__call__

    def progress(self, state, stats):
        # Kill one actor of each stage once a quarter of the points are committed, then again as soon as the lane
        # commits anew after those restarts: mid-run for sure. (A fixed second threshold such as "half" raced: on a
        # fast machine the points after the restart could all land in one report, and the second kill never came.)
        done = state.written + state.skipped
        (lane,) = pools[0].handles().values()
        if done >= N // 4 and not killed:
            ray.kill(lane["embed"], no_restart=False)
            ray.kill(lane["writers"][0], no_restart=False)
            killed.append(done)
        elif len(killed) == 1 and killed[0] < done < N:
            ray.kill(lane["readers"][-1], no_restart=False)
            ray.kill(lane["writers"][-1], no_restart=False)
            killed.append(done)
        real_progress(self, state, stats)

    monkeypatch.setattr(jobs.Progress, "__call__", progress)
    out = jobs.run_job(cfg, progress=False, on_pool=pools.append)
    assert len(killed) == 2 and killed[-1] < N
    assert_exact(server.port, "src", "dst_kill")
    assert out["points_written"] + out["points_skipped"] == N
    assert out["pages_redone"] >= 1


def test_faulty_server_still_gives_exact_state(tmp_path, ray_local):
    faults = "unavailable=0.05,exhausted=0.03,latency_ms=0-5,apply_then_fail=0.03"
    with EmbeddedProcess(str(tmp_path / "q"), faults=faults, seed=7) as proc:
        client = client_for(proc.port)
        payloads = make_payloads(1200, seed=3)
        # seeding goes through the same retries as everything else
        seed_collection(client, "src", payloads)
        client.close()
        out = jobs.run_job(config(proc.port, tmp_path, page=64), progress=False)
        assert sum(out["retries"].values()) > 0
        assert_exact(proc.port, "src", "dst")


def test_bad_preconditions_write_nothing(server, seeded, tmp_path):
    client = client_for(server.port)
    before = set(client.list_collections())
    with pytest.raises(PreconditionError, match="does not exist"):
        jobs.run_job(config(server.port, tmp_path, source="nope", target="x1"), progress=False)
    with pytest.raises(PreconditionError, match="absent from every"):
        jobs.run_job(config(server.port, tmp_path, target="x2", source__text_field="body"), progress=False)
    with pytest.raises(PreconditionError, match="was not created by reembed"):
        seed_collection(client, "foreign", make_payloads(5))
        before.add("foreign")
        jobs.run_job(config(server.port, tmp_path, target="foreign"), progress=False)
    with pytest.raises(ModelError, match="does not exist; fix model.name"):
        jobs.run_job(config(server.port, tmp_path, target="x3", model="/nonexistent/model/dir"), progress=False)
    assert set(client.list_collections()) == before
    client.close()
