"""The embedded endpoint answers like Qdrant: the same operations through qdrant-client against the endpoint (gRPC)
and against qdrant-client's local mode (":memory:", the client's own reference implementation) give the same
results. Where local mode lacks a feature, the endpoint's behaviour is asserted directly."""

from __future__ import annotations

import math
import uuid
from typing import Any

import grpc
import pytest
from qdrant_client import QdrantClient, models

from tests.integration.endpoint_support import both

pytestmark = pytest.mark.integration

DIM = 4


def vec(seed: int) -> list[float]:
    # distinct directions for distinct seeds, so nearest-neighbour orders have no ties
    return [round(math.sin(seed * 1.3 + k * 0.7) + 1.5 + 0.01 * seed, 6) for k in range(DIM)]


def records(recs: list[models.Record]) -> list[tuple[Any, Any, Any]]:
    """Comparable form of records: id, payload, vector rounded to float32 noise."""

    def rounded(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in sorted(v.items())}
        if isinstance(v, models.SparseVector):
            return (tuple(v.indices), tuple(round(x, 5) for x in v.values))
        return tuple(round(x, 5) for x in v)

    return [(r.id, r.payload, rounded(r.vector)) for r in recs]


def scroll_pages(client: QdrantClient, name: str, page: int) -> list[tuple[list[Any], Any]]:
    pages, offset = [], None
    while True:
        recs, offset = client.scroll(name, limit=page, offset=offset, with_payload=False)
        pages.append(([r.id for r in recs], offset))
        if offset is None:
            return pages


UUIDS = [str(uuid.UUID(int=n)) for n in (5, 2**127 + 3, 17, 2**64)] + ["0a8e1b5c-7f9e-4d0b-9f0e-2b1d9c3e4f5a"]


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param([9, 1, 2**40, 3, 0, 57, 12, 4, 100, 2], id="int"),
        pytest.param(UUIDS, id="uuid"),
        pytest.param([7, UUIDS[0], 3, UUIDS[1], 2**63 + 1, UUIDS[2], 0, UUIDS[3]], id="mixed"),
    ],
)
def test_scroll_order_and_pagination(endpoint_pair: tuple[QdrantClient, QdrantClient, str], ids: list[Any]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
        client.upsert(name, [models.PointStruct(id=i, vector=vec(k), payload={"k": k}) for k, i in enumerate(ids)])
        full, _ = client.scroll(name, limit=100, with_vectors=True)
        start = full[2].id  # offset is inclusive
        from_offset, _ = client.scroll(name, limit=3, offset=start)
        return records(full), [r.id for r in from_offset], scroll_pages(client, name, 3), scroll_pages(client, name, 1)

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    full_ids = [r[0] for r in remote[0]]
    ints = sorted(i for i in full_ids if isinstance(i, int))
    uuids = sorted((i for i in full_ids if isinstance(i, str)), key=uuid.UUID)
    assert full_ids == ints + uuids  # integer ids first, then UUIDs by value
    assert remote[1] == full_ids[2:5]


def test_update_modes(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID))
        client.upsert(name, [models.PointStruct(id=i, vector=vec(i), payload={"v": "orig"}) for i in (1, 2)])
        client.upsert(
            name,
            [models.PointStruct(id=i, vector=vec(10 + i), payload={"v": "insert_only"}) for i in (2, 3)],
            update_mode=models.UpdateMode.INSERT_ONLY,
        )
        client.upsert(
            name,
            [models.PointStruct(id=i, vector=vec(20 + i), payload={"v": "update_only"}) for i in (1, 4)],
            update_mode=models.UpdateMode.UPDATE_ONLY,
        )
        client.upsert(name, [models.PointStruct(id=5, vector=vec(5), payload={"v": "upsert"})], update_mode=models.UpdateMode.UPSERT)
        recs, _ = client.scroll(name, limit=100, with_vectors=True)
        return records(recs)

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert {r[0]: r[1]["v"] for r in remote} == {1: "update_only", 2: "orig", 3: "insert_only", 5: "upsert"}


