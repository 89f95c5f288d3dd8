"""The endpoint's storage: collections of qdrant-edge shards, their configs and shard layouts, and aliases.

Layout under the data dir:
    .lock                               held (flock) by the serving process; a shard opens in one process only
    aliases.json                        {alias: collection}
    collections/<name>/config.json      the CollectionConfig (protobuf JSON), payload index schema, creation time,
                                        shard layout (shard ids per shard key)
    collections/<name>/shards/<id>/     one qdrant-edge shard per shard id
    .deleted/                           collections being removed (renamed here first, so a crash never half-deletes)

Every JSON file is replaced atomically (temp file + fsync + rename + directory fsync). A collection directory
without config.json is a create that crashed before it finished; it is removed on open. Data dirs of the first
format (one shard at collections/<name>/shard/) are moved to the current layout on open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import qdrant_edge as qe
from google.protobuf import json_format
from qdrant_client import grpc as pb

from engine.embedded import schema
from engine.embedded.convert import VectorSchema, field_index_of_info
from engine.embedded.indexing import IndexBuild
from engine.embedded.rate_limit import RateLimiter
from engine.embedded.sharding import ShardGroup, ShardKey, ShardLayout, describe_key, key_from_json, key_to_json
from engine.embedded.status import ApiError, already_exists, bad_input, bad_request, collection_not_found, not_found
from engine.errors import PreconditionError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ALIASES_FILE = "aliases.json"
SHARDS_DIR = "shards"
_LEGACY_SHARD_DIR = "shard"
_LEGACY_FORMAT = 1
_FORMAT = 2


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RWLock:
    """Many readers or one writer. Data calls read; closing or reopening a collection's shard writes."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class Shard:
    """One qdrant-edge shard of a collection, with its strict-mode rate limiters (Qdrant keeps them per shard)."""

    id: int
    edge: qe.EdgeShard
    read_limiter: Optional[RateLimiter] = None
    write_limiter: Optional[RateLimiter] = None


def _layout_to_json(layout: ShardLayout) -> dict[str, Any]:
    return {
        "custom": layout.custom,
        "groups": [
            {"key": None if g.key is None else key_to_json(g.key), "shards": list(g.shard_ids)}
            for g in layout.groups.values()
        ],
    }


def _layout_from_json(doc: dict[str, Any]) -> ShardLayout:
    groups = [
        ShardGroup(None if g["key"] is None else key_from_json(g["key"]), tuple(int(s) for s in g["shards"]))
        for g in doc["groups"]
    ]
    return ShardLayout(bool(doc["custom"]), groups)


