"""The seams of the data flow: what a reader (Source), a writer (Sink), a lane's stage executor (Stages) and a pool of
lanes (LanePool) promise, so the lane loop and the coordinator run the same over Ray actors, threads in one process,
or the in-memory fakes of the unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from engine.embed.vectorset import VectorSet
from engine.flow.lease import Lease, LeaseAck
from engine.flow.page import PageBody, PageMeta, WriteAck
from engine.qdrant.wire import PointIdValue

Clock = Callable[[], float]  # monotonic seconds; injected so no unit test waits on real time
DeadLetterSink = Callable[[int, list[tuple[PointIdValue, str]], PageMeta], None]


class WorkerLost(Exception):
    """A worker died or lost its result; the page is safe to redo (every write is idempotent).

    `transient`: the worker is restarting rather than failing on this page (it costs the page no attempt).
    `reread`: the page's read data is gone too, so the page is read again (else only embedding and writing
    are redone, from the data already read)."""

    def __init__(self, message: str, transient: bool = False, reread: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
        self.reread = reread


class Source(Protocol):
    """Reads one page of a shard's id range."""

    def read_page(self, shard: int, seq: int, start: PointIdValue | None, stop: PointIdValue | None, limit: int,
                  to_stop: bool = False, shard_key: str | int | None = None
                  ) -> tuple[PageMeta, list[Any], PageBody]:
        """Points with ids in [start, stop), at most `limit` of them (all of them with `to_stop`), the inputs to
        embed (texts, or stored vectors for a shortcut) and the page's points for the writer."""
        ...


class SourceFactory(Protocol):
    """Picklable description of a Source, opened where the reading happens (a reader actor opens its own
    channel)."""

    def open(self, client: Any) -> Source: ...


class Sink(Protocol):
    """Writes a page's points with their new vectors; every write is idempotent."""

    async def write(self, shard: int, seq: int, body: PageBody, vectors: np.ndarray | VectorSet | None,
                    check_present: bool = False) -> WriteAck:
        """`check_present`: first count the page's points that already carry the new vector (a redo after a
        possible earlier write), reported as `WriteAck.already_present`."""
        ...

    async def close(self) -> None: ...


class Stages(Protocol):
    """A lane's stage executor: read a page, then embed and write it. Handles are opaque; `result` raises
    WorkerLost for a lost worker or result."""

    def read(self, lease: Lease, seq: int, start: PointIdValue | None, stop: PointIdValue | None, limit: int,
             to_stop: bool) -> Any: ...

    def process(self, read_handle: Any, meta: PageMeta, check_present: bool) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any: ...

    def release(self, read_handle: Any) -> None:
        """The page is committed or abandoned: its read data may go."""
        ...


@dataclass
class LaneStats:
    """Counts of one lane; `LaneReport` carries increments since the previous report."""

    pages_read: int = 0
    pages_written: int = 0
    pages_redone: int = 0
    points_redone: int = 0
    write_requests: int = 0
    dead: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    tally: dict[str, int] = field(default_factory=dict)  # the readers' own counts (catch-up: inserted, updated...)

    def add(self, other: "LaneStats") -> None:
        self.pages_read += other.pages_read
        self.pages_written += other.pages_written
        self.pages_redone += other.pages_redone
        self.points_redone += other.points_redone
        self.write_requests += other.write_requests
        self.dead += other.dead
        for cause, n in other.retries.items():
            self.retries[cause] = self.retries.get(cause, 0) + n
        for key, n in other.tally.items():
            self.tally[key] = self.tally.get(key, 0) + n


@dataclass
class LaneReport:
    """What a lane tells the coordinator at each poll: cursor moves, counts, and what it is doing."""

    acks: list[LeaseAck] = field(default_factory=list)
    stats: LaneStats = field(default_factory=LaneStats)
    frontiers: dict[int, PointIdValue | None] = field(default_factory=dict)  # shard -> where its next read starts
    held: list[int] = field(default_factory=list)  # shards leased to the lane and not finished
    reading: list[int] = field(default_factory=list)  # held shards that still have pages to read
    reads_in_flight: int = 0  # pages being read now
    processing: int = 0  # pages being embedded and written now
    waiting: str | None = None  # what the lane is waiting for, when it waits (e.g. its embedding actor restarting)
    qdrant_waiting: str | None = None  # its readers or writers waiting out a Qdrant outage or rate limit
    pace: str | None = None  # how its writers pace themselves, and why it last changed
    error: str | None = None  # a failure that ends the job (one line)
    error_exit_code: int = 1


@dataclass(frozen=True)
class LaneInfo:
    """A lane of a pool: its id and where it runs."""

    lane: str
    node_id: str
    gpus: float


@dataclass
class PoolChange:
    added: list[LaneInfo] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # lanes gone with their node, or dead: their leases return


class LanePool(Protocol):
    """The lanes a job runs on; lanes may appear (a node joined) and vanish (a node died) at any time."""

    def refresh(self) -> PoolChange:
        """Lanes added or lost since the last call."""
        ...

    def assign(self, lane: str, lease: Lease) -> None: ...

    def split(self, lane: str, shard: int, at: PointIdValue) -> PointIdValue | None:
        """Ask the lane to end its lease of `shard` at `at` (or at its read frontier, if past it); returns the
        accepted point, or None when the lane has nothing left to give."""
        ...

    def poll(self, timeout: float) -> list[tuple[str, LaneReport | None]]:
        """Reports of the lanes that have something to say; (lane, None) for a lane found dead."""
        ...

    def close(self) -> None: ...


Splitter = Callable[[PointIdValue | None, PointIdValue | None, "str | int | None"], Sequence[PointIdValue]]
"""Sampled ids strictly inside (after, before) of a shard key's id space, sorted in Qdrant's id order: where a long
range can be split."""
