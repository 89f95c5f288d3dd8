"""Shared pieces of the pipeline benchmarks (bench/e2e.py, bench/dataplane.py, bench/memory.py).

- the corpus: deterministic texts of realistic length (log-uniform 7–250 words ≈ 10–400 BERT tokens, mean ≈ 110,
  the mix bench/embed.py uses) cut from the standard library's docstrings (engine.app.demo_corpus reads them in an
  isolated interpreter, so every process gets the same words), with a small realistic payload beside the text;
- seeding a source collection fast through raw gRPC (engine.qdrant.wire), in this process or in a child process so a
  benchmark's driver never holds the corpus;
- the naive loop from Qdrant's migration guide, written as users write it with qdrant-client: scroll 256 points
  without vectors → encode → upsert(wait=True) of models.PointStruct, one process, one thing at a time;
- reembed runs through engine.app.job.run_job with the actor pids collected;
- a process-tree sampler (psutil, every 0.2 s): peak RSS and CPU seconds per role (driver, endpoint, each actor,
  Ray's own processes);
- an optional CPU profiler (`--profile`): a thread in the driver, every Ray worker and the endpoint (installed in
  the children through a generated sitecustomize) that charges each thread's CPU time to the Python stack it is
  running, every few milliseconds (py-spy is not installed here).

Run as a script it seeds a collection (what memory.py uses to keep the corpus out of the measured driver):
    python bench/common.py seed --port P --collection src --n 100000
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A local, single-user cluster: without this ray.init turns on token auth and wants a token file.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402

MIN_WORDS, MAX_WORDS, MAX_CHARS = 7, 250, 1200  # ≈ 10–400 BERT tokens, mean ≈ 110 (same mix as bench/embed.py)
SEED_BATCH = 256  # points per seeding request (Qdrant's bulk guidance)
SOURCE_DIM = 8  # the source's "old" vectors: never read (scroll uses with_vectors=False), so small keeps seeding fast
NAIVE_PAGE = 256  # the guide's loop: scroll 256 at a time
VECTOR = "dense"  # both contenders write one named vector (the job config's default target.vector_name)
SAMPLE_INTERVAL_S = 0.2  # process-tree sampling period
STACK_INTERVAL_S = 0.005  # CPU profiler period (--profile): fine enough for 5-10 s windows, ~1-2 % of a core each

# --- corpus -------------------------------------------------------------------------------------------------------

_WORDS: list[str] | None = None


def word_pool() -> list[str]:
    """Every word of the standard library docstrings engine.app.demo_corpus collects, in its (sorted) order."""
    global _WORDS
    if _WORDS is None:
        from engine.app.demo_corpus import stdlib_passages

        words: list[str] = []
        for passage in stdlib_passages():
            words.extend(re.sub(r"\s+", " ", passage["text"]).split())
        _WORDS = words
    return _WORDS


def iter_texts(n: int, seed: int = 0) -> Iterator[str]:
    """n texts, each a window of log-uniform 7–250 consecutive words, at most 1200 characters."""
    words = word_pool()
    rng = random.Random(seed)
    lo, hi = math.log(MIN_WORDS), math.log(MAX_WORDS)
    for _ in range(n):
        count = int(math.exp(rng.uniform(lo, hi)))
        start = rng.randrange(0, max(1, len(words) - count))
        text = " ".join(words[start:start + count])
        if len(text) > MAX_CHARS:  # code-heavy windows tokenize densely; keep them under ~400 tokens
            text = text[:MAX_CHARS].rsplit(" ", 1)[0]
        yield text


def corpus(n: int, seed: int = 0) -> list[str]:
    return list(iter_texts(n, seed))


def point_id(i: int) -> int:
    """Point ids 1..n: integer ids, scrolled in this order, so page k of a scroll holds texts k*page..."""
    return i + 1


def payload_of(i: int, text: str) -> dict[str, Any]:
    """A document chunk as applications store it: the text plus a little metadata the target must keep."""
    return {"text": text, "doc_id": i // 8, "chunk": i % 8, "lang": "en",
            "source": f"stdlib/{i % 97}", "tags": ["docs", "python"][: 1 + i % 2]}


# --- endpoint and seeding -----------------------------------------------------------------------------------------


@contextmanager
def endpoint(stats: bool = False) -> Iterator[Any]:
    """The embedded Qdrant endpoint as a child process on a temporary data dir (removed afterwards). `stats`: it
    keeps its points-read-from-storage counters in a file (`settled_reads` reads them)."""
    from engine.embedded.process import EmbeddedProcess

    data = Path(tempfile.mkdtemp(prefix="reembed-bench-"))
    proc = EmbeddedProcess(data, stats_file=data.parent / f"{data.name}-stats.json" if stats else None)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(data, ignore_errors=True)
        if proc.stats_file is not None:
            proc.stats_file.unlink(missing_ok=True)


def settled_reads(proc: Any, collection: str, since: float) -> tuple[int, int]:
    """(points read from storage with payload, without) of `collection` so far, as the endpoint's stats file says
    once it holds every read made before `since` (time.time()): the child rewrites the file within its flush
    interval after any read, so a file older than `since` is waited for that long, then taken as current."""
    from engine.embedded.server import FLUSH_INTERVAL_S

    deadline = time.monotonic() + FLUSH_INTERVAL_S + 1.5
    while time.monotonic() < deadline:
        if proc.stats_file.exists() and proc.stats_file.stat().st_mtime > since:
            break
        time.sleep(0.2)
    reads = proc.storage_reads().get(collection)
    return (reads.with_payload, reads.without_payload) if reads is not None else (0, 0)


def seed_source(port: int, collection: str, n: int, seed: int = 0, dim: int = SOURCE_DIM,
                texts: Sequence[str] | None = None, shards: int = 1) -> float:
    """Create `collection` (with `shards` shards) and write n corpus points (ids 1..n) through raw gRPC, two
    requests in flight. Returns the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    from qdrant_client import grpc as pb

    from engine.qdrant import values, wire
    from engine.qdrant.client import QdrantGrpc
    from engine.qdrant.connection import Endpoint

    t0 = time.perf_counter()
    client = QdrantGrpc(Endpoint("127.0.0.1", port))
    try:
        req = pb.CreateCollection(collection_name=collection, shard_number=shards)
        req.vectors_config.params.CopyFrom(pb.VectorParams(size=dim, distance=pb.Distance.Cosine))
        client.create_collection(req)
        source = iter(texts) if texts is not None else iter_texts(n, seed)
        rng = np.random.default_rng(seed)
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(2) as pool:  # the server is the bottleneck; two in flight keep it busy
            for start in range(0, n, SEED_BATCH):
                count = min(SEED_BATCH, n - start)
                vecs = rng.standard_normal((count, dim)).astype("<f4")
                blobs = []
                for k in range(count):
                    i = start + k
                    head = pb.PointStruct(id=pb.PointId(num=point_id(i)),
                                          payload=values.payload_from_python(payload_of(i, next(source))))
                    vector = wire.vectors_field({"": wire.dense_vector(vecs[k].tobytes())})
                    blobs.append(head.SerializeToString() + vector)
                request = wire.upsert_request(collection, blobs, wait=True, insert_only=False)
                pending.append(pool.submit(client.upsert_raw, request, f"seed {collection}"))
                while len(pending) >= 2:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
    finally:
        client.close()
    return time.perf_counter() - t0


