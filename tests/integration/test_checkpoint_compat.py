"""A checkpoint written by the previous release still resumes.

tests/fixtures/checkpoint_v1.json was written by reembed before the typed job state (state version 1: everything
but the shards in a free-form `info` mapping): a job over the source below, SIGKILLed after 704 of its 1,500 points
were committed (store: uri). The target holds what that run wrote; here it is rebuilt from the same model (the
hash embedder is deterministic), the checkpoint put back in place, and the job run again with today's code.
tests/fixtures/checkpoint_v1_finished.json is the same job run to the end, verified and swapped: every record of it
loads typed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.config import config_from_dict
from engine.embed import build_embedder
from engine.embedded.process import EmbeddedProcess
from engine.flow.state import JobState
from engine.qdrant import values, wire
from tests.integration.pipeline_support import assert_exact, client_for, make_payloads, seed_collection

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JOB = "73cb8a208333"  # sha1("src|dst|dense|new_collection")[:12]: the job id is computed the same way as then


def _config(port: int, tmp: Path):
    return config_from_dict({
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": "dst", "alias": "live", "vector_name": "dense"},
        "model": {"name": "hash:32"},
        "pipeline": {"shards": 4, "scroll_page": 64, "upload_batch": 64, "embed_actors": 1, "upload_actors": 2,
                     "checkpoint_interval_s": 0},
        "checkpoint": {"store": "uri", "uri": str(tmp / "ckpt")},
        "dead_letter": {"dir": str(tmp / "runs")},
    }, env={})


def _rebuild_target(client, state: dict, payloads: dict) -> int:
    """The new collection as the interrupted run left it: created by that job, and every point of each shard
    below its saved cursor written with the new vector (or, without usable text, without one)."""
    req = pb.CreateCollection(collection_name="dst")
    req.vectors_config.params_map.map["dense"].CopyFrom(pb.VectorParams(size=32, distance=pb.Distance.Cosine))
    tag = {"reembed": {"job_id": JOB, "model": {"name": "hash:32"}}}
    for key, value in values.payload_from_python(tag).items():
        req.metadata[key].CopyFrom(value)
    client.create_collection(req)
    model = build_embedder({"name": "hash:32"})
    written = []
    for shard in state["shards"]:
        lo = wire.id_key(shard["lo"]) if shard["lo"] is not None else None
        end = shard["hi"] if shard["done"] else shard["cursor"]
        hi = wire.id_key(end) if end is not None else None
        for pid, payload in payloads.items():
            k = wire.id_key(pid)
            if (lo is None or k >= lo) and (hi is None or k < hi) and shard["cursor"] != shard["lo"]:
                written.append((pid, payload))
    blobs = []
    for pid, payload in written:
        base = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload)).SerializeToString()
        text = payload.get("text")
        if isinstance(text, str) and text.strip():
            vec = wire.vectors_field({"dense": wire.dense_vector(wire.f32_bytes(model.embed([text])[0]))})
        else:
            vec = wire.EMPTY_NAMED_VECTORS
        blobs.append(base + vec)
    for i in range(0, len(blobs), 256):
        client.upsert_raw(wire.upsert_request("dst", blobs[i:i + 256], insert_only=False), "rebuild")
    return len(written)


def test_a_version_1_checkpoint_resumes_under_todays_code(ray_local, tmp_path):
    state_v1 = json.loads((FIXTURES / "checkpoint_v1.json").read_text())
    assert state_v1["version"] == 1 and "info" in state_v1 and not state_v1["finished"]
    payloads = make_payloads(1500, seed=5)
    with EmbeddedProcess(str(tmp_path / "q")) as server:
        client = client_for(server.port)
        seed_collection(client, "src", payloads)
        before = _rebuild_target(client, state_v1, payloads)
        client.close()
        assert before == sum(s["written"] + s["skipped"] for s in state_v1["shards"]) == 704
        (tmp_path / "ckpt").mkdir()
        shutil.copy(FIXTURES / "checkpoint_v1.json", tmp_path / "ckpt" / f"{JOB}.json")
        out = jobs.run_job(_config(server.port, tmp_path), progress=False)
        assert out["job_id"] == JOB
        assert out["points_this_run"] == 1500 - 704  # resumed from the saved cursors: no CheckpointMismatch
        assert out["points_written"] + out["points_skipped"] == 1500
        assert_exact(server.port, "src", "dst")
        saved = json.loads((tmp_path / "ckpt" / f"{JOB}.json").read_text())
        assert saved["version"] == 2 and saved["decision"]["dense_name"] == "dense"


def test_every_record_of_a_finished_version_1_checkpoint_loads_typed():
    state = JobState.from_json((FIXTURES / "checkpoint_v1_finished.json").read_text())
    assert state.finished and state.version == 2
    assert state.decision is not None and state.decision.dense_name == "dense" and state.decision.layout == \
        "new_collection"
    assert state.index is not None and state.index.restored and state.index.status == "Green"
    assert state.verify is not None and state.verify.passed and state.verify.checks[0].name == "count parity"
    assert state.verify_history and state.verify_history[-1].passed
    assert state.runs and state.runs[-1].points == 796 and state.runs[-1].stages is not None
    assert [e.action for e in state.events] == ["swap"] and state.events[0].details["alias"] == "live"
    assert state.created_vectors == ["dst"] and state.model["name"] == "hash:32" and state.server == "1.18.0"
    again = JobState.from_json(state.to_json())
    assert again.to_dict() == state.to_dict()
