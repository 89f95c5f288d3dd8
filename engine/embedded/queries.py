"""QueryPoints -> qdrant-edge query requests, with point ids used as query vectors resolved first.

Read from lib/collection/src/operations/universal_query/collection_query.rs and lib/collection/src/recommendations.rs:
- a VectorInput may be a point id: its vector (`using`, or `lookup_from.vector_name`) is read from the collection
  or from the `lookup_from` collection; a missing one is `Not found: Vector with name "v" for point not found`;
- ids read from the searched collection are excluded from the results (`exclude_referenced_ids`: a must_not
  has_id added to the filter);
- recommend: the average-vector strategy (default) searches `avg(positives) * 2 - avg(negatives)` (a multivector:
  positives' vectors followed by the negated negatives'); best-score and sum-scores are scoring queries of their own;
  discover and context take positive/negative pairs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, cast

import numpy as np
import qdrant_edge as qe
from qdrant_client import grpc as pb

from engine.embedded import convert as cv
from engine.embedded.status import bad_input, unsupported

# Reads the vector `name` of point `pid`, from the searched collection or the `lookup_from` one.
Resolver = Callable[[Any, str, Optional[pb.LookupLocation]], "qe.NamedVector"]  # a vector as qdrant-edge returned it


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def referenced_ids(request: pb.QueryPoints) -> list[Any]:
    """Point ids the request uses as vectors in the searched collection itself (not through lookup_from)."""
    found: list[Any] = []

    def stage(message: Any) -> None:
        if message.HasField("query") and not message.HasField("lookup_from"):
            found.extend(_query_ids(message.query))
        for prefetch in message.prefetch:
            stage(prefetch)

    stage(request)
    return found


def _query_ids(query: pb.Query) -> list[Any]:
    inputs: list[pb.VectorInput] = []
    kind = query.WhichOneof("variant")
    if kind == "nearest":
        inputs = [query.nearest]
    elif kind == "nearest_with_mmr":
        inputs = [query.nearest_with_mmr.nearest]
    elif kind == "recommend":
        inputs = [*query.recommend.positive, *query.recommend.negative]
    elif kind == "discover":
        inputs = [query.discover.target, *(v for p in query.discover.context.pairs for v in (p.positive, p.negative))]
    elif kind == "context":
        inputs = [v for p in query.context.pairs for v in (p.positive, p.negative)]
    return [cv.point_id_in(v.id) for v in inputs if v.WhichOneof("variant") == "id"]


class QueryBuilder:
    """Builds qdrant-edge requests for one QueryPoints; `resolve` reads the vectors of ids used as inputs."""

    def __init__(self, resolve: Resolver, exclude: Sequence[Any] = ()) -> None:
        self._resolve = resolve
        self._exclude = qe.Filter(must_not=[qe.HasIdCondition(set(exclude))]) if exclude else None

    def _filter(self, *filters: Optional[qe.Filter]) -> Optional[qe.Filter]:
        parts = [f for f in (*filters, self._exclude) if f is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else qe.Filter(must=cast("list[qe.ConditionType]", parts))

    def vector(self, vin: pb.VectorInput, using: str, lookup: Optional[pb.LookupLocation]) -> qe.NamedVector:
        kind = vin.WhichOneof("variant")
        if kind == "dense":
            return cv.dense_floats(vin.dense)  # type: ignore[return-value]  # qdrant-edge reads any float sequence
        if kind == "sparse":
            return cv.sparse_in(list(vin.sparse.indices), list(vin.sparse.values))
        if kind == "multi_dense":
            return cv.multi_in([cv.dense_floats(v) for v in vin.multi_dense.vectors])
        if kind == "id":
            name = lookup.vector_name if lookup is not None and lookup.HasField("vector_name") else using
            return self._resolve(cv.point_id_in(vin.id), name, lookup)
        if kind is None:
            raise bad_input("Query vector input is empty")
        raise unsupported(f"server-side inference (`{kind}` query input)")

    def query(self, query: pb.Query, using: Optional[str], limit: int, lookup: Optional[pb.LookupLocation]) -> Any:
        """A gRPC Query (+ `using`, and the stage's limit for MMR's default pool) to a qdrant-edge scoring query."""
        name = using or cv.DEFAULT_VECTOR
        kind = query.WhichOneof("variant")
        if kind == "nearest":
            return qe.Query.Nearest(self.vector(query.nearest, name, lookup), using=using)
        if kind == "recommend":
            return self._recommend(query.recommend, name, using, lookup)
        if kind == "discover":
            pairs = [self._pair(p, name, lookup) for p in query.discover.context.pairs]
            target = self.vector(query.discover.target, name, lookup)
            return qe.Query.Discover(qe.DiscoverQuery(target, pairs), using=using)
        if kind == "context":
            pairs = [self._pair(p, name, lookup) for p in query.context.pairs]
            return qe.Query.Context(qe.ContextQuery(pairs), using=using)
        if kind == "sample":
            return qe.Sample.Random
        if kind == "fusion":
            if query.fusion == pb.Fusion.DBSF:
                return qe.Fusion.Dbsf()
            return qe.Fusion.Rrf(k=cv.DEFAULT_RRF_K)
        if kind == "rrf":
            k = query.rrf.k if query.rrf.HasField("k") else cv.DEFAULT_RRF_K
            return qe.Fusion.Rrf(k=k, weights=list(query.rrf.weights) or None)
        if kind == "order_by":
            return cv.order_by_in(query.order_by)
        if kind == "nearest_with_mmr":
            mmr = query.nearest_with_mmr.mmr
            diversity = mmr.diversity if mmr.HasField("diversity") else 0.5
            candidates = mmr.candidates_limit if mmr.HasField("candidates_limit") else limit  # Qdrant's default
            vector = self.vector(query.nearest_with_mmr.nearest, name, lookup)
            return qe.Mmr(vector, 1.0 - diversity, candidates, using=using)
        if kind is None:
            return None
        raise unsupported(f"`{kind}` queries")

    def _pair(self, pair: pb.ContextInputPair, name: str, lookup: Optional[pb.LookupLocation]) -> qe.ContextPair:
        return qe.ContextPair(self.vector(pair.positive, name, lookup), self.vector(pair.negative, name, lookup))

    def _recommend(
        self, rec: pb.RecommendInput, name: str, using: Optional[str], lookup: Optional[pb.LookupLocation]
    ) -> Any:
        positives = [self.vector(v, name, lookup) for v in rec.positive]
        negatives = [self.vector(v, name, lookup) for v in rec.negative]
        strategy = rec.strategy if rec.HasField("strategy") else pb.RecommendStrategy.AverageVector
        if strategy == pb.RecommendStrategy.BestScore:
            return qe.Query.RecommendBestScore(qe.RecommendQuery(positives, negatives), using=using)
        if strategy == pb.RecommendStrategy.SumScores:
            return qe.Query.RecommendSumScores(qe.RecommendQuery(positives, negatives), using=using)
        return qe.Query.Nearest(average_vector(positives, negatives), using=using)

    def prefetch(self, prefetch: pb.PrefetchQuery) -> qe.Prefetch:
        limit, query, prefetches = self._stage(prefetch)
        return qe.Prefetch(
            limit=limit,
            query=query,
            prefetches=prefetches,
            params=_search_params(prefetch),
            filter=self._filter(cv.optional_filter(prefetch)),
            score_threshold=_opt(prefetch, "score_threshold"),
        )

    def request(
        self, req: pb.QueryPoints, limit: Optional[int] = None, offset: Optional[int] = None
    ) -> qe.QueryRequest:
        """A QueryPoints for one shard; `limit`/`offset` override the request's (a multi-shard query asks each shard
        for `offset + limit` and skips `offset` after merging)."""
        req_limit, query, prefetches = self._stage(req)
        return qe.QueryRequest(
            limit=req_limit if limit is None else limit,
            offset=(req.offset if req.HasField("offset") else None) if offset is None else offset,
            query=query,
            prefetches=prefetches,
            **_returned(req),
            filter=self._filter(cv.optional_filter(req)),
            score_threshold=_opt(req, "score_threshold"),
            params=_search_params(req),
        )

    def prefetch_request(self, pf: pb.PrefetchQuery, root: pb.QueryPoints) -> qe.QueryRequest:
        """One prefetch of a fused query run on its own (the root filter applies to it too), returning the root's
        payload and vectors: the shard-level intermediate result Qdrant fuses at the collection level."""
        limit, query, prefetches = self._stage(pf)
        return qe.QueryRequest(
            limit=limit,
            query=query,
            prefetches=prefetches,
            **_returned(root),
            filter=self._filter(cv.optional_filter(root), cv.optional_filter(pf)),
            score_threshold=_opt(pf, "score_threshold"),
            params=_search_params(pf),
        )

    def _stage(self, stage: pb.QueryPoints | pb.PrefetchQuery) -> tuple[int, Any, Optional[list[qe.Prefetch]]]:
        """The limit (Qdrant's default if none), the scoring query and the prefetches of a request or a prefetch."""
        limit = stage.limit if stage.HasField("limit") else cv.DEFAULT_QUERY_LIMIT
        has_query = stage.HasField("query")
        query = self.query(stage.query, _opt(stage, "using"), limit, _opt(stage, "lookup_from")) if has_query else None
        return limit, query, [self.prefetch(p) for p in stage.prefetch] or None


def _returned(req: pb.QueryPoints) -> dict[str, Any]:
    """What the request asks each point to carry back: its vectors and its payload (neither, by default)."""
    return {
        "with_vector": cv.with_vectors_in(req.with_vectors) if req.HasField("with_vectors") else False,
        "with_payload": cv.with_payload_in(req.with_payload, False) if req.HasField("with_payload") else False,
    }


def _search_params(stage: pb.QueryPoints | pb.PrefetchQuery) -> Any:
    return cv.search_params_in(stage.params) if stage.HasField("params") else None


def average_vector(positives: list[Any], negatives: list[Any]) -> Any:
    """recommendations.rs avg_vector_for_recommendation + merge_positive_and_negative_avg."""
    if not positives:
        raise bad_input("Positive vectors should not be empty with `average` strategy")
    kinds = {_kind(v) for v in positives + negatives}
    if len(kinds) > 1:
        raise bad_input(
            "Positive and negative vectors should be of the same type, either all dense or all sparse or all multi"
        )
    kind = kinds.pop()
    if kind == "multi":  # averaged by concatenation; negatives negated
        merged = [list(map(float, v)) for mv in positives for v in mv]
        merged += [[-float(x) for x in v] for mv in negatives for v in mv]
        return merged
    if kind == "sparse":
        pos, neg = _sparse_avg(positives), _sparse_avg(negatives) if negatives else None
        if neg is None:
            return qe.SparseVector(list(pos), list(pos.values()))
        keys = sorted(set(pos) | set(neg))
        return qe.SparseVector(keys, [2 * pos.get(k, 0.0) - neg.get(k, 0.0) for k in keys])
    avg_pos = np.mean([np.asarray(v, dtype=np.float32) for v in positives], axis=0)
    if not negatives:
        return avg_pos.tolist()
    avg_neg = np.mean([np.asarray(v, dtype=np.float32) for v in negatives], axis=0)
    return (avg_pos + avg_pos - avg_neg).tolist()


def _kind(vector: Any) -> str:
    if isinstance(vector, qe.SparseVector):
        return "sparse"
    if len(vector) and isinstance(vector[0], (list, memoryview, tuple)):
        return "multi"
    return "dense"


def _sparse_avg(vectors: list[qe.SparseVector]) -> dict[int, float]:
    total: dict[int, float] = {}
    for v in vectors:
        for i, x in zip(v.indices, v.values):
            total[i] = total.get(i, 0.0) + x
    return {i: x / len(vectors) for i, x in total.items()}
