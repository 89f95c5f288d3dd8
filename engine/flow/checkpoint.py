"""Checkpoints: the job's state kept where a resubmitted job finds it, the fingerprint that refuses an
incompatible resume, and a background saver so the coordinator never waits on a save.

A shard's cursor moves only past pages whose writes were acknowledged with wait=true, in order (engine/flow/lease.py),
so a crash at any instant loses nothing: everything before a saved cursor is in the target, and everything after it
is read again (writes are idempotent, so re-reading the pages that were in flight duplicates nothing).

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
from typing import Any, Protocol

from qdrant_client import grpc as pb

from engine.errors import CheckpointMismatch, ConfigError
from engine.flow.state import JobState
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("5b0c7d4e-8a57-4e55-9c1d-2f3c1e0b9a11")


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


class CheckpointStore(Protocol):
    def load(self, job_id: str) -> JobState | None: ...

    def save(self, state: JobState) -> None: ...

    def save_snapshot(self, job_id: str, data: dict[str, Any]) -> None:
        """Save a state snapshot (JobState.to_dict()); a store may write only what changed since its last save."""
        ...

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
        self._pending: dict[str, Any] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="reembed-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, state: JobState) -> None:
        state.updated_at = time.time()
        snapshot = state.to_dict()  # copied now: the coordinator keeps mutating the state
        with self._cond:
            self._raise()
            self._pending = snapshot
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
                snapshot, self._pending, self._busy = self._pending, None, True
            try:
                self.store.save_snapshot(self.job_id, snapshot)
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
    """The job's state in a tiny collection of the target server, so a job resubmitted from a new head node finds it.

    One header point per job (everything but the shards) and one point per shard, each a JSON string in its payload;
    a save writes only the points whose content changed since the store's last save, so a job of thousands of
    shards writes a few per second, not its whole state. Shards are independent records: a save interrupted half
    way leaves each shard at its old or its new cursor, both safe to resume from. New shards (split off a lane's
    range) are written before the shard they were split from is shortened, so no id range is ever in none.

    A job saved by version 1 (one point holding the whole state) still loads."""

    HEADER, SHARD = "header", "shard"

    def __init__(self, client: QdrantGrpc, collection: str) -> None:
        self.client = client
        self.collection = collection
        self._ready = False
        self._saved: dict[str, dict[str, str]] = {}  # job -> point id -> the JSON last written there

    def describe(self) -> str:
        return f"qdrant collection {self.collection!r} at {self.client.endpoint.address}"

    @staticmethod
    def point_id(job_id: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, job_id))

    @staticmethod
    def shard_point_id(job_id: str, shard: int) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{job_id}/shard/{shard}"))

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
            # A job's points are found by job id: indexed, so a server in strict mode (no unindexed filtering)
            # allows the filter too.
            self.client.create_field_index(self.collection, "job_id", pb.FieldType.FieldTypeKeyword)
        self._ready = True

    def _job_points(self, job_id: str) -> list[pb.RetrievedPoint]:
        flt = pb.Filter(must=[pb.Condition(field=pb.FieldCondition(
            key="job_id", match=pb.Match(keyword=job_id)))])
        out: list[pb.RetrievedPoint] = []
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, offset, 1024, with_payload=True, flt=flt)
            out.extend(points)
            if offset is None:
                return out

    def load(self, job_id: str) -> JobState | None:
        if not self.client.collection_exists(self.collection):
            return None
        self._ready = True
        header = self.client.get(self.collection, [self.point_id(job_id)], with_payload=True)
        if not header:
            return None
        head = values.payload_to_python(header[0].payload)
        if head.get("kind") != self.HEADER:  # version 1: the whole state in one point
            return JobState.from_json(head["state"]) if head.get("state") else None
        data = json.loads(head["state"])
        shards: dict[int, dict[str, Any]] = {}
        for p in self._job_points(job_id):
            body = values.payload_to_python(p.payload)
            if body.get("kind") == self.SHARD:
                shards[int(body["shard"])] = json.loads(body["state"])
        data["shards"] = [shards[i] for i in sorted(shards)]
        self._saved[job_id] = {}  # the next save writes everything once: the loader may not be the last writer
        return JobState.from_dict(data)

    def save(self, state: JobState) -> None:
        state.updated_at = time.time()
        self.save_snapshot(state.job_id, state.to_dict())

    def _point(self, pid: str, payload: dict[str, Any]) -> bytes:
        point = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
        point.vectors.vector.dense.data.append(1.0)
        return point.SerializeToString()

    def save_snapshot(self, job_id: str, data: dict[str, Any]) -> None:
        self._ensure()
        saved = self._saved.setdefault(job_id, {})
        head = {k: v for k, v in data.items() if k != "shards"}
        head["shard_count"] = len(data["shards"])
        new_shards: list[tuple[str, str, int]] = []  # (point id, state text, shard)
        changed: list[tuple[str, str, int]] = []
        for s in data["shards"]:
            pid = self.shard_point_id(job_id, int(s["shard"]))
            text = json.dumps(s, sort_keys=True)
            if saved.get(pid) != text:
                (changed if pid in saved else new_shards).append((pid, text, int(s["shard"])))
        head_text = json.dumps(head, sort_keys=True, default=str)
        head_pid = self.point_id(job_id)
        groups = [new_shards, changed + ([(head_pid, head_text, -1)] if saved.get(head_pid) != head_text else [])]
        for group in groups:
            if not group:
                continue
            blobs = [self._point(pid, {"job_id": job_id, "kind": self.HEADER if shard < 0 else self.SHARD,
                                       "shard": shard, "state": text}) for pid, text, shard in group]
            for a, b in wire.split_by_size(blobs, 256, 8 * 1024 * 1024):
                self.client.upsert_raw(wire.upsert_request(self.collection, blobs[a:b], wait=True, insert_only=False),
                                       f"save checkpoint of job {job_id}")
            for pid, text, _ in group:
                saved[pid] = text

    def save_text(self, job_id: str, text: str) -> None:
        self.save_snapshot(job_id, json.loads(text))

    def delete(self, job_id: str) -> None:
        if not self.client.collection_exists(self.collection):
            return
        ids = [wire.id_value(p.id) for p in self._job_points(job_id)]
        for i in range(0, len(ids), 1024):
            self.client.delete_points(self.collection, ids[i:i + 1024])
        self.client.delete_points(self.collection, [self.point_id(job_id)])  # a version-1 point has no job filter
        self._saved.pop(job_id, None)


class UriCheckpointStore:
    """A JSON object per job under a directory or URI (pyarrow.fs: local paths, file://, s3://, gs://)."""

    def __init__(self, uri: str) -> None:
        from pyarrow import fs

        self.root: str
        try:
            self.fs, self.root = fs.FileSystem.from_uri(uri) if "://" in uri else (fs.LocalFileSystem(), uri)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs
            raise ConfigError(
                f"checkpoint.uri={uri!r} cannot be opened ({exc}); use a path, file://, s3:// or gs://") from None
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

    def save_snapshot(self, job_id: str, data: dict[str, Any]) -> None:
        # Object stores replace whole objects, so the whole state is written each time.
        self.save_text(job_id, json.dumps(data, sort_keys=True))

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