def test_update_vectors_keeps_other_named_vectors(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(
            name,
            vectors_config={
                "old": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
                "new": models.VectorParams(size=2, distance=models.Distance.DOT),
            },
        )
        client.upsert(name, [models.PointStruct(id=i, vector={"old": vec(i)}, payload={"i": i}) for i in range(3)])
        client.update_vectors(name, [models.PointVectors(id=i, vector={"new": [float(i), 1.0]}) for i in (0, 2)])
        client.update_vectors(name, [models.PointVectors(id=0, vector={"new": [5.0, 5.0]})])  # twice: harmless
        recs = client.retrieve(name, [0, 1, 2], with_vectors=True)
        hits = client.query_points(name, query=[1.0, 0.0], using="new", limit=5, with_payload=True)
        return records(sorted(recs, key=lambda r: r.id)), [(p.id, round(p.score, 4)) for p in hits.points]

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert set(remote[0][0][2]) == {"old", "new"} and set(remote[0][1][2]) == {"old"}


def test_aliases_create_switch_delete(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        blue, green, alias = f"{name}_blue", f"{name}_green", f"{name}_live"
        for coll, count in ((blue, 2), (green, 3)):
            client.create_collection(coll, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
            client.upsert(coll, [models.PointStruct(id=i, vector=vec(i)) for i in range(count)])
        seen = []
        client.update_collection_aliases(
            change_aliases_operations=[models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=blue, alias_name=alias))]
        )
        seen.append((client.count(alias).count, client.get_collection_aliases(blue).aliases))
        client.update_collection_aliases(  # the atomic switch: delete + create in one request
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)),
                models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=green, alias_name=alias)),
            ]
        )
        seen.append((client.count(alias).count, client.get_aliases().aliases))
        client.update_collection_aliases(
            change_aliases_operations=[models.RenameAliasOperation(rename_alias=models.RenameAlias(old_alias_name=alias, new_alias_name=alias + "2"))]
        )
        seen.append(sorted((a.alias_name, a.collection_name) for a in client.get_aliases().aliases))
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias + "2"))]
        )
        seen.append((client.get_aliases().aliases, client.collection_exists(alias)))
        return seen

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert remote[0][0] == 2 and remote[1][0] == 3


