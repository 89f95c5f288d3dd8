"""A new collection takes the source's layout (engine/migration/strategies.py carry_layout): every collection
parameter CreateCollection has (lib/api/src/grpc/proto/collections.proto) copied from a hand-built CollectionInfo,
each `target.layout` override applied, custom shard keys listed, and the headroom the migration needs estimated."""

from __future__ import annotations

import pytest
from qdrant_client import grpc as pb

from engine.config import config_from_dict
from engine.errors import ConfigError, PreconditionError
from engine.migration import strategies
from engine.qdrant.client import ServerInfo

V18 = ServerInfo("qdrant", "1.18.0")
SCALAR = pb.QuantizationConfig(scalar=pb.ScalarQuantization(type=pb.QuantizationType.Int8, quantile=0.99,
                                                            always_ram=True))


def source_info(*, custom: bool = False, points: int = 1_000_000) -> pb.CollectionInfo:
    """A source with every collection parameter set to something other than Qdrant's default."""
    info = pb.CollectionInfo(points_count=points)
    p = info.config.params
    p.shard_number = 6
    p.replication_factor = 2
    p.write_consistency_factor = 2
    p.on_disk_payload = True
    p.read_fan_out_factor = 1
    p.sharding_method = pb.ShardingMethod.Custom if custom else pb.ShardingMethod.Auto
    p.payload.memory = pb.Memory.Cold
    p.vectors_config.params_map.map["old"].CopyFrom(pb.VectorParams(size=384, distance=pb.Distance.Cosine,
                                                                    on_disk=True))
    p.sparse_vectors_config.map["kw"].CopyFrom(pb.SparseVectorParams(modifier=pb.Modifier.Idf))
    c = info.config
    c.hnsw_config.CopyFrom(pb.HnswConfigDiff(m=32, ef_construct=256, full_scan_threshold=5000,
                                             max_indexing_threads=4, on_disk=False, payload_m=16))
    c.optimizer_config.CopyFrom(pb.OptimizersConfigDiff(
        deleted_threshold=0.3, vacuum_min_vector_number=2000, default_segment_number=4, indexing_threshold=50_000,
        flush_interval_sec=10, max_optimization_threads=pb.MaxOptimizationThreads(value=2)))
    c.wal_config.CopyFrom(pb.WalConfigDiff(wal_capacity_mb=64, wal_segments_ahead=1, wal_retain_closed=2))
    c.quantization_config.CopyFrom(SCALAR)
    c.strict_mode_config.CopyFrom(pb.StrictModeConfig(enabled=True, max_query_limit=1000, write_rate_limit=60_000,
                                                      upsert_max_batchsize=500))
    c.metadata["app"].string_value = "search-v1"
    return info


def request(strategy: str = "new_collection", info: pb.CollectionInfo | None = None, dim: int | None = 768,
            **layout) -> pb.CreateCollection:
    info = info or source_info()
    target = {"collection": "docs_v2", "vector_name": "dense", "layout": layout}
    cfg = config_from_dict({"source": {"collection": "docs"}, "strategy": strategy, "target": target}, env={})
    schema = strategies.SourceSchema.from_info("docs", info, int(info.points_count))
    d = strategies.decide(cfg, V18, schema)
    return strategies.new_collection_request(cfg, d, schema, dim)


def test_every_collection_parameter_is_carried_over():
    src = source_info()
    req = request(info=src)
    assert req.collection_name == "docs_v2" and set(req.vectors_config.params_map.map) == {"dense"}
    assert (req.shard_number, req.replication_factor, req.write_consistency_factor) == (6, 2, 2)
    assert req.on_disk_payload and req.payload == src.config.params.payload
    assert req.HasField("sharding_method") and req.sharding_method == pb.ShardingMethod.Auto
    assert req.hnsw_config == src.config.hnsw_config
    assert req.optimizers_config == src.config.optimizer_config  # indexing_threshold: deferred later, restored to it
    assert req.wal_config == src.config.wal_config
    assert req.quantization_config == SCALAR
    assert req.strict_mode_config == src.config.strict_mode_config
    assert not req.metadata  # the job writes its own provenance there, not the source application's