def seed_in_child(port: int, collection: str, n: int, seed: int = 0) -> float:
    """seed_source in a child process: the caller's memory never holds the corpus. Returns seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "seed", "--port", str(port), "--collection",
                    collection, "--n", str(n), "--seed", str(seed)], check=True)
    return time.perf_counter() - t0


def fetch_vectors(port: int, collection: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The VECTOR vectors of `ids` in `collection` (missing ids are absent from the result)."""
    from engine.qdrant.client import QdrantGrpc
    from engine.qdrant.connection import Endpoint

    with QdrantGrpc(Endpoint("127.0.0.1", port)) as client:
        points = client.get(collection, list(ids), with_payload=False, with_vectors=[VECTOR])
    out = {}
    for p in points:
        vec = p.vectors.vectors.vectors[VECTOR]
        out[p.id.num] = np.asarray(vec.dense.data if vec.HasField("dense") else vec.data, dtype=np.float32)
    return out


def sample_ids(n: int, sample: int = 200) -> list[int]:
    return [point_id(int(i)) for i in np.linspace(0, n - 1, min(sample, n)).astype(int)]


def count_points(port: int, collection: str) -> int:
    from engine.qdrant.client import QdrantGrpc
    from engine.qdrant.connection import Endpoint

    with QdrantGrpc(Endpoint("127.0.0.1", port)) as client:
        return client.count(collection, exact=True)


