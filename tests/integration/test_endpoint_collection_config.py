"""Collection parameters stored and reported back as Qdrant reports them, changed as UpdateCollection changes
them, and the Yellow status of a collection whose index is being (re)built."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.indexing import IndexBuild, needs_rebuild
from engine.embedded.server import EmbeddedServer
from tests.integration.endpoint_support import grpc_client

pytestmark = pytest.mark.integration

# Long enough that an emulated index build cannot finish while a test looks: the hook ends it instead.
SLOW_INDEXING_S_PER_POINT = 10.0


@pytest.fixture(scope="module")
def endpoint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("config"), index_seconds_per_point=SLOW_INDEXING_S_PER_POINT) as server:
        yield server


def _create_everything(client: QdrantClient, name: str) -> None:
    client.create_collection(
        name,
        vectors_config={"d": models.VectorParams(size=8, distance=models.Distance.COSINE, on_disk=True)},
        sparse_vectors_config={"s": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        shard_number=3,
        sharding_method=models.ShardingMethod.AUTO,
        replication_factor=2,
        write_consistency_factor=2,
        on_disk_payload=False,
        hnsw_config=models.HnswConfigDiff(m=24, ef_construct=80, payload_m=12),
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=5000, deleted_threshold=0.3),
        wal_config=models.WalConfigDiff(wal_capacity_mb=64, wal_segments_ahead=1),
        quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99)),
        strict_mode_config=models.StrictModeConfig(enabled=False, max_query_limit=100, write_rate_limit=1000),
        metadata={"model": "m1", "dims": 8},
    )


def test_every_parameter_is_reported_back(endpoint_client: QdrantClient) -> None:
    """lib/storage/src/content_manager/toc/create_collection.rs stores each parameter (defaults from
    config/config.yaml); lib/collection/src/operations/conversions.rs `From<CollectionInfo>` reports them."""
    _create_everything(endpoint_client, "all")
    config = endpoint_client.get_collection("all").config
    params = config.params
    assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (3, 2, 2)
    assert params.on_disk_payload is False and params.sharding_method == models.ShardingMethod.AUTO
    assert params.vectors["d"].on_disk is True and params.vectors["d"].size == 8  # type: ignore[index]
    assert params.sparse_vectors["s"].modifier == models.Modifier.IDF  # type: ignore[index]
    assert (config.hnsw_config.m, config.hnsw_config.ef_construct, config.hnsw_config.payload_m) == (24, 80, 12)
    assert config.hnsw_config.full_scan_threshold == 10000  # default kept
    opt = config.optimizer_config
    assert (opt.indexing_threshold, opt.deleted_threshold, opt.vacuum_min_vector_number, opt.flush_interval_sec) == (5000, 0.3, 1000, 5)
    assert config.wal_config is not None and (config.wal_config.wal_capacity_mb, config.wal_config.wal_segments_ahead) == (64, 1)
    quantization = config.quantization_config
    assert isinstance(quantization, models.ScalarQuantization) and quantization.scalar.type == models.ScalarType.INT8
    assert quantization.scalar.quantile == pytest.approx(0.99)  # a float on the wire
    strict = config.strict_mode_config
    assert strict is not None and (strict.enabled, strict.max_query_limit, strict.write_rate_limit) == (False, 100, 1000)
    assert config.metadata == {"model": "m1", "dims": 8}
    raw = endpoint_client.grpc_collections.Get(pb.GetCollectionInfoRequest(collection_name="all")).result.config
    assert raw.optimizer_config.max_optimization_threads.WhichOneof("variant") == "setting"  # unset: Auto
    plain = endpoint_client.create_collection("defaults", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    assert plain
    defaults = endpoint_client.get_collection("defaults").config
    assert defaults.params.shard_number == 1 and defaults.params.sharding_method is None
    assert defaults.strict_mode_config is None and defaults.quantization_config is None


def test_update_changes_what_qdrant_lets_change(endpoint_client: QdrantClient) -> None:
    """UpdateCollection (lib/collection/src/operations/config_diff.rs): params diff, HNSW, optimizers, vector
    params, quantization (or disabling it), strict mode (merged field by field) and metadata (merged by key)."""
    _create_everything(endpoint_client, "upd")
    endpoint_client.upsert("upd", [models.PointStruct(id=i, vector={"d": [1.0] * 8}) for i in range(5)])
    endpoint_client.update_collection(
        "upd",
        collection_params=models.CollectionParamsDiff(replication_factor=3, write_consistency_factor=1, on_disk_payload=True),
        hnsw_config=models.HnswConfigDiff(ef_construct=120),
        optimizers_config=models.OptimizersConfigDiff(deleted_threshold=0.1),
        vectors_config={"d": models.VectorParamsDiff(on_disk=False, hnsw_config=models.HnswConfigDiff(m=8))},
        quantization_config=models.Disabled.DISABLED,
        strict_mode_config=models.StrictModeConfig(max_timeout=30),
        metadata={"dims": 9, "stage": "two"},
    )
    config = endpoint_client.get_collection("upd").config
    params = config.params
    assert (params.replication_factor, params.write_consistency_factor, params.on_disk_payload) == (3, 1, True)
    assert params.shard_number == 3  # not changeable
    assert (config.hnsw_config.m, config.hnsw_config.ef_construct) == (24, 120)
    assert config.optimizer_config.deleted_threshold == 0.1 and config.optimizer_config.indexing_threshold == 5000
    assert params.vectors["d"].on_disk is False and params.vectors["d"].hnsw_config.m == 8  # type: ignore[index,union-attr]
    assert config.quantization_config is None
    strict = config.strict_mode_config
    assert strict is not None and (strict.max_query_limit, strict.max_timeout) == (100, 30)
    assert config.metadata == {"model": "m1", "dims": 9, "stage": "two"}
    assert endpoint_client.count("upd").count == 5


def _yellow_then_green(server: EmbeddedServer, client: QdrantClient, name: str) -> None:
    assert client.get_collection(name).status == models.CollectionStatus.YELLOW
    assert client.get_collection(name).optimizer_status == models.OptimizersStatusOneOf.OK
    server.finish_index_builds()
    assert client.get_collection(name).status == models.CollectionStatus.GREEN


def test_restoring_deferred_indexing_turns_the_collection_yellow(endpoint_server: EmbeddedServer, endpoint_client: QdrantClient) -> None:
    """local_shard/mod.rs local_shard_status: Yellow while optimizers build; a bulk load with indexing_threshold 0
    (or HNSW m 0) then restored is the classic case."""
    vectors = {"d": models.VectorParams(size=64, distance=models.Distance.DOT)}
    points = [models.PointStruct(id=i, vector={"d": [float(i % 7)] * 64}) for i in range(200)]  # 50 kB of vectors
    endpoint_client.create_collection("bulk", vectors_config=vectors, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0))
    endpoint_client.upsert("bulk", points)
    assert endpoint_client.get_collection("bulk").status == models.CollectionStatus.GREEN  # indexing deferred
    endpoint_client.update_collection("bulk", optimizers_config=models.OptimizersConfigDiff(indexing_threshold=20))
    _yellow_then_green(endpoint_server, endpoint_client, "bulk")

    endpoint_client.create_collection("m0", vectors_config=vectors, hnsw_config=models.HnswConfigDiff(m=0), optimizers_config=models.OptimizersConfigDiff(indexing_threshold=20))
    endpoint_client.upsert("m0", points)
    assert endpoint_client.get_collection("m0").status == models.CollectionStatus.GREEN
    endpoint_client.update_collection("m0", hnsw_config=models.HnswConfigDiff(m=16))
    _yellow_then_green(endpoint_server, endpoint_client, "m0")

    endpoint_client.create_collection("small", vectors_config=vectors, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0))
    endpoint_client.upsert("small", points)
    endpoint_client.update_collection("small", optimizers_config=models.OptimizersConfigDiff(indexing_threshold=10000))
    assert endpoint_client.get_collection("small").status == models.CollectionStatus.GREEN  # below the threshold


def test_the_build_lasts_in_proportion_to_points() -> None:
    now = [100.0]
    build = IndexBuild(clock=lambda: now[0])
    build.start(points=1000, seconds_per_point=0.002)
    assert build.running
    now[0] = 101.9
    assert build.status() == pb.CollectionStatus.Yellow
    now[0] = 102.0
    assert build.status() == pb.CollectionStatus.Green


def test_only_index_changes_start_a_build() -> None:
    base = pb.CollectionConfig()
    base.params.vectors_config.params.CopyFrom(pb.VectorParams(size=100, distance=pb.Distance.Dot))
    base.hnsw_config.m = 16
    base.optimizer_config.indexing_threshold = 10
    other = pb.CollectionConfig()
    other.CopyFrom(base)
    other.optimizer_config.deleted_threshold = 0.5
    assert not needs_rebuild(base, other, points=10_000)
    other.hnsw_config.m = 32
    assert needs_rebuild(base, other, points=10_000)
    assert not needs_rebuild(base, other, points=0)


def test_yellow_is_kept_in_memory_only(tmp_path: Path) -> None:
    """A restarted server has no build running: the status is Green (qdrant-edge builds no index itself)."""
    with EmbeddedServer(tmp_path, index_seconds_per_point=SLOW_INDEXING_S_PER_POINT) as server:
        client = grpc_client(server.port)
        client.create_collection("r", vectors_config=models.VectorParams(size=64, distance=models.Distance.DOT), optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0))
        client.upsert("r", [models.PointStruct(id=i, vector=[1.0] * 64) for i in range(100)])
        client.update_collection("r", optimizers_config=models.OptimizersConfigDiff(indexing_threshold=1))
        assert client.get_collection("r").status == models.CollectionStatus.YELLOW
        client.close()
    with EmbeddedServer(tmp_path) as server:
        client = grpc_client(server.port)
        assert client.get_collection("r").status == models.CollectionStatus.GREEN
        client.close()
