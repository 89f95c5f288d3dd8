"""The endpoint's Qdrant surface beyond the client congruence: errors worded like Qdrant's, config echo, version
emulation, alias actions applied one by one, payload indexes, and requests of any size."""

from __future__ import annotations

import threading
from typing import Iterator

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.server import MAX_MESSAGE_BYTES, EmbeddedServer
from tests.integration.endpoint_support import grpc_client, rpc_error

pytestmark = pytest.mark.integration


def test_health_check_names_qdrant_edge_and_the_emulated_version(endpoint_client: QdrantClient) -> None:
    info = endpoint_client.info()
    assert info.title.startswith("qdrant-edge 0.9") and "reembed embedded endpoint" in info.title
    assert info.version == "1.18.0"


def test_unknown_collection_is_not_found_everywhere(endpoint_client: QdrantClient) -> None:
    calls = [
        lambda: endpoint_client.get_collection("nope"),
        lambda: endpoint_client.count("nope"),
        lambda: endpoint_client.scroll("nope"),
        lambda: endpoint_client.upsert("nope", [models.PointStruct(id=1, vector=[1.0])]),
        lambda: endpoint_client.query_points("nope", query=[1.0]),
        lambda: endpoint_client.retrieve("nope", [1]),
        lambda: endpoint_client.get_collection_aliases("nope"),
    ]
    for call in calls:
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "Not found: Collection `nope` doesn't exist!"
    assert endpoint_client.collection_exists("nope") is False
    assert endpoint_client.delete_collection("nope") is False  # Qdrant answers false, not an error


def test_malformed_writes_are_invalid_argument_and_apply_nothing(endpoint_client: QdrantClient) -> None:
    endpoint_client.create_collection("bad", vectors_config={"dense": models.VectorParams(size=384, distance=models.Distance.COSINE)})
    good = models.PointStruct(id=1, vector={"dense": [0.1] * 384})
    cases = [
        (models.PointStruct(id=2, vector={"dense": [1.0, 2.0, 3.0]}), "Wrong input: Vector dimension error: expected dim: 384, got 3"),
        (models.PointStruct(id=2, vector={"foo": [1.0] * 384}), "Wrong input: Not existing vector name error: foo"),
        (models.PointStruct(id=2, vector=[1.0] * 384), "Wrong input: Not existing vector name error: "),
    ]
    for bad_point, message in cases:
        err = rpc_error(lambda: endpoint_client.upsert("bad", [good, bad_point]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == message
    assert endpoint_client.count("bad").count == 0  # the good point in the same request was not applied
    err = rpc_error(lambda: endpoint_client.query_points("bad", query=[1.0, 2.0], using="dense"))
    assert err.details() == "Wrong input: Vector dimension error: expected dim: 384, got 2"
    err = rpc_error(
        lambda: endpoint_client.create_collection("bad", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    )
    # lib/storage/src/content_manager/collections_ops.rs: StorageError::AlreadyExists, worded as bad input
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "Wrong input: Collection `bad` already exists!")


def test_get_collection_echoes_the_create_parameters(endpoint_client: QdrantClient) -> None:
    endpoint_client.create_collection(
        "echo",
        vectors_config={
            "a": models.VectorParams(size=8, distance=models.Distance.DOT, on_disk=True, hnsw_config=models.HnswConfigDiff(m=32)),
            "b": models.VectorParams(size=4, distance=models.Distance.MANHATTAN),
        },
        sparse_vectors_config={"s": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        hnsw_config=models.HnswConfigDiff(ef_construct=50),
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0),
        metadata={"model": {"name": "m", "dim": 8}, "note": "é"},
    )
    endpoint_client.upsert("echo", [models.PointStruct(id=i, vector={"a": [1.0] * 8}) for i in range(3)])
    info = endpoint_client.get_collection("echo")
    params = info.config.params
    assert info.status == models.CollectionStatus.GREEN and info.points_count == 3
    assert params.vectors["a"] == models.VectorParams(size=8, distance=models.Distance.DOT, on_disk=True, hnsw_config=models.HnswConfigDiff(m=32))  # type: ignore[index]
    assert params.vectors["b"].distance == models.Distance.MANHATTAN  # type: ignore[index]
    assert params.sparse_vectors["s"].modifier == models.Modifier.IDF  # type: ignore[index]
    assert info.config.hnsw_config.ef_construct == 50 and info.config.hnsw_config.m == 16  # default kept
    assert info.config.optimizer_config.indexing_threshold == 0
    assert info.config.metadata == {"model": {"name": "m", "dim": 8}, "note": "é"}

    endpoint_client.update_collection(
        "echo",
        metadata={"note": "changed", "extra": True},
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=5000),
        hnsw_config=models.HnswConfigDiff(m=24),
    )
    info = endpoint_client.get_collection("echo")
    assert info.config.metadata == {"model": {"name": "m", "dim": 8}, "note": "changed", "extra": True}
    assert info.config.optimizer_config.indexing_threshold == 5000 and info.config.hnsw_config.m == 24
    assert endpoint_client.count("echo").count == 3  # the reopened shard kept its points


def test_payload_index_schema_is_reported_and_removable(endpoint_client: QdrantClient) -> None:
    endpoint_client.create_collection("idx", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    endpoint_client.upsert("idx", [models.PointStruct(id=i, vector=[1.0, 0.0], payload={"n": i, "k": "x"}) for i in range(5)])
    endpoint_client.create_payload_index("idx", "n", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True))
    endpoint_client.create_payload_index("idx", "k", models.PayloadSchemaType.KEYWORD)
    schema = endpoint_client.get_collection("idx").payload_schema
    assert schema["n"].data_type == models.PayloadSchemaType.INTEGER and schema["n"].points == 5
    assert schema["n"].params.range is True  # type: ignore[union-attr]
    assert schema["k"].data_type == models.PayloadSchemaType.KEYWORD and schema["k"].params is None
    ordered = endpoint_client.query_points("idx", query=models.OrderByQuery(order_by=models.OrderBy(key="n", direction=models.Direction.DESC)), limit=2)
    assert [p.id for p in ordered.points] == [4, 3]
    endpoint_client.delete_payload_index("idx", "k")
    assert set(endpoint_client.get_collection("idx").payload_schema) == {"n"}


def test_alias_actions_apply_one_by_one_and_are_checked(endpoint_client: QdrantClient) -> None:
    """lib/storage/src/content_manager/toc/collection_meta_ops.rs `update_aliases` applies and saves each action in
    turn (alias_mapping.rs): a failing action leaves the earlier ones in force; create_alias replaces an alias."""
    endpoint_client.create_collection("al_a", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    endpoint_client.create_collection("al_b", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))

    def create(collection: str, alias: str) -> models.CreateAliasOperation:
        return models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))

    err = rpc_error(lambda: endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_a", "first"), create("missing", "second")]))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "Not found: Collection `missing` doesn't exist!")
    assert [(a.alias_name, a.collection_name) for a in endpoint_client.get_aliases().aliases] == [("first", "al_a")]
    endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_b", "first")])  # replaces it
    assert endpoint_client.get_collection_aliases("al_b").aliases[0].alias_name == "first"
    assert endpoint_client.get_collection_aliases("al_a").aliases == []
    err = rpc_error(lambda: endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_a", "al_b")]))
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "Wrong input: Collection `al_b` already exists!")
    rename = models.RenameAliasOperation(rename_alias=models.RenameAlias(old_alias_name="ghost", new_alias_name="x"))
    err = rpc_error(lambda: endpoint_client.update_collection_aliases(change_aliases_operations=[rename]))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "Not found: Alias ghost does not exists!")
    endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_a", "al_live")])
    err = rpc_error(
        lambda: endpoint_client.create_collection("al_live", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    )
    # toc/create_collection.rs: an alias of that name is bad input (INVALID_ARGUMENT), not ALREADY_EXISTS
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Wrong input: Can't create collection with name al_live. Alias with the same name already exists",
    )
    endpoint_client.upsert("al_live", [models.PointStruct(id=1, vector=[1.0, 1.0])])  # writes through an alias
    assert endpoint_client.count("al_a").count == 1