# --- the naive loop -----------------------------------------------------------------------------------------------


def naive_loop(port: int, source: str, target: str, encode: Callable[[list[str]], Any], dim: int,
               page: int = NAIVE_PAGE) -> dict[str, float]:
    """The loop from Qdrant's migration guide as users write it: qdrant-client scroll (no vectors) → encode →
    upsert(wait=True) of models.PointStruct with payload, one page at a time in one process."""
    from qdrant_client import QdrantClient, models

    t0 = time.perf_counter()
    client = QdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True, check_compatibility=False)
    client.create_collection(target, vectors_config={
        VECTOR: models.VectorParams(size=dim, distance=models.Distance.COSINE)})
    done = 0
    offset = None
    while True:
        records, offset = client.scroll(source, limit=page, offset=offset, with_payload=True, with_vectors=False)
        if records:
            vectors = encode([r.payload["text"] for r in records])
            points = [models.PointStruct(id=r.id, vector={VECTOR: v.tolist()}, payload=r.payload)
                      for r, v in zip(records, vectors)]
            client.upsert(target, points=points, wait=True)
            done += len(records)
        if offset is None:
            break
    seconds = time.perf_counter() - t0
    client.close()
    return {"points": done, "seconds": seconds, "points_per_s": done / seconds}


# --- reembed ------------------------------------------------------------------------------------------------------


def reembed_config(port: int, workdir: Path, source: str, target: str, model: str, **pipeline: Any):
    """A new_collection job writing the named vector VECTOR (as the naive loop does), defaults unless given."""
    from engine.config import config_from_dict

    return config_from_dict({
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": source, "text_field": "text"},
        "target": {"collection": target, "vector_name": VECTOR},
        "model": {"name": model},
        "strategy": "new_collection",
        "pipeline": pipeline,
        "dead_letter": {"dir": str(workdir / "runs")},
    }, env={})


PIPELINE_KEYS = ("shards", "scroll_page", "upload_batch", "scroll_actors", "upload_actors", "embed_actors",
                 "pages_in_flight", "upload_requests_in_flight")


def pipeline_args(parser: argparse.ArgumentParser) -> None:
    """--shards, --scroll-page ...: overrides of the job's pipeline section (defaults: engine/tunables.py)."""
    group = parser.add_argument_group("reembed pipeline overrides (defaults: the job config's, engine/tunables.py)")
    for name in PIPELINE_KEYS:
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None)
    group.add_argument("--what-if-checkpoint-interval", type=float, default=None, metavar="S",
                       help="diagnostic, not a job option: run the coordinator with this minimum interval between "
                            "checkpoint saves instead of tunables.CHECKPOINT_MIN_INTERVAL_S (patches its default)")


