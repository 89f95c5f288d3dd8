"""Collections of several shards: ids routed over Qdrant's hash ring, reads merged across shards as Qdrant merges
them, and the points each read materialises from storage counted."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.hash_ring import HashRing, point_id_hashes, siphash24
from engine.embedded.process import EmbeddedProcess
from engine.embedded.server import EmbeddedServer
from engine.embedded.storage_reads import StorageReads
from tests.integration.endpoint_support import both, grpc_client

pytestmark = pytest.mark.integration

DIM = 4


def vec(seed: int) -> list[float]:
    return [round(np.sin(seed * 1.3 + k * 0.7) + 1.5 + 0.01 * seed, 6) for k in range(DIM)]


# -- the ring ------------------------------------------------------------------------------------------------------


def test_siphash_is_the_reference_siphash24() -> None:
    """lib/collection/src/hash_ring.rs hashes with SipHasher24; the SipHash paper's test vector (key 00..0f,
    message 00..0e) pins the implementation, and the vectorised hashing of ids agrees with it byte for byte."""
    k0, k1 = struct.unpack("<QQ", bytes(range(16)))
    assert siphash24(bytes(range(15)), k0, k1) == 0xA129CA6149BE45E5
    ids: list[Any] = [0, 1, 2**63, 2**64 - 1, uuid.UUID(int=5), uuid.uuid4()]
    for pid, got in zip(ids, point_id_hashes(ids)):
        # StableHash for ExtendedPointId (lib/segment/src/types.rs): discriminant, then number or len + bytes
        data = struct.pack("<QQ", 0, pid) if isinstance(pid, int) else struct.pack("<QQ", 1, 16) + pid.bytes
        assert int(got) == siphash24(data)


def _arc_shares(shards: int) -> np.ndarray:
    """Each shard's share of the ring, from first principles: 100 positions per shard at the SipHash of
    (shard u32, index u32); a position owns the arc that ends at it (hashring crate `get`: first node >= key)."""
    nodes = sorted((siphash24(struct.pack("<II", s, i)), s) for s in range(shards) for i in range(100))
    shares = np.zeros(shards)
    previous = nodes[-1][0] - 2**64
    for key, shard in nodes:
        shares[shard] += key - previous
        previous = key
    return shares / 2**64


def test_ring_spreads_ids_by_arc_and_moves_only_to_a_new_shard() -> None:
    """lib/collection/src/hash_ring.rs: ids spread over shards in proportion to their arcs of the fair ring (100
    positions each, so within tens of percent of even); adding a shard moves ids only onto it (test_repartition)."""
    ids = list(range(20_000)) + [uuid.UUID(int=i * 7919) for i in range(1, 5_000)]
    before = HashRing(range(4)).shards_for(ids)
    fractions = np.bincount(before, minlength=4) / len(ids)
    assert np.abs(fractions - _arc_shares(4)).max() < 0.02
    assert fractions.min() > 0.15 and fractions.max() < 0.35
    assert (HashRing([3, 1, 0, 2]).shards_for(ids) == before).all()  # the same id always lands in the same shard
    after = HashRing(range(5)).shards_for(ids)
    moved = before != after
    assert moved.any() and (after[moved] == 4).all()


# -- routing and merging -------------------------------------------------------------------------------------------


def _shard_ids(server: EmbeddedServer, name: str) -> dict[int, list[Any]]:
    assert server.catalog is not None
    with server.catalog.reading(name) as coll:
        return {
            shard_id: [r.id for r in shard.edge.scroll(pb_scroll(10_000))[0]] for shard_id, shard in coll.shards.items()
        }


def pb_scroll(limit: int) -> Any:
    import qdrant_edge as qe

    return qe.ScrollRequest(limit=limit, with_payload=False, with_vector=False)


def test_points_live_in_the_shard_the_ring_names(endpoint_server: EmbeddedServer, endpoint_client: QdrantClient) -> None:
    """lib/collection/src/operations/mod.rs split_iter_by_shard: each point goes to the shard its id hashes to."""
    ids: list[Any] = list(range(200)) + [str(uuid.UUID(int=i * 104729)) for i in range(1, 101)]
    endpoint_client.create_collection("routed", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT), shard_number=3)
    endpoint_client.upsert("routed", [models.PointStruct(id=pid, vector=vec(k)) for k, pid in enumerate(ids)])
    stored = _shard_ids(endpoint_server, "routed")
    assert sorted(stored) == [0, 1, 2] and all(stored.values())
    ring = HashRing(range(3))
    for shard_id, members in stored.items():
        assert (ring.shards_for(members) == shard_id).all()
    assert sum(len(m) for m in stored.values()) == len(ids)
    info = endpoint_client.grpc_collections.CollectionClusterInfo(pb.CollectionClusterInfoRequest(collection_name="routed"))
    assert info.shard_count == 3
    assert {s.shard_id: s.points_count for s in info.local_shards} == {k: len(v) for k, v in stored.items()}


@pytest.mark.filterwarnings("ignore:Local mode performs exact", "ignore:Payload indexes have no effect")
def test_four_shards_answer_like_qdrant_client_local_mode(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    """Reads merged across shards (point_ops.rs scroll_by/retrieve/count, collection/query.rs) give what one
    store gives: qdrant-client's local mode is the reference."""
    ids: list[Any] = [9, 1, 2**40, 3, 0, 57, 12, 4, 100, 2] + [str(uuid.UUID(int=n)) for n in (5, 2**127 + 3, 17)]
    ids += list(range(200, 260))

    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(
            name,
            vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
            sparse_vectors_config={"bm": models.SparseVectorParams()},
            shard_number=4,
        )
        client.upsert(
            name,
            [
                models.PointStruct(
                    id=pid,
                    vector={"": vec(k), "bm": models.SparseVector(indices=[k % 5, 10 + k], values=[1.0, 0.5])},
                    payload={"k": k, "kind": "a" if k % 2 else "b"},
                )
                for k, pid in enumerate(ids)
            ],
        )
        client.create_payload_index(name, "k", models.PayloadSchemaType.INTEGER)
        pages, offset = [], None
        while True:
            recs, offset = client.scroll(name, limit=7, offset=offset, with_payload=True)
            pages.append(([r.id for r in recs], [r.payload for r in recs], offset))
            if offset is None:
                break
        flt = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value="a"))])
        ordered = client.scroll(name, limit=5, order_by=models.OrderBy(key="k", direction=models.Direction.DESC))[0]
        near = client.query_points(name, query=vec(3), limit=6, offset=2, with_payload=True)
        filtered = client.query_points(name, query=vec(8), limit=4, query_filter=flt)
        hybrid = client.query_points(
            name,
            prefetch=[models.Prefetch(query=vec(5), limit=10), models.Prefetch(query=models.SparseVector(indices=[15, 13, 30], values=[3.0, 2.0, 1.0]), using="bm", limit=10)],
            query=models.FusionQuery(fusion=models.Fusion.RRF),
            limit=5,
        )
        client.update_vectors(name, [models.PointVectors(id=pid, vector={"": vec(500 + k)}) for k, pid in enumerate(ids[:20])])
        client.set_payload(name, payload={"tag": "x"}, points=ids[5:15])
        client.delete(name, points_selector=models.PointIdsList(points=ids[:3]))
        client.delete(name, points_selector=models.FilterSelector(filter=models.Filter(must=[models.FieldCondition(key="k", range=models.Range(gte=60))])))
        got = client.retrieve(name, [ids[4], ids[0], 999, ids[30]], with_vectors=True)
        return (
            pages,
            [r.id for r in ordered],
            [(p.id, round(p.score, 4), p.payload) for p in near.points],
            [(p.id, round(p.score, 4)) for p in filtered.points],
            [(p.id, round(p.score, 4)) for p in hybrid.points],
            [(r.id, r.payload, [round(x, 4) for x in r.vector[""]]) for r in got],  # type: ignore[index]
            client.count(name).count,
            client.count(name, count_filter=flt).count,
        )

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert len(remote[0]) == 11 and remote[6] == len(ids) - 3 - 13
    # Where local mode differs from the server: a repeated id is answered once (point_ops.rs retrieve dedups).
    client, _, name = endpoint_pair
    assert [r.id for r in client.retrieve(name, [ids[4], ids[30], ids[4]])] == [ids[4], ids[30]]


