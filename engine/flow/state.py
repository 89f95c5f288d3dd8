"""The job's persisted state: typed records with `to_dict`/`from_dict` and a schema version.

Everything a checkpoint keeps is here, so no module reads or writes the saved state by string key: where each
shard's cursor stands, the strategy the job decided on, the index deferral to undo, the run history, the latest
verify result and the cutover events.

Schema versions: 1 kept everything but the shards in a free-form `info` mapping; 2 (this one) types it. A version-1
checkpoint still loads (and resumes: the fingerprint is computed the same way), so a job started by an older
release continues under this one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, Self, cast

from engine.errors import CheckpointMismatch
from engine.qdrant.wire import PointIdValue

STATE_VERSION = 2
_VERIFY_HISTORY = 20  # verify results kept in the checkpoint's history


def _pick(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls`: a record written by a newer release loads, its extras ignored."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class _Record:
    """A dataclass record saved as its fields (to_dict) and loaded from them (from_dict, other keys ignored)."""

    # Fields that hold a list of other records: field name -> the record class of its items.
    _record_lists: ClassVar[Mapping[str, type[_Record]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        out = _pick(cls, data)
        for name, record in cls._record_lists.items():
            out[name] = [record.from_dict(x) for x in out.get(name) or []]
        return cls(**out)


@dataclass
class ShardState(_Record):
    """One id range of the source and how far the job got in it."""

    shard: int
    lo: PointIdValue | None  # inclusive; None = the start of the collection
    hi: PointIdValue | None  # exclusive; None = the end of the collection
    cursor: PointIdValue | None  # where reading resumes; None = at lo
    done: bool = False
    written: int = 0
    skipped: int = 0
    pages: int = 0
    shard_key: str | int | None = None  # custom sharding: the key every read and write of this range carries
    split_from: int | None = None  # a range split off another shard's tail for an idle lane


@dataclass(frozen=True)
class OnDiskOverride(_Record):
    """A vector put on disk while both models live in one collection (side_by_side), and the user's own setting
    that `swap` / `cleanup` put back (see engine.migration.strategies.on_disk_overrides)."""

    collection: str
    vector: str  # "" = the collection's unnamed vector
    reason: str  # why it went on disk, as `reembed plan` prints it
    restore_on_disk: bool | None = None  # the setting the user asked for; None: none was asked, it stays on disk
    restore_memory: str | None = None  # the `memory` placement (Cold/Cached/Pinned, Qdrant >= 1.19) asked for, if any


@dataclass(frozen=True)
class Decision(_Record):
    """The road the job takes (see engine.migration.strategies.decide)."""

    requested: str
    strategy: str  # resolved: new_collection | in_place | side_by_side | hybrid
    layout: str  # in_place (new vectors added to the source) | new_collection (a new collection is written)
    collection: str  # the collection written
    dense_name: str | None  # the new dense vector; "" the unnamed one; None when hybrid adds a sparse vector only
    sparse_name: str | None
    copy_vectors: dict[str, str] = field(default_factory=dict)  # source name -> name in the new collection
    vector_input: str | None = None  # shortcuts: stored vector transformed instead of text
    reason: str = ""
    multi_name: str | None = None  # late interaction: the new multivector
    on_disk: tuple[OnDiskOverride, ...] = ()  # side_by_side: vectors kept on disk while both models live

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        data = dict(data)
        # Version 1 saved the vector names under other keys.
        if "dense_vector" in data and "dense_name" not in data:
            data["dense_name"] = data.pop("dense_vector")
        if "sparse_vector" in data and "sparse_name" not in data:
            data["sparse_name"] = data.pop("sparse_vector")
        data["on_disk"] = tuple(OnDiskOverride.from_dict(o) for o in data.get("on_disk") or ())
        return cls(**_pick(cls, data))

    @property
    def new_vectors(self) -> list[str]:
        """The vectors this job writes, by name."""
        return [n for n in (self.dense_name, self.sparse_name, self.multi_name) if n is not None]


@dataclass
class IndexDeferral(_Record):
    """HNSW building stopped for what the job creates while it loads, and how to restore it."""

    kind: str  # indexing_threshold (a new collection) | vector_m (a vector created in place)
    collection: str
    restore: int  # the indexing threshold (KB) or the vector's m to put back
    vector: str | None = None
    restored: bool = False
    status: str | None = None  # the collection's status when the job stopped waiting for it
    waited_s: float | None = None


@dataclass
class LaneRecord(_Record):
    """What one lane (one embedding actor and its readers and writers, on one node) did in a run."""

    lane: str
    node_id: str
    gpus: float
    points: int = 0
    pages: int = 0
    pages_redone: int = 0
    points_redone: int = 0


@dataclass
class RunRecord(_Record):
    """One run of the job (the first, or a resume)."""

    ended_at: float
    pipeline_s: float
    points: int
    points_per_s: float
    pages_read: int = 0
    pages_written: int = 0
    pages_redone: int = 0
    points_redone: int = 0
    write_requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    timeline: list[list[float]] = field(default_factory=list)  # [elapsed s, points committed]
    window: int | None = None
    stages: dict[str, Any] | None = None  # {"stages": [...], "samples": [[t, n...]...]}: pages in flight per stage
    lanes: list[LaneRecord] = field(default_factory=list)
    driver_cpu_s: float | None = None

    _record_lists: ClassVar[Mapping[str, type[_Record]]] = {"lanes": LaneRecord}


@dataclass
class CheckSummary(_Record):
    name: str
    status: str  # pass | fail | info | skipped
    detail: str


@dataclass
class VerifySummary(_Record):
    """The latest `reembed verify` of the job: what the swap and cleanup gates read."""

    passed: bool
    at: float
    checked_points: int
    full: bool
    checks: list[CheckSummary] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    report: str | None = None
    elapsed_s: float = 0.0

    _record_lists: ClassVar[Mapping[str, type[_Record]]] = {"checks": CheckSummary}


@dataclass
class VerifyHistoryEntry(_Record):
    at: float
    passed: bool
    failed: list[str] = field(default_factory=list)


@dataclass
class Event(_Record):
    """A cutover, cleanup, catch-up or forced action, for the record. `details` are the action's own facts (alias,
    from, to, deleted collection, counts, the verify it relied on), kept as the action reported them."""

    action: str
    at: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "at": self.at, **self.details}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        rest = {k: v for k, v in data.items() if k not in ("action", "at")}
        return cls(action=str(data["action"]), at=float(data.get("at") or 0.0), details=rest)


@dataclass
class JobState:
    """Everything a checkpoint keeps for one job."""

    job_id: str
    fingerprint: str
    # The plan's first cut points (part of the fingerprint, never changed by splits); with custom sharding a list of
    # [shard key, cut points].
    boundaries: list[Any]
    shards: list[ShardState]
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished: bool = False
    parts: dict[str, Any] = field(default_factory=dict)  # the fingerprint's inputs, to explain a mismatch
    server: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # the embedder's own description (provenance)
    config: dict[str, Any] = field(default_factory=dict)  # the job config, API key redacted
    decision: Decision | None = None
    created_vectors: list[str] = field(default_factory=list)  # vectors/collections this job created (it may reuse)
    index: IndexDeferral | None = None
    dead_letters: str | None = None  # where the job's dead letters are
    runs: list[RunRecord] = field(default_factory=list)
    verify: VerifySummary | None = None
    verify_history: list[VerifyHistoryEntry] = field(default_factory=list)
    dropped_vectors: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    lanes: list[LaneRecord] = field(default_factory=list)  # the lanes of the run in progress (or the last run)
    version: int = STATE_VERSION

    @property
    def written(self) -> int:
        return sum(s.written for s in self.shards)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.shards)

    @property
    def model_dim(self) -> int | None:
        dim = self.model.get("dim")
        return int(dim) if dim is not None else None

    def record_verify(self, summary: VerifySummary) -> None:
        self.verify = summary
        self.verify_history = [*self.verify_history,
                               VerifyHistoryEntry(summary.at, summary.passed, list(summary.failed))][-_VERIFY_HISTORY:]

    def add_event(self, action: str, **details: Any) -> Event:
        event = Event(action=action, at=time.time(), details=details)
        self.events.append(event)
        return event

    # --- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "job_id": self.job_id,
            "fingerprint": self.fingerprint,
            "boundaries": list(self.boundaries),
            "shards": [asdict(s) for s in self.shards],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished": self.finished,
            "parts": self.parts,
            "server": self.server,
            "model": self.model,
            "config": self.config,
            "decision": self.decision.to_dict() if self.decision is not None else None,
            "created_vectors": list(self.created_vectors),
            "index": self.index.to_dict() if self.index is not None else None,
            "dead_letters": self.dead_letters,
            "runs": [r.to_dict() for r in self.runs],
            "verify": self.verify.to_dict() if self.verify is not None else None,
            "verify_history": [asdict(v) for v in self.verify_history],
            "dropped_vectors": list(self.dropped_vectors),
            "events": [e.to_dict() for e in self.events],
            "lanes": [lane.to_dict() for lane in self.lanes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobState":
        version = int(data.get("version", 1))
        if version > STATE_VERSION:
            raise CheckpointMismatch(
                f"the checkpoint of job {data.get('job_id')} was written by a newer reembed (state version "
                f"{version}, this one reads up to {STATE_VERSION}); run the job with that release"
            )
        body = dict(data)
        if version == 1:
            body.update(body.pop("info", None) or {})  # version 1 kept everything but the shards in `info`
        decision, index, verify = body.get("decision"), body.get("index"), body.get("verify")
        return cls(
            job_id=str(body["job_id"]),
            fingerprint=str(body["fingerprint"]),
            boundaries=list(body.get("boundaries") or []),
            shards=[ShardState.from_dict(s) for s in body.get("shards") or []],
            created_at=float(body.get("created_at") or time.time()),
            updated_at=float(body.get("updated_at") or time.time()),
            finished=bool(body.get("finished", False)),
            parts=dict(body.get("parts") or {}),
            server=body.get("server"),
            model=dict(body.get("model") or {}),
            config=dict(body.get("config") or {}),
            decision=Decision.from_dict(decision) if decision else None,
            created_vectors=list(body.get("created_vectors") or []),
            index=IndexDeferral.from_dict(index) if index else None,
            dead_letters=body.get("dead_letters"),
            runs=[RunRecord.from_dict(r) for r in body.get("runs") or []],
            verify=VerifySummary.from_dict(verify) if verify else None,
            verify_history=[VerifyHistoryEntry.from_dict(v) for v in body.get("verify_history") or []],
            dropped_vectors=list(body.get("dropped_vectors") or []),
            events=[Event.from_dict(e) for e in body.get("events") or []],
            lanes=[LaneRecord.from_dict(x) for x in body.get("lanes") or []],
        )

    @classmethod
    def from_json(cls, text: str) -> "JobState":
        return cls.from_dict(json.loads(text))