def apply_what_ifs(args: argparse.Namespace) -> dict[str, Any]:
    """Apply the diagnostic overrides asked for; returns them, for the JSON."""
    applied: dict[str, Any] = {}
    if getattr(args, "what_if_checkpoint_interval", None) is not None:
        from engine.flow.coordinator import Coordinator

        defaults = Coordinator.__init__.__kwdefaults__ or {}
        if "save_interval_s" not in defaults:
            raise SystemExit("--what-if-checkpoint-interval: Coordinator no longer takes save_interval_s; "
                             "drop the flag or update bench/common.py")
        defaults["save_interval_s"] = args.what_if_checkpoint_interval
        applied["checkpoint_interval_s"] = args.what_if_checkpoint_interval
    return applied


def pipeline_of(args: argparse.Namespace) -> dict[str, int]:
    return {k: getattr(args, k) for k in PIPELINE_KEYS if getattr(args, k) is not None}


@dataclass
class ReembedRun:
    summary: dict[str, Any]
    roles: dict[int, str] = field(default_factory=dict)  # pid -> role of every actor
    embed_busy: list[dict[str, float]] = field(default_factory=list)  # per embedding actor, with time_embed


def _timed_embed_worker() -> type:
    """EmbedWorker plus a clock around embed(): how long the model was busy, measured inside the actor. Made on
    first use and bound as this module's TimedEmbedWorker, so Ray can import it by name in the workers."""
    global TimedEmbedWorker
    try:
        return TimedEmbedWorker
    except NameError:
        pass
    from actors.workers import EmbedWorker

    class _Timed(EmbedWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._busy = {"busy_s": 0.0, "texts": 0, "calls": 0}
            # The actor takes overlapping calls (one tokenizing while another runs the model): busy time is the
            # union of the calls' intervals, not their sum.
            self._guard = threading.Lock()
            self._active = 0
            self._since = 0.0

        def embed(self, texts: list):
            with self._guard:
                if self._active == 0:
                    self._since = time.perf_counter()
                self._active += 1
            try:
                return super().embed(texts)
            finally:
                with self._guard:
                    self._active -= 1
                    if self._active == 0:
                        self._busy["busy_s"] += time.perf_counter() - self._since
                    self._busy["texts"] += len(texts)
                    self._busy["calls"] += 1

        def busy(self) -> dict[str, float]:
            return dict(self._busy)

    _Timed.__name__ = _Timed.__qualname__ = "TimedEmbedWorker"
    TimedEmbedWorker = _Timed
    return _Timed


def __getattr__(name: str) -> Any:
    # Ray imports the timed worker class by name in its worker processes: make it on that first lookup too.
    if name == "TimedEmbedWorker":
        return _timed_embed_worker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_reembed(cfg, on_pids: Callable[[dict[int, str]], None] | None = None,
                on_pipeline: Callable[[bool], None] | None = None, time_embed: bool = False) -> ReembedRun:
    """run_job with the actors' pids collected (and handed to `on_pids`) once the first lane is up, and
    `on_pipeline(True)` / `on_pipeline(False)` called when the coordinator starts and stops: the window pipeline-only
    figures cover (run_job itself goes on to write its report after that). `time_embed` runs the embedding actors as
    TimedEmbedWorker and returns how long each one's model was busy."""
    import ray

    import actors.lane
    from engine.app.job import run_job
    from engine.flow.coordinator import Coordinator

    result = ReembedRun(summary={})
    pools: list[Any] = []

    def grab(pool) -> None:
        pools.append(pool)
        # Role names by lane worker: read-i / write-i become scroll-i / upload-i (the stages' names in the report).
        rename = {"read": "scroll", "write": "upload"}
        for lane, pids in enumerate(pool.pids().values()):
            for worker, pid in pids.items():
                kind, _, index = worker.partition("-")
                role = rename.get(kind, kind) + (f"-{index}" if index else "")
                result.roles[pid] = role if lane == 0 else f"{role}@{lane}"
        if on_pids is not None:
            on_pids(result.roles)

    original_run = Coordinator.__dict__["run"]
    original_worker = actors.lane.EmbedWorker

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if on_pipeline is not None:
            on_pipeline(True)
        try:
            return original_run(self, *args, **kwargs)
        finally:
            if time_embed and pools:  # before run_job shuts the actors down
                embedders = [lane["embed"] for lane in pools[0].handles().values()]
                result.embed_busy = ray.get([e.busy.remote() for e in embedders])
            if on_pipeline is not None:
                on_pipeline(False)

    Coordinator.run = run  # type: ignore[method-assign]
    if time_embed:
        actors.lane.EmbedWorker = _timed_embed_worker()  # start_workers builds the lane's actors in this process
    try:
        result.summary = run_job(cfg, progress=False, on_pool=grab)
    finally:
        Coordinator.run = original_run  # type: ignore[method-assign]
        actors.lane.EmbedWorker = original_worker
    return result


class DriverTimers:
    """Wall time the driver spends in each runtime call and in checkpoint writes, by wrapping those methods for the
    duration of a run (restored afterwards). Tells a pipeline stall in the coordinator (e.g. a blocking checkpoint
    write on every commit) from a slow worker. `save` is a blocking write on the coordinator's thread; `save_text`,
    where the store has it, counts every write, the background saver's (off the coordinator's thread) included."""

    TIMED = (("actors.pool", "RayLanePool", ("poll", "assign", "refresh")),
             ("engine.flow.checkpoint", "QdrantCheckpointStore", ("save", "save_text")),
             ("engine.flow.checkpoint", "UriCheckpointStore", ("save", "save_text")))

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> "DriverTimers":
        import importlib

        for module_name, class_name, methods in self.TIMED:
            cls = getattr(importlib.import_module(module_name), class_name)
            for name in methods:
                original = cls.__dict__.get(name)
                if original is None:
                    continue  # not in this version of the engine
                self._saved.append((cls, name, original))
                setattr(cls, name, self._wrap(f"{class_name}.{name}", original))
        return self

    def _wrap(self, label: str, fn: Callable) -> Callable:
        seconds, calls = self.seconds, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - t0
                calls[label] += 1

        return timed

    def __exit__(self, *exc: object) -> None:
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)
        self._saved.clear()

    def report(self) -> dict[str, dict[str, float]]:
        return {k: {"s": round(v, 3), "calls": self.calls[k]} for k, v in sorted(self.seconds.items())}


