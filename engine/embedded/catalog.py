"""The endpoint's storage: one qdrant-edge shard per collection, plus collection configs and aliases on disk.

Layout under the data dir:
    .lock                          held (flock) by the serving process; a shard can be opened by one process only
    aliases.json                   {alias: collection}
    collections/<name>/config.json the CollectionConfig (protobuf JSON), payload index schema, creation time
    collections/<name>/shard/      the qdrant-edge shard
    .deleted/                      collections being removed (renamed here first, so a crash never half-deletes)

Every JSON file is replaced atomically (temp file + fsync + rename + directory fsync). A collection directory
without config.json is a create that crashed before it finished; it is removed on open.
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
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import qdrant_edge as qe
from google.protobuf import json_format
from qdrant_client import grpc as pb

from engine.embedded import schema
from engine.embedded.convert import VectorSchema
from engine.embedded.status import ApiError, bad_input, collection_not_found, not_found
from engine.errors import PreconditionError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ALIASES_FILE = "aliases.json"
SHARD_DIR = "shard"
_FORMAT = 1


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


class Collection:
    """One collection: its stored config and its open shard. Mutate config only under `lock.write()`."""

    def __init__(
        self,
        name: str,
        path: Path,
        config: pb.CollectionConfig,
        payload_schema: dict[str, pb.PayloadSchemaInfo],
        created_at: float,
        shard: qe.EdgeShard,
    ) -> None:
        self.name = name
        self.path = path
        self.config = config
        self.payload_schema = payload_schema
        self.created_at = created_at
        self.shard = shard
        self.lock = RWLock()
        self.closed = False
        self.dirty = False  # written since the last flush
        self.refresh_derived()

    def refresh_derived(self) -> None:
        """Recompute what the hot paths read from the config (after create, load, or a schema change)."""
        self.vector_schema: VectorSchema = schema.vector_schema(self.config)
        self.single_unnamed: bool = schema.is_single_unnamed(self.config)

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
            },
        )

    @classmethod
    def load(cls, path: Path) -> "Collection":
        with open(path / CONFIG_FILE, encoding="utf-8") as fh:
            doc = json.load(fh)
        if doc.get("format") != _FORMAT:
            raise PreconditionError(f"{path / CONFIG_FILE} has format {doc.get('format')}, expected {_FORMAT}")
        config = json_format.ParseDict(doc["config"], pb.CollectionConfig())
        payload_schema = {
            field: json_format.ParseDict(info, pb.PayloadSchemaInfo()) for field, info in doc["payload_schema"].items()
        }
        shard = qe.EdgeShard.load(str(path / SHARD_DIR))
        return cls(doc["name"], path, config, payload_schema, float(doc["created_at"]), shard)

    def fill_created_at(self, target: Any) -> None:
        target.FromDatetime(dt.datetime.fromtimestamp(self.created_at, tz=dt.timezone.utc))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.shard.flush()
        finally:
            self.shard.close()


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
        """A collection name or alias to the collection name (NOT_FOUND, worded like Qdrant, if neither)."""
        with self._lock:
            if name in self._collections:
                return name
            target = self._aliases.get(name)
            if target is not None and target in self._collections:
                return target
        raise collection_not_found(name)

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
        """Use a collection exclusively (schema changes, reopen)."""
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

    def exists(self, name: str) -> bool:
        try:
            self.resolve_name(name)
            return True
        except ApiError:
            return False

    # -- collections ----------------------------------------------------------------------------------------------

    def create(self, name: str, config: pb.CollectionConfig) -> None:
        schema.validate_collection_name(name)
        with self._lock:
            if name in self._collections:
                raise bad_input(f"Collection `{name}` already exists!")
            if name in self._aliases:
                raise bad_input(f"Can't create collection with name {name}. Alias with the same name already exists")
            edge_config = schema.edge_config(config)
            path = self._collections_dir / name
            if path.exists():  # leftovers of a crashed create
                shutil.rmtree(path)
            path.mkdir(parents=True)
            shard = None
            try:
                shard = qe.EdgeShard.create(str(path / SHARD_DIR), edge_config)
                coll = Collection(name, path, config, {}, time.time(), shard)
                coll.save()
            except BaseException:
                if shard is not None:
                    shard.close()
                shutil.rmtree(path, ignore_errors=True)
                raise
            self._collections[name] = coll
        log.info("created collection %s", name)

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
        """Reopen a shard with its current config (applies optimizer/HNSW changes). Hold `coll.lock.write()`."""
        coll.shard.flush()
        coll.shard.close()
        try:
            coll.shard = qe.EdgeShard.load(str(coll.path / SHARD_DIR), schema.edge_config(coll.config))
        except Exception:
            coll.shard = qe.EdgeShard.load(str(coll.path / SHARD_DIR))  # never leave the collection closed
            raise

    def flush_dirty(self) -> int:
        """Flush every collection written since its last flush; returns how many were flushed."""
        with self._lock:
            colls = list(self._collections.values())
        flushed = 0
        for coll in colls:
            if not coll.dirty:
                continue
            with coll.lock.read():
                if coll.closed:
                    continue
                coll.dirty = False
                coll.shard.flush()
                flushed += 1
        return flushed

    # -- aliases --------------------------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases)

    def change_aliases(self, apply: Callable[[dict[str, str], set[str]], None]) -> None:
        """Run `apply(mapping, collection_names)` on a copy of the alias map and commit it only if it succeeds.

        All actions of one request are validated against the evolving copy and then persisted once, so the
        request is atomic: a failing action leaves every alias as it was.
        """
        with self._lock:
            mapping = dict(self._aliases)
            apply(mapping, set(self._collections))
            if mapping != self._aliases:
                self._save_aliases(mapping)
                self._aliases = mapping

    def _save_aliases(self, mapping: dict[str, str]) -> None:
        atomic_write_json(self.root / ALIASES_FILE, mapping)


def apply_alias_action(action: pb.AliasOperations, mapping: dict[str, str], collections: set[str]) -> None:
    """One alias action on `mapping`, with Qdrant's checks and messages (toc/collection_meta_ops.rs)."""
    kind = action.WhichOneof("action")
    if kind == "create_alias":
        op = action.create_alias
        if op.collection_name not in collections:
            raise not_found(f"Collection `{op.collection_name}` doesn't exist!")
        if op.alias_name in collections:
            raise bad_input(f"Collection `{op.alias_name}` already exists!")
        if not op.alias_name:
            raise bad_input("Alias name must not be empty")
        mapping[op.alias_name] = op.collection_name
    elif kind == "delete_alias":
        mapping.pop(action.delete_alias.alias_name, None)  # Qdrant: deleting a missing alias is not an error
    elif kind == "rename_alias":
        op = action.rename_alias
        if op.old_alias_name not in mapping:
            raise not_found(f"Alias {op.old_alias_name} does not exists!")
        if op.new_alias_name in collections:
            raise bad_input(f"Collection `{op.new_alias_name}` already exists!")
        mapping[op.new_alias_name] = mapping.pop(op.old_alias_name)
    else:
        raise bad_input("Alias operation without an action: set create_alias, rename_alias or delete_alias")
