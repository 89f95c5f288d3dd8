"""What `bench/dataplane.py --nodes N` needs beyond the single-node bench: a multi-node Ray cluster on this machine
(scripts/local_cluster.py), the previous release's per-page runtime run as a real job in a child process, where every
actor ran (Ray's state API), and the page bytes that crossed between nodes (measured from every raylet's object
manager counter, and computed from the placement and the page sizes).

- The previous release (BEFORE_COMMIT, the last per-page runtime) is extracted with `git archive` into a temp dir and
  its own `engine.job.run_job` runs from there in a child process (BEFORE_DRIVER) with RAY_ADDRESS set to the local
  cluster. Ray ships the driver's script directory and working directory to the job's workers (py_driver_sys_path),
  so its actors import that tree too; the child checks this in every actor and fails otherwise.
- The child's CPU is its resource usage as the kernel reports it when it is reaped (os.wait4: user + system of the
  whole child process, interpreter start and imports included); the child also reports time.process_time() around
  its run_job, the same window the bench takes around this checkout's run_job.
- Cross-node bytes, measured: the sum over nodes of Ray's `ray_object_manager_bytes{Type="Received"}` (bytes a
  node's object manager pulled from another node), read from each node's metrics export port before and after a
  contender. Objects under Ray's inline limit (100 KiB) travel inside task replies and arguments instead and are not
  in it; pages of default size are far above it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from local_cluster import LocalCluster  # noqa: E402  (a script, not a package)

BEFORE_COMMIT = "1e97de0"  # the last release with the per-page runtime (bench/coordinator.py uses it too)
HEAD_CPUS = 1  # the head hosts the driver only: too small for a lane (actors/sizing.py), as on ray-cluster.yaml
CPUS_PER_NODE = 2  # each worker node: what a lane of one (declared) GPU needs, one CPU for the model, I/O the rest
GPUS_PER_NODE = 1  # declared, not real: the hash embedder runs on the CPU; it makes one lane per worker node and
# one embedding actor per worker node for the previous release (one per GPU), as on a GPU cluster
METRICS_INTERVAL_MS = 2000  # the nodes' metrics report interval (Ray's default 10 s): the byte counters settle sooner
INLINE_LIMIT = 100 * 1024  # Ray's max_direct_call_object_size: smaller objects go inline, through their owner
ACTOR_ROLES = ("scroll", "embed", "upload")  # the previous release's actor names: reembed-<job>-<role>-<i>

BEFORE_DRIVER = textwrap.dedent('''
    """One real job of the previous release's per-page runtime (this tree), on the cluster at RAY_ADDRESS.

    argv: the job config as a JSON file, pages to sample for the page sizes. Prints one JSON line."""
    import json, os, pickle, sys, time

    TREE = os.path.dirname(os.path.abspath(__file__))

    import ray

    import actors.runtime as rt
    import engine
    from actors.workers import ScrollWorker
    from engine.config import config_from_dict
    from engine.embed import build_embedder
    from engine.job import endpoint_of, policy_of, run_job

    cfg = config_from_dict(json.loads(open(sys.argv[1]).read()), env={})
    SAMPLE_PAGES = int(sys.argv[2])
    actors = {}
    routes = {}  # "scroll,embed,upload" actor indices -> points of the pages that took that route
    scrolled_by = {}  # a page's meta ref -> the scroll actor that read it

    # Watch (not change) the runtime's dispatch: which scroll, embed and upload actor each page went through.
    _read, _process = rt.RayRuntime.read, rt.RayRuntime.process


    def read(self, *args, **kwargs):
        index = self._rr % len(self.scrollers)  # the one read() picks
        meta = _read(self, *args, **kwargs)
        scrolled_by[meta] = index
        return meta


    def process(self, read_handle, meta):
        ack = _process(self, read_handle, meta)
        e, u = self._owner[ack]
        key = f"{scrolled_by.pop(read_handle, -1)},{e},{u}"
        routes[key] = routes.get(key, 0) + meta.n_points
        return ack


    rt.RayRuntime.read, rt.RayRuntime.process = read, process


    def where(actor):
        """In the actor: the file its class came from, its node and pid."""
        return (sys.modules[type(actor).__module__].__file__, ray.get_runtime_context().get_node_id(), os.getpid())


    def on_runtime(runtime):
        groups = {"scroll": runtime.scrollers, "embed": runtime.embedders, "upload": runtime.uploaders}
        refs = {f"{role}-{i}": a.__ray_call__.remote(where) for role, group in groups.items()
                for i, a in enumerate(group)}
        for name, (path, node, pid) in zip(refs, ray.get(list(refs.values()))):
            if not os.path.abspath(path).startswith(TREE + os.sep):
                raise SystemExit(f"actor {name} runs {path}, not the previous release in {TREE}")
            actors[name] = {"file": path, "node_id": node, "pid": pid}


    cpu0, t0 = time.process_time(), time.monotonic()
    summary = run_job(cfg, progress=False, on_runtime=on_runtime)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    driver_node = ray.get_runtime_context().get_node_id()
    ray.shutdown()

    # Page sizes as this release's actors make them (after the timed job): the first pages of the source.
    reader = ScrollWorker(endpoint_of(cfg), policy_of(cfg), cfg.source.collection, cfg.source.text_field,
                          cfg.source.text_template)
    embedder = build_embedder(cfg.model_spec())
    sizes = {"texts": 0, "body": 0, "vectors": 0}
    points = pages = 0
    start = None
    for seq in range(SAMPLE_PAGES):
        meta, texts, body = reader.read(0, seq, start, None, cfg.pipeline.scroll_page, False)
        vectors = embedder.embed(texts)
        for key, obj in (("texts", texts), ("body", body), ("vectors", vectors)):
            sizes[key] += len(pickle.dumps(obj, protocol=5))
        points, pages = points + meta.n_points, pages + 1
        start = meta.next_offset
        if start is None:
            break
    print(json.dumps({"summary": summary, "run_job_cpu_s": cpu, "run_job_wall_s": wall, "actors": actors,
                      "routes": routes, "engine": engine.__file__, "scroll_page": cfg.pipeline.scroll_page,
                      "driver_node": driver_node,
                      "sampled_pages": pages, "sampled_points": points,
                      "bytes_per_point": {k: v / max(points, 1) for k, v in sizes.items()}}, default=str))
''')


def start_cluster(workers: int) -> LocalCluster:
    """A head for the driver and `workers` worker nodes, each declaring GPUS_PER_NODE GPU(s)."""
    cluster = LocalCluster(head_cpus=HEAD_CPUS, env={"RAY_metrics_report_interval_ms": str(METRICS_INTERVAL_MS)})
    try:
        cluster.start(workers=workers, cpus_per_worker=CPUS_PER_NODE, gpus_per_worker=GPUS_PER_NODE)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def node_names(cluster: LocalCluster) -> dict[str, str]:
    """Ray node id -> head / worker-i."""
    for _ in range(20):
        names = cluster.node_ids()
        if len(names) == len(cluster.nodes):
            return names
        time.sleep(0.5)
    return cluster.node_ids()


# --- the previous release ----------------------------------------------------------------------------------------


def extract_release(dest: Path, commit: str = BEFORE_COMMIT) -> Path:
    """`git archive <commit> | tar -x -C dest`; returns dest."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_before(tree: Path, address: str, config: dict[str, Any], sample_pages: int = 4,
               timeout_s: float = 3600.0) -> dict[str, Any]:
    """The previous release's run_job in a child process from `tree`, on the cluster at `address`. Returns the
    child's JSON plus its wall time and CPU seconds (os.wait4: user + system of the whole child)."""
    script = tree / "bench_before_driver.py"
    script.write_text(BEFORE_DRIVER)
    cfg_file = tree / "bench_before_job.json"
    cfg_file.write_text(json.dumps(config))
    out, err = tree / "bench_before.out", tree / "bench_before.err"
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_ADDRESS": address}
    t0 = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), str(cfg_file), str(sample_pages)], cwd=tree, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    status, usage = _reap(proc, timeout_s)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"the previous release's job ({BEFORE_COMMIT}) failed with {code}:\n"
                         f"{err.read_text(errors='replace')[-4000:]}")
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"the previous release's job printed no result:\n{err.read_text(errors='replace')[-3000:]}")
    result = json.loads(lines[-1])
    result.update(child_wall_s=wall, child_cpu_s=usage.ru_utime + usage.ru_stime,
                  child_user_s=usage.ru_utime, child_sys_s=usage.ru_stime)
    return result


