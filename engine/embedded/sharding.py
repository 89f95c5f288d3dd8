"""A collection's shards and which of them a request reaches, as Qdrant's shard holder decides.

Auto sharding (Qdrant's default): shards 0..shard_number-1 on one hash ring. Custom sharding: no shard until
CreateShardKey; each key gets `shards_number` new shards with ids counting on from the highest so far (the first key
gets 1..N, as `State::max_shard_id() + 1` does) and a ring of its own. Read from
lib/collection/src/shards/shard_holder/mod.rs (split_by_shard, select_shards, route_with_fallback_*),
lib/storage/src/content_manager/toc/point_ops.rs (writes per shard key) and
lib/collection/src/collection/sharding_keys.rs:
- a write without a shard key on a custom-sharded collection is refused `Wrong input: Shard key not specified`;
  with a key the collection lacks, `Wrong input: Shard key "k" not found` (auto sharding has no keys at all);
- a read without a key goes to every shard; with an unknown key it is refused `Bad request: Shard key "k" not
  found`; with several keys it reaches all their shards;
- a key with a fallback uses the target key when it exists, else the fallback (every shard here is Active, so
  Qdrant's replica-state checks always pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from qdrant_client import grpc as pb

from engine.embedded.hash_ring import HashRing
from engine.embedded.status import bad_input, bad_request, not_found

ShardKey = Union[str, int]


def shard_key_in(key: pb.ShardKey) -> Optional[ShardKey]:
    kind = key.WhichOneof("key")
    if kind == "keyword":
        return key.keyword
    if kind == "number":
        return key.number
    return None  # Qdrant drops a key with neither variant (convert_shard_key_from_grpc)


def fill_shard_key(target: pb.ShardKey, key: ShardKey) -> None:
    if isinstance(key, int):
        target.number = key
    else:
        target.keyword = key


def describe_key(key: ShardKey) -> str:
    """Qdrant's Display for ShardKey: keywords quoted, numbers bare (lib/segment/src/types.rs)."""
    return str(key) if isinstance(key, int) else f'"{key}"'


def key_to_json(key: ShardKey) -> dict[str, Union[str, int]]:
    return {"number": key} if isinstance(key, int) else {"keyword": key}


def key_from_json(doc: dict[str, Union[str, int]]) -> ShardKey:
    return int(doc["number"]) if "number" in doc else str(doc["keyword"])


@dataclass(frozen=True)
class Selector:
    """A request's `shard_key_selector`: the keys it names, and an optional fallback for a single key."""

    keys: tuple[ShardKey, ...]
    fallback: Optional[ShardKey] = None


def selector_in(message: object) -> Optional[Selector]:
    """The request's shard_key_selector, or None when the field is absent."""
    if not message.HasField("shard_key_selector"):  # type: ignore[attr-defined]
        return None
    sel: pb.ShardKeySelector = message.shard_key_selector  # type: ignore[attr-defined]
    keys = tuple(k for k in (shard_key_in(key) for key in sel.shard_keys) if k is not None)
    fallback = shard_key_in(sel.fallback) if sel.HasField("fallback") else None
    if fallback is not None and len(keys) != 1:
        raise bad_input(f"Fallback shard key {fallback!r} can only be set when a single shard key is provided")
    return Selector(keys, fallback)


@dataclass(frozen=True)
class ShardGroup:
    """The shards of one shard key (key None: the auto-sharded collection's only group)."""

    key: Optional[ShardKey]
    shard_ids: tuple[int, ...]


class ShardLayout:
    """The shard groups of a collection, each with its hash ring. Immutable: changes build a new layout."""

    def __init__(self, custom: bool, groups: Sequence[ShardGroup]) -> None:
        self.custom = custom
        self.groups: dict[Optional[ShardKey], ShardGroup] = {g.key: g for g in groups}
        self._rings = {g.key: HashRing(g.shard_ids) for g in groups if g.shard_ids}
        self.shard_ids: tuple[int, ...] = tuple(sorted(s for g in groups for s in g.shard_ids))
        self.key_of: dict[int, Optional[ShardKey]] = {s: g.key for g in groups for s in g.shard_ids}

    @classmethod
    def auto(cls, shard_number: int) -> "ShardLayout":
        return cls(False, [ShardGroup(None, tuple(range(shard_number)))])

    @property
    def keys(self) -> list[ShardKey]:
        return [k for k in self.groups if k is not None]

    def ring(self, key: Optional[ShardKey]) -> HashRing:
        return self._rings[key]

    def next_shard_id(self) -> int:
        return max(self.shard_ids, default=0) + 1

    def with_key(self, key: ShardKey, shard_ids: Sequence[int]) -> "ShardLayout":
        return ShardLayout(self.custom, [*self.groups.values(), ShardGroup(key, tuple(shard_ids))])

    def without_key(self, key: ShardKey) -> "ShardLayout":
        return ShardLayout(self.custom, [g for g in self.groups.values() if g.key != key])

    # -- routing --------------------------------------------------------------------------------------------------

    def write_groups(self, selector: Optional[Selector]) -> list[ShardGroup]:
        """The shard groups a write goes to (each group then routes points by its ring)."""
        if selector is None:
            return [self._write_group(None)]
        if selector.fallback is not None:
            return [self._write_group(self._with_fallback(selector.keys[0], selector.fallback))]
        if not selector.keys:
            raise bad_input("Empty shard keys selection")
        return [self._write_group(key) for key in selector.keys]

    def _write_group(self, key: Optional[ShardKey]) -> ShardGroup:
        group = self.groups.get(key)
        if group is None:
            if key is None:
                raise bad_input("Shard key not specified")
            raise bad_input(f"Shard key {describe_key(key)} not found")
        if not group.shard_ids:
            raise bad_input("No shards found for shard key")
        return group

    def read_groups(self, selector: Optional[Selector]) -> list[ShardGroup]:
        """The shard groups a read reaches: all without a selector, else the named keys'."""
        if selector is None:
            return list(self.groups.values())
        if selector.fallback is not None:
            return [self.groups[self._with_fallback(selector.keys[0], selector.fallback)]]
        out = []
        for key in selector.keys:
            group = self.groups.get(key)
            if group is None:
                raise bad_request(f"Shard key {describe_key(key)} not found")
            out.append(group)
        return out

    def _with_fallback(self, target: ShardKey, fallback: ShardKey) -> ShardKey:
        if target in self.groups:
            return target
        if fallback in self.groups:
            return fallback
        raise not_found(
            f"Neither target shard key {describe_key(target)} nor fallback shard key {describe_key(fallback)} exist"
        )
