"""A point the live application wrote into the new collection before the backfill reached it (same id, already with
the new model's vector and a newer payload) is left exactly as the application wrote it: the backfill's writes are
`insert_only`, so the stale copy from the source never overwrites the newer point. Checked right after `run`, before
any catch-up, against the embedded endpoint (Qdrant's own storage engine behind Qdrant's gRPC API)."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.embed import build_embedder
from engine.embedded.process import EmbeddedProcess
from engine.flow.text import PayloadText
from engine.qdrant import values, wire
from engine.verify.checker import check
from tests.integration.pipeline_support import client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.integration
N = 600
APP_TEXT = "written by the application after the switch to the new model"


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local):
    with EmbeddedProcess(str(tmp_path_factory.mktemp("qdrant"))) as proc:
        yield proc


def _app_points(payloads: dict) -> list:
    """The first, a middle and the last point with text in id order: the first and last pages of shards too."""
    ordered = sorted((pid for pid, p in payloads.items() if isinstance(p.get("text"), str) and p["text"]),
                     key=wire.id_key)
    return [ordered[0], ordered[len(ordered) // 2], ordered[-1]]


def test_a_point_the_application_wrote_before_the_backfill_is_left_unchanged(server, tmp_path):
    payloads = make_payloads(N, seed=5)
    client = client_for(server.port)
    seed_collection(client, "src_app", payloads)
    app_ids = _app_points(payloads)
    model = build_embedder({"name": "hash:32"})
    app_vector = np.asarray(model.embed([APP_TEXT])[0], dtype=np.float32)
    app_payload = {"text": APP_TEXT, "by": "application", "version": 2}

    def application_writes(pool) -> None:
        # Called once the job has created the target and before any page is read: the application, switched to
        # the new model already, writes these points itself.
        blobs = [pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(app_payload))
                 .SerializeToString() + wire.vectors_field({"dense": wire.dense_vector(app_vector.tobytes())})
                 for pid in app_ids]
        client.upsert_raw(wire.upsert_request("dst_app", blobs, wait=True, insert_only=False), "application write")

    cfg = config(server.port, tmp_path, source="src_app", target="dst_app", shards=3, page=64)
    out = jobs.run_job(cfg, progress=False, on_pool=application_writes)
    try:
        assert out["points_total"] == N
        for point in client.get("dst_app", app_ids, with_payload=True, with_vectors=True):
            pid = wire.id_value(point.id)
            assert values.payload_to_python(point.payload) == app_payload, f"point {pid!r}'s payload was overwritten"
            got = np.asarray(point.vectors.vectors.vectors["dense"].dense.data, dtype=np.float32)
            np.testing.assert_allclose(got, app_vector, rtol=0, atol=1e-6,
                                       err_msg=f"point {pid!r}'s vector was overwritten by the backfill")
        # Every other point is the backfill's, exact; the application's points differ from the source only as
        # the application made them differ.
        rep = check(client, "src_app", "dst_app", "dense", PayloadText(field="text"), model)
        assert sorted(map(str, rep.payload_mismatch)) == sorted(map(str, app_ids))
        assert sorted(map(str, rep.vector_mismatch)) == sorted(map(str, app_ids))
        assert rep.problems() == 2 * len(app_ids), rep.counts()
    finally:
        client.close()
