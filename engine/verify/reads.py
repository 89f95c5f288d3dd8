"""Every read verify sends, kept inside the strict-mode limits of the collection it reads.

Each collection's `StrictMode` (engine/qdrant/strict.py, read from `Collections.Get`) bounds: id and point pages
(`page_limit`, max_query_limit on scroll), random-sample requests and search limits (`sample_limit`), Get batches
(`get_batch`, one read token per id), and whether `exact=true` search may be sent at all (`exact_allowed`). A check
that needs exact search asks `exact_allowed` first and says what it does instead.

Searches go through the Query API (Points.Query, Qdrant >= 1.10): one request shape for dense, multivector (MaxSim)
and sparse inputs, and for hybrid queries (prefetch + RRF fusion, lib/api/src/grpc/proto/points.proto).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qdrant_client import grpc as pb

from engine.qdrant import retry, wire
from engine.qdrant.scan import ID_PAGE, range_ids, sample_distinct
from engine.qdrant.strict import StrictMode
from engine.tunables import POINT_BATCH, RRF_K, SAMPLE_CHUNK
from engine.verify.vectors import Value, query_input

Vectors = bool | Sequence[str]  # all vectors, none, or these names ("" is the unnamed vector)
Ranked = list[tuple[Any, float]]  # (id, score), best first


def vectors_selector(names: Sequence[str]) -> Vectors:
    """A selection of vectors: none, these names, or all of them when the unnamed vector is among them (a
    collection with an unnamed vector has only that one, and it is selected by asking for all)."""
    names = list(dict.fromkeys(names))
    if not names:
        return False
    return True if "" in names else names


class Reads:
    """Verify's reads over one client; `strict` maps a collection name to its limits."""

    def __init__(self, client: Any, strict: Mapping[str, StrictMode]) -> None:
        self.client = client
        self._strict = dict(strict)

    def strict(self, collection: str) -> StrictMode:
        return self._strict.get(collection, StrictMode())

    def exact_allowed(self, collection: str) -> bool:
        return self.strict(collection).exact_allowed()

    # --- ids and points ---------------------------------------------------------------------------------------
    def ids(self, collection: str, lo: Any, hi: Any, shard_key: Any = None) -> Iterator[Any]:
        return range_ids(self.client, collection, lo, hi, page=self.strict(collection).page_limit(ID_PAGE),
                         shard_key=shard_key)

    def get(self, collection: str, ids: Sequence[Any], *, with_payload: bool = True, with_vectors: Vectors = False,
            shard_key: Any = None) -> list[pb.RetrievedPoint]:
        """Points by id, in batches a read rate limit can ever let through."""
        batch = self.strict(collection).get_batch(max(1, len(ids)))
        out: list[pb.RetrievedPoint] = []
        for i in range(0, len(ids), batch):
            out.extend(self.client.get(collection, list(ids[i:i + batch]), with_payload=with_payload,
                                       with_vectors=with_vectors, shard_key=shard_key))
        return out

    def pages(self, collection: str, with_vectors: Vectors) -> Iterator[list[pb.RetrievedPoint]]:
        """Every point with payload, page by page in id order."""
        sel: bool | pb.WithVectorsSelector = with_vectors if isinstance(with_vectors, bool) else \
            pb.WithVectorsSelector(include=pb.VectorsSelector(names=list(with_vectors)))
        page = self.strict(collection).page_limit(POINT_BATCH)
        offset = None
        while True:
            points, offset = self.client.scroll(collection, offset, page, with_payload=True, with_vectors=sel)
            if points:
                yield points
            if offset is None:
                return

    def sample_ids(self, collection: str, n: int) -> list[Any]:
        """n distinct random ids, asked for in chunks so no reply outgrows a gRPC message or the query limit."""
        return sample_distinct(self.client, collection, n, self.strict(collection).sample_limit(SAMPLE_CHUNK))

    # --- searches ---------------------------------------------------------------------------------------------
    def nearest(self, collection: str, value: Value, using: str | None, limit: int, *, exact: bool = False
                ) -> Ranked:
        """The nearest points to a dense, multi or sparse value (exact only where strict mode allows it)."""
        req = pb.QueryPoints(collection_name=collection, limit=self.strict(collection).sample_limit(limit),
                             query=pb.Query(nearest=query_input(value)))
        if using:
            req.using = using
        req.with_payload.enable = False
        if exact and self.exact_allowed(collection):
            req.params.exact = True
        return self._query(req, f"search {collection!r}")

    def fused(self, collection: str, sides: Sequence[tuple[Value, str]], limit: int, prefetch: int) -> Ranked:
        """A hybrid query as applications send it: one prefetch per (value, vector name), fused by RRF."""
        strict = self.strict(collection)
        req = pb.QueryPoints(collection_name=collection, limit=strict.sample_limit(limit),
                             query=pb.Query(rrf=pb.Rrf(k=RRF_K)))
        for value, using in sides:
            req.prefetch.append(pb.PrefetchQuery(query=pb.Query(nearest=query_input(value)), using=using,
                                                 limit=strict.sample_limit(prefetch)))
        req.with_payload.enable = False
        return self._query(req, f"hybrid search {collection!r}")

    def _query(self, req: pb.QueryPoints, what: str) -> Ranked:
        # Through the client's retry policy, as every other call: the client has no general Query method.
        c = self.client
        reply = retry.call(lambda: c.points.Query(req, metadata=c.endpoint.metadata(), timeout=c.endpoint.timeout_s),
                           what=what, address=c.endpoint.address, policy=c.policy, stats=c.stats)
        return [(wire.id_value(h.id), float(h.score)) for h in reply.result]