def print_driver_timers(report: dict[str, dict[str, float]], pipeline_s: float) -> None:
    parts = ", ".join(f"{k.split('.', 1)[1] if k.startswith('RayLanePool') else k} {v['s']:.2f} s/{v['calls']}"
                      for k, v in report.items() if v["calls"])
    print(f"  driver wall time in calls over the {pipeline_s:.1f} s pipeline (seconds/calls): {parts}")


# --- process-tree sampling ----------------------------------------------------------------------------------------

RAY_ROLE = "ray-system"  # raylet, GCS, idle workers, agents: Ray's own processes in the tree


class TreeSampler:
    """Samples this process and its descendants every 0.2 s: peak RSS per role and of simultaneous sums (driver +
    actors, everything), and CPU seconds per role over a window (start()/rebase() to freeze()/stop()). Roles come
    from set_roles (pid → name); the rest of the tree is the embedded endpoint (by its command line) or Ray's own
    processes."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        import ray  # noqa: F401  (puts ray/thirdparty_files, where the psutil Ray ships lives, on sys.path)
        # isort: split
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.roles: dict[int, str] = {self.me.pid: "driver"}
        self._procs: dict[int, Any] = {}
        self._cpu0: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self.peak_role: dict[str, float] = {}
        self.peak_sum: dict[str, float] = {}  # name -> peak of a simultaneous sum over a role group
        self.samples = 0
        self._frozen: dict[int, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def set_roles(self, roles: dict[int, str]) -> None:
        with self._lock:
            self.roles.update(roles)

    def role_of(self, proc) -> str:
        role = self.roles.get(proc.pid)
        if role is not None:
            return role
        try:
            cmd = " ".join(proc.cmdline())
        except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
            return RAY_ROLE
        if "serve-embedded" in cmd:
            self.roles[proc.pid] = "endpoint"
            return "endpoint"
        return RAY_ROLE

    def _tree(self) -> list[Any]:
        try:
            kids = self.me.children(recursive=True)
        except self.psutil.NoSuchProcess:
            kids = []
        out = []
        for p in [self.me, *kids]:
            known = self._procs.get(p.pid)
            if known is None:  # one Process object per pid, so psutil can tell a reused pid from the same process
                self._procs[p.pid] = known = p
            out.append(known)
        return out

    def sample(self, baseline: bool = False) -> None:
        with self._lock:
            self._sample(baseline)

    def _sample(self, baseline: bool) -> None:
        rss_role: dict[str, float] = collections.defaultdict(float)
        for p in self._tree():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss / 2**20
                    times = p.cpu_times()
                    cpu = times.user + times.system  # not children_*: the driver waits on seeding children
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            role = self.role_of(p)
            # Present at the baseline: count from there; born later: all of its CPU counts.
            if baseline:
                self._cpu0[p.pid] = cpu
            else:
                self._cpu0.setdefault(p.pid, 0.0)
            self._cpu_last[p.pid] = cpu
            rss_role[role] += rss
        for role, rss in rss_role.items():
            self.peak_role[role] = max(self.peak_role.get(role, 0.0), rss)
        actors = sum(v for r, v in rss_role.items() if r not in ("driver", "endpoint", RAY_ROLE))
        sums = {"driver+actors": rss_role.get("driver", 0.0) + actors, "actors": actors,
                "all": sum(rss_role.values())}
        for name, value in sums.items():
            self.peak_sum[name] = max(self.peak_sum.get(name, 0.0), value)
        self.samples += 1

    def freeze(self) -> None:
        """Stop counting CPU here (RSS sampling goes on until stop())."""
        with self._lock:
            self._sample(baseline=False)
            self._frozen = dict(self._cpu_last)

    def rebase(self) -> None:
        """Count CPU from now on (e.g. from the coordinator's start, leaving out actor start-up)."""
        with self._lock:
            self._cpu0 = dict(self._cpu_last)  # processes gone by now count nothing more
            self._frozen = None
            self._sample(baseline=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "TreeSampler":
        self.sample(baseline=True)
        self._thread = threading.Thread(target=self._loop, name="bench-tree-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per role from start() (or the last rebase()) to freeze() (or stop()); a process that ended
        counts up to its last sample."""
        out: dict[str, float] = collections.defaultdict(float)
        for pid, last in (self._frozen or self._cpu_last).items():
            proc = self._procs.get(pid)
            role = self.roles.get(pid) or (self.role_of(proc) if proc is not None else RAY_ROLE)
            out[role] += last - self._cpu0.get(pid, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def print_breakdown(cpu: dict[str, float], seconds: float, points: int, cores: int) -> None:
    total = sum(cpu.values())
    print(f"  CPU seconds by process over {seconds:.1f} s wall ({cores} cores = {cores * seconds:.1f} core-s "
          f"available, {total:.1f} used):")
    for role, s in cpu.items():
        print(f"    {role:<12} {s:7.2f} s  {s / max(total, 1e-9):6.1%}  {1e6 * s / max(points, 1):7.1f} µs/point")


# --- stack sampling (--profile) -----------------------------------------------------------------------------------

PROFILE_ENV = "REEMBED_BENCH_PROFILE_DIR"
WINDOW_FILE = "WINDOW"  # exists while samplers should count (the pipeline phase); checked every 0.1 s


class StackSampler:
    """A CPU profiler for every thread of a process, py-spy style but in-process: a daemon thread wakes every few
    milliseconds, reads each Python thread's CPU clock (pthread_getcpuclockid, nanoseconds) and charges the CPU
    that thread used since the last wake-up to the function at the top of its stack (self) and to every function
    on it (cumulative). Waiting threads use no CPU and so cost nothing in the report, whatever they wait in.

    Limits: CPU used inside C code that holds the GIL is seen only when the call returns, and is charged to the
    stack seen then (usually the caller); threads without Python frames (gRPC's and Ray's C++ threads) are not
    seen, their CPU shows as the gap between the process's CPU and the CPU the sampler attributed."""

    def __init__(self, out_dir: str, interval: float = STACK_INTERVAL_S, flush_every: float = 1.0) -> None:
        self.out = Path(out_dir)
        self.path = self.out / f"stacks-{os.getpid()}.json"
        self.interval = interval
        self.flush_every = flush_every
        self.self_ns: collections.Counter = collections.Counter()
        self.cum_ns: collections.Counter = collections.Counter()
        self.seen_ns = 0
        self.process_ns = 0
        self.window_s = 0.0

    @staticmethod
    def _name(code) -> str:
        return f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})"

    def _loop(self) -> None:
        me = threading.get_ident()
        last: dict[int, int] = {}
        clocks: dict[int, int] = {}
        window = self.out / WINDOW_FILE
        active, checked, last_flush, t_prev, p_prev = False, 0.0, time.monotonic(), time.monotonic(), 0
        while True:
            time.sleep(self.interval)
            now = time.monotonic()
            if now - checked >= 0.1:
                checked = now
                was, active = active, window.exists()
                if active and not was:
                    last.clear()
                    p_prev = time.process_time_ns()
                    t_prev = now
                elif was and not active:
                    self.flush()
            if not active:
                continue
            frames = sys._current_frames()
            for tid, frame in frames.items():
                if tid == me:
                    continue
                try:
                    clock = clocks.get(tid)
                    if clock is None:
                        clock = clocks[tid] = time.pthread_getcpuclockid(tid)
                    cpu = time.clock_gettime_ns(clock)
                except OSError:
                    continue
                before = last.get(tid)
                last[tid] = cpu
                if before is None or cpu <= before:
                    continue
                used = cpu - before
                self.seen_ns += used
                self.self_ns[self._name(frame.f_code)] += used
                seen = set()
                while frame is not None:
                    name = self._name(frame.f_code)
                    if name not in seen:
                        seen.add(name)
                        self.cum_ns[name] += used
                    frame = frame.f_back
            for tid in set(clocks) - set(frames):  # thread ids can be reused: forget ended threads
                clocks.pop(tid, None)
                last.pop(tid, None)
            p_now = time.process_time_ns()
            self.process_ns += p_now - p_prev
            self.window_s += now - t_prev
            p_prev, t_prev = p_now, now
            if now - last_flush >= self.flush_every:
                self.flush()
                last_flush = now

    def flush(self) -> None:
        data = {"pid": os.getpid(), "argv": sys.orig_argv[:4], "window_s": self.window_s,
                "process_cpu_s": self.process_ns / 1e9, "seen_cpu_s": self.seen_ns / 1e9,
                "self": [(k, v / 1e9) for k, v in self.self_ns.most_common(60)],
                "cum": [(k, v / 1e9) for k, v in self.cum_ns.most_common(120)]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)  # actors are killed, not stopped: the last whole flush is what survives

    def start(self) -> None:
        threading.Thread(target=self._loop, name="bench-stack-sampler", daemon=True).start()


def _wanted_process(argv: Sequence[str]) -> bool:
    """Ray workers (actors) and the embedded endpoint; not Ray's monitors, agents or dashboard."""
    line = " ".join(argv)
    return "default_worker.py" in line or "serve-embedded" in line


def maybe_start_stack_sampler() -> None:
    """Called from the generated sitecustomize in every Python process started under a --profile run."""
    out = os.environ.get(PROFILE_ENV)
    if out and _wanted_process(sys.orig_argv):
        StackSampler(out).start()


def enable_profiling(out_dir: Path) -> None:
    """Make the Python processes started from now on (Ray's workers, the endpoint) run a StackSampler, through a
    sitecustomize on PYTHONPATH (call before ray.init and before the endpoint starts), and this one too.
    The samplers count only inside profile_window()."""
    hook = out_dir / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "try:\n"
        "    from bench.common import maybe_start_stack_sampler\n"
        "    maybe_start_stack_sampler()\n"
        "except Exception as exc:  # a profiler must never break the process it watches\n"
        "    print('stack sampler not started:', exc, file=sys.stderr)\n"
    )
    os.environ[PROFILE_ENV] = str(out_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    StackSampler(str(out_dir)).start()


def profile_window(out_dir: Path, on: bool) -> None:
    marker = out_dir / WINDOW_FILE
    if on:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)
        time.sleep(0.3)  # every sampler notices (0.1 s) and flushes


