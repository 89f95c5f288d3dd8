"""Writes Qdrant refuses, refused the same way; and the one that looks wrong but Qdrant accepts (a point written
with an empty NamedVectors map: no vectors at all)."""

from __future__ import annotations

from typing import Iterator

import grpc
import pytest
from qdrant_client import grpc as pb

from engine.embedded.server import EmbeddedServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pb.CollectionsStub, pb.PointsStub]]:
    with EmbeddedServer(tmp_path_factory.mktemp("refusals")) as server, grpc.insecure_channel(server.address) as channel:
        collections, points = pb.CollectionsStub(channel), pb.PointsStub(channel)
        dense = pb.VectorParams(size=2, distance=pb.Distance.Dot)
        collections.Create(pb.CreateCollection(collection_name="named", vectors_config=pb.VectorsConfig(params_map=pb.VectorParamsMap(map={"d": dense})), sparse_vectors_config=pb.SparseVectorConfig(map={"s": pb.SparseVectorParams()})))
        collections.Create(pb.CreateCollection(collection_name="single", vectors_config=pb.VectorsConfig(params=dense)))
        yield collections, points


def _upsert(points: pb.PointsStub, collection: str, point: pb.PointStruct) -> pb.PointsOperationResponse:
    return points.Upsert(pb.UpsertPoints(collection_name=collection, wait=True, points=[point]))


def _refused(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_points_without_vectors_or_with_an_unset_vectors_are_refused(stubs: tuple[pb.CollectionsStub, pb.PointsStub]) -> None:
    """lib/api/src/grpc/conversions.rs `TryFrom<PointStruct>`: "Expected some vectors" when the field is absent;
    lib/api/src/conversions/vectors.rs `TryFrom<grpc::Vectors>`: "No Vector Provided" when its oneof is unset.
    Both are tonic statuses: INVALID_ARGUMENT, the message without a prefix."""
    _, points = stubs
    for collection in ("named", "single"):
        err = _refused(lambda: _upsert(points, collection, pb.PointStruct(id=pb.PointId(num=1))))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Expected some vectors")
        err = _refused(lambda: _upsert(points, collection, pb.PointStruct(id=pb.PointId(num=1), vectors=pb.Vectors())))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "No Vector Provided")
    err = _refused(lambda: _upsert(points, "named", pb.PointStruct(vectors=pb.Vectors(vectors=pb.NamedVectors()))))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Empty ID is not allowed")
    sparse = pb.Vector(sparse=pb.SparseVector(indices=[1], values=[1.0]))
    err = _refused(lambda: _upsert(points, "named", pb.PointStruct(id=pb.PointId(num=1), vectors=pb.Vectors(vector=sparse))))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Sparse vector must be named")
    assert points.Count(pb.CountPoints(collection_name="named")).result.count == 0


def test_duplicate_sparse_indices_are_refused(stubs: tuple[pb.CollectionsStub, pb.PointsStub]) -> None:
    """lib/sparse/src/common/sparse_vector.rs validate_sparse_vector_impl: indices "must be unique"; gRPC requests
    are validated before anything runs (src/tonic/api/mod.rs `validate`: "Validation error in body: [...]")."""
    _, points = stubs
    dup = pb.Vector(sparse=pb.SparseVector(indices=[3, 3], values=[1.0, 2.0]))
    point = pb.PointStruct(id=pb.PointId(num=1), vectors=pb.Vectors(vectors=pb.NamedVectors(vectors={"s": dup})))
    err = _refused(lambda: _upsert(points, "named", point))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Validation error in body: [") and "must be unique" in err.details()
    query = pb.QueryPoints(collection_name="named", using="s", query=pb.Query(nearest=pb.VectorInput(sparse=pb.SparseVector(indices=[2, 2], values=[1.0, 1.0]))))
    assert "must be unique" in _refused(lambda: points.Query(query)).details()
    assert points.Count(pb.CountPoints(collection_name="named")).result.count == 0


def test_an_empty_named_vectors_map_stores_a_point_without_vectors(stubs: tuple[pb.CollectionsStub, pb.PointsStub]) -> None:
    """Qdrant accepts `Vectors{vectors: NamedVectors{}}`: the conversion gives VectorStruct::Named({}) (vectors.rs),
    its validation iterates over no vector (rest/schema.rs), and the segment stores the point with every vector
    unset (segment_ops.rs insert_new_vectors). UpdateVectors over gRPC does not run PointVectors' REST-only
    "must specify vectors to update" check (src/tonic/api/update_common.rs, src/common/update.rs)."""
    _, points = stubs
    empty = pb.Vectors(vectors=pb.NamedVectors())
    for collection in ("named", "single"):
        reply = _upsert(points, collection, pb.PointStruct(id=pb.PointId(num=7), vectors=empty, payload={"dead": pb.Value(bool_value=True)}))
        assert reply.result.status == pb.UpdateStatus.Completed
        got = points.Get(pb.GetPoints(collection_name=collection, ids=[pb.PointId(num=7)], with_vectors=pb.WithVectorsSelector(enable=True)))
        assert got.result[0].payload["dead"].bool_value is True
        assert not got.result[0].vectors.vectors.vectors and not got.result[0].vectors.HasField("vector")
    update = pb.UpdatePointVectors(collection_name="named", wait=True, points=[pb.PointVectors(id=pb.PointId(num=7), vectors=empty)])
    assert points.UpdateVectors(update).result.status == pb.UpdateStatus.Completed


def test_an_empty_write_is_refused(stubs: tuple[pb.CollectionsStub, pb.PointsStub]) -> None:
    """collection/point_ops.rs update_from_client: a write no shard takes part in is "Empty update request"."""
    _, points = stubs
    err = _refused(lambda: points.Upsert(pb.UpsertPoints(collection_name="named", wait=True)))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Bad request: Empty update request")


def test_existing_names_are_already_exists(stubs: tuple[pb.CollectionsStub, pb.PointsStub]) -> None:
    """collections_ops.rs validate_collection_not_exists: StorageError::AlreadyExists -> ALREADY_EXISTS, for a new
    collection and for an alias named like a collection (toc/collection_meta_ops.rs update_aliases)."""
    collections, _ = stubs
    create = pb.CreateCollection(collection_name="single", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=2, distance=pb.Distance.Dot)))
    err = _refused(lambda: collections.Create(create))
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "Wrong input: Collection `single` already exists!")
    alias = pb.AliasOperations(create_alias=pb.CreateAlias(collection_name="named", alias_name="single"))
    err = _refused(lambda: collections.UpdateAliases(pb.ChangeAliases(actions=[alias])))
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "Wrong input: Collection `single` already exists!")
