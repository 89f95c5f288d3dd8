"""A production-like source against the whole engine: 3 shards per tenant key, replication factor 2, int8 scalar
quantization, payloads on disk, strict mode (query limit, upsert batch size, no exact search, a write rate limit)
and custom sharding over 3 tenant keys, points spread over the keys.

new_collection: the target is created with the source's layout, every parameter read back through Collections.Get,
ListShardKeys and CollectionClusterInfo and compared; every point lands in its tenant's shards; the final state is
exact; `swap` points the alias at it after a passing verify that reports count parity per key. in_place on a
custom-sharded source (server 1.18): CreateVectorName, then UpdateVectors per key, exact again.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app import wiring
from engine.app.verify_job import run_verify
from engine.embedded.process import EmbeddedProcess
from engine.migration.cutover import swap
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc
from tests.integration.pipeline_support import assert_exact, client_for, config, make_payloads

pytestmark = pytest.mark.integration

N = 1500
KEYS: tuple[wire.ShardKeyValue, ...] = ("acme", "globex", 7)  # tenants: keyword and number keys alike
SHARDS_PER_KEY = 3
# One tenant was created wider than the collection's shard_number (CreateShardKey's own shards_number): the target's
# key must be as wide, not reset to shard_number.
WIDE_KEY, WIDE_SHARDS = 7, 4
SOURCE_DIM = 8
# Strict mode as an operator sets it on a shared production cluster. The engine's own pages (scroll_page 2048,
# upload_batch 64, verify's id pages of 10,000) are all above these limits: they must be lowered, not refused.
QUERY_LIMIT = 1024  # the checker's whole-collection pages are 1024 (engine/qdrant/scan.py PAGE)
UPSERT_BATCH = 50
WRITE_RATE_PER_MIN = 600_000  # per shard replica: generous, so it never paces this test


def _strict() -> pb.StrictModeConfig:
    return pb.StrictModeConfig(enabled=True, max_query_limit=QUERY_LIMIT, upsert_max_batchsize=UPSERT_BATCH,
                               search_allow_exact=False, write_rate_limit=WRITE_RATE_PER_MIN)


def _create_source(client: QdrantGrpc, name: str) -> None:
    req = pb.CreateCollection(collection_name=name, shard_number=SHARDS_PER_KEY, replication_factor=2,
                              write_consistency_factor=2, on_disk_payload=True,
                              sharding_method=pb.ShardingMethod.Custom)
    req.vectors_config.params_map.map["old"].CopyFrom(pb.VectorParams(size=SOURCE_DIM, distance=pb.Distance.Cosine))
    req.quantization_config.scalar.CopyFrom(pb.ScalarQuantization(type=pb.QuantizationType.Int8, quantile=0.99,
                                                                  always_ram=True))
    req.hnsw_config.CopyFrom(pb.HnswConfigDiff(m=20, ef_construct=90))
    req.optimizers_config.CopyFrom(pb.OptimizersConfigDiff(indexing_threshold=12_000, deleted_threshold=0.25))
    req.wal_config.CopyFrom(pb.WalConfigDiff(wal_capacity_mb=48))
    req.strict_mode_config.CopyFrom(_strict())
    client.create_collection(req)
    client.create_field_index(name, "title", pb.FieldType.FieldTypeKeyword)
    for key in KEYS:
        shard_key = pb.ShardKey(keyword=key) if isinstance(key, str) else pb.ShardKey(number=key)
        create = pb.CreateShardKey(shard_key=shard_key)
        if key == WIDE_KEY:
            create.shards_number = WIDE_SHARDS
        client.create_shard_key(pb.CreateShardKeyRequest(collection_name=name, request=create))


def _seed(client: QdrantGrpc, name: str, payloads: dict) -> dict[wire.ShardKeyValue, set]:
    """The points spread over the tenants (the i-th point to KEYS[i % 3]), in batches inside the upsert limit.
    Returns each tenant's ids."""
    by_key: dict[wire.ShardKeyValue, list] = defaultdict(list)
    for i, item in enumerate(payloads.items()):
        by_key[KEYS[i % len(KEYS)]].append(item)
    rng = np.random.default_rng(1)
    for key, items in by_key.items():
        for start in range(0, len(items), UPSERT_BATCH):
            blobs = []
            for pid, payload in items[start:start + UPSERT_BATCH]:
                head = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
                vec = rng.standard_normal(SOURCE_DIM).astype(np.float32)
                blobs.append(head.SerializeToString() + wire.vectors_field({"old": wire.dense_vector(vec.tobytes())}))
            client.upsert_raw(wire.upsert_request(name, blobs, wait=True, insert_only=False, shard_key=key),
                              f"seed {name} {key!r}")
    return {key: {pid for pid, _ in items} for key, items in by_key.items()}


