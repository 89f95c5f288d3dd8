"""The catch-up pass against a source in strict mode, as an operator sets it on a shared production cluster: a query
limit below the range splitter's default sample (tunables.SPLIT_SAMPLE) and no exact search (which refuses an exact
Count too: verification/count.rs). The backfill keeps both; the catch-up must as well: it counts with the estimate
and samples its split points inside the query limit, then leaves the target an exact mirror of the changed source.
The target is created with the source's strict mode (target.strict_mode: keep), so its writes stay inside the upsert
batch limit as well."""

from __future__ import annotations

from typing import Any

import pytest
from qdrant_client import grpc as pb

from engine import tunables
from engine.app import job as jobs
from engine.app.catchup_job import run_catch_up
from engine.embedded.process import EmbeddedProcess
from engine.errors import QdrantRequestError
from engine.flow import shards as planning
from engine.migration.catchup import SCAN_PAGE
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc
from tests.integration.pipeline_support import assert_exact, client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.integration

N = 1500
QUERY_LIMIT = 1024  # the catch-up reader's own scroll chunk (engine/migration/catchup.py); below SPLIT_SAMPLE
UPSERT_BATCH = 50  # below the config's upload_batch (64): the writers must lower it
# Lowered on both collections for the catch-up: below the catch-up's own scan page (catchup.SCAN_PAGE), which must
# shrink to it on each side.
CATCH_UP_LIMIT = 500
assert QUERY_LIMIT < tunables.SPLIT_SAMPLE and CATCH_UP_LIMIT < SCAN_PAGE


def _strict(limit: int = QUERY_LIMIT) -> pb.StrictModeConfig:
    return pb.StrictModeConfig(enabled=True, max_query_limit=limit, search_allow_exact=False,
                               upsert_max_batchsize=UPSERT_BATCH)


def _set_strict(client: QdrantGrpc, limit: int) -> None:
    for name in ("src", "dst"):
        client.update_collection(pb.UpdateCollection(collection_name=name, strict_mode_config=_strict(limit)))


def _upsert(client: QdrantGrpc, collection: str, pid: Any, text: str) -> None:
    point = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python({"text": text}))
    point.vectors.vector.dense.data.extend([0.5] * 8)
    client.upsert_raw(wire.upsert_request(collection, [point.SerializeToString()], insert_only=False), "app write")


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local):
    with EmbeddedProcess(str(tmp_path_factory.mktemp("qdrant"))) as proc:
        yield proc


def test_catch_up_keeps_the_source_strict_mode(server, tmp_path, monkeypatch):
    client = client_for(server.port)
    payloads = make_payloads(N, seed=31)
    try:
        seed_collection(client, "src", payloads)
        client.update_collection(pb.UpdateCollection(collection_name="src", strict_mode_config=_strict()))
        # the server enforces it: what the catch-up used to send is refused
        with pytest.raises(QdrantRequestError, match="Exact search disabled"):
            client.count("src", exact=True)
        with pytest.raises(QdrantRequestError, match=f"max_query_limit {QUERY_LIMIT:,}"):
            client.sample_ids("src", tunables.SPLIT_SAMPLE)

        cfg = config(server.port, tmp_path, page=128, shards=6)
        out = jobs.run_job(cfg, progress=False)
        assert out["points_written"] + out["points_skipped"] == N
        target = client.collection_info("dst")
        assert target is not None and target.config.strict_mode_config == _strict()  # carried to the target

        # The application changes the source after the backfill: one insert, one update, one delete.
        ids = list(payloads)
        _upsert(client, "src", 10**9, "late arrival")
        _upsert(client, "src", ids[1], "rewritten after the backfill")
        client.delete_points("src", [ids[2]])

        # Every splitter the catch-up builds, and every sample the driver asks for (the lanes never sample).
        splitters: list[planning.SampleSplitter] = []
        asked: list[int] = []
        make, sample = planning.SampleSplitter.__init__, QdrantGrpc.sample_ids

        def recorded_init(self, *args, **kwargs):
            make(self, *args, **kwargs)
            splitters.append(self)

        def recorded_sample(self, collection, n, shard_key=None):
            asked.append(n)
            return sample(self, collection, n, shard_key=shard_key)

        monkeypatch.setattr(planning.SampleSplitter, "__init__", recorded_init)
        monkeypatch.setattr(QdrantGrpc, "sample_ids", recorded_sample)
        _set_strict(client, CATCH_UP_LIMIT)
        outcome = run_catch_up(cfg)
        assert (outcome["inserted"], outcome["updated"], outcome["deleted"]) == (1, 1, 1), outcome
        _set_strict(client, QUERY_LIMIT)  # the checker reads in pages of 1024
        assert_exact(server.port, "src", "dst")
        assert all(n <= CATCH_UP_LIMIT for n in asked), asked
        # The splitter's sample, asked of the server directly (a steal may not have needed it in this run).
        assert [s.size for s in splitters] == [CATCH_UP_LIMIT]
        assert 0 < splitters[0].total <= N + 1
        monkeypatch.undo()
        fresh = planning.SampleSplitter(client, "src", splitters[0].total, sample=splitters[0].size)
        picked = fresh.pick(None, None, None)
        assert picked is not None and picked[0] > 0

        _set_strict(client, CATCH_UP_LIMIT)
        again = run_catch_up(cfg)  # nothing left to do
        assert again["inserted"] == again["updated"] == again["deleted"] == 0
    finally:
        client.close()
