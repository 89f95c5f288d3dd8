"""Strict mode honoured: the collection's strict-mode limits as a typed record, and the few methods the engine calls
to keep every request inside them instead of learning each limit from a refused request.

Read from `CollectionInfo.config.strict_mode_config` (lib/api/src/grpc/proto/collections.proto, StrictModeConfig;
the Rust twin with each field's meaning is StrictModeConfig in lib/segment/src/types.rs). How Qdrant checks each limit
(lib/collection/src/operations/verification/*.rs, lib/storage/src/content_manager/collection_verification.rs):

- Only when `enabled` is true (`enabled.unwrap_or_default()`): absent or false means no check at all, and then
  every method here passes its input through unchanged.
- `max_query_limit` bounds the `limit` of scroll (verification/local_shard.rs), query and search (query.rs,
  search.rs) and facet; a Get by ids has no limit check. A refusal is INVALID_ARGUMENT ("Limit exceeded ...").
- `upsert_max_batchsize` bounds the points of one upsert and of one UpdateVectors (verification/update.rs).
- `search_allow_exact: false` refuses `exact=true` on search/query *and* an exact Count (verification/count.rs), and a
  vector query on a vector whose HNSW is off (`m = 0`), unless a tenant filter applies (query.rs check_fullscan).
- `max_timeout` bounds the `timeout` parameter (seconds) of a request.
- `read_rate_limit` / `write_rate_limit` are token buckets per shard replica, in operations per minute, holding a
  minute's worth when full (lib/common/common/src/rate_limiting.rs; built in shards/local_shard/mod.rs). A write
  costs the number of points it touches in that shard (shards/replica_set/update.rs, estimate_request_cardinality);
  a scroll costs 1 plus its filter's conditions, a Get by ids the number of ids (local_shard/shard_ops.rs). Over
  the rate: RESOURCE_EXHAUSTED with `retry-after`; a request costing more than the bucket ever holds is refused
  for good ("AlwaysOverBudget"), so one request must stay at or under the per-minute number.
- `filter_max_conditions` / `condition_max_size` bound a filter (verification/mod.rs check_filter_limits; a HasId
  condition's size is its number of ids, lib/segment/src/types.rs size_estimation).
- `unindexed_filtering_retrieve` / `_update: false` refuse filters on payload keys without an index.
- `search_max_hnsw_ef`, `search_max_oversampling`, `search_max_batchsize` bound search parameters and batches.
- `max_points_count`, `max_collection_vector_size_bytes`, `max_collection_payload_size_bytes` refuse inserts once
  the collection holds that much (update.rs check_collection_size_limit).
- `sparse_config` / `multivector_config` bound the length of a named sparse vector / the vectors of a multivector.
- `max_payload_index_count`; `max_resident_memory_percent` (deprecated in 1.19 for node-wide quotas).

One quirk: a shard built at start-up takes its rate limiters from the stored config without looking at `enabled`
(LocalShard::new), while a config update honours it (on_strict_mode_config_update); a disabled config's rate limit
may therefore still bite after a restart. The retry layer waits out RESOURCE_EXHAUSTED in any case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Mapping

from qdrant_client import grpc as pb

# The proto's optional scalar fields, copied one to one (their Rust meaning is in lib/segment/src/types.rs).
_INT_FIELDS: Final = (  # Final: iterated as literal names, which HasField requires
    "max_query_limit", "max_timeout", "search_max_hnsw_ef", "upsert_max_batchsize", "search_max_batchsize",
    "max_collection_vector_size_bytes", "read_rate_limit", "write_rate_limit", "max_collection_payload_size_bytes",
    "filter_max_conditions", "condition_max_size", "max_points_count", "max_payload_index_count",
    "max_resident_memory_percent",
)
_BOOL_FIELDS: Final = ("unindexed_filtering_retrieve", "unindexed_filtering_update", "search_allow_exact")


def _bound(wanted: int, *limits: int | None) -> int:
    """`wanted` lowered to the tightest limit that is set (never below 1: a limit of 0 is refused by Qdrant's own
    validation, `range(min = 1)` in types.rs, and asking for 0 points would stall a loop)."""
    out = wanted
    for limit in limits:
        if limit is not None and limit < out:
            out = max(1, limit)
    return out


def _per_vector(configs: Mapping[str, Any], limit: str) -> tuple[tuple[str, int], ...]:
    """(vector name, limit) of each per-vector config that sets `limit`, by name."""
    return tuple(sorted((name, int(getattr(c, limit))) for name, c in configs.items() if c.HasField(limit)))


@dataclass(frozen=True)
class StrictMode:
    """A collection's strict-mode limits; None means "not set" (no bound). `enabled` false means none applies."""

    enabled: bool = False
    max_query_limit: int | None = None
    max_timeout: int | None = None  # seconds
    unindexed_filtering_retrieve: bool | None = None
    unindexed_filtering_update: bool | None = None
    search_max_hnsw_ef: int | None = None
    search_allow_exact: bool | None = None
    search_max_oversampling: float | None = None
    upsert_max_batchsize: int | None = None
    search_max_batchsize: int | None = None
    max_collection_vector_size_bytes: int | None = None
    read_rate_limit: int | None = None  # per minute per shard replica; cost per request described above
    write_rate_limit: int | None = None  # points per minute per shard replica
    max_collection_payload_size_bytes: int | None = None
    filter_max_conditions: int | None = None
    condition_max_size: int | None = None
    max_points_count: int | None = None
    max_payload_index_count: int | None = None
    max_resident_memory_percent: int | None = None
    sparse_max_length: tuple[tuple[str, int], ...] = field(default=())  # (vector name, max non-zeros)
    multivector_max_vectors: tuple[tuple[str, int], ...] = field(default=())

    # --- reading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_proto(cls, cfg: pb.StrictModeConfig | None) -> StrictMode:
        if cfg is None:
            return cls()
        values: dict = {"enabled": cfg.HasField("enabled") and bool(cfg.enabled)}
        for name in _INT_FIELDS:
            if cfg.HasField(name):
                values[name] = int(getattr(cfg, name))
        for flag in _BOOL_FIELDS:
            if cfg.HasField(flag):
                values[flag] = bool(getattr(cfg, flag))
        if cfg.HasField("search_max_oversampling"):
            values["search_max_oversampling"] = float(cfg.search_max_oversampling)
        if cfg.HasField("sparse_config"):
            values["sparse_max_length"] = _per_vector(cfg.sparse_config.sparse_config, "max_length")
        if cfg.HasField("multivector_config"):
            values["multivector_max_vectors"] = _per_vector(cfg.multivector_config.multivector_config, "max_vectors")
        return cls(**values)

    @classmethod
    def from_info(cls, info: pb.CollectionInfo | None) -> StrictMode:
        """The limits of a collection as `Collections.Get` describes it (None or no config: strict mode off)."""
        if info is None or not info.config.HasField("strict_mode_config"):
            return cls()
        return cls.from_proto(info.config.strict_mode_config)

    def _on(self, value):
        """The limit when strict mode is enforced, else None."""
        return value if self.enabled else None

    # --- keeping requests inside the limits -----------------------------------------------------------------------
    def page_limit(self, wanted: int) -> int:
        """A scroll page's `limit`: max_query_limit bounds it."""
        return _bound(wanted, self._on(self.max_query_limit))

    def sample_limit(self, wanted: int) -> int:
        """A Query's `limit` (random sampling, verification searches): max_query_limit bounds it too."""
        return _bound(wanted, self._on(self.max_query_limit))

    def upsert_batch(self, wanted: int) -> int:
        """Points per Upsert / UpdateVectors: upsert_max_batchsize bounds it, and so does write_rate_limit, since a
        request whose points all land in one shard costs that many tokens and a bucket never holds more than one
        minute's worth (AlwaysOverBudget)."""
        return _bound(wanted, self._on(self.upsert_max_batchsize), self._on(self.write_rate_limit))

    def get_batch(self, wanted: int) -> int:
        """Ids per Get: a Get costs one read token per id, so read_rate_limit bounds it (no query-limit check)."""
        return _bound(wanted, self._on(self.read_rate_limit))

    def has_id_batch(self, wanted: int) -> int:
        """Ids in one HasId filter condition: condition_max_size bounds it."""
        return _bound(wanted, self._on(self.condition_max_size))

    def search_batch(self, wanted: int) -> int:
        """Searches in one QueryBatch / SearchBatch: search_max_batchsize bounds it."""
        return _bound(wanted, self._on(self.search_max_batchsize))

    def hnsw_ef(self, wanted: int) -> int:
        return _bound(wanted, self._on(self.search_max_hnsw_ef))

    def exact_allowed(self) -> bool:
        """Whether `exact=true` search and an exact Count may be sent (else use approximate ones)."""
        return not (self.enabled and self.search_allow_exact is False)

    def unindexed_filter_allowed(self, *, update: bool = False) -> bool:
        """Whether a filter may name a payload key without an index (reads, or filtered updates with update=True)."""
        flag = self.unindexed_filtering_update if update else self.unindexed_filtering_retrieve
        return not (self.enabled and flag is False)

    def filter_conditions_allowed(self, conditions: int) -> bool:
        limit = self._on(self.filter_max_conditions)
        return limit is None or conditions <= limit

    def timeout(self, wanted: float | None) -> float | None:
        """A request's `timeout` parameter in seconds (None: the server's default, which strict mode leaves alone)."""
        limit = self._on(self.max_timeout)
        if wanted is None or limit is None or wanted <= limit:
            return wanted
        return limit

    def sparse_length(self, vector_name: str) -> int | None:
        """The most non-zeros a sparse vector of that name may have (None: no bound)."""
        if not self.enabled:
            return None
        return dict(self.sparse_max_length).get(vector_name)

    def write_points_per_s(self, shards: int) -> float | None:
        """Points/s the write rate limit lets through a collection of `shards` shards when points spread evenly
        (each shard replica has its own bucket; the application's writes draw on the same buckets). None: no limit."""
        limit = self._on(self.write_rate_limit)
        if limit is None:
            return None
        return limit / 60.0 * max(1, shards)

    def capacity_problems(self, points: int) -> list[str]:
        """Why this collection could not take `points` points under its limits (empty when it can or cannot tell)."""
        out = []
        limit = self._on(self.max_points_count)
        if limit is not None and points > limit:
            out.append(f"strict mode max_points_count is {limit:,} and the job writes {points:,} points")
        return out

    def describe(self) -> str:
        """One line for `reembed plan`."""
        if not self.enabled:
            return "strict mode: off"
        parts = []
        for label, value in (
            ("query limit", self.max_query_limit), ("upsert batch", self.upsert_max_batchsize),
            ("write rate", self.write_rate_limit and f"{self.write_rate_limit:,}/min per shard"),
            ("read rate", self.read_rate_limit and f"{self.read_rate_limit:,}/min per shard"),
            ("timeout", self.max_timeout and f"{self.max_timeout} s"), ("max points", self.max_points_count),
            ("filter conditions", self.filter_max_conditions), ("condition size", self.condition_max_size),
            ("search batch", self.search_max_batchsize), ("hnsw_ef", self.search_max_hnsw_ef),
        ):
            if value is not None:
                parts.append(f"{label} {value:,}" if isinstance(value, int) else f"{label} {value}")
        if self.search_allow_exact is False:
            parts.append("no exact search")
        if self.unindexed_filtering_retrieve is False or self.unindexed_filtering_update is False:
            parts.append("indexed filters only")
        if self.sparse_max_length:
            parts.append("sparse length " + ", ".join(f"{n} {v:,}" for n, v in self.sparse_max_length))
        return "strict mode: on" + (f" ({'; '.join(parts)})" if parts else " (no limits set)")
