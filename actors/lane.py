"""One lane on Ray: its conductor actor runs the engine's lane loop over the lane's reader(s), embedding actor and
writer(s), all in one placement group on one node, so page data never leaves the node: the reader's page objects
go to the embedding actor and the writer through the node's object store, and only cursor acknowledgements go to
the driver, batched per poll.

The conductor is a threaded actor: one thread runs the loop, the others answer the coordinator (assign, split,
poll). It reserves no CPU of its own (it shares the embedding actor's bundle): it only moves references.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import exceptions as rex
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.sizing import LaneShape
from actors.workers import EmbedWorker, ReaderWorker, WriterWorker
from engine import tunables
from engine.errors import ModelError, ReembedError
from engine.flow.deadletters import DeadLetters
from engine.flow.lane import LaneLoop, RedoPolicy
from engine.flow.lease import Lease
from engine.flow.page import PageMeta
from engine.flow.seams import LaneReport, SourceFactory, Stages, WorkerLost
from engine.flow.sink import SinkSpec
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.qdrant.wire import PointIdValue

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 1.0  # a worker's status answer; a busy one is asked again at the next report

# Losses that mean "the worker or its result is gone"; the page is redone.
_LOST = tuple(
    getattr(rex, name)
    for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError", "OwnerDiedError",
                 "WorkerCrashedError", "ObjectReconstructionFailedError", "NodeDiedError", "ObjectFetchTimedOutError")
    if hasattr(rex, name)
)
_DATA_LOST = tuple(getattr(rex, n) for n in ("ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError",
                                             "ObjectFetchTimedOutError") if hasattr(rex, n))


def _transient(err: BaseException) -> bool:
    """The actor is restarting or briefly unreachable: the page did nothing wrong."""
    unavailable = getattr(rex, "ActorUnavailableError", None)
    return unavailable is not None and isinstance(err, unavailable)


@dataclass(frozen=True)
class LaneSpec:
    """Everything a lane needs, as plain data (it crosses to the lane's node)."""

    job_id: str
    endpoint: Endpoint
    policy: RetryPolicy
    source: SourceFactory  # how the lane's readers open their Source (the backfill's, or catch-up's)
    sink: SinkSpec
    vectorizer: dict  # engine.embed.vectorize spec
    page_size: int
    pages_in_flight: int  # the lane's window: pages read, embedded or written at once
    redo: RedoPolicy
    runs_root: str  # where the job's run directory lives: a path every node sees, or a pyarrow.fs URI


class RayStages:
    """The lane's stages over its actors: read on a reader, embed on the embedding actor, write on a writer."""

    def __init__(self, readers: list[Any], embedder: Any, writers: list[Any]) -> None:
        self.readers, self.embedder, self.writers = readers, embedder, writers
        self._rr_read = 0
        self._rr_write = 0
        self._parts: dict[Any, tuple[Any, Any]] = {}  # read's meta ref -> (inputs ref, body ref)

    def read(self, lease: Lease, seq: int, start: PointIdValue | None, stop: PointIdValue | None, limit: int,
             to_stop: bool) -> Any:
        reader = self.readers[self._rr_read % len(self.readers)]
        self._rr_read += 1
        meta, inputs, body = reader.read.remote(lease.shard, seq, start, stop, limit, to_stop, lease.shard_key)
        self._parts[meta] = (inputs, body)
        return meta

    def process(self, read_handle: Any, meta: PageMeta, check_present: bool) -> Any:
        inputs, body = self._parts[read_handle]
        vectors = self.embedder.embed.remote(inputs) if meta.n_texts else None
        writer = self.writers[self._rr_write % len(self.writers)]
        self._rr_write += 1
        return writer.write.remote(meta.shard, meta.seq, body, vectors, check_present)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout, fetch_local=False)
        if ready:  # take everything else that is already done too
            more, _ = ray.wait(handles, num_returns=len(handles), timeout=0, fetch_local=False)
            return more or ready
        return ready

    def result(self, handle: Any) -> Any:
        try:
            return ray.get(handle)
        except _DATA_LOST as err:
            raise WorkerLost(type(err).__name__, transient=False, reread=True) from None
        except _LOST as err:
            # The reader's data is still held by this lane: only a lost read needs reading again.
            raise WorkerLost(type(err).__name__, transient=_transient(err), reread=handle in self._parts) from None
        except rex.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ReembedError):
                raise cause from None
            if isinstance(cause, _LOST):
                raise WorkerLost(type(cause).__name__, transient=_transient(cause),
                                 reread=handle in self._parts) from None
            raise WorkerLost(f"{type(cause).__name__ if cause else 'task error'}: {str(cause or err)[:200]}",
                             reread=handle in self._parts) from None

    def release(self, read_handle: Any) -> None:
        self._parts.pop(read_handle, None)


