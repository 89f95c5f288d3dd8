"""What the steps of one verify learn and hand on: the collections' facts (description, strict mode), each shard's
count, the sampled query points, and the sections of the result (index health, quality, dead letters, provenance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qdrant_client import grpc as pb

from engine.qdrant.strict import StrictMode
from engine.verify.vectors import Value


@dataclass(frozen=True)
class CollectionFacts:
    name: str
    info: pb.CollectionInfo
    strict: StrictMode

    @classmethod
    def of(cls, name: str, info: pb.CollectionInfo) -> CollectionFacts:
        return cls(name, info, StrictMode.from_info(info))

    @property
    def unnamed(self) -> bool:
        return self.info.config.params.vectors_config.HasField("params")

    def vector_params(self, name: str | None) -> pb.VectorParams | None:
        vc = self.info.config.params.vectors_config
        if vc.HasField("params"):
            return vc.params if not name else None
        return vc.params_map.map[name] if name in vc.params_map.map else None  # noqa: SIM401 - a proto map

    def distance(self, name: str | None) -> int | None:
        params = self.vector_params(name)
        return int(params.distance) if params is not None else None


@dataclass
class ShardCount:
    shard: int
    lo: Any
    hi: Any
    shard_key: str | int | None = None  # custom sharding: every read of this range carries the key
    source: int = 0
    target: int = 0
    expected_absent: int = 0  # source points without usable text that an unnamed-vector target cannot hold
    committed: int | None = None  # written + skipped as the run's checkpoint recorded it
    missing: int = 0
    extra: int = 0
    missing_ids: list = field(default_factory=list)
    extra_ids: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0

    def describe_range(self) -> str:
        lo = "start" if self.lo is None else repr(self.lo)
        hi = "end" if self.hi is None else repr(self.hi)
        key = f" key {self.shard_key!r}" if self.shard_key is not None else ""
        return f"[{lo}, {hi}){key}"


@dataclass
class QueryPoint:
    """A sampled point whose new vector is valid: a query for index health and quality."""

    pid: Any
    text: str | None
    new: Value  # 1-d dense or 2-d multivector
    old: Value | None  # the source's old vector, when it has one


@dataclass
class Findings:
    source: CollectionFacts
    target: CollectionFacts
    unnamed_target: bool = False
    dead_letters: dict[str, Any] = field(default_factory=dict)
    dead_ids: set[str] | None = None  # None: the dead letters are not reachable from here
    shards: list[ShardCount] = field(default_factory=list)
    source_total: int | None = None  # points in the source, from count parity
    checked: int = 0
    full: bool = False
    query_points: list[QueryPoint] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
