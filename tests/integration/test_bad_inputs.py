"""The bad-input matrix: each mistake gives one line naming the problem and the fix, exit code 2, and nothing
written. Per-point bad data follows the dead-letter policy instead of failing the job."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.config import config_from_dict
from engine.embedded.process import EmbeddedProcess
from engine.errors import ReembedError
from engine.qdrant import values, wire
from tests.integration.pipeline_support import client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    with EmbeddedProcess(str(tmp_path_factory.mktemp("q")), emulate_version="1.17.0") as proc:
        client = client_for(proc.port)
        seed_collection(client, "src", make_payloads(300, seed=2))
        seed_collection(client, "src2", make_payloads(50, seed=3))
        client.close()
        # a finished job src -> owned, with 32-d vectors
        jobs.run_job(config(proc.port, tmp_path_factory.mktemp("r"), target="owned"), progress=False)
        yield proc


def _snapshot(port):
    c = client_for(port)
    try:
        return {name: c.count(name) for name in c.list_collections()}
    finally:
        c.close()


CASES = [
    ("unknown source collection", dict(source="missing_src", target="t1"), "does not exist"),
    ("text field absent everywhere", dict(target="t2", source__text_field="body.text"), "absent from every"),
    ("unreadable model path", dict(target="t3", model="/no/such/model"), "does not exist; fix model.name"),
    ("target of another job", dict(source="src2", target="owned"), "belongs to another reembed job"),
    ("dimension differs from the target", dict(target="owned", model="hash:16", restart=True), "16-d vectors"),
    ("strategy the server cannot do", dict(target="t4", strategy="in_place"), "in_place"),
    ("unknown vector name", dict(target="t5", strategy="side_by_side", source__vector_name="nope"),
     "source.vector_name"),
]


@pytest.mark.parametrize("name,over,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line_and_nothing_written(server, tmp_path, name, over, expect):
    over = dict(over)
    restart = over.pop("restart", False)
    strategy = over.pop("strategy", None)
    cfg = config(server.port, tmp_path, **over)
    if strategy == "side_by_side":
        cfg = config(server.port, tmp_path, strategy=strategy, **over)
    elif strategy:
        data = cfg.model_dump(mode="python")
        data["qdrant"]["api_key"] = None
        data["strategy"] = strategy
        data["target"]["collection"] = None
        try:
            cfg = config_from_dict(data, env={})
        except ReembedError as exc:  # refused by config validation: also a one-line exit-2 refusal
            assert exc.exit_code == 2 and "\n" not in str(exc)
            return
    before = _snapshot(server.port)
    with pytest.raises(ReembedError) as info:
        jobs.run_job(cfg, progress=False, restart=restart)
    message = str(info.value)
    assert info.value.exit_code == 2, message
    assert "\n" not in message and expect in message, message
    assert _snapshot(server.port) == before


def test_huge_and_oversized_points_are_dead_lettered(server, tmp_path):
    """Qdrant's gRPC service takes messages of any size (src/tonic/mod.rs; its 32 MiB cap is REST's): a 33 MiB
    point is copied like any other, and only a point too large for one gRPC reply (over our 64 MiB channel limit) is
    a dead letter, with the reason, while the rest of its page goes on."""
    import grpc
    import numpy as np

    client = client_for(server.port)
    req = pb.CreateCollection(collection_name="big")
    req.vectors_config.params.CopyFrom(pb.VectorParams(size=8, distance=pb.Distance.Cosine))
    client.create_collection(req)
    client.close()
    rows = {1: {"text": "ok"}, 2: {"text": "long " * 200_000},  # a 1 MB text: truncated by the model, not an error
            3: {"text": "near the limit", "blob": "x" * (20 * 1024 * 1024)},  # 20 MiB payload: one request alone
            4: {"text": "over REST's 32 MiB, fine over gRPC", "blob": "y" * (33 * 1024 * 1024)},
            5: {"text": "too big for one gRPC reply", "blob": "z" * (65 * 1024 * 1024)},
            6: {"text": "after the big one"}}
    big = 256 * 1024 * 1024
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", big),
                                                                          ("grpc.max_receive_message_length", big)])
    upsert = channel.unary_unary("/qdrant.Points/Upsert", request_serializer=None,
                                 response_deserializer=pb.PointsOperationResponse.FromString)
    for pid, payload in rows.items():
        base = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload)).SerializeToString()
        vec = wire.vectors_field({"": wire.dense_vector(wire.f32_bytes(np.ones(8, "f4")))})
        upsert(wire.upsert_request("big", [base + vec], insert_only=False), timeout=120)
    channel.close()
    out = jobs.run_job(config(server.port, tmp_path, source="big", target="big_dst", page=16), progress=False)
    assert out["points_written"] == 5 and out["points_skipped"] == 1
    dead = pq.read_table(out["dead_letters"]).to_pylist()
    assert [(r["id"], "gRPC message limit" in r["reason"]) for r in dead] == [("5", True)]
    c = client_for(server.port)
    assert c.count("big_dst") == 5
    c.close()