def _key_ids(client: QdrantGrpc, name: str, key: wire.ShardKeyValue, vector: str | None = None) -> dict:
    """Id -> whether it carries `vector`, for every point read through the tenant's own shards."""
    out = {}
    offset = None
    with_vectors = pb.WithVectorsSelector(include=pb.VectorsSelector(names=[vector])) if vector else False
    while True:
        points, offset = client.scroll(name, offset, QUERY_LIMIT, with_payload=False, with_vectors=with_vectors,
                                       shard_key=key)
        for p in points:
            out[wire.id_value(p.id)] = bool(vector) and vector in p.vectors.vectors.vectors
        if offset is None:
            return out


def _shards_per_key(client: QdrantGrpc, name: str) -> dict:
    info = client.collections.CollectionClusterInfo(pb.CollectionClusterInfoRequest(collection_name=name))
    counts: dict = defaultdict(int)
    for shard in info.local_shards:
        kind = shard.shard_key.WhichOneof("key")
        counts[getattr(shard.shard_key, kind)] += 1
    return dict(counts)


def _layout(info: pb.CollectionInfo) -> dict[str, object]:
    """Every layout parameter of a collection as Collections.Get reports it (vectors and metadata aside: the new
    collection has the new model's vector and the job's provenance)."""
    params, config = info.config.params, info.config
    return {
        "shard_number": params.shard_number, "replication_factor": params.replication_factor,
        "write_consistency_factor": params.write_consistency_factor, "on_disk_payload": params.on_disk_payload,
        "sharding_method": params.sharding_method, "hnsw_config": config.hnsw_config,
        "optimizer_config": config.optimizer_config, "wal_config": config.wal_config,
        "quantization_config": config.quantization_config, "strict_mode_config": config.strict_mode_config,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local):
    with EmbeddedProcess(str(tmp_path_factory.mktemp("qdrant"))) as proc:
        yield proc


def test_new_collection_keeps_the_production_layout_and_every_tenant(server, tmp_path):
    client = client_for(server.port)
    try:
        _create_source(client, "prod")
        tenants = _seed(client, "prod", make_payloads(N, seed=5))
        # the write consistency factor and strict mode's limits are what the source reports back, not defaults
        assert _layout(client.collection_info("prod"))["strict_mode_config"] == _strict()
        cfg = config(server.port, tmp_path, source="prod", target="prod_v2", page=2048, shards=6)
        out = jobs.run_job(cfg, progress=False)
        assert out["points_written"] + out["points_skipped"] == N

        source, target = client.collection_info("prod"), client.collection_info("prod_v2")
        want, got = _layout(source), _layout(target)
        differs = [name for name in want if want[name] != got[name]]
        assert not differs, {name: (want[name], got[name]) for name in differs}
        assert sorted(map(str, client.list_shard_keys("prod_v2"))) == sorted(map(str, KEYS))
        assert _shards_per_key(client, "prod_v2") == _shards_per_key(client, "prod") == \
            {key: WIDE_SHARDS if key == WIDE_KEY else SHARDS_PER_KEY for key in KEYS}
        assert "title" in target.payload_schema

        for key, ids in tenants.items():
            assert set(_key_ids(client, "prod_v2", key)) == ids, f"tenant {key!r} lost or gained points"
        assert_exact(server.port, "prod", "prod_v2")

        result = run_verify(cfg, sample=300)
        assert result.passed, result.lines()
        per_key: dict = defaultdict(lambda: [0, 0])
        for shard in result.shards:
            per_key[shard.shard_key][0] += shard.source
            per_key[shard.shard_key][1] += shard.target
        assert per_key == {key: [len(ids), len(ids)] for key, ids in tenants.items()}
        assert any("exact search is forbidden" in c.detail for c in result.checks), result.lines()

        store = wiring.make_store(cfg, client)
        swap(client, store, wiring.job_id_of(cfg), "prod_live", "prod", "prod_v2")
        assert client.list_aliases()["prod_live"] == "prod_v2"
    finally:
        client.close()


def test_in_place_on_a_custom_sharded_source_writes_every_tenant(server, tmp_path):
    client = client_for(server.port)
    try:
        _create_source(client, "prod_ip")
        payloads = make_payloads(900, seed=6)
        tenants = _seed(client, "prod_ip", payloads)
        with_text = {pid for pid, p in payloads.items() if isinstance(p.get("text"), str) and p["text"].strip()}
        cfg = config(server.port, tmp_path, source="prod_ip", target="prod_ip", strategy="in_place", page=2048)
        out = jobs.run_job(cfg, progress=False)
        assert out["layout"] == "in_place"
        assert out["points_written"] + out["points_skipped"] == 900

        info = client.collection_info("prod_ip")
        assert set(info.config.params.vectors_config.params_map.map) == {"old", "dense"}
        assert _layout(info)["strict_mode_config"] == _strict()
        for key, ids in tenants.items():
            found = _key_ids(client, "prod_ip", key, vector="dense")
            assert set(found) == ids, f"tenant {key!r} lost or gained points"
            assert {pid for pid, has in found.items() if has} == ids & with_text, f"tenant {key!r}: new vectors"
        assert_exact(server.port, "prod_ip", "prod_ip")
        assert run_verify(cfg, sample=300).passed
    finally:
        client.close()