class Collection:
    """One collection: its stored config, its shard layout and open shards. Mutate only under `lock.write()`."""

    def __init__(
        self,
        name: str,
        path: Path,
        config: pb.CollectionConfig,
        payload_schema: dict[str, pb.PayloadSchemaInfo],
        created_at: float,
        layout: ShardLayout,
        shards: dict[int, Shard],
    ) -> None:
        self.name = name
        self.path = path
        self.config = config
        self.payload_schema = payload_schema
        self.created_at = created_at
        self.layout = layout
        self.shards = shards
        self.lock = RWLock()
        self.closed = False
        self.dirty = False  # written since the last flush
        self.index_build = IndexBuild()
        self.refresh_derived()
        self.refresh_limiters()

    def refresh_derived(self) -> None:
        """Recompute what the hot paths read from the config (after create, load, or a schema change)."""
        self.vector_schema: VectorSchema = schema.vector_schema(self.config)
        self.single_unnamed: bool = schema.is_single_unnamed(self.config)
        # One auto-sharded shard: requests go straight to it, with no routing or merging.
        self.only_shard: Optional[Shard] = (
            next(iter(self.shards.values())) if not self.layout.custom and len(self.shards) == 1 else None
        )

    @property
    def strict_mode(self) -> Optional[pb.StrictModeConfig]:
        """The strict-mode config when enabled (Qdrant checks nothing for a disabled one)."""
        config = self.config.strict_mode_config
        if self.config.HasField("strict_mode_config") and config.HasField("enabled") and config.enabled:
            return config
        return None

    def refresh_limiters(self) -> None:
        """Fresh full buckets per shard, as Qdrant's `on_strict_mode_config_update` builds them."""
        strict = self.strict_mode
        for shard in self.shards.values():
            self._set_limiters(shard, strict)

    @staticmethod
    def _set_limiters(shard: Shard, strict: Optional[pb.StrictModeConfig]) -> None:
        reads = strict is not None and strict.HasField("read_rate_limit")
        writes = strict is not None and strict.HasField("write_rate_limit")
        shard.read_limiter = RateLimiter.per_minute(strict.read_rate_limit) if reads else None  # type: ignore[union-attr]
        shard.write_limiter = RateLimiter.per_minute(strict.write_rate_limit) if writes else None  # type: ignore[union-attr]

    def add_shard(self, shard: Shard) -> None:
        self._set_limiters(shard, self.strict_mode)
        self.shards[shard.id] = shard

    def shard_path(self, shard_id: int) -> Path:
        return self.path / SHARDS_DIR / str(shard_id)

    def points_count(self) -> int:
        return sum(shard.edge.info().points_count for shard in self.shards.values())

    def save(self) -> None:
        atomic_write_json(
            self.path / CONFIG_FILE,
            {
                "format": _FORMAT,
                "name": self.name,
                "created_at": self.created_at,
                "config": json_format.MessageToDict(self.config, preserving_proto_field_name=True),
                "payload_schema": {
                    field: json_format.MessageToDict(info, preserving_proto_field_name=True)
                    for field, info in self.payload_schema.items()
                },
                "layout": _layout_to_json(self.layout),
            },
        )

    @classmethod
    def load(cls, path: Path) -> "Collection":
        with open(path / CONFIG_FILE, encoding="utf-8") as fh:
            doc = json.load(fh)
        if doc.get("format") not in (_LEGACY_FORMAT, _FORMAT):
            raise PreconditionError(f"{path / CONFIG_FILE} has format {doc.get('format')}, expected {_FORMAT}")
        config = json_format.ParseDict(doc["config"], pb.CollectionConfig())
        payload_schema = {
            field: json_format.ParseDict(info, pb.PayloadSchemaInfo()) for field, info in doc["payload_schema"].items()
        }
        if doc["format"] == _LEGACY_FORMAT:  # one shard at shard/: it becomes shard 0
            (path / SHARDS_DIR).mkdir(exist_ok=True)
            if (path / _LEGACY_SHARD_DIR).exists():
                os.replace(path / _LEGACY_SHARD_DIR, path / SHARDS_DIR / "0")
            layout = ShardLayout.auto(1)
        else:
            layout = _layout_from_json(doc["layout"])
        shards: dict[int, Shard] = {}
        try:
            for shard_id in layout.shard_ids:
                shards[shard_id] = Shard(shard_id, qe.EdgeShard.load(str(path / SHARDS_DIR / str(shard_id))))
        except BaseException:
            for shard in shards.values():
                shard.edge.close()
            raise
        coll = cls(doc["name"], path, config, payload_schema, float(doc["created_at"]), layout, shards)
        if doc["format"] == _LEGACY_FORMAT:
            coll.save()
        return coll

    def fill_created_at(self, target: Any) -> None:
        target.FromDatetime(dt.datetime.fromtimestamp(self.created_at, tz=dt.timezone.utc))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        failures = []
        for shard in self.shards.values():
            try:
                shard.edge.flush()
            except Exception as exc:  # noqa: BLE001 - close every shard whatever one does
                failures.append(exc)
            finally:
                shard.edge.close()
        if failures:
            raise failures[0]

    def flush(self) -> None:
        for shard in self.shards.values():
            shard.edge.flush()