def test_counts_and_filters(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
        client.upsert(
            name,
            [
                models.PointStruct(
                    id=i,
                    vector=vec(i),
                    payload={"kind": "a" if i % 2 else "b", "n": i, "flag": i % 3 == 0, "opt": None if i % 4 == 0 else i, "tags": [] if i == 5 else ["t"]},
                )
                for i in range(12)
            ],
        )
        f = models.FieldCondition
        filters = [
            None,
            models.Filter(must=[f(key="kind", match=models.MatchValue(value="a"))]),
            models.Filter(must=[f(key="n", range=models.Range(gte=3, lt=9))], must_not=[f(key="flag", match=models.MatchValue(value=True))]),
            models.Filter(should=[f(key="n", match=models.MatchValue(value=1)), models.HasIdCondition(has_id=[7, 8])]),
            models.Filter(must=[models.IsNullCondition(is_null=models.PayloadField(key="opt"))]),
            models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="tags"))]),
            models.Filter(must=[f(key="kind", match=models.MatchAny(any=["a", "zzz"]))]),
        ]
        counts = [client.count(name, count_filter=flt, exact=True).count for flt in filters]
        scrolled = [[r.id for r in client.scroll(name, scroll_filter=flt, limit=50)[0]] for flt in filters]
        client.delete(name, points_selector=models.FilterSelector(filter=filters[1]))
        client.delete(name, points_selector=models.PointIdsList(points=[0, 2, 999]))
        return counts, scrolled, client.count(name).count, client.get_collection(name).points_count

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert remote[0][0] == 12 and remote[2] == 4


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_query_nearest_threshold_offset_and_sample(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(
            name,
            vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
            sparse_vectors_config={"bm": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        client.upsert(
            name,
            [
                models.PointStruct(id=i, vector={"": vec(i), "bm": models.SparseVector(indices=[i % 3, 10 + i], values=[1.0, 0.5])}, payload={"i": i})
                for i in range(20)
            ],
        )
        q = vec(3)
        dense = client.query_points(name, query=q, limit=5, offset=1, with_payload=True, search_params=models.SearchParams(exact=True, hnsw_ef=64))
        thresholded = client.query_points(name, query=q, limit=20, score_threshold=0.99)
        flt = models.Filter(must=[models.FieldCondition(key="i", range=models.Range(lt=10))])
        filtered = client.query_points(name, query=q, limit=3, query_filter=flt, with_vectors=True)
        sparse = client.query_points(name, query=models.SparseVector(indices=[1], values=[1.0]), using="bm", limit=4)
        sample = client.query_points(name, query=models.SampleQuery(sample=models.Sample.RANDOM), limit=50)
        hybrid = client.query_points(
            name,
            prefetch=[models.Prefetch(query=q, limit=8), models.Prefetch(query=models.SparseVector(indices=[1, 13], values=[1.0, 1.0]), using="bm", limit=8)],
            query=models.FusionQuery(fusion=models.Fusion.RRF),
            limit=5,
        )
        batch = client.query_batch_points(name, [models.QueryRequest(query=vec(k), limit=3) for k in (1, 7)])

        def scored(resp: models.QueryResponse) -> list[tuple[Any, float]]:
            return [(p.id, round(p.score, 4)) for p in resp.points]

        return (
            scored(dense),
            [p.payload for p in dense.points],
            scored(thresholded),
            records(filtered.points),  # type: ignore[arg-type]
            sorted(p.id for p in sparse.points),
            sorted(p.id for p in sample.points),
            [p.id for p in hybrid.points][:1],
            [scored(r) for r in batch],
        )

    remote, local = both(endpoint_pair, ops)
    assert remote[:4] == local[:4]
    assert remote[6:] == local[6:]  # hybrid: the fused winner (first in both prefetches); batch: as alone
    assert remote[6] == [3]
    assert len(remote[4]) == len(local[4])  # sparse IDF ties may order differently; the hits must match in number
    assert remote[5] == local[5] == list(range(20))  # random sample: every point once, whatever the order


def test_payload_round_trip(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    payload = {
        "nested": {"a": {"b": [1, 2.5, {"c": None}], "empty": {}}, "list": []},
        "unicode": "naïve – 日本語 – 💥",
        "int": 2**53 + 1,
        "negative": -7,
        "float": 0.1,
        "whole_float": 3.0,
        "bools": [True, False],
        "null": None,
        "mixed": [1, "two", 3.0, None, [4], {"five": 5}],
    }

    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
        client.upsert(name, [models.PointStruct(id=1, vector=vec(1), payload=payload)])
        got = client.retrieve(name, [1])[0].payload
        client.set_payload(name, payload={"added": {"x": 1}}, points=[1])
        client.delete_payload(name, keys=["negative"], points=[1])
        after = client.retrieve(name, [1])[0].payload
        include = client.scroll(name, with_payload=models.PayloadSelectorInclude(include=["unicode", "int"]))[0][0].payload
        exclude = client.scroll(name, with_payload=models.PayloadSelectorExclude(exclude=["nested", "mixed"]))[0][0].payload
        return got, after, include, exclude

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    got = remote[0]
    assert got == payload
    assert type(got["whole_float"]) is float and type(got["int"]) is int


def test_vector_name_add_and_drop(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    def ops(client: QdrantClient, name: str) -> Any:
        client.create_collection(name, vectors_config={"old": models.VectorParams(size=DIM, distance=models.Distance.COSINE)})
        client.upsert(name, [models.PointStruct(id=i, vector={"old": vec(i)}) for i in range(3)])
        client.create_vector_name(name, "new", models.DenseVectorNameConfig(dense=models.DenseVectorConfig(size=2, distance=models.Distance.DOT)))
        client.create_vector_name(name, "new", models.DenseVectorNameConfig(dense=models.DenseVectorConfig(size=2, distance=models.Distance.DOT)))
        client.create_vector_name(name, "bm25", models.SparseVectorNameConfig(sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF)))
        client.update_vectors(name, [models.PointVectors(id=1, vector={"new": [1.0, 2.0]})])
        info = client.get_collection(name).config.params
        with_new = records(sorted(client.retrieve(name, [0, 1], with_vectors=True), key=lambda r: r.id))
        client.delete_vector_name(name, "old")
        client.delete_vector_name(name, "never_existed")
        after = records(sorted(client.retrieve(name, [0, 1], with_vectors=True), key=lambda r: r.id))
        info_after = client.get_collection(name).config.params
        return (
            sorted(info.vectors),  # type: ignore[arg-type]
            sorted(info.sparse_vectors or {}),
            with_new,
            after,
            sorted(info_after.vectors),  # type: ignore[arg-type]
        )

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert remote[4] == ["new"]


def test_missing_point_update_vectors_is_not_found(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    remote, _, name = endpoint_pair
    remote.create_collection(name, vectors_config={"a": models.VectorParams(size=DIM, distance=models.Distance.DOT)})
    with pytest.raises(grpc.RpcError) as err:
        remote.update_vectors(name, [models.PointVectors(id=42, vector={"a": vec(1)})])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Not found: No point with id 42 found"


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_queries_by_point_id_recommend_discover_context(endpoint_pair: tuple[QdrantClient, QdrantClient, str]) -> None:
    """Point ids as query inputs are read from the collection, or from `lookup_from`, and excluded from the results
    when they come from the searched collection (universal_query/collection_query.rs); recommend strategies,
    discover and context as Qdrant scores them (recommendations.rs)."""

    def ops(client: QdrantClient, name: str) -> Any:
        other = f"{name}_other"
        for coll, shards in ((name, 2), (other, 1)):
            client.create_collection(coll, vectors_config={"v": models.VectorParams(size=DIM, distance=models.Distance.COSINE)}, shard_number=shards)
        client.upsert(name, [models.PointStruct(id=i, vector={"v": vec(i)}) for i in range(30)])
        client.upsert(other, [models.PointStruct(id=100 + i, vector={"v": vec(50 + i)}) for i in range(3)])

        def top(query: Any, **kw: Any) -> list[tuple[Any, float]]:
            hits = client.query_points(name, query=query, using="v", limit=5, **kw).points
            return [(p.id, round(p.score, 4)) for p in hits]

        pair = models.ContextPair(positive=3, negative=17)
        return (
            top(4),  # nearest to point 4, point 4 itself left out
            top(models.RecommendQuery(recommend=models.RecommendInput(positive=[4, 9], negative=[20]))),
            top(models.RecommendQuery(recommend=models.RecommendInput(positive=[4], negative=[20], strategy=models.RecommendStrategy.BEST_SCORE))),
            top(models.RecommendQuery(recommend=models.RecommendInput(positive=[4], negative=[20], strategy=models.RecommendStrategy.SUM_SCORES))),
            top(models.DiscoverQuery(discover=models.DiscoverInput(target=5, context=[pair]))),
            [score for _, score in top(models.ContextQuery(context=[pair]))],  # ties at 0: ids are arbitrary
            top(101, lookup_from=models.LookupLocation(collection=other, vector="v")),  # nothing excluded here
        )

    remote, local = both(endpoint_pair, ops)
    assert remote == local
    assert 4 not in [pid for pid, _ in remote[0]] and len(remote[6]) == 5
