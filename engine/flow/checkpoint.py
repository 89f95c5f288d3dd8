"""Checkpoints: where each shard's cursor stands, and the ordered-commit rule that moves it.

A shard's cursor moves only past pages whose writes were acknowledged with wait=true, in sequence order, so a crash
at any instant loses nothing: everything before the cursor is in the target, and everything after it is read again
(writes are idempotent, so re-reading the pages that were in flight duplicates nothing).

Stores: by default a small collection in the target Qdrant (a job resubmitted on a new head node finds it there);
alternatively a JSON object at a path or URI through pyarrow.fs (local, s3://, gs://).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from qdrant_client import grpc as pb

from engine.errors import CheckpointMismatch, ConfigError
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc

log = logging.getLogger(__name__)

STATE_VERSION = 1
_NAMESPACE = uuid.UUID("5b0c7d4e-8a57-4e55-9c1d-2f3c1e0b9a11")


@dataclass
class ShardState:
    shard: int
    lo: wire.PointIdValue | None  # inclusive; None = the start of the collection
    hi: wire.PointIdValue | None  # exclusive; None = the end of the collection
    cursor: wire.PointIdValue | None  # where reading resumes; None = at lo
    done: bool = False
    written: int = 0
    skipped: int = 0
    pages: int = 0


@dataclass
class JobState:
    job_id: str
    fingerprint: str
    boundaries: list[wire.PointIdValue]
    shards: list[ShardState]
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # strategy, source, target, model provenance (no secrets)
    events: list[dict[str, Any]] = field(default_factory=list)  # cutover / cleanup / forced actions, for the record
    version: int = STATE_VERSION

    @property
    def written(self) -> int:
        return sum(s.written for s in self.shards)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobState":
        data = json.loads(text)
        data["shards"] = [ShardState(**s) for s in data["shards"]]
        return cls(**data)


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable hash of everything that decides which points a resumed job may skip."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def check_resume(state: JobState, expected: str, differences: str = "") -> None:
    if state.fingerprint != expected:
        raise CheckpointMismatch(
            f"a checkpoint for job {state.job_id} exists but was made with a different source, target, model, text "
            f"spec or shard plan{(' (' + differences + ')') if differences else ''}; restore the original config, "
            "or start over with `reembed run --restart` (the target keeps what was written)"
        )


class OrderedCommit:
    """Per-shard ordered commit: pages may finish in any order, the cursor only moves over a gap-free prefix."""

    def __init__(self, state: ShardState, first_seq: int = 0) -> None:
        self.state = state
        self.next_seq = first_seq
        self._acked: dict[int, tuple[wire.PointIdValue | None, int, int]] = {}

    def ack(self, seq: int, next_offset: wire.PointIdValue | None, written: int, skipped: int) -> bool:
        """Record an acknowledged page; returns True when the cursor moved."""
        if seq < self.next_seq:
            return False  # a page redone after a retry whose first attempt was already committed
        self._acked[seq] = (next_offset, written, skipped)
        moved = False
        while self.next_seq in self._acked:
            nxt, w, s = self._acked.pop(self.next_seq)
            self.state.written += w
            self.state.skipped += s
            self.state.pages += 1
            self.state.cursor = nxt
            if nxt is None:
                self.state.done = True
            self.next_seq += 1
            moved = True
        return moved

    @property
    def pending(self) -> int:
        return len(self._acked)


class CheckpointStore(Protocol):
    def load(self, job_id: str) -> JobState | None: ...

    def save(self, state: JobState) -> None: ...

    def save_text(self, job_id: str, text: str) -> None: ...

    def delete(self, job_id: str) -> None: ...

    def describe(self) -> str: ...


class BackgroundSaver:
    """Writes the newest checkpoint snapshot on a thread of its own, latest wins.

    A wait=true write to a busy server takes ~100 ms (measured in bench/dataplane.py: 22 s of a 33 s run went to
    blocking saves), and the coordinator must keep dispatching meanwhile. A crash loses at most the snapshot being
    written, so the redone work stays the pages in flight plus those committed during one save.
    """

    def __init__(self, store: "CheckpointStore", job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="reembed-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, state: JobState) -> None:
        state.updated_at = time.time()
        text = state.to_json()  # snapshot now: the coordinator keeps mutating the state
        with self._cond:
            self._raise()
            self._pending = text
            self._cond.notify()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                text, self._pending, self._busy = self._pending, None, True
            try:
                self.store.save_text(self.job_id, text)
            except BaseException as exc:  # noqa: BLE001 - handed to the coordinator, which stops the job
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every submitted snapshot is written; raise what the writer hit."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()
            self._raise()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)


class QdrantCheckpointStore:
    """One point per job in a tiny collection of the target server; the state is a JSON string in its payload."""

    def __init__(self, client: QdrantGrpc, collection: str) -> None:
        self.client = client
        self.collection = collection
        self._ready = False

    def describe(self) -> str:
        return f"qdrant collection {self.collection!r} at {self.client.endpoint.address}"

    @staticmethod
    def point_id(job_id: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, job_id))

    def _ensure(self) -> None:
        if self._ready:
            return
        if not self.client.collection_exists(self.collection):
            req = pb.CreateCollection(collection_name=self.collection)
            # Qdrant needs a vector per point; a 1-d one costs nothing.
            req.vectors_config.params.CopyFrom(pb.VectorParams(size=1, distance=pb.Distance.Dot))
            try:
                self.client.create_collection(req)
            except Exception:  # noqa: BLE001 - another driver may have created it first
                if not self.client.collection_exists(self.collection):
                    raise
        self._ready = True

    def load(self, job_id: str) -> JobState | None:
        if not self.client.collection_exists(self.collection):
            return None
        self._ready = True
        points = self.client.get(self.collection, [self.point_id(job_id)], with_payload=True)
        if not points:
            return None
        raw = values.payload_to_python(points[0].payload).get("state")
        return JobState.from_json(raw) if raw else None

    def save(self, state: JobState) -> None:
        state.updated_at = time.time()
        self.save_text(state.job_id, state.to_json())

    def save_text(self, job_id: str, text: str) -> None:
        self._ensure()
        point = pb.PointStruct(
            id=wire.point_id(self.point_id(job_id)),
            payload=values.payload_from_python({"job_id": job_id, "state": text}),
        )
        point.vectors.vector.dense.data.append(1.0)
        req = wire.upsert_request(self.collection, [point.SerializeToString()], wait=True, insert_only=False)
        self.client.upsert_raw(req, f"save checkpoint of job {job_id}")

    def delete(self, job_id: str) -> None:
        if self.client.collection_exists(self.collection):
            self.client.delete_points(self.collection, [self.point_id(job_id)])


class UriCheckpointStore:
    """A JSON object per job under a directory or URI (pyarrow.fs: local paths, file://, s3://, gs://)."""

    def __init__(self, uri: str) -> None:
        from pyarrow import fs

        try:
            self.fs, self.root = fs.FileSystem.from_uri(uri) if "://" in uri else (fs.LocalFileSystem(), uri)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs
            raise ConfigError(f"checkpoint.uri={uri!r} cannot be opened ({exc}); use a path, file://, s3:// or gs://")
        self.uri = uri
        self.root = self.root.rstrip("/")
        self.fs.create_dir(self.root, recursive=True)

    def describe(self) -> str:
        return f"{self.uri}"

    def _path(self, job_id: str) -> str:
        return f"{self.root}/{job_id}.json"

    def load(self, job_id: str) -> JobState | None:
        from pyarrow import fs

        if self.fs.get_file_info(self._path(job_id)).type == fs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self._path(job_id)) as f:
            return JobState.from_json(f.read().decode())

    def save(self, state: JobState) -> None:
        state.updated_at = time.time()
        self.save_text(state.job_id, state.to_json())

    def save_text(self, job_id: str, text: str) -> None:
        tmp = self._path(job_id) + ".tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        # A rename is atomic on local disks; object stores replace whole objects, which is atomic too.
        self.fs.move(tmp, self._path(job_id))

    def delete(self, job_id: str) -> None:
        from pyarrow import fs

        if self.fs.get_file_info(self._path(job_id)).type != fs.FileType.NotFound:
            self.fs.delete_file(self._path(job_id))