def _reap(proc: subprocess.Popen, timeout_s: float) -> tuple[int, Any]:
    """Wait for the child with os.wait4 (its rusage comes with its exit status); kill its group past the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
            return status, usage
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise SystemExit(f"the previous release's job ran past {timeout_s:.0f} s; killed")
        time.sleep(0.1)


# --- lanes -------------------------------------------------------------------------------------------------------


def wait_lanes(pool: Any, count: int, timeout_s: float) -> int:
    """Block until `count` lanes are up (the previous release starts every actor before its coordinator does, so
    both start the pipeline on the whole cluster). It advances the pool as RayLanePool.wait_first does; the lanes it
    sees start stay in the pool's report for the coordinator's first refresh. Returns the lanes up."""
    deadline = time.monotonic() + timeout_s
    while True:
        pool._advance()  # the step wait_first repeats (a private method: no public "wait for all" exists)
        up = sum(len(lanes) for lanes in pool.lanes_by_node().values())
        if up >= count or time.monotonic() > deadline:
            return up
        time.sleep(0.2)


# --- where actors ran ---------------------------------------------------------------------------------------------


@dataclass
class Placed:
    name: str
    node_id: str
    pid: int
    state: str


def actors_named(dashboard: str, prefix: str) -> list[Placed]:
    """Every actor (alive or dead) whose name starts with `prefix`, with the node it ran on (Ray's state API)."""
    from ray.util.state import list_actors

    found = list_actors(address=dashboard, limit=10_000, raise_on_missing_output=False)
    return sorted((Placed(a.name, a.node_id, a.pid, a.state) for a in found if (a.name or "").startswith(prefix)),
                  key=lambda p: p.name)


def before_nodes(placed: list[Placed], job_prefix: str) -> dict[str, str]:
    """scroll-0, embed-1 ... -> the node id it ran on, from the previous release's names reembed-<job>-<role>-<i>."""
    out = {}
    for p in placed:
        name = p.name[len(job_prefix):]
        if name.split("-")[0] in ACTOR_ROLES:
            out[name] = p.node_id
    return out


def lane_nodes(placed: list[Placed], job_prefix: str) -> dict[str, dict[str, str]]:
    """lane -> {actor role (conductor, embed, read-0, write-0 ...): node id}, from names <job>-lane-<k>[-<role>]."""
    lanes: dict[str, dict[str, str]] = {}
    for p in placed:
        m = re.fullmatch(re.escape(job_prefix) + r"lane-(\d+)(?:-(.+))?", p.name)
        if m:
            lanes.setdefault(f"lane-{m.group(1)}", {})[m.group(2) or "conductor"] = p.node_id
    return lanes


# --- bytes between nodes -----------------------------------------------------------------------------------------


def _metrics_ports(cluster: LocalCluster) -> dict[str, int]:
    """node name -> its metrics export port (scripts/local_cluster.py picks one per node on its command line)."""
    ports = {}
    for node in cluster.nodes:
        for arg in node.proc.args:
            if str(arg).startswith("--metrics-export-port="):
                ports[node.name] = int(str(arg).split("=", 1)[1])
    return ports


_RECEIVED = re.compile(r'^ray_object_manager_bytes\{[^}]*Type="Received"[^}]*\}\s+(\S+)', re.M)


def received_bytes(cluster: LocalCluster) -> dict[str, float]:
    """node name -> bytes its object manager has received from other nodes so far (Ray's counter, as last
    reported; None-reporting nodes count 0)."""
    out = {}
    for name, port in _metrics_ports(cluster).items():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            text = ""
        out[name] = sum(float(v) for v in _RECEIVED.findall(text))
    return out


def settled_received(cluster: LocalCluster, quiet_s: float = 2.5 * METRICS_INTERVAL_MS / 1000,
                     max_s: float = 30.0) -> dict[str, float]:
    """received_bytes once it stopped changing for `quiet_s` (longer than a report interval), or after max_s."""
    deadline = time.monotonic() + max_s
    last = received_bytes(cluster)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = received_bytes(cluster)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def before_cross_node_estimate(routes: dict[str, int], nodes: dict[str, str], driver_node: str,
                               bytes_per_point: dict[str, float], page_size: int) -> dict[str, float]:
    """Computed bytes of page data crossing nodes in the previous release, from the route of every page (which
    scroll, embed and upload actor it went through, recorded by the child's driver), the node of each actor
    (`nodes`: scroll-0, embed-1 ... -> node id) and the page objects' pickled sizes per point: texts go scroll ->
    embed, the body scroll -> upload, the vectors embed -> upload. An object under Ray's inline limit travels through
    its owner, the driver, instead (producer -> driver's node -> consumer). Returns bytes per kind and in all."""
    hops = {"texts": ("scroll", "embed"), "body": ("scroll", "upload"), "vectors": ("embed", "upload")}
    out = dict.fromkeys(hops, 0.0)
    for route, points in routes.items():
        index = dict(zip(("scroll", "embed", "upload"), route.split(",")))
        for kind, (src, dst) in hops.items():
            a, b = nodes.get(f"{src}-{index[src]}"), nodes.get(f"{dst}-{index[dst]}")
            if a is None or b is None:  # no embed call (a page without texts) or an actor not found
                continue
            size = bytes_per_point.get(kind, 0.0)
            inline = size * min(points, page_size) < INLINE_LIMIT
            hops_crossed = (a != driver_node) + (driver_node != b) if inline else (a != b)
            out[kind] += hops_crossed * size * points
    out["total"] = sum(out.values())
    return out