def test_requests_over_64_mib_are_accepted(endpoint_server: EmbeddedServer) -> None:
    """src/tonic/mod.rs: Qdrant's gRPC services use max_decoding_message_size(usize::MAX): no server-side cap, the
    client's own limits decide (the 32 MiB cap is REST's)."""
    dim, target = 4096, 70 * 1024 * 1024
    count = target // (dim * 4 + 16)
    vectors = np.random.default_rng(0).standard_normal((count, dim), dtype=np.float32)
    request = pb.UpsertPoints(collection_name="big", wait=True)
    header = b"\x0a\x80\x80\x01"  # DenseVector field 1, packed, length 16384 as a varint
    for i in range(count):
        point = request.points.add()
        point.id.num = i
        point.vectors.vector.dense.MergeFromString(header + vectors[i].tobytes())
    assert request.ByteSize() > 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(endpoint_server.address, options=options)
    pb.CollectionsStub(channel).Create(
        pb.CreateCollection(collection_name="big", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=dim, distance=pb.Distance.Dot)))
    )
    points = pb.PointsStub(channel)
    points.Upsert(request)
    assert points.Count(pb.CountPoints(collection_name="big")).result.count == count
    scrolled = points.Scroll(pb.ScrollPoints(collection_name="big", limit=count, with_vectors=pb.WithVectorsSelector(enable=True)))
    assert scrolled.ByteSize() > 64 * 1024 * 1024  # and answers over 64 MiB go back out
    assert np.allclose(scrolled.result[-1].vectors.vector.dense.data, vectors[count - 1])
    channel.close()
    assert MAX_MESSAGE_BYTES == -1


@pytest.fixture(scope="module")
def endpoint_old(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantClient]:
    with EmbeddedServer(tmp_path_factory.mktemp("old"), emulate_version="1.16") as server:
        client = grpc_client(server.port)
        yield client
        client.close()