def stack_report(out_dir: Path, roles: dict[int, str], top: int = 10) -> dict[str, dict]:
    """Per profiled process that used CPU: its CPU seconds in the window, how much of it the sampler saw in Python
    threads, and the functions that used most (self and cumulative)."""
    report: dict[str, dict] = {}
    for path in sorted(out_dir.glob("stacks-*.json")):
        data = json.loads(path.read_text())
        pid = data["pid"]
        if data["process_cpu_s"] < 0.05:
            continue  # idle (Ray's spare workers)
        role = roles.get(pid) or ("endpoint" if "serve-embedded" in " ".join(data["argv"]) else
                                  "driver" if pid == os.getpid() else f"pid {pid}")
        cpu = data["process_cpu_s"]
        report[role] = {
            "cpu_s": round(cpu, 2), "window_s": round(data["window_s"], 2),
            "seen_in_python_threads": round(data["seen_cpu_s"] / cpu, 3) if cpu else 0.0,
            "self": [(name, round(100 * s / cpu, 1)) for name, s in data["self"][:top]],
            "cum": [(name, round(100 * s / cpu, 1)) for name, s in data["cum"][:top * 2]],
        }
    return dict(sorted(report.items(), key=lambda kv: -kv[1]["cpu_s"]))


def print_stack_report(report: dict[str, dict]) -> None:
    print("  CPU profile in the pipeline window (% of the process's CPU; C calls count to the Python frame "
          "seen after them):")
    for role, rep in report.items():
        print(f"    {role}: {rep['cpu_s']:.2f} CPU-s over {rep['window_s']:.1f} s, "
              f"{rep['seen_in_python_threads']:.0%} of it in Python threads")
        print("      self:       " + "; ".join(f"{pct}% {name}" for name, pct in rep["self"][:8]))
        cum = [(n, p) for n, p in rep["cum"] if not n.startswith(("run (threading", "_bootstrap", "<module>",
                                                                   "main_loop", "_run (events"))]
        print("      cumulative: " + "; ".join(f"{pct}% {name}" for name, pct in cum[:10]))


# --- output -------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cores": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_at_start": load}


def emit(figures: dict[str, Any]) -> None:
    """The last stdout line: one JSON object with every figure."""
    print(json.dumps(figures, default=lambda o: round(o, 4) if isinstance(o, float) else str(o)), flush=True)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="seed a benchmark source collection")
    sub = parser.add_subparsers(dest="cmd", required=True)
    seed = sub.add_parser("seed")
    seed.add_argument("--port", type=int, required=True)
    seed.add_argument("--collection", required=True)
    seed.add_argument("--n", type=int, required=True)
    seed.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seconds = seed_source(args.port, args.collection, args.n, args.seed)
    print(f"seeded {args.n} points into {args.collection} in {seconds:.1f} s ({args.n / seconds:,.0f} points/s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