class Catalog:
    """All collections and aliases of one data dir. Thread-safe; open() before use, close() to flush and release."""

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir).resolve()
        self._collections_dir = self.root / "collections"
        self._deleted_dir = self.root / ".deleted"
        self._lock = threading.RLock()  # guards the two maps below and every create/delete/alias change
        self._collections: dict[str, Collection] = {}
        self._aliases: dict[str, str] = {}
        self._lock_fh: Optional[Any] = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._acquire_dir_lock()
        try:
            self._collections_dir.mkdir(exist_ok=True)
            self._purge_deleted()
            aliases_path = self.root / ALIASES_FILE
            if aliases_path.exists():
                with open(aliases_path, encoding="utf-8") as fh:
                    self._aliases = dict(json.load(fh))
            for entry in sorted(self._collections_dir.iterdir()):
                if not entry.is_dir():
                    continue
                if not (entry / CONFIG_FILE).exists():
                    log.warning("removing %s: its create never finished (no %s)", entry, CONFIG_FILE)
                    shutil.rmtree(entry, ignore_errors=True)
                    continue
                try:
                    coll = Collection.load(entry)
                except PreconditionError:
                    raise
                except Exception as exc:  # noqa: BLE001 - qdrant-edge raises bare Exception
                    raise PreconditionError(
                        f"cannot open collection at {entry}: {exc}; is another process serving {self.root}?"
                    ) from exc
                self._collections[coll.name] = coll
            dangling = [a for a, c in self._aliases.items() if c not in self._collections]
            for alias in dangling:
                log.warning("dropping alias %s: its collection %s is gone", alias, self._aliases.pop(alias))
            if dangling:
                self._save_aliases(self._aliases)
        except BaseException:
            self.close()
            raise
        log.info(
            "opened %s: %d collection(s), %d alias(es)", self.root, len(self._collections), len(self._aliases)
        )

    def close(self) -> None:
        with self._lock:
            for coll in list(self._collections.values()):
                with coll.lock.write():
                    try:
                        coll.close()
                    except Exception:  # noqa: BLE001 - close the others whatever one does
                        log.exception("closing collection %s failed", coll.name)
            self._collections.clear()
            if self._lock_fh is not None:
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
                self._lock_fh.close()
                self._lock_fh = None

    def _acquire_dir_lock(self) -> None:
        fh = open(self.root / ".lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise PreconditionError(
                f"data dir {self.root} is in use by another embedded endpoint (pid {holder}); "
                "stop it or pass another --data"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def _purge_deleted(self) -> None:
        if self._deleted_dir.exists():
            shutil.rmtree(self._deleted_dir, ignore_errors=True)

    # -- lookup ---------------------------------------------------------------------------------------------------

    def resolve_name(self, name: str) -> str:
        """A collection name or alias to the collection name; an alias wins, as in Qdrant's toc `resolve_name`."""
        with self._lock:
            resolved = self._aliases.get(name, name)
            if resolved in self._collections:
                return resolved
        raise collection_not_found(resolved)

    @contextlib.contextmanager
    def reading(self, name: str) -> Iterator[Collection]:
        """Use a collection (by name or alias) for a data call; it cannot be closed or reopened meanwhile."""
        with self._lock:
            coll = self._collections.get(self.resolve_name(name))
        if coll is None:
            raise collection_not_found(name)
        with coll.lock.read():
            if coll.closed:  # deleted between the lookup and the lock
                raise collection_not_found(name)
            yield coll

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Collection]:
        """Use a collection exclusively (schema changes, shard keys, reopen)."""
        with self._lock:
            coll = self._collections.get(self.resolve_name(name))
        if coll is None:
            raise collection_not_found(name)
        with coll.lock.write():
            if coll.closed:
                raise collection_not_found(name)
            yield coll

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def collections(self) -> list[Collection]:
        with self._lock:
            return list(self._collections.values())

    def exists(self, name: str) -> bool:
        try:
            self.resolve_name(name)
            return True
        except ApiError:
            return False

    # -- collections ----------------------------------------------------------------------------------------------

    def create(self, name: str, config: pb.CollectionConfig) -> None:
        """Create a collection: shard_number shards, or none yet under custom sharding (shards come per key)."""
        schema.validate_collection_name(name)
        with self._lock:
            if name in self._collections:  # toc collections_ops.rs validate_collection_not_exists
                raise already_exists(f"Collection `{name}` already exists!")
            if name in self._aliases:  # toc/create_collection.rs: bad input, not ALREADY_EXISTS
                raise bad_input(f"Can't create collection with name {name}. Alias with the same name already exists")
            edge_config = schema.edge_config(config)
            custom = config.params.sharding_method == pb.ShardingMethod.Custom
            layout = ShardLayout(True, []) if custom else ShardLayout.auto(config.params.shard_number)
            path = self._collections_dir / name
            if path.exists():  # leftovers of a crashed create
                shutil.rmtree(path)
            (path / SHARDS_DIR).mkdir(parents=True)
            shards: dict[int, Shard] = {}
            try:
                for shard_id in layout.shard_ids:
                    edge = qe.EdgeShard.create(str(path / SHARDS_DIR / str(shard_id)), edge_config)
                    shards[shard_id] = Shard(shard_id, edge)
                coll = Collection(name, path, config, {}, time.time(), layout, shards)
                coll.save()
            except BaseException:
                for shard in shards.values():
                    shard.edge.close()
                shutil.rmtree(path, ignore_errors=True)
                raise
            self._collections[name] = coll
        log.info("created collection %s (%d shard(s)%s)", name, len(shards), ", custom sharding" if custom else "")

    def delete(self, name: str) -> bool:
        """Delete a collection (not an alias; Qdrant deletes by collection name only). False if there was none."""
        with self._lock:
            coll = self._collections.pop(name, None)
            if coll is None:
                return False
            remaining = {a: c for a, c in self._aliases.items() if c != name}
            if remaining != self._aliases:
                self._save_aliases(remaining)
                self._aliases = remaining
        with coll.lock.write():
            coll.close()
        self._deleted_dir.mkdir(exist_ok=True)
        graveyard = self._deleted_dir / f"{name}.{uuid.uuid4().hex[:8]}"
        os.replace(coll.path, graveyard)
        shutil.rmtree(graveyard, ignore_errors=True)
        log.info("deleted collection %s", name)
        return True

    def reopen(self, coll: Collection) -> None:
        """Reopen every shard with the current config (applies optimizer/HNSW changes). Hold `coll.lock.write()`."""
        edge_config = schema.edge_config(coll.config)
        for shard in coll.shards.values():
            shard.edge.flush()
            shard.edge.close()
            path = str(coll.shard_path(shard.id))
            try:
                shard.edge = qe.EdgeShard.load(path, edge_config)
            except Exception:
                shard.edge = qe.EdgeShard.load(path)  # never leave the collection closed
                raise

    def flush_dirty(self) -> int:
        """Flush every collection written since its last flush; returns how many were flushed."""
        flushed = 0
        for coll in self.collections():
            if not coll.dirty:
                continue
            with coll.lock.read():
                if coll.closed:
                    continue
                coll.dirty = False
                coll.flush()
                flushed += 1
        return flushed

    # -- shard keys (lib/collection/src/collection/sharding_keys.rs, src/common/collections.rs) --------------------

    def create_shard_key(self, coll: Collection, key: ShardKey, shards_number: Optional[int]) -> None:
        """New shards for `key`, with the collection's payload indexes built on them. Hold `coll.lock.write()`."""
        if not coll.layout.custom:
            raise bad_request("Shard Key cannot be created with Auto sharding method")
        if key in coll.layout.groups:
            raise bad_request(f"Sharding key {describe_key(key)} already exists for collection {coll.name}")
        count = shards_number if shards_number is not None else coll.config.params.shard_number
        first = coll.layout.next_shard_id()
        edge_config = schema.edge_config(coll.config)
        created: list[Shard] = []
        try:
            for shard_id in range(first, first + count):
                path = coll.shard_path(shard_id)
                if path.exists():  # left by a create that crashed before the layout was saved
                    shutil.rmtree(path)
                shard = Shard(shard_id, qe.EdgeShard.create(str(path), edge_config))
                created.append(shard)
                for field, info in coll.payload_schema.items():
                    shard.edge.update(qe.UpdateOperation.create_field_index(field, field_index_of_info(field, info)))
            coll.layout = coll.layout.with_key(key, [s.id for s in created])
            coll.save()
        except BaseException:
            coll.layout = coll.layout.without_key(key)
            for shard in created:
                shard.edge.close()
                shutil.rmtree(coll.shard_path(shard.id), ignore_errors=True)
            raise
        for shard in created:
            coll.add_shard(shard)
        coll.refresh_derived()
        log.info("collection %s: shard key %s with shards %s", coll.name, describe_key(key), [s.id for s in created])

    def delete_shard_key(self, coll: Collection, key: ShardKey) -> None:
        """Drop `key` and its shards with their points. Hold `coll.lock.write()`."""
        if not coll.layout.custom:
            raise bad_request("Shard Key cannot be created with Auto sharding method")  # sic, Qdrant's wording
        group = coll.layout.groups.get(key)
        if group is None:
            raise bad_request(f"Sharding key {describe_key(key)} does not exist for collection {coll.name}")
        coll.layout = coll.layout.without_key(key)
        coll.save()  # the layout first: a crash now leaves unreferenced shard dirs, never a key without shards
        for shard_id in group.shard_ids:
            shard = coll.shards.pop(shard_id)
            shard.edge.close()
            shutil.rmtree(coll.shard_path(shard_id), ignore_errors=True)
        coll.refresh_derived()

    # -- aliases (lib/storage/src/content_manager/toc/collection_meta_ops.rs, alias_mapping.rs) -------------------

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases)

    def change_aliases(self, actions: list[pb.AliasOperations]) -> None:
        """Apply alias actions one by one, each saved before the next, as Qdrant does.

        The docs call the switch atomic, but `update_aliases` applies and persists every action in turn: a failing
        action leaves the ones before it in force.
        """
        with self._lock:
            for action in actions:
                mapping = dict(self._aliases)
                apply_alias_action(action, mapping, set(self._collections))
                if mapping != self._aliases:
                    self._save_aliases(mapping)
                    self._aliases = mapping

    def _save_aliases(self, mapping: dict[str, str]) -> None:
        atomic_write_json(self.root / ALIASES_FILE, mapping)


def apply_alias_action(action: pb.AliasOperations, mapping: dict[str, str], collections: set[str]) -> None:
    """One alias action on `mapping`, with Qdrant's checks and messages.

    create_alias on an existing alias name replaces it (AliasPersistence::insert); rename_alias checks only that the
    old alias exists; delete_alias of a missing alias is no error.
    """
    kind = action.WhichOneof("action")
    if kind == "create_alias":
        op = action.create_alias
        if op.collection_name not in collections:
            raise not_found(f"Collection `{op.collection_name}` doesn't exist!")
        if op.alias_name in collections:
            raise already_exists(f"Collection `{op.alias_name}` already exists!")
        mapping[op.alias_name] = op.collection_name
    elif kind == "delete_alias":
        mapping.pop(action.delete_alias.alias_name, None)
    elif kind == "rename_alias":
        op = action.rename_alias
        if op.old_alias_name not in mapping:
            raise not_found(f"Alias {op.old_alias_name} does not exists!")
        mapping[op.new_alias_name] = mapping.pop(op.old_alias_name)
    else:
        raise bad_input("Alias operation without an action: set create_alias, rename_alias or delete_alias")