def test_old_version_lacks_vector_name_rpcs(endpoint_old: QdrantClient) -> None:
    assert endpoint_old.info().version == "1.16.0"
    endpoint_old.create_collection("v", vectors_config={"a": models.VectorParams(size=2, distance=models.Distance.DOT)}, metadata={"m": 1})
    config = models.DenseVectorNameConfig(dense=models.DenseVectorConfig(size=2, distance=models.Distance.DOT))
    err = rpc_error(lambda: endpoint_old.create_vector_name("v", "b", config))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    err = rpc_error(lambda: endpoint_old.delete_vector_name("v", "a"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    # Collections.ListShardKeys appeared in 1.17 (lib/api/src/grpc/proto/collections_service.proto)
    err = rpc_error(lambda: endpoint_old.grpc_collections.ListShardKeys(pb.ListShardKeysRequest(collection_name="v")))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert endpoint_old.get_collection("v").config.metadata == {"m": 1}  # metadata exists since 1.16


def test_old_version_ignores_update_mode_like_an_old_server(endpoint_old: QdrantClient) -> None:
    endpoint_old.create_collection("m", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    endpoint_old.upsert("m", [models.PointStruct(id=1, vector=[1.0, 0.0], payload={"v": "orig"})])
    endpoint_old.upsert(
        "m", [models.PointStruct(id=1, vector=[0.0, 1.0], payload={"v": "stale"})], update_mode=models.UpdateMode.INSERT_ONLY
    )
    # Qdrant < 1.17 drops the unknown field and upserts: exactly why the planner must check the version.
    assert endpoint_old.retrieve("m", [1])[0].payload == {"v": "stale"}


def test_concurrent_writers_readers_and_schema_changes(endpoint_server: EmbeddedServer) -> None:
    address = endpoint_server.address
    channel = grpc.insecure_channel(address)
    collections, points = pb.CollectionsStub(channel), pb.PointsStub(channel)
    collections.Create(
        pb.CreateCollection(collection_name="busy", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=8, distance=pb.Distance.Cosine)))
    )
    failures: list[BaseException] = []

    def writer(k: int) -> None:
        for batch in range(20):
            request = pb.UpsertPoints(collection_name="busy", wait=True)
            for j in range(50):
                point = request.points.add()
                point.id.num = k * 10_000 + batch * 50 + j
                point.vectors.vector.dense.data.extend([float(k + 1), float(j), 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
                point.payload["k"].integer_value = k
            points.Upsert(request)

    def reader() -> None:
        for _ in range(40):
            points.Scroll(pb.ScrollPoints(collection_name="busy", limit=64))
            points.Query(pb.QueryPoints(collection_name="busy", query=pb.Query(nearest=pb.VectorInput(dense=pb.DenseVector(data=[1.0] * 8))), limit=3))

    def admin() -> None:
        for n in range(5):
            points.CreateFieldIndex(pb.CreateFieldIndexCollection(collection_name="busy", field_name="k", field_type=pb.FieldType.FieldTypeInteger))
            collections.Update(pb.UpdateCollection(collection_name="busy", optimizers_config=pb.OptimizersConfigDiff(indexing_threshold=1000 + n)))
            collections.Create(pb.CreateCollection(collection_name=f"busy_tmp{n}", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=2, distance=pb.Distance.Dot))))
            collections.Delete(pb.DeleteCollection(collection_name=f"busy_tmp{n}"))

    def guarded(fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(writer, k)) for k in range(3)]
    threads += [threading.Thread(target=guarded, args=(reader,)) for _ in range(2)] + [threading.Thread(target=guarded, args=(admin,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert points.Count(pb.CountPoints(collection_name="busy")).result.count == 3 * 20 * 50
    filtered = pb.Filter(must=[pb.Condition(field=pb.FieldCondition(key="k", match=pb.Match(integer=1)))])
    assert points.Count(pb.CountPoints(collection_name="busy", filter=filtered)).result.count == 1000
    channel.close()


def test_unsupported_features_are_refused_plainly(endpoint_client: QdrantClient) -> None:
    suffix = ": not supported by the embedded endpoint (qdrant-edge); use a Qdrant server"
    err = rpc_error(lambda: endpoint_client.create_collection("novec"))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Bad request: a collection without any dense or sparse vector" + suffix,
    )
    endpoint_client.create_collection("unsup", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    formula = models.FormulaQuery(formula=models.SumExpression(sum=["$score", 1.0]))
    err = rpc_error(lambda: endpoint_client.query_points("unsup", query=formula))
    assert err.details() == "Bad request: `formula` queries" + suffix
    move = pb.UpdateCollectionClusterSetupRequest(collection_name="unsup", move_shard=pb.MoveShard(shard_id=0, from_peer_id=0, to_peer_id=1))
    err = rpc_error(lambda: endpoint_client.grpc_collections.UpdateCollectionClusterSetup(move))
    assert err.details() == "Bad request: cluster setup operation `move_shard` (one peer, every shard local)" + suffix
