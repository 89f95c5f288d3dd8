"""Shard planning: cut the id space into ranges at sampled ids (as qdrant/migration does), so each shard is one
scroll stream and all shards are about the same size. Integer ids sort before UUIDs; both kinds may be mixed."""

from __future__ import annotations

import logging

from engine import tunables
from engine.flow.checkpoint import ShardState
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


def shard_states(boundaries: list[wire.PointIdValue]) -> list[ShardState]:
    edges: list[wire.PointIdValue | None] = [None, *boundaries, None]
    return [ShardState(shard=i, lo=edges[i], hi=edges[i + 1], cursor=edges[i]) for i in range(len(edges) - 1)]


def plan_boundaries(client: QdrantGrpc, collection: str, shards: int,
                    per_shard: int = tunables.SAMPLE_IDS_PER_SHARD) -> list[wire.PointIdValue]:
    if shards <= 1:
        return []
    sample = client.sample_ids(collection, shards * per_shard)
    cuts = boundaries_from_sample(sample, shards)
    log.info("planned %d shards over %s from %d sampled ids", len(cuts) + 1, collection, len(sample))
    return cuts
