"""Reading collections in Qdrant's id order, and walking two of them side by side like sorted sets.

The checker, verify's count parity and catch-up all compare a source with a target this way, so memory stays flat
whatever the collection size: one page of each side at a time.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Optional

from qdrant_client import grpc as pb

from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.tunables import QUERY_SEED

PAGE = 1024  # points per scroll page when walking whole collections
ID_PAGE = 10_000  # ids per page when reading ids only: no payload or vectors, so pages can be large


def iterate(client: QdrantGrpc, collection: str, with_vectors: bool | pb.WithVectorsSelector = False,
            with_payload: bool = True, page: int = PAGE) -> Iterator[pb.RetrievedPoint]:
    """Every point of a collection in id order, page by page."""
    offset = None
    while True:
        points, offset = client.scroll(collection, offset, page, with_payload=with_payload, with_vectors=with_vectors)
        yield from points
        if offset is None:
            return


def range_ids(client: QdrantGrpc, collection: str, lo: wire.PointIdValue | None, hi: wire.PointIdValue | None,
              page: int = ID_PAGE, shard_key: wire.ShardKeyValue | None = None) -> Iterator[wire.PointIdValue]:
    """Every id in [lo, hi) in scroll order, read id-only."""
    hi_key = wire.id_key(hi) if hi is not None else None
    offset = lo
    while True:
        points, nxt = client.scroll(collection, offset, page, with_payload=False, with_vectors=False,
                                    shard_key=shard_key)
        for p in points:
            pid = wire.id_value(p.id)
            if hi_key is not None and wire.id_key(pid) >= hi_key:
                return
            yield pid
        if nxt is None or (hi_key is not None and wire.id_key(nxt) >= hi_key):
            return
        offset = nxt


def merge_by_id(src: Iterator[pb.RetrievedPoint], tgt: Iterator[pb.RetrievedPoint]
                ) -> Iterator[tuple[Optional[pb.RetrievedPoint], Optional[pb.RetrievedPoint]]]:
    """Walk two id-ordered streams together: (s, t) for a shared id, (s, None) or (None, t) for one-sided ids."""
    s = next(src, None)
    t = next(tgt, None)
    while s is not None or t is not None:
        if t is None:
            yield s, None
            s = next(src, None)
            continue
        if s is None:
            yield None, t
            t = next(tgt, None)
            continue
        sk, tk = wire.id_key(wire.id_value(s.id)), wire.id_key(wire.id_value(t.id))
        if sk < tk:
            yield s, None
            s = next(src, None)
        elif tk < sk:
            yield None, t
            t = next(tgt, None)
        else:
            yield s, t
            s = next(src, None)
            t = next(tgt, None)


def sample_distinct(client: Any, collection: str, n: int, chunk: int) -> list[Any]:
    """n distinct random ids, asked for `chunk` at a time (the caller bounds `chunk` by the reply size and strict
    mode's query limit): repeated random samples overlap, so it asks until n are found or three asks in a row bring
    nothing new (the collection holds fewer)."""
    rng = random.Random(QUERY_SEED)
    ids: dict = {}
    stale = 0
    while len(ids) < n and stale < 3:
        want = min(chunk, n - len(ids))
        got = client.sample_ids(collection, want)
        if len(got) > want:  # an old server without random sampling returned every id, in id order
            got = rng.sample(got, want)
        before = len(ids)
        ids.update(dict.fromkeys(got))
        stale = stale + 1 if len(ids) == before else 0
    return list(ids)[:n]
