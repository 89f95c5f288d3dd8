"""Multivectors (ColBERT-style, MaxSim): stored through qdrant-edge's MultiVectorConfig and answered as Qdrant's
gRPC answers them (MultiDenseVector in and out), congruent with qdrant-client's local mode."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.hash_ring import HashRing
from engine.embedded.server import EmbeddedServer
from tests.integration.endpoint_support import both

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Local mode performs exact")]

DIM = 4
MAXSIM = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)


def vec(seed: float) -> list[float]:
    return [round(math.sin(seed * 1.7 + k * 0.9) + 1.2, 6) for k in range(DIM)]


def multi(seed: int, tokens: int) -> list[list[float]]:
    return [vec(seed * 10 + t) for t in range(tokens)]


def rounded(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in sorted(v.items())}
    if v and isinstance(v[0], list):
        return [rounded(x) for x in v]
    return [round(x, 4) for x in v]


@pytest.mark.parametrize("shards", [1, 2])
def test_named_multivector_round_trip_and_maxsim_queries(endpoint_pair: tuple[QdrantClient, QdrantClient, str], shards: int) -> None:
    """Per-vector MultiVectorConfig (MaxSim), on_disk and HNSW `m: 0` for a multivector kept only for rescoring;
    upsert, scroll, retrieve, update-vectors and queries (nearest, and a dense prefetch rescored by MaxSim)."""

    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(
            name,
            vectors_config={
                "dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
                "colbert": models.VectorParams(
                    size=DIM, distance=models.Distance.DOT, multivector_config=MAXSIM, on_disk=True,
                    hnsw_config=models.HnswConfigDiff(m=0),
                ),
            },
            shard_number=shards,
        )
        client.upsert(
            name,
            [models.PointStruct(id=i, vector={"dense": vec(i), "colbert": multi(i, 2 + i % 3)}, payload={"i": i}) for i in range(12)]
            + [models.PointStruct(id=100, vector={"dense": vec(100)})],  # no multivector at all
        )
        client.update_vectors(name, [models.PointVectors(id=3, vector={"colbert": multi(77, 4)})])
        scrolled, _ = client.scroll(name, limit=20, with_vectors=True)
        got = client.retrieve(name, [3, 100], with_vectors=["colbert"])
        near = client.query_points(name, query=multi(5, 3), using="colbert", limit=4, with_vectors=["colbert"])
        rescored = client.query_points(
            name, prefetch=[models.Prefetch(query=vec(2), using="dense", limit=6)], query=multi(2, 2), using="colbert", limit=3
        )
        params = client.get_collection(name).config.params.vectors["colbert"]  # type: ignore[index]
        return (
            [(r.id, rounded(r.vector)) for r in scrolled],
            [(r.id, rounded(r.vector)) for r in got],
            [(p.id, round(p.score, 3), rounded(p.vector)) for p in near.points],
            [(p.id, round(p.score, 3)) for p in rescored.points],
            (params.multivector_config, params.on_disk, params.hnsw_config.m),  # type: ignore[union-attr]
        )

    remote, local = both(endpoint_pair, ops)
    if shards > 1:
        # collection/query.rs: each shard rescores its own prefetch candidates, then the shards' answers merge by
        # score; the oracle is local mode asked the same per shard (ids split by the hash ring), then merged.
        _, oracle, name = endpoint_pair
        owners = HashRing(range(shards)).shards_for(list(range(12)) + [100])
        per_shard = []
        for shard in range(shards):
            members = [pid for pid, owner in zip(list(range(12)) + [100], owners) if owner == shard]
            only = models.Filter(must=[models.HasIdCondition(has_id=members)])
            prefetch = models.Prefetch(query=vec(2), using="dense", limit=6, filter=only)
            per_shard += oracle.query_points(name, prefetch=[prefetch], query=multi(2, 2), using="colbert", limit=3).points
        merged = sorted(per_shard, key=lambda p: (p.score, p.id), reverse=True)[:3]
        assert remote[3] == [(p.id, round(p.score, 3)) for p in merged]
        remote, local = remote[:3] + remote[4:], local[:3] + local[4:]
    assert remote == local
    assert remote[-1] == (MAXSIM, True, 0)
    assert len(remote[1][0][1]["colbert"]) == 4 and remote[1][1][1] == {}  # replaced multivector; none stored


def test_unnamed_multivector_collection(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID, multivector_config=MAXSIM))
        client.upsert(name, [models.PointStruct(id=i, vector=multi(i, 1 + i % 4)) for i in range(8)])
        recs, _ = client.scroll(name, limit=10, with_vectors=True)
        hits = client.query_points(name, query=multi(3, 2), limit=3)
        return [(r.id, rounded(r.vector)) for r in recs], [(p.id, round(p.score, 3)) for p in hits.points]

    remote, local = both(endpoint_pair, ops)
    assert remote == local


def test_multivector_wire_format_and_refusals(endpoint_server: EmbeddedServer) -> None:
    """Output as lib/api/src/conversions/vectors.rs writes it (VectorOutput.multi_dense); input validated as
    common/validation.rs validate_multi_vector_by_length (non-empty, same dimension); a multivector into a plain
    dense vector is "Wrong usage of multi vectors" (segment OperationError::WrongMulti)."""
    with grpc.insecure_channel(endpoint_server.address) as channel:
        collections, points = pb.CollectionsStub(channel), pb.PointsStub(channel)
        mv = pb.VectorParams(size=2, distance=pb.Distance.Dot, multivector_config=pb.MultiVectorConfig(comparator=pb.MultiVectorComparator.MaxSim))
        plain = pb.VectorParams(size=2, distance=pb.Distance.Dot)
        collections.Create(pb.CreateCollection(collection_name="wire", vectors_config=pb.VectorsConfig(params_map=pb.VectorParamsMap(map={"mv": mv, "d": plain}))))

        def upsert(name: str, vectors: list[list[float]]) -> None:
            vector = pb.Vector(multi_dense=pb.MultiDenseVector(vectors=[pb.DenseVector(data=v) for v in vectors]))
            point = pb.PointStruct(id=pb.PointId(num=1), vectors=pb.Vectors(vectors=pb.NamedVectors(vectors={name: vector})))
            points.Upsert(pb.UpsertPoints(collection_name="wire", wait=True, points=[point]))

        upsert("mv", [[1.0, 2.0], [3.0, 4.0]])
        got = points.Get(pb.GetPoints(collection_name="wire", ids=[pb.PointId(num=1)], with_vectors=pb.WithVectorsSelector(enable=True)))
        out = got.result[0].vectors.vectors.vectors["mv"]
        assert out.WhichOneof("vector") == "multi_dense"
        assert [list(v.data) for v in out.multi_dense.vectors] == [[1.0, 2.0], [3.0, 4.0]]
        for bad, message in (([], "multi vector must not be empty"), ([[1.0, 2.0], [1.0]], "same dimension")):
            with pytest.raises(grpc.RpcError) as err:
                upsert("mv", bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            upsert("mv", [[1.0, 2.0, 3.0]])
        assert err.value.details() == "Wrong input: Vector dimension error: expected dim: 2, got 3"
        with pytest.raises(grpc.RpcError) as err:
            upsert("d", [[1.0, 2.0]])
        assert err.value.details() == "Wrong input: Wrong usage of multi vectors"