def test_copied_vectors_and_the_unnamed_layout_get_it_too():
    req = request("side_by_side")
    assert set(req.vectors_config.params_map.map) == {"old", "dense"} and set(req.sparse_vectors_config.map) == {"kw"}
    assert req.vectors_config.params_map.map["old"].on_disk and req.shard_number == 6
    info = source_info()
    cfg = config_from_dict({"source": {"collection": "docs"}, "strategy": "new_collection",
                            "target": {"collection": "docs_v2", "vector_name": None}}, env={})
    schema = strategies.SourceSchema.from_info("docs", info, 10)
    d = strategies.decide(cfg, V18, schema)
    unnamed = strategies.new_collection_request(cfg, d, schema, 384)
    assert unnamed.vectors_config.HasField("params") and unnamed.vectors_config.params.size == 384
    assert (unnamed.shard_number, unnamed.replication_factor) == (6, 2) and unnamed.quantization_config == SCALAR


@pytest.mark.parametrize("layout,check", [
    ({"shard_number": 12}, lambda r: r.shard_number == 12),
    ({"replication_factor": 3}, lambda r: r.replication_factor == 3 and r.write_consistency_factor == 2),
    ({"write_consistency_factor": 1}, lambda r: r.write_consistency_factor == 1),
    ({"replication_factor": 1}, lambda r: r.replication_factor == 1 and r.write_consistency_factor == 1),
    ({"on_disk_payload": False}, lambda r: not r.on_disk_payload and r.payload.memory == pb.Memory.Cached),
    ({"quantization": "none"}, lambda r: not r.HasField("quantization_config")),
    ({"quantization": "binary"}, lambda r: r.quantization_config.WhichOneof("quantization") == "binary"
     and r.quantization_config.binary.always_ram),
    ({"quantization": "scalar"}, lambda r: r.quantization_config == SCALAR),
    ({"strict_mode": "off"}, lambda r: r.strict_mode_config == pb.StrictModeConfig(enabled=False)),
    ({"strict_mode": "keep"}, lambda r: r.strict_mode_config.write_rate_limit == 60_000),
])
def test_each_override_is_applied(layout, check):
    req = request(**layout)
    assert check(req)
    src = source_info()  # what no override touches stays the source's
    assert (req.hnsw_config, req.optimizers_config, req.wal_config) == (
        src.config.hnsw_config, src.config.optimizer_config, src.config.wal_config)
    if "shard_number" not in layout:
        assert req.shard_number == 6


def test_a_quantization_choice_applies_to_every_vector():
    info = source_info()
    info.config.params.vectors_config.params_map.map["old"].quantization_config.CopyFrom(
        pb.QuantizationConfig(product=pb.ProductQuantization(compression=pb.CompressionRatio.x16)))
    kept = request("side_by_side", info=info)
    assert kept.vectors_config.params_map.map["old"].quantization_config.WhichOneof("quantization") == "product"
    none = request("side_by_side", info=info, quantization="none")
    assert not none.HasField("quantization_config")
    assert not none.vectors_config.params_map.map["old"].HasField("quantization_config")


def test_one_line_layout_for_plan():
    line = strategies.layout_summary(request(info=source_info(custom=True)))
    assert line == ("6 shard(s) per shard key (custom sharding), replication 2, write consistency 2, scalar "
                    "quantization, payload on disk, strict mode: on (query limit 1,000; upsert batch 500; write rate "
                    "60,000/min per shard)")
    assert "no quantization" in strategies.layout_summary(request(quantization="none", strict_mode="off"))


def test_custom_sharding_is_kept_and_its_keys_listed():
    req = request(info=source_info(custom=True))
    assert req.sharding_method == pb.ShardingMethod.Custom and req.shard_number == 6  # shards per key
    assert strategies.is_custom_sharded(source_info(custom=True)) and not strategies.is_custom_sharded(source_info())
    reply = pb.ListShardKeysResponse(shard_keys=[pb.ShardKeyDescription(key=pb.ShardKey(keyword="eu")),
                                                 pb.ShardKeyDescription(key=pb.ShardKey(number=7))])
    keys = strategies.shard_keys_of(reply)
    assert keys == ["eu", 7]
    creates = strategies.shard_keys_request("docs_v2", keys)
    assert [c.collection_name for c in creates] == ["docs_v2", "docs_v2"]
    assert creates[0].request.shard_key.keyword == "eu" and creates[1].request.shard_key.number == 7
    # the collection's shard_number and replication_factor apply per key (src/common/collections.rs)
    assert not creates[0].request.HasField("shards_number") and not creates[0].request.HasField("replication_factor")
    tuned = strategies.shard_keys_request("docs_v2", ["eu"], shards_per_key=3, replication_factor=2)
    assert (tuned[0].request.shards_number, tuned[0].request.replication_factor) == (3, 2)
    for bad in (-1, True, 1.5):
        with pytest.raises(PreconditionError, match="shard key"):
            strategies.shard_keys_request("docs_v2", [bad])
    # a key created wider than the collection's shard_number keeps its width; the others keep the default
    widths = strategies.shard_keys_request("docs_v2", ["eu", 7], shards_by_key={7: 4})
    assert not widths[0].request.HasField("shards_number") and widths[1].request.shards_number == 4