@dataclass
class LaneWorkers:
    """A lane's worker actors (handles cross to the conductor)."""

    embedder: Any
    readers: list[Any]
    writers: list[Any]


def start_workers(spec: LaneSpec, shape: LaneShape, pg: Any, name: str) -> LaneWorkers:
    """Create a lane's embedding actor, readers and writers in its placement group. Called by the pool beside the
    conductor, so every process of the lane starts at once (a worker process takes seconds on a busy node)."""
    restart = dict(max_restarts=-1, max_task_retries=0)

    def in_bundle(i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)

    env = {"OMP_NUM_THREADS": str(shape.threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "true",
           # OpenMP threads that spin at barriers burn the core a preempted sibling needs: on CPU the model
           # shares the cores with the readers, writers and Ray. bench/e2e.py, MiniLM on 2 cores: ACTIVE 13.5
           # texts/s, libgomp's default 52.9 (model alone 62.0), PASSIVE 53.4 of 56.5.
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    vectorizer = dict(spec.vectorizer)
    if vectorizer.get("dense") is not None and not shape.gpus and vectorizer["dense"].get("threads") is None:
        vectorizer["dense"] = {**vectorizer["dense"], "threads": shape.threads}
    # On a GPU a second call tokenizes the next page while the model runs; on CPU the tokenizer would only take
    # cores from the model (bench/e2e.py: no gain there), so one call at a time.
    concurrency = tunables.EMBED_ACTOR_CONCURRENCY if shape.gpus else 1
    embedder = ray.remote(EmbedWorker).options(
        num_cpus=shape.embed_cpus, num_gpus=shape.gpus, max_concurrency=concurrency, name=f"{name}-embed",
        scheduling_strategy=in_bundle(0), runtime_env={"env_vars": env}, **restart,
    ).remote(vectorizer, spec.job_id)
    # Two read threads, and a status question answered by a thread of its own while every read waits out an outage
    # (the lane can have its whole window of reads queued at one reader).
    readers = [
        ray.remote(concurrency_groups={"status": 1})(ReaderWorker).options(  # type: ignore[call-overload]
            num_cpus=shape.io_cpus, name=f"{name}-read-{i}", max_concurrency=2,
            scheduling_strategy=in_bundle(1 + i), **restart)
        .remote(spec.endpoint, spec.policy, spec.source, spec.job_id)
        for i in range(shape.readers)
    ]
    sink = spec.sink if spec.sink.requests_in_flight == shape.requests_in_flight else \
        replace(spec.sink, requests_in_flight=shape.requests_in_flight)
    writers = [
        ray.remote(WriterWorker).options(num_cpus=shape.io_cpus, max_concurrency=64, name=f"{name}-write-{i}",
                                         scheduling_strategy=in_bundle(1 + shape.readers + i), **restart)
        .remote(spec.endpoint, sink, spec.policy, spec.job_id)
        for i in range(shape.writers)
    ]
    return LaneWorkers(embedder, readers, writers)


class LaneActor:
    """The conductor of one lane, in its placement group beside the lane's workers (start_workers)."""

    def __init__(self, spec: LaneSpec, workers: LaneWorkers, name: str, stages: Stages | None = None) -> None:
        """`stages`: another stage executor than the lane's workers (bench/coordinator.py runs synthetic pages
        through the real coordinator, pool and lane loop to measure their own cost)."""
        self.spec, self.name = spec, name
        self.embedder, self.readers, self.writers = workers.embedder, workers.readers, workers.writers
        self.dead = DeadLetters(spec.runs_root, spec.job_id)
        self.loop = LaneLoop(stages or RayStages(self.readers, self.embedder, self.writers), page_size=spec.page_size,
                             window=spec.pages_in_flight, policy=spec.redo, on_dead=self.dead.record, name=name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report = 0.0

    def start(self) -> dict[str, Any]:
        """Load the model (surfacing a bad one before anything is written), then run the loop. Returns the
        model's description and where the lane runs."""
        if self.embedder is None:  # a synthetic lane: no model
            return self._started({"kind": "synthetic", "dim": None})
        try:
            described = ray.get(self.embedder.describe.remote())
        except rex.RayTaskError as err:
            cause = getattr(err, "cause", None)
            raise cause if isinstance(cause, ReembedError) else err from None
        except rex.RayActorError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ReembedError):
                raise cause from None
            for line in str(err).splitlines():  # an actor whose constructor raised carries that exception
                if "ModelError:" in line:
                    raise ModelError(line.split("ModelError:", 1)[1].strip()) from None
            raise
        return self._started(described)

    def _started(self, described: dict[str, Any]) -> dict[str, Any]:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        return {"model": described, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.loop.step(timeout=0.5)

    def assign(self, lease: Lease) -> None:
        self.loop.assign(lease)

    def split(self, shard: int, at: PointIdValue) -> PointIdValue | None:
        return self.loop.split(shard, at)

    def poll(self, timeout: float) -> LaneReport:
        """The lane's report, held until there is news (or `timeout`), and at least LANE_REPORT_MIN_S after the
        previous one, so a busy lane's report carries many pages."""
        hold = self._last_report + tunables.LANE_REPORT_MIN_S - time.monotonic()
        if hold > 0:
            time.sleep(hold)  # on the lane's node, in one of the conductor's threads; the loop thread runs on
        self.loop.wait_news(timeout)
        self._last_report = time.monotonic()
        report = self.loop.report()
        self._add_status(report)
        return report

    def _add_status(self, report: LaneReport) -> None:
        """The readers' and writers' own word on Qdrant: waiting out an outage or a rate limit, and the pace."""
        # Asked of every worker at once; what answers within the timeout counts (a busy or restarting worker is
        # asked again at the next report; the loop reports a restart itself).
        refs = {w.status.remote(): "reader" for w in self.readers}
        refs.update({w.status.remote(): "writer" for w in self.writers})
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=STATUS_TIMEOUT_S)
        waits: list[str] = []
        pace = None
        for ref in ready:
            try:
                answer = ray.get(ref)
            except (rex.RayActorError, rex.RayTaskError):
                continue
            if refs[ref] == "reader":
                waits += [answer] if answer else []
            else:
                pace = pace or answer[0]
                waits += [answer[1]] if answer[1] else []
        report.qdrant_waiting = waits[0] if waits else None
        report.pace = pace

    def set_rate(self, points_per_s: float | None) -> None:
        """The lane's share of the job's points/s cap, split between its writers."""
        share = None if points_per_s is None else points_per_s / max(1, len(self.writers))
        ray.get([w.set_rate.remote(share) for w in self.writers])

    def observe_search_p99(self, p99_ms: float | None) -> None:
        ray.get([w.observe_search_p99.remote(p99_ms) for w in self.writers])

    def actors(self) -> list[Any]:
        return [a for a in (self.embedder, *self.readers, *self.writers) if a is not None]

    def handles(self) -> dict[str, Any]:
        """The lane's worker actors by role (for tests that kill them)."""
        return {"embed": self.embedder, "readers": list(self.readers), "writers": list(self.writers)}

    def pids(self) -> dict[str, int]:
        return {"conductor": os.getpid(), "embed": ray.get(self.embedder.pid.remote()),
                **{f"read-{i}": ray.get(r.pid.remote()) for i, r in enumerate(self.readers)},
                **{f"write-{i}": ray.get(w.pid.remote()) for i, w in enumerate(self.writers)}}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for actor in self.actors():
            ray.kill(actor, no_restart=True)
