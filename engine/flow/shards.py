"""Shard planning: cut the id space into ranges at sampled ids (as qdrant/migration does), so each shard is one
scroll stream and all shards are about the same size. Integer ids sort before UUIDs; both kinds may be mixed."""

from __future__ import annotations

import logging

from engine import tunables
from engine.flow.state import ShardState
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc

log = logging.getLogger(__name__)


def boundaries_from_sample(sample: list[wire.PointIdValue], shards: int) -> list[wire.PointIdValue]:
    """shards-1 distinct cut points at the sample's quantiles (fewer when the sample has fewer distinct ids)."""
    ids = sorted(set(sample), key=wire.id_key)
    if shards <= 1 or not ids:
        return []
    cuts: list[wire.PointIdValue] = []
    for i in range(1, shards):
        cut = ids[(i * len(ids)) // shards]
        if not cuts or wire.id_key(cut) > wire.id_key(cuts[-1]):
            cuts.append(cut)
    # The smallest sampled id as a cut would make an empty first shard.
    if cuts and cuts[0] == ids[0]:
        cuts = cuts[1:]
    return cuts


def shard_states(boundaries: list) -> list[ShardState]:
    """The shards of a plan: one id range between consecutive cuts; with custom sharding (`boundaries` a list of
    [shard key, cuts]) the ranges of each key, each carrying its key."""
    if boundaries and isinstance(boundaries[0], list):
        out: list[ShardState] = []
        for key, cuts in boundaries:
            out += [ShardState(shard=len(out) + s.shard, lo=s.lo, hi=s.hi, cursor=s.cursor, shard_key=key)
                    for s in shard_states(cuts)]
        return out
    edges: list[wire.PointIdValue | None] = [None, *boundaries, None]
    return [ShardState(shard=i, lo=edges[i], hi=edges[i + 1], cursor=edges[i]) for i in range(len(edges) - 1)]


def plan_boundaries(client: QdrantGrpc, collection: str, shards: int,
                    per_shard: int = tunables.SAMPLE_IDS_PER_SHARD, shard_key: wire.ShardKeyValue | None = None,
                    sample_limit: int | None = None) -> list[wire.PointIdValue]:
    """Cut points splitting the collection (or one shard key of it) into about `shards` ranges of equal size."""
    if shards <= 1:
        return []
    want = shards * per_shard if sample_limit is None else min(sample_limit, shards * per_shard)
    sample = client.sample_ids(collection, want, shard_key=shard_key)
    cuts = boundaries_from_sample(sample, shards)
    log.info("planned %d shards over %s%s from %d sampled ids", len(cuts) + 1, collection,
             f" (shard key {shard_key!r})" if shard_key is not None else "", len(sample))
    return cuts


def plan_keyed(client: QdrantGrpc, collection: str, keys: list[wire.ShardKeyValue], shards: int,
               sample_limit: int | None = None) -> list[list]:
    """A plan per shard key of a custom-sharded collection: every key gets the ranges of its own points, so each
    lease reads and writes one key (every read and write there must name it)."""
    per_key = max(1, shards // max(1, len(keys)))
    return [[key, plan_boundaries(client, collection, per_key, shard_key=key, sample_limit=sample_limit)]
            for key in keys]


class SampleSplitter:
    """Where a lease's remaining range can be split: a random sample of the collection's ids (one Query with
    sample=random per shard key, drawn on first use and again when it grows stale) gives both the point inside the
    range and an estimate of how many points it holds."""

    def __init__(self, client: QdrantGrpc, collection: str, total: int, sample: int = tunables.SPLIT_SAMPLE,
                 max_age_s: float = 120.0, clock=None) -> None:
        import time

        self.client, self.collection, self.total = client, collection, total
        self.size, self.max_age_s = sample, max_age_s
        self.clock = clock or time.monotonic
        self._samples: dict[object, tuple[float, list[tuple[int, int]], list[wire.PointIdValue]]] = {}

    def _sample(self, shard_key: wire.ShardKeyValue | None) -> tuple[list[tuple[int, int]], list[wire.PointIdValue]]:
        now = self.clock()
        cached = self._samples.get(shard_key)
        if cached is None or now - cached[0] > self.max_age_s:
            ids = sorted(set(self.client.sample_ids(self.collection, self.size, shard_key=shard_key)), key=wire.id_key)
            cached = (now, [wire.id_key(i) for i in ids], ids)
            self._samples[shard_key] = cached
        return cached[1], cached[2]

    def pick(self, after: wire.PointIdValue | None, before: wire.PointIdValue | None,
             shard_key: wire.ShardKeyValue | None) -> tuple[int, wire.PointIdValue] | None:
        import bisect

        keys, ids = self._sample(shard_key)
        if not ids:
            return None
        lo = 0 if after is None else bisect.bisect_right(keys, wire.id_key(after))
        hi = len(keys) if before is None else bisect.bisect_left(keys, wire.id_key(before))
        inside = hi - lo
        if inside < 2:
            return None
        estimate = int(inside * self.total / len(ids))
        return estimate, ids[lo + inside // 2]