def test_a_schema_without_its_collection_info_gets_only_the_overrides():
    schema = strategies.SourceSchema("docs", {"old": pb.VectorParams(size=16)}, {}, [], 10)
    cfg = config_from_dict({"source": {"collection": "docs"}, "strategy": "new_collection",
                            "target": {"collection": "docs_v2", "layout": {"shard_number": 3}}}, env={})
    d = strategies.decide(cfg, V18, schema)
    req = strategies.new_collection_request(cfg, d, schema, 16)
    assert req.shard_number == 3 and not req.HasField("replication_factor")
    assert not req.HasField("hnsw_config") and not req.HasField("quantization_config")


def test_layout_config_errors_are_one_line():
    base = {"source": {"collection": "docs"}, "target": {"collection": "docs_v2"}}
    for layout, fragment in [({"quantization": "pq"}, "use one of keep, none, scalar, binary"),
                             ({"replication_factor": 2, "write_consistency_factor": 3}, "above"),
                             ({"shard_number": 0}, "at least 1"),
                             ({"shard_numbr": 2}, "did you mean 'shard_number'")]:
        data = {**base, "target": {**base["target"], "layout": layout}}
        with pytest.raises(ConfigError, match=fragment) as err:
            config_from_dict(data, env={})
        assert "\n" not in str(err.value) and "target.layout" in str(err.value)


MIB, GIB = 1024**2, 1024**3


def test_headroom_from_points_vectors_quantization_and_placement():
    # Source: 384-d float32 on disk, int8 quantized in RAM, m=32 in RAM, payload on disk, 2 replicas, 6 shards.
    src = source_info(points=1_000_000)
    new = request(info=src, dim=768)  # the new 768-d vector, in RAM, inheriting the collection's quantization
    h = strategies.estimate_headroom(src, new, payload_bytes_per_point=1000, sparse_bytes_per_point=400)
    graph = 2 * 32 * 4 * 1.1
    # source per point: disk = 1536 + 384 (int8) + graph + 1000 payload + 400 sparse; RAM = 384 + graph + 400
    wal = 64 * 2 * MIB * 6 * 2  # 64 MiB + one segment ahead, per shard and replica
    assert h.source.disk_bytes == int((1536 + 384 + graph + 1000 + 400) * 1_000_000 * 2 + wal)
    assert h.source.ram_bytes == int((384 + graph + 400) * 1_000_000 * 2)
    # new per point: 768-d in RAM (3072) + int8 768 + graph; no sparse vector in the new collection
    assert h.new.ram_bytes == int((3072 + 768 + graph) * 1_000_000 * 2)
    assert h.new.disk_bytes == int((3072 + 768 + graph + 1000) * 1_000_000 * 2 + wal)
    assert h.server_free_ram_bytes is None and h.server_free_disk_bytes is None  # not reported over gRPC
    line = h.describe()
    assert "\n" not in line and "1,000,000 points" in line and "not reported over gRPC" in line
    assert h.notes == ()


def test_headroom_follows_the_overrides_and_notes_strict_limits():
    src = source_info(points=2_000)
    src.config.strict_mode_config.max_points_count = 1_000
    binary = strategies.estimate_headroom(src, request(info=src, dim=768, quantization="binary",
                                                       replication_factor=1), payload_bytes_per_point=0)
    none = strategies.estimate_headroom(src, request(info=src, dim=768, quantization="none", replication_factor=1),
                                        payload_bytes_per_point=0)
    graph = 2 * 32 * 4 * 1.1
    assert binary.new.ram_bytes == int((3072 + 768 / 8 + graph) * 2_000)
    assert none.new.ram_bytes == int((3072 + graph) * 2_000)
    assert binary.notes == ("strict mode max_points_count is 1,000 and the job writes 2,000 points",)
    assert strategies.estimate_headroom(src, request(info=src, strict_mode="off"), payload_bytes_per_point=0).notes == ()
