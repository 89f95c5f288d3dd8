"""Strict mode, enforced per request with Qdrant's status codes and messages, and its per-shard rate limiters."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse

from engine.embedded.rate_limit import WRITE, RateLimiter
from engine.embedded.server import EmbeddedServer
from engine.embedded.status import ApiError
from tests.integration.endpoint_support import rpc_error

pytestmark = pytest.mark.integration


def _raw_upsert(server: EmbeddedServer, name: str, points: list[models.PointStruct]) -> grpc.RpcError:
    """The upsert over a bare channel, to see the status and trailers (qdrant-client turns them into its own error)."""
    request = pb.UpsertPoints(collection_name=name, wait=True)
    for p in points:
        out = request.points.add()
        out.id.num = int(p.id)  # type: ignore[arg-type]
        out.vectors.vectors.vectors["d"].dense.data.extend(p.vector["d"])  # type: ignore[index]
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as err:
        pb.PointsStub(channel).Upsert(request)
    return err.value


def _points(n: int, start: int = 0) -> list[models.PointStruct]:
    return [models.PointStruct(id=i, vector={"d": [1.0, float(i)]}, payload={"i": i, "k": "x"}) for i in range(start, start + n)]


def _strict(client: QdrantClient, name: str, shards: int = 1, **config: Any) -> None:
    client.create_collection(
        name,
        vectors_config={
            "d": models.VectorParams(size=2, distance=models.Distance.DOT),
            "late": models.VectorParams(size=2, distance=models.Distance.DOT, hnsw_config=models.HnswConfigDiff(m=0)),
        },
        shard_number=shards,
        strict_mode_config=models.StrictModeConfig(enabled=True, **config),
    )


def test_limits_are_refused_with_qdrants_words(endpoint_client: QdrantClient) -> None:
    """verification/mod.rs check_limit_opt via local_shard.rs (scroll limit), query.rs (query and prefetch
    limits) and update.rs ("upsert limit", "update limit"); CollectionError::strict_mode -> Bad request."""
    _strict(endpoint_client, "lim", max_query_limit=10, upsert_max_batchsize=5)
    err = rpc_error(lambda: endpoint_client.upsert("lim", _points(6)))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        'Bad request: Limit exceeded 6 > 5 for "upsert limit". Help: Reduce the "upsert limit" parameter to or below 5.',
    )
    endpoint_client.upsert("lim", _points(5))
    err = rpc_error(lambda: endpoint_client.update_vectors("lim", [models.PointVectors(id=i, vector={"d": [0.0, 1.0]}) for i in range(6)]))
    assert err.details().startswith('Bad request: Limit exceeded 6 > 5 for "update limit"')
    assert endpoint_client.count("lim").count == 5
    err = rpc_error(lambda: endpoint_client.scroll("lim", limit=11))
    assert err.details() == 'Bad request: Limit exceeded 11 > 10 for "limit". Help: Reduce the "limit" parameter to or below 10.'
    assert len(endpoint_client.scroll("lim", limit=10)[0]) == 5
    err = rpc_error(lambda: endpoint_client.query_points("lim", query=[1.0, 0.0], using="d", limit=20))
    assert err.details().startswith('Bad request: Limit exceeded 20 > 10 for "limit"')
    deep = models.Prefetch(query=[1.0, 0.0], using="d", limit=50)
    err = rpc_error(lambda: endpoint_client.query_points("lim", prefetch=[deep], query=[1.0, 0.0], using="d", limit=3))
    assert err.details().startswith('Bad request: Limit exceeded 50 > 10 for "limit"')


def test_exact_search_and_unindexed_vectors_are_refused(endpoint_client: QdrantClient) -> None:
    """search_allow_exact=false: exact search and exact count are "Exact search disabled!" (check_bool_opt), and a
    query on a vector whose HNSW is off (m = 0) would be a full scan (verification/query.rs check_fullscan) unless
    it only rescores a prefetch."""
    _strict(endpoint_client, "exact", search_allow_exact=False)
    endpoint_client.upsert("exact", _points(3))
    err = rpc_error(lambda: endpoint_client.query_points("exact", query=[1.0, 0.0], using="d", search_params=models.SearchParams(exact=True)))
    assert err.details() == "Bad request: Exact search disabled!. Help: Set exact=false."
    err = rpc_error(lambda: endpoint_client.count("exact", exact=True))
    assert err.details() == "Bad request: Exact search disabled!. Help: Set exact=false."
    assert endpoint_client.count("exact", exact=False).count == 3
    err = rpc_error(lambda: endpoint_client.query_points("exact", query=[1.0, 0.0], using="late"))
    assert err.details() == (
        "Bad request: Request is forbidden on 'late' because global vector indexing is disabled (hnsw_config.m = 0). "
        "Help: Use tenant-specific filter, enable global vector indexing or enable strict mode `search_allow_exact` option"
    )
    rescored = endpoint_client.query_points("exact", prefetch=[models.Prefetch(query=[0.0, 1.0], using="d", limit=3)], query=[0.0, 1.0], using="late")
    assert len(rescored.points) == 0  # allowed: "late" only rescores (no point has it yet)


def test_unindexed_filters_are_refused_until_indexed(endpoint_client: QdrantClient) -> None:
    """verification/mod.rs check_request_filter: with unindexed_filtering_retrieve/update = false, a filter key
    needs a payload index of a fitting type (problems/unindexed_field.rs)."""
    _strict(endpoint_client, "idx", unindexed_filtering_retrieve=False, unindexed_filtering_update=False)
    endpoint_client.upsert("idx", _points(4))
    by_i = models.Filter(must=[models.FieldCondition(key="i", range=models.Range(gte=2))])
    err = rpc_error(lambda: endpoint_client.count("idx", count_filter=by_i))
    assert err.details() == (
        'Bad request: Index required but not found for "i" of one of the following types: [float, integer]. '
        "Help: Create an index for this key or use a different filter."
    )
    err = rpc_error(lambda: endpoint_client.delete("idx", points_selector=models.FilterSelector(filter=by_i)))
    assert err.details().startswith('Bad request: Index required but not found for "i"')
    endpoint_client.create_payload_index("idx", "i", models.PayloadSchemaType.KEYWORD)  # the wrong kind of index
    assert rpc_error(lambda: endpoint_client.count("idx", count_filter=by_i)).code() == grpc.StatusCode.INVALID_ARGUMENT
    endpoint_client.create_payload_index("idx", "i", models.PayloadSchemaType.INTEGER)
    assert endpoint_client.count("idx", count_filter=by_i).count == 2
    endpoint_client.delete("idx", points_selector=models.FilterSelector(filter=by_i))
    assert endpoint_client.count("idx").count == 2


def test_disabled_strict_mode_checks_nothing(endpoint_client: QdrantClient) -> None:
    """collection_verification.rs: only a config with enabled = true is checked; UpdateCollection turns it on."""
    endpoint_client.create_collection(
        "off",
        vectors_config={"d": models.VectorParams(size=2, distance=models.Distance.DOT)},
        strict_mode_config=models.StrictModeConfig(enabled=False, max_query_limit=1, upsert_max_batchsize=1),
    )
    endpoint_client.upsert("off", _points(3))
    assert len(endpoint_client.scroll("off", limit=3)[0]) == 3
    endpoint_client.update_collection("off", strict_mode_config=models.StrictModeConfig(enabled=True))
    assert endpoint_client.get_collection("off").config.strict_mode_config.max_query_limit == 1  # type: ignore[union-attr]
    assert rpc_error(lambda: endpoint_client.scroll("off", limit=3)).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_write_rate_limit_answers_resource_exhausted(endpoint_server: EmbeddedServer, endpoint_client: QdrantClient) -> None:
    """local_shard/mod.rs + rate_limiting.rs: a bucket of write_rate_limit points per minute per shard; over it,
    RESOURCE_EXHAUSTED with a retry-after of whole seconds (content_manager/conversions.rs), none when the write
    alone exceeds the bucket (RateLimitError::AlwaysOverBudget)."""
    _strict(endpoint_client, "wrl", write_rate_limit=10)
    endpoint_client.upsert("wrl", _points(8))
    with pytest.raises(ResourceExhaustedResponse) as refused:  # qdrant-client reads the retry-after as from Qdrant
        endpoint_client.upsert("wrl", _points(5, start=100))
    assert refused.value.retry_after_s == 18  # 3 tokens missing at 10/60 per second
    err = _raw_upsert(endpoint_server, "wrl", _points(5, start=100))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == (
        "Rate limiting exceeded: Write rate limit exceeded: Operation requires 5 tokens but only 2.0 were available. "
        "Retry after 18s"
    )
    assert dict(err.trailing_metadata())["retry-after"] == "18"
    err = _raw_upsert(endpoint_server, "wrl", _points(11, start=200))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == (
        "Rate limiting exceeded: Write rate limit exceeded, request larger than rate limiter capacity, please try to "
        "split your request"
    )
    assert "retry-after" not in dict(err.trailing_metadata())
    assert endpoint_client.count("wrl").count == 8


def test_read_rate_limit_is_per_shard(endpoint_client: QdrantClient) -> None:
    """A bucket per shard (LocalShard::read_rate_limiter): a scroll costs every shard 1 + its filter conditions."""
    _strict(endpoint_client, "rrl", shards=2, read_rate_limit=3)
    endpoint_client.upsert("rrl", _points(10))
    endpoint_client.scroll("rrl", limit=2)
    endpoint_client.scroll("rrl", limit=2, scroll_filter=models.Filter(must=[models.HasIdCondition(has_id=[1])]))
    with pytest.raises(ResourceExhaustedResponse) as refused:
        endpoint_client.scroll("rrl", limit=2)
    assert refused.value.retry_after_s == 20  # 1 token at 3/60 per second
    assert str(refused.value).startswith("Rate limiting exceeded: Read rate limit exceeded: Operation requires 1 tokens")


def test_token_bucket_refills_over_time() -> None:
    """rate_limiting.rs RateLimiter: starts full, refills at capacity/60 per second, never above capacity."""
    now = [0.0]
    bucket = RateLimiter.per_minute(60, clock=lambda: now[0])
    bucket.try_consume(60, WRITE)
    with pytest.raises(ApiError) as err:
        bucket.try_consume(2, WRITE)
    assert err.value.trailers == (("retry-after", "2"),)
    now[0] = 2.0
    bucket.try_consume(2, WRITE)
    now[0] = 1000.0
    bucket.try_consume(60, WRITE)  # refilled to the cap, not beyond
    with pytest.raises(ApiError):
        bucket.try_consume(1, WRITE)
