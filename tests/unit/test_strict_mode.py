"""engine/qdrant/strict.py: a collection's strict-mode limits read from hand-built CollectionInfo protos
(StrictModeConfig in lib/api/src/grpc/proto/collections.proto) and the requests kept inside them, as Qdrant checks
them (lib/collection/src/operations/verification/*.rs)."""

from __future__ import annotations

import pytest
from qdrant_client import grpc as pb

from engine.qdrant.strict import StrictMode


def info_with(**fields) -> pb.CollectionInfo:
    info = pb.CollectionInfo()
    info.config.strict_mode_config.CopyFrom(pb.StrictModeConfig(**fields))
    return info


FULL = {
    "enabled": True, "max_query_limit": 500, "max_timeout": 10, "unindexed_filtering_retrieve": False,
    "unindexed_filtering_update": False, "search_max_hnsw_ef": 128, "search_allow_exact": False,
    "search_max_oversampling": 2.0, "upsert_max_batchsize": 100, "search_max_batchsize": 8,
    "max_collection_vector_size_bytes": 10**9, "read_rate_limit": 600, "write_rate_limit": 6_000,
    "max_collection_payload_size_bytes": 10**8, "filter_max_conditions": 16, "condition_max_size": 200,
    "max_points_count": 1_000_000, "max_payload_index_count": 20, "max_resident_memory_percent": 90,
    "sparse_config": pb.StrictModeSparseConfig(sparse_config={"bm25": pb.StrictModeSparse(max_length=1024)}),
    "multivector_config": pb.StrictModeMultivectorConfig(
        multivector_config={"colbert": pb.StrictModeMultivector(max_vectors=512)}),
}


def test_every_field_is_read():
    s = StrictMode.from_info(info_with(**FULL))
    assert s.enabled and s.max_query_limit == 500 and s.max_timeout == 10 and s.search_max_hnsw_ef == 128
    assert s.unindexed_filtering_retrieve is False and s.unindexed_filtering_update is False
    assert s.search_allow_exact is False and s.search_max_oversampling == pytest.approx(2.0)
    assert (s.upsert_max_batchsize, s.search_max_batchsize) == (100, 8)
    assert (s.read_rate_limit, s.write_rate_limit) == (600, 6_000)
    assert (s.max_collection_vector_size_bytes, s.max_collection_payload_size_bytes) == (10**9, 10**8)
    assert (s.filter_max_conditions, s.condition_max_size, s.max_points_count) == (16, 200, 1_000_000)
    assert (s.max_payload_index_count, s.max_resident_memory_percent) == (20, 90)
    assert s.sparse_max_length == (("bm25", 1024),) and s.multivector_max_vectors == (("colbert", 512),)


def test_requests_are_kept_inside_the_limits():
    s = StrictMode.from_info(info_with(**FULL))
    assert s.page_limit(1024) == 500 and s.page_limit(100) == 100  # scroll limit (verification/local_shard.rs)
    assert s.sample_limit(2000) == 500  # a Query's limit (verification/query.rs)
    assert s.upsert_batch(256) == 100  # upsert_max_batchsize (verification/update.rs)
    assert s.get_batch(1024) == 600  # a Get costs one read token per id (local_shard/shard_ops.rs)
    assert s.has_id_batch(1000) == 200  # a HasId condition's size is its ids (types.rs size_estimation)
    assert s.search_batch(50) == 8 and s.hnsw_ef(256) == 128
    assert not s.exact_allowed()  # exact search and exact Count are refused (verification/count.rs)
    assert not s.unindexed_filter_allowed() and not s.unindexed_filter_allowed(update=True)
    assert s.filter_conditions_allowed(16) and not s.filter_conditions_allowed(17)
    assert s.timeout(60) == 10 and s.timeout(5) == 5 and s.timeout(None) is None
    assert s.sparse_length("bm25") == 1024 and s.sparse_length("other") is None
    assert s.write_points_per_s(shards=6) == pytest.approx(600.0)  # 6,000/min per shard x 6 shards
    too_many = "strict mode max_points_count is 1,000,000 and the job writes 2,000,000 points"
    assert s.capacity_problems(2_000_000) == [too_many]
    assert s.capacity_problems(10) == []


def test_the_write_rate_limit_bounds_one_request():
    # A request whose points all land in one shard costs that many tokens; more than the bucket ever holds is
    # refused for good (AlwaysOverBudget in lib/common/common/src/rate_limiting.rs).
    s = StrictMode.from_info(info_with(enabled=True, write_rate_limit=120))
    assert s.upsert_batch(256) == 120 and s.upsert_batch(64) == 64
    assert StrictMode.from_info(info_with(enabled=True, upsert_max_batchsize=0)).upsert_batch(256) == 1  # never 0


@pytest.mark.parametrize("info", [
    None,
    pb.CollectionInfo(),  # no strict_mode_config at all
    info_with(**{**FULL, "enabled": False}),  # configured but disabled
    info_with(**{k: v for k, v in FULL.items() if k != "enabled"}),  # `enabled` absent: off (unwrap_or_default)
])
def test_disabled_or_absent_passes_everything_through(info):
    s = StrictMode.from_info(info)
    assert not s.enabled
    assert (s.page_limit(8192), s.sample_limit(8192), s.upsert_batch(256), s.get_batch(4096)) == (8192, 8192, 256, 4096)
    assert (s.has_id_batch(10**6), s.search_batch(100), s.hnsw_ef(512)) == (10**6, 100, 512)
    assert s.exact_allowed() and s.unindexed_filter_allowed() and s.unindexed_filter_allowed(update=True)
    assert s.filter_conditions_allowed(10**6) and s.timeout(3600) == 3600
    assert s.sparse_length("bm25") is None and s.write_points_per_s(4) is None and s.capacity_problems(10**9) == []
    assert s.describe() == "strict mode: off"


def test_unset_fields_bound_nothing():
    s = StrictMode.from_info(info_with(enabled=True, search_allow_exact=True))
    assert s.page_limit(4096) == 4096 and s.upsert_batch(256) == 256 and s.exact_allowed()
    assert s.describe() == "strict mode: on (no limits set)"


def test_one_line_description_for_plan():
    line = StrictMode.from_info(info_with(**FULL)).describe()
    assert "\n" not in line and line.startswith("strict mode: on (")
    for part in ("query limit 500", "upsert batch 100", "write rate 6,000/min per shard", "read rate 600/min",
                 "timeout 10 s", "max points 1,000,000", "no exact search", "indexed filters only",
                 "sparse length bm25 1,024"):
        assert part in line
