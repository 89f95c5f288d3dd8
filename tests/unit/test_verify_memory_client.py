"""An in-memory Qdrant for the verify room's unit tests, implementing only what verify calls (collection_info,
scroll, get, count, sample_ids, Points.Query with dense / multivector / sparse inputs and RRF prefetch), answering in
Qdrant's protobuf shapes and refusing what a strict-mode server refuses; and the tests that hold the fake to that.

Faults are planted on the data (`add`, `drop`, `hnsw_misses`) and every request is recorded in `calls`, so a test can
assert that verify kept inside strict mode and passed shard keys."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.errors import QdrantRequestError
from engine.qdrant import wire
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy, RetryStats
from engine.qdrant.strict import StrictMode
from engine.qdrant.values import payload_from_python

RRF_K = 2


@dataclass
class Spec:
    """One vector of a collection: its size and distance; `multi` for a MaxSim multivector, `sparse` for sparse."""

    size: int = 0
    distance: int = pb.Distance.Cosine
    multi: bool = False
    sparse: bool = False


@dataclass
class Call:
    method: str
    collection: str
    limit: int | None = None
    ids: int | None = None
    exact: bool = False
    shard_key: Any = None
    prefetch: int = 0  # prefetches of a Query (2 for a hybrid query)


@dataclass
class MemCollection:
    vectors: dict[str, Spec]  # "" alone: one unnamed vector
    strict: pb.StrictModeConfig | None = None
    indexed: int = 0
    points: dict[Any, tuple[dict, dict]] = field(default_factory=dict)  # id -> (payload, name -> value)
    keys: dict[Any, Any] = field(default_factory=dict)  # id -> shard key
    hnsw_misses: set = field(default_factory=set)  # ids a non-exact search never finds (a broken index)

    def info(self) -> pb.CollectionInfo:
        info = pb.CollectionInfo(points_count=len(self.points), indexed_vectors_count=self.indexed)
        params = info.config.params
        dense = {n: s for n, s in self.vectors.items() if not s.sparse}
        for name, spec in dense.items():
            vp = pb.VectorParams(size=spec.size, distance=spec.distance)
            if spec.multi:
                vp.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
            if name == "":
                params.vectors_config.params.CopyFrom(vp)
            else:
                params.vectors_config.params_map.map[name].CopyFrom(vp)
        for name, spec in self.vectors.items():
            if spec.sparse:
                params.sparse_vectors_config.map[name].CopyFrom(pb.SparseVectorParams())
        if self.strict is not None:
            info.config.strict_mode_config.CopyFrom(self.strict)
        return info


def _normalised(value: Any, spec: Spec) -> Any:
    """What Qdrant stores: cosine rows unit-normalised on insert (a zero row stays zero)."""
    if spec.sparse or spec.distance != pb.Distance.Cosine:
        return value
    v = np.asarray(value, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, v / np.where(norms > 0, norms, 1), v)
    return out.astype(np.float32)


def _output(value: Any, spec: Spec) -> pb.VectorOutput:
    if spec.sparse:
        idx, vals = value
        return pb.VectorOutput(sparse=pb.SparseVector(indices=[int(i) for i in idx], values=[float(x) for x in vals]))
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 2:
        return pb.VectorOutput(multi_dense=pb.MultiDenseVector(vectors=[pb.DenseVector(data=r.tolist()) for r in arr]))
    return pb.VectorOutput(dense=pb.DenseVector(data=arr.tolist()))


def _score(query: Any, value: Any, spec: Spec) -> float:
    if spec.sparse:
        q = dict(zip(map(int, query[0]), map(float, query[1])))
        return float(sum(q.get(int(i), 0.0) * float(v) for i, v in zip(*value)))
    q, d = np.asarray(query, dtype=np.float64), np.asarray(value, dtype=np.float64)
    if spec.distance == pb.Distance.Cosine:
        q = q / (np.linalg.norm(q, axis=-1, keepdims=True) + 1e-30)
    if spec.multi:
        return float(np.sum(np.max(q @ d.T, axis=1)))
    if spec.distance == pb.Distance.Euclid:
        return float(np.linalg.norm(q - d))
    return float(np.dot(q, d))


def _input(vin: pb.VectorInput) -> Any:
    kind = vin.WhichOneof("variant")
    if kind == "dense":
        return np.asarray(vin.dense.data, dtype=np.float32)
    if kind == "multi_dense":
        return np.asarray([list(v.data) for v in vin.multi_dense.vectors], dtype=np.float32)
    if kind == "sparse":
        return (list(vin.sparse.indices), list(vin.sparse.values))
    raise QdrantRequestError(f"the memory client does not take {kind} inputs")


class _Reply:
    def __init__(self, result: list[pb.ScoredPoint]) -> None:
        self.result = result


class MemoryQdrant:
    """The client surface verify uses, over dicts. `points` is itself, so `client.points.Query` is the Query RPC."""

    def __init__(self) -> None:
        self.collections: dict[str, MemCollection] = {}
        self.calls: list[Call] = []
        self.endpoint = Endpoint("memory", 0)
        self.policy = RetryPolicy(max_attempts=1)
        self.stats = RetryStats()
        self.points = self

    def __call__(self) -> MemoryQdrant:  # a client factory handing out this one client
        return self

    def close(self) -> None:
        pass

    # --- setting up ---------------------------------------------------------------------------------------------
    def create(self, name: str, vectors: dict[str, Spec], *, strict: pb.StrictModeConfig | None = None,
               indexed: int = 0) -> MemCollection:
        self.collections[name] = MemCollection(vectors, strict, indexed)
        return self.collections[name]

    def add(self, collection: str, pid: Any, payload: dict, vectors: dict[str, Any], shard_key: Any = None) -> None:
        c = self.collections[collection]
        c.points[pid] = (dict(payload), {n: _normalised(v, c.vectors[n]) for n, v in vectors.items()})
        if shard_key is not None:
            c.keys[pid] = shard_key

    def drop(self, collection: str, pid: Any) -> None:
        del self.collections[collection].points[pid]

    def set_vector(self, collection: str, pid: Any, name: str, value: Any) -> None:
        """Stored as given (no normalisation): a planted fault."""
        self.collections[collection].points[pid][1][name] = value

    # --- reading ------------------------------------------------------------------------------------------------
    def _strict(self, c: MemCollection) -> StrictMode:
        return StrictMode.from_proto(c.strict) if c.strict is not None else StrictMode()

    def _limit_ok(self, c: MemCollection, limit: int) -> None:
        s = self._strict(c)
        if s.enabled and s.max_query_limit is not None and limit > s.max_query_limit:
            raise QdrantRequestError(f"Limit exceeded {limit} > {s.max_query_limit} for \"limit\"")

    def _ids(self, c: MemCollection, shard_key: Any) -> list:
        ids = [pid for pid in c.points if shard_key is None or c.keys.get(pid) == shard_key]
        return sorted(ids, key=wire.id_key)

    def _retrieved(self, c: MemCollection, pid: Any, with_payload: bool, names: Any) -> pb.RetrievedPoint:
        payload, vectors = c.points[pid]
        out = pb.RetrievedPoint(id=wire.point_id(pid))
        if with_payload:
            for k, v in payload_from_python(payload).items():
                out.payload[k].CopyFrom(v)
        if names is True:
            names = list(vectors)
        for name in names or []:
            if name not in vectors:
                continue
            vo = _output(vectors[name], c.vectors[name])
            if list(c.vectors) == [""]:
                out.vectors.vector.CopyFrom(vo)
            else:
                out.vectors.vectors.vectors[name].CopyFrom(vo)
        return out

    def collection_info(self, name: str) -> pb.CollectionInfo | None:
        c = self.collections.get(name)
        return c.info() if c is not None else None

    def scroll(self, collection: str, offset: Any, limit: int, *, with_payload: Any = True, with_vectors: Any = False,
               flt: Any = None, shard_key: Any = None) -> tuple[list[pb.RetrievedPoint], Any]:
        c = self.collections[collection]
        self.calls.append(Call("scroll", collection, limit=limit, shard_key=shard_key))
        self._limit_ok(c, limit)
        if isinstance(with_vectors, pb.WithVectorsSelector):
            with_vectors = list(with_vectors.include.names) or with_vectors.enable
        ids = self._ids(c, shard_key)
        start = 0 if offset is None else next((i for i, p in enumerate(ids) if wire.id_key(p) >= wire.id_key(offset)),
                                              len(ids))
        page = ids[start:start + limit]
        nxt = ids[start + limit] if start + limit < len(ids) else None
        return [self._retrieved(c, p, bool(with_payload), with_vectors) for p in page], nxt

    def get(self, collection: str, ids: list, *, with_payload: bool = True, with_vectors: Any = False,
            shard_key: Any = None) -> list[pb.RetrievedPoint]:
        c = self.collections[collection]
        self.calls.append(Call("get", collection, ids=len(ids), shard_key=shard_key))
        s = self._strict(c)
        if s.enabled and s.read_rate_limit is not None and len(ids) > s.read_rate_limit:
            raise QdrantRequestError("request is larger than rate limiter capacity")
        present = set(self._ids(c, shard_key))
        return [self._retrieved(c, p, with_payload, with_vectors) for p in ids if p in present]

    def count(self, collection: str, exact: bool = True, flt: Any = None) -> int:
        c = self.collections[collection]
        self.calls.append(Call("count", collection, exact=exact))
        if exact and not self._strict(c).exact_allowed():
            raise QdrantRequestError("Exact search disabled by strict mode")
        return len(c.points)

    def sample_ids(self, collection: str, n: int, shard_key: Any = None) -> list:
        c = self.collections[collection]
        self.calls.append(Call("sample", collection, limit=n, shard_key=shard_key))
        self._limit_ok(c, n)
        ids = self._ids(c, shard_key)
        return random.Random(len(self.calls)).sample(ids, min(n, len(ids)))

    def _nearest(self, c: MemCollection, vin: pb.VectorInput, using: str, limit: int, exact: bool,
                 shard_key: Any) -> list[tuple[Any, float]]:
        spec = c.vectors[using]
        query = _input(vin)
        scored = []
        for pid in self._ids(c, shard_key):
            value = c.points[pid][1].get(using)
            if value is None or (not exact and pid in c.hnsw_misses):
                continue
            if not spec.sparse and np.shape(value)[-1] != np.shape(query)[-1]:
                continue  # a planted wrong-size vector: Qdrant would never hold it, so no search can score it
            scored.append((pid, _score(query, value, spec)))
        lower = spec.distance == pb.Distance.Euclid and not spec.sparse
        return sorted(scored, key=lambda x: (x[1] if lower else -x[1], wire.id_key(x[0])))[:limit]

    def Query(self, req: pb.QueryPoints, metadata: Any = None, timeout: Any = None) -> _Reply:  # the RPC's name
        c = self.collections[req.collection_name]
        exact = req.params.exact if req.HasField("params") else False
        shard_key = None
        if req.HasField("shard_key_selector"):
            key = req.shard_key_selector.shard_keys[0]
            shard_key = key.keyword if key.WhichOneof("key") == "keyword" else int(key.number)
        self.calls.append(Call("query", req.collection_name, limit=req.limit, exact=exact, shard_key=shard_key,
                               prefetch=len(req.prefetch)))
        self._limit_ok(c, req.limit)
        if exact and not self._strict(c).exact_allowed():
            raise QdrantRequestError("Exact search disabled by strict mode")
        if req.prefetch:
            fused: dict[Any, float] = {}
            for pf in req.prefetch:
                self._limit_ok(c, pf.limit)
                ranked = self._nearest(c, pf.query.nearest, pf.using, pf.limit, False, shard_key)
                for rank, (pid, _) in enumerate(ranked):
                    fused[pid] = fused.get(pid, 0.0) + 1.0 / (rank + RRF_K)
            hits = sorted(fused.items(), key=lambda x: (-x[1], wire.id_key(x[0])))[:req.limit]
        else:
            hits = self._nearest(c, req.query.nearest, req.using, req.limit, exact, shard_key)
        return _Reply([pb.ScoredPoint(id=wire.point_id(pid), score=score) for pid, score in hits])


# --- the fake holds to Qdrant's behaviour where verify relies on it --------------------------------------------------

def _fake() -> MemoryQdrant:
    q = MemoryQdrant()
    q.create("c", {"d": Spec(2)}, strict=pb.StrictModeConfig(enabled=True, max_query_limit=3, read_rate_limit=2,
                                                                 search_allow_exact=False))
    for i in range(5):
        q.add("c", i, {"i": i}, {"d": [1.0, float(i)]})
    return q


def test_scroll_is_in_id_order_with_an_inclusive_offset_and_limits_enforced():
    q = _fake()
    page, nxt = q.scroll("c", None, 3)
    assert [wire.id_value(p.id) for p in page] == [0, 1, 2] and nxt == 3
    page, nxt = q.scroll("c", nxt, 3)
    assert [wire.id_value(p.id) for p in page] == [3, 4] and nxt is None
    with pytest.raises(QdrantRequestError, match="Limit exceeded"):
        q.scroll("c", None, 4)
    with pytest.raises(QdrantRequestError, match="rate limiter capacity"):
        q.get("c", [0, 1, 2])
    with pytest.raises(QdrantRequestError, match="Exact search disabled"):
        q.count("c", exact=True)


def test_cosine_vectors_are_stored_normalised_and_returned_as_qdrant_does():
    q = _fake()
    (p,) = q.get("c", [3], with_vectors=["d"])
    got = np.asarray(p.vectors.vectors.vectors["d"].dense.data)
    assert np.allclose(got, np.array([1.0, 3.0]) / np.sqrt(10)) and p.payload["i"].integer_value == 3
