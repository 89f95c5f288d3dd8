"""Custom sharding: shard keys created and dropped, writes that must name a key, reads that reach only the keys
they name, and the keys listed as Qdrant lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.server import EmbeddedServer
from tests.integration.endpoint_support import grpc_client, rpc_error

pytestmark = pytest.mark.integration


def _custom(client: QdrantClient, name: str, keys: dict[Any, int]) -> None:
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT),
        sharding_method=models.ShardingMethod.CUSTOM,
        shard_number=2,
    )
    for key, shards in keys.items():
        client.create_shard_key(name, key, shards_number=shards or None)


def _point(i: int) -> models.PointStruct:
    return models.PointStruct(id=i, vector=[1.0, float(i)], payload={"i": i})


def test_every_write_must_name_a_shard_key(endpoint_client: QdrantClient) -> None:
    """lib/collection/src/shards/shard_holder/mod.rs split_by_shard: custom sharding has no ring for "no key", so
    a write without shard_key_selector is bad input; a key the collection lacks too."""
    _custom(endpoint_client, "w", {"a": 0})
    by_filter = models.FilterSelector(filter=models.Filter(must=[models.HasIdCondition(has_id=[1])]))
    writes = [
        lambda **kw: endpoint_client.upsert("w", [_point(1)], **kw),
        lambda **kw: endpoint_client.update_vectors("w", [models.PointVectors(id=1, vector=[0.0, 1.0])], **kw),
        lambda **kw: endpoint_client.delete("w", points_selector=models.PointIdsList(points=[1]), **kw),
        lambda **kw: endpoint_client.delete("w", points_selector=by_filter, **kw),
        lambda **kw: endpoint_client.set_payload("w", payload={"x": 1}, points=[1], **kw),
    ]
    for write in writes:
        err = rpc_error(write)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Wrong input: Shard key not specified")
        err = rpc_error(lambda: write(shard_key_selector="nope"))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, 'Wrong input: Shard key "nope" not found')
    endpoint_client.upsert("w", [_point(1)], shard_key_selector="a")
    assert endpoint_client.count("w").count == 1


def test_shard_keys_get_shards_of_their_own_and_are_listed(endpoint_client: QdrantClient) -> None:
    """sharding_keys.rs create_shard_key: shard ids continue from the highest (the first key gets 1..N);
    `shards_number` defaults to the collection's shard_number; src/common/collections.rs refuses duplicates and
    unknown keys with Bad request; ListShardKeys (do_get_collection_shard_keys) and CollectionClusterInfo list them."""
    _custom(endpoint_client, "k", {"a": 0, 7: 1})
    info = endpoint_client.grpc_collections.CollectionClusterInfo(pb.CollectionClusterInfoRequest(collection_name="k"))
    layout = {s.shard_id: (s.shard_key.WhichOneof("key"), getattr(s.shard_key, s.shard_key.WhichOneof("key"))) for s in info.local_shards}
    assert layout == {1: ("keyword", "a"), 2: ("keyword", "a"), 3: ("number", 7)}
    assert info.shard_count == 3
    assert [d.key for d in endpoint_client.list_shard_keys("k").shard_keys] == ["a", 7]  # type: ignore[union-attr]

    err = rpc_error(lambda: endpoint_client.create_shard_key("k", "a"))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, 'Bad request: Sharding key "a" already exists for collection k')
    err = rpc_error(lambda: endpoint_client.delete_shard_key("k", "zz"))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, 'Bad request: Sharding key "zz" does not exist for collection k')
    endpoint_client.create_collection("auto", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    err = rpc_error(lambda: endpoint_client.create_shard_key("auto", "a"))
    assert err.details() == "Bad request: Shard Key cannot be created with Auto sharding method"
    assert endpoint_client.list_shard_keys("auto").shard_keys in (None, [])

    endpoint_client.upsert("k", [_point(i) for i in range(5)], shard_key_selector=7)
    endpoint_client.delete_shard_key("k", 7)  # its shard and points go with it
    assert [d.key for d in endpoint_client.list_shard_keys("k").shard_keys] == ["a"]  # type: ignore[union-attr]
    assert endpoint_client.count("k").count == 0
    endpoint_client.create_shard_key("k", "b")
    info = endpoint_client.grpc_collections.CollectionClusterInfo(pb.CollectionClusterInfoRequest(collection_name="k"))
    assert sorted(s.shard_id for s in info.local_shards) == [1, 2, 3, 4]  # max shard id + 1 onwards


def test_reads_reach_only_the_keys_they_name(endpoint_server: EmbeddedServer, endpoint_client: QdrantClient) -> None:
    """shard_holder/mod.rs select_shards: no selector reads every shard, a key only its shards, an unknown key is
    a Bad request; a fallback key is used when the target key does not exist (route_with_fallback_for_read)."""
    _custom(endpoint_client, "r", {"a": 0, "b": 0})
    endpoint_client.upsert("r", [_point(i) for i in range(10)], shard_key_selector="a")
    endpoint_client.upsert("r", [_point(i) for i in range(5, 25)], shard_key_selector="b")  # ids 5..9 in both keys
    assert endpoint_client.count("r").count == 30
    assert endpoint_client.count("r", shard_key_selector="a").count == 10
    assert endpoint_client.count("r", shard_key_selector=["a", "b"]).count == 30
    endpoint_server.reset_storage_reads()
    page, _ = endpoint_client.scroll("r", limit=100, shard_key_selector="a", with_payload=False)
    assert [r.id for r in page] == list(range(10))
    assert endpoint_server.storage_reads()["r"].without_payload == 10  # shards of "b" were never read
    everything, _ = endpoint_client.scroll("r", limit=100, with_payload=False)
    assert [r.id for r in everything] == list(range(25))  # merged by id: a point in two keys appears once
    hits = endpoint_client.query_points("r", query=[0.0, 1.0], limit=3, shard_key_selector="b").points
    assert [h.id for h in hits] == [24, 23, 22]
    assert [r.id for r in endpoint_client.retrieve("r", [0, 20], shard_key_selector="a")] == [0]
    err = rpc_error(lambda: endpoint_client.count("r", shard_key_selector="zz"))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, 'Bad request: Shard key "zz" not found')

    def count_with_fallback(target: str, fallback: str) -> int:
        selector = pb.ShardKeySelector(shard_keys=[pb.ShardKey(keyword=target)], fallback=pb.ShardKey(keyword=fallback))
        request = pb.CountPoints(collection_name="r", shard_key_selector=selector, exact=True)
        return endpoint_client.grpc_points.Count(request).result.count

    assert count_with_fallback("a", "b") == 10 and count_with_fallback("gone", "b") == 20
    with pytest.raises(grpc.RpcError) as err:
        count_with_fallback("gone", "also_gone")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_payload_indexes_are_built_on_the_shards_of_a_new_key(endpoint_client: QdrantClient) -> None:
    """sharding_keys.rs create_shard_key creates every payload index of the collection on the new shards."""
    _custom(endpoint_client, "idx", {"a": 1})
    endpoint_client.create_payload_index("idx", "i", models.PayloadSchemaType.INTEGER)
    endpoint_client.create_shard_key("idx", "b", shards_number=1)
    endpoint_client.upsert("idx", [_point(i) for i in range(4)], shard_key_selector="a")
    endpoint_client.upsert("idx", [_point(i) for i in range(10, 16)], shard_key_selector="b")
    assert endpoint_client.get_collection("idx").payload_schema["i"].points == 10
    ordered = endpoint_client.scroll("idx", limit=3, order_by=models.OrderBy(key="i", direction=models.Direction.DESC))[0]
    assert [r.id for r in ordered] == [15, 14, 13]  # order_by needs the index on every shard


def test_auto_sharded_writes_cannot_name_a_key(endpoint_client: QdrantClient) -> None:
    endpoint_client.create_collection("plain", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT), shard_number=2)
    err = rpc_error(lambda: endpoint_client.upsert("plain", [_point(1)], shard_key_selector="a"))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, 'Wrong input: Shard key "a" not found')


def test_shard_keys_survive_a_restart(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path) as server:
        client = grpc_client(server.port)
        _custom(client, "kept", {"a": 0, 5: 1})
        client.upsert("kept", [_point(i) for i in range(6)], shard_key_selector="a")
        client.upsert("kept", [_point(i) for i in range(3)], shard_key_selector=5)
        client.close()
    with EmbeddedServer(tmp_path) as server:
        client = grpc_client(server.port)
        assert [d.key for d in client.list_shard_keys("kept").shard_keys] == ["a", 5]  # type: ignore[union-attr]
        assert client.count("kept", shard_key_selector="a").count == 6 and client.count("kept").count == 9
        client.upsert("kept", [_point(9)], shard_key_selector=5)  # the ring of key 5 is back
        assert client.count("kept", shard_key_selector=5).count == 4
        client.close()
