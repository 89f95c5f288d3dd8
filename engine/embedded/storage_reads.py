"""Points read from storage: how many points each collection's shards materialised, with and without payload.

A scroll over S shards asks every shard for `limit + 1` points (lib/collection/src/collection/point_ops.rs), so
the points read from storage can be S times the points returned; benchmarks and tests read these counters to see
that amplification (and the saving of reading ids first and fetching payloads by id).

Read them in-process with `EmbeddedServer.storage_reads()`; a child process started with `--stats-file PATH`
writes them there as JSON (see `write_stats_file`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.embedded.catalog import atomic_write_json


@dataclass(frozen=True)
class StorageReads:
    """Points materialised from a collection's shards (each shard's answer counted, duplicates included)."""

    with_payload: int = 0
    without_payload: int = 0

    @property
    def total(self) -> int:
        return self.with_payload + self.without_payload


class StorageReadCounter:
    """Thread-safe per-collection counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, StorageReads] = {}
        self.version = 0  # bumped on every change, so writers of the stats file can skip unchanged snapshots

    def add(self, collection: str, points: int, with_payload: bool) -> None:
        if points <= 0:
            return
        with self._lock:
            old = self._counts.get(collection, StorageReads())
            if with_payload:
                new = StorageReads(old.with_payload + points, old.without_payload)
            else:
                new = StorageReads(old.with_payload, old.without_payload + points)
            self._counts[collection] = new
            self.version += 1

    def snapshot(self) -> dict[str, StorageReads]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self.version += 1


def write_stats_file(path: Path, reads: dict[str, StorageReads]) -> None:
    """`{"storage_reads": {collection: {"with_payload": n, "without_payload": m}}}`, replaced atomically."""
    atomic_write_json(path, {"storage_reads": {name: asdict(counts) for name, counts in sorted(reads.items())}})


def read_stats_file(path: Path) -> dict[str, StorageReads]:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    return {name: StorageReads(**counts) for name, counts in doc["storage_reads"].items()}
