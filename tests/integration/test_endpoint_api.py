"""The endpoint's Qdrant surface beyond the client congruence: errors worded like Qdrant's, config echo, version
emulation, atomic alias changes, payload indexes, and 32 MiB requests."""

from __future__ import annotations

import threading
from typing import Iterator

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.server import MAX_MESSAGE_BYTES, EmbeddedServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("api")) as server:
        yield server


@pytest.fixture()
def endpoint_client(endpoint_server: EmbeddedServer) -> Iterator[QdrantClient]:
    client = QdrantClient(host="127.0.0.1", grpc_port=endpoint_server.port, prefer_grpc=True, check_compatibility=False)
    yield client
    client.close()


def _rpc_error(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


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
        err = _rpc_error(call)
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
        err = _rpc_error(lambda: endpoint_client.upsert("bad", [good, bad_point]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == message
    assert endpoint_client.count("bad").count == 0  # the good point in the same request was not applied
    err = _rpc_error(lambda: endpoint_client.query_points("bad", query=[1.0, 2.0], using="dense"))
    assert err.details() == "Wrong input: Vector dimension error: expected dim: 384, got 2"
    err = _rpc_error(
        lambda: endpoint_client.create_collection("bad", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    )
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Wrong input: Collection `bad` already exists!")


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


def test_alias_changes_are_atomic_and_checked(endpoint_client: QdrantClient) -> None:
    endpoint_client.create_collection("al_a", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))

    def create(collection: str, alias: str) -> models.CreateAliasOperation:
        return models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))

    err = _rpc_error(lambda: endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_a", "first"), create("missing", "second")]))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "Not found: Collection `missing` doesn't exist!")
    assert endpoint_client.get_aliases().aliases == []  # the first action was not applied either
    err = _rpc_error(lambda: endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_a", "al_a")]))
    assert err.details() == "Wrong input: Collection `al_a` already exists!"
    rename = models.RenameAliasOperation(rename_alias=models.RenameAlias(old_alias_name="ghost", new_alias_name="x"))
    err = _rpc_error(lambda: endpoint_client.update_collection_aliases(change_aliases_operations=[rename]))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "Not found: Alias ghost does not exists!")
    endpoint_client.update_collection_aliases(change_aliases_operations=[create("al_a", "al_live")])
    err = _rpc_error(
        lambda: endpoint_client.create_collection("al_live", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    )
    assert err.details() == "Wrong input: Can't create collection with name al_live. Alias with the same name already exists"
    endpoint_client.upsert("al_live", [models.PointStruct(id=1, vector=[1.0, 1.0])])  # writes through an alias
    assert endpoint_client.count("al_a").count == 1


def test_max_size_request_is_accepted(endpoint_server: EmbeddedServer) -> None:
    # Qdrant caps requests at 32 MiB; one just under the cap must go through in one call.
    dim, target = 1536, 32 * 1024 * 1024 - 64 * 1024
    count = target // (dim * 4 + 16)
    vectors = np.random.default_rng(0).standard_normal((count, dim), dtype=np.float32)
    request = pb.UpsertPoints(collection_name="big", wait=True)
    for i in range(count):
        point = request.points.add()
        point.id.num = i
        raw = vectors[i].tobytes()
        point.vectors.vector.dense.MergeFromString(b"\x0a\x80\x30" + raw)  # packed field 1, length 6144
    size = request.ByteSize()
    assert 31 * 1024 * 1024 < size < 32 * 1024 * 1024 < MAX_MESSAGE_BYTES
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    channel = grpc.insecure_channel(endpoint_server.address, options=options)
    pb.CollectionsStub(channel).Create(
        pb.CreateCollection(collection_name="big", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=dim, distance=pb.Distance.Dot)))
    )
    points = pb.PointsStub(channel)
    points.Upsert(request)
    assert points.Count(pb.CountPoints(collection_name="big")).result.count == count
    got = points.Get(pb.GetPoints(collection_name="big", ids=[pb.PointId(num=count - 1)], with_vectors=pb.WithVectorsSelector(enable=True)))
    assert np.allclose(got.result[0].vectors.vector.dense.data, vectors[count - 1])
    channel.close()


@pytest.fixture(scope="module")
def endpoint_old(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantClient]:
    with EmbeddedServer(tmp_path_factory.mktemp("old"), emulate_version="1.16") as server:
        client = QdrantClient(host="127.0.0.1", grpc_port=server.port, prefer_grpc=True, check_compatibility=False)
        yield client
        client.close()


def test_old_version_lacks_vector_name_rpcs(endpoint_old: QdrantClient) -> None:
    assert endpoint_old.info().version == "1.16.0"
    endpoint_old.create_collection("v", vectors_config={"a": models.VectorParams(size=2, distance=models.Distance.DOT)}, metadata={"m": 1})
    config = models.DenseVectorNameConfig(dense=models.DenseVectorConfig(size=2, distance=models.Distance.DOT))
    err = _rpc_error(lambda: endpoint_old.create_vector_name("v", "b", config))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    err = _rpc_error(lambda: endpoint_old.delete_vector_name("v", "a"))
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
    err = _rpc_error(lambda: endpoint_client.create_collection("novec"))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Bad request: a collection without any dense or sparse vector" + suffix,
    )
    endpoint_client.create_collection("unsup", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    err = _rpc_error(lambda: endpoint_client.query_points("unsup", query=1))
    assert err.details() == "Bad request: querying by point id" + suffix
    recommend = models.RecommendQuery(recommend=models.RecommendInput(positive=[[1.0, 0.0]]))
    err = _rpc_error(lambda: endpoint_client.query_points("unsup", query=recommend))
    assert err.details() == "Bad request: `recommend` queries" + suffix