def test_scroll_reads_limit_plus_one_points_from_every_shard(endpoint_server: EmbeddedServer, endpoint_client: QdrantClient) -> None:
    """point_ops.rs scroll_by: every shard is asked for limit + 1 points with the payload when asked for it, so a
    scroll over S shards materialises S x (limit + 1) points; Get reads only the points it names."""
    for name, shards in (("reads1", 1), ("reads4", 4)):
        endpoint_client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT), shard_number=shards)
        endpoint_client.upsert(name, [models.PointStruct(id=i, vector=vec(i), payload={"i": i}) for i in range(400)])
    endpoint_server.reset_storage_reads()
    for name in ("reads1", "reads4"):
        endpoint_client.scroll(name, limit=10, with_payload=True)
        endpoint_client.scroll(name, limit=10, with_payload=False)
        endpoint_client.retrieve(name, list(range(10)), with_payload=True)
    reads = endpoint_server.storage_reads()
    assert reads["reads1"] == StorageReads(with_payload=11 + 10, without_payload=11)
    assert reads["reads4"] == StorageReads(with_payload=4 * 11 + 10, without_payload=4 * 11)
    endpoint_server.reset_storage_reads()
    assert endpoint_server.storage_reads() == {}


def test_update_vectors_of_a_missing_point_reports_the_shards_that_failed(endpoint_client: QdrantClient) -> None:
    """collection/point_ops.rs update_from_client: when some shards fail, the first error's status, worded as
    CollectionError::InconsistentShardFailure; the present points were applied."""
    endpoint_client.create_collection("partial", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT), shard_number=2)
    endpoint_client.upsert("partial", [models.PointStruct(id=i, vector=vec(i)) for i in range(20)])
    ring = HashRing(range(2))
    present = next(i for i in range(20) if ring.shard_for(i) != ring.shard_for(42))
    with pytest.raises(grpc.RpcError) as err:
        endpoint_client.update_vectors("partial", [models.PointVectors(id=present, vector=[9.0] * DIM), models.PointVectors(id=42, vector=[9.0] * DIM)])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Not found: 1 out of 2 shards failed to apply operation. First error captured: No point with id 42 found"
    assert endpoint_client.retrieve("partial", [present], with_vectors=True)[0].vector == [9.0] * DIM


def test_shards_survive_a_restart(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path) as server:
        client = grpc_client(server.port)
        client.create_collection("kept", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT), shard_number=3)
        client.upsert("kept", [models.PointStruct(id=i, vector=vec(i)) for i in range(60)])
        before = _shard_ids(server, "kept")
        client.close()
    with EmbeddedServer(tmp_path) as server:
        client = grpc_client(server.port)
        assert _shard_ids(server, "kept") == before
        assert client.count("kept").count == 60 and client.get_collection("kept").config.params.shard_number == 3
        client.close()


def test_a_child_process_writes_its_storage_reads_to_the_stats_file(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    with EmbeddedProcess(tmp_path / "data", stats_file=stats) as proc:
        client = grpc_client(proc.port)
        client.create_collection("s", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT), shard_number=2)
        client.upsert("s", [models.PointStruct(id=i, vector=vec(i)) for i in range(50)])
        client.scroll("s", limit=5, with_payload=False)
        client.close()
        assert proc.stop() == 0
    assert proc.storage_reads() == {"s": StorageReads(with_payload=0, without_payload=2 * 6)}
