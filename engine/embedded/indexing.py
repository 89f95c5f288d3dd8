"""Collection status while an index is being built: Yellow for a while after indexing is switched back on.

Qdrant reports Yellow while its optimizers rebuild segments (lib/collection/src/shards/local_shard/mod.rs,
`local_shard_status`; the collection takes the worst shard status, collection_ops.rs `info`). The classic trigger
is a bulk load with indexing deferred (`indexing_threshold: 0`, or HNSW `m: 0`) followed by restoring it. qdrant-edge
builds no index in the background, so the endpoint emulates the visible part: after an UpdateCollection that
(re)enables or changes a vector index over enough data, the collection is Yellow for `points x seconds_per_point`,
then Green.

Simplified from Qdrant: the indexing threshold is compared with the whole collection's vector data (Qdrant compares
per segment), every rebuild takes time proportional to points only, and plain upserts into an indexed collection do
not turn it Yellow.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from qdrant_client import grpc as pb

from engine.embedded import schema

# Time the emulated index build takes per point: Qdrant indexes ~5.6k points/s on one node with indexing on
# (qdrant articles/what-qdrant-optimizers-cost-your-queries); 50 us/point (20k/s) keeps demos short while a job
# that waits for Green still has to wait for something.
DEFAULT_SECONDS_PER_POINT = 50e-6
_FLOAT_BYTES = 4  # the threshold is in kB of vector data; float32 storage assumed


def _vector_index_state(config: pb.CollectionConfig, name: str, params: pb.VectorParams) -> Optional[tuple]:
    """The HNSW settings that decide this vector's index, or None when indexing is deferred for it."""
    if config.optimizer_config.HasField("indexing_threshold") and config.optimizer_config.indexing_threshold == 0:
        return None
    hnsw = pb.HnswConfigDiff()
    hnsw.CopyFrom(config.hnsw_config)
    if params.HasField("hnsw_config"):
        hnsw.MergeFrom(params.hnsw_config)
    if hnsw.m == 0:
        return None
    return (hnsw.m, hnsw.ef_construct, hnsw.payload_m if hnsw.HasField("payload_m") else None)


def needs_rebuild(old: pb.CollectionConfig, new: pb.CollectionConfig, points: int) -> bool:
    """Whether a config change makes Qdrant's optimizers (re)build a vector index over `points` points."""
    if points == 0:
        return False
    threshold_kb = new.optimizer_config.indexing_threshold if new.optimizer_config.HasField("indexing_threshold") else 0
    old_vectors = schema.dense_vectors(old)
    for name, params in schema.dense_vectors(new).items():
        state = _vector_index_state(new, name, params)
        if state is None or points * params.size * _FLOAT_BYTES / 1024 < threshold_kb:
            continue  # deferred, or small enough to stay a plain (unindexed) segment
        before = old_vectors.get(name)
        if before is None or _vector_index_state(old, name, before) != state:
            return True
    return old.quantization_config != new.quantization_config


class IndexBuild:
    """When the emulated index build of one collection finishes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ready_at = 0.0

    def start(self, points: int, seconds_per_point: float) -> None:
        self._ready_at = max(self._ready_at, self._clock() + points * seconds_per_point)

    def finish(self) -> None:
        self._ready_at = 0.0

    @property
    def running(self) -> bool:
        return self._clock() < self._ready_at

    def status(self) -> pb.CollectionStatus.ValueType:
        return pb.CollectionStatus.Yellow if self.running else pb.CollectionStatus.Green
