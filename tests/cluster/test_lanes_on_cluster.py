"""Lanes on a real multi-node Ray cluster on this machine: a head (the driver's node, no GPU) and worker nodes that
declare one GPU each (`ray start --num-gpus=1`; the hash embedder needs none). Jobs go in through `ray job submit`
as on a cloud cluster.

- every GPU node gets a lane, each lane's actors sit on one node (Ray's state API), the result is exact; a node
  added mid-run gets a lane that takes work; a worker node SIGKILLed mid-run: its leases go back to the queue, the
  job finishes exact, and what was written twice stays within the lost lane's pages in flight (one job for all);
- verify and catch-up run on the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine.embedded.process import EmbeddedProcess
from tests.integration.pipeline_support import assert_exact, client_for, make_payloads, seed_collection

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from local_cluster import LocalCluster  # noqa: E402  (a script, not a package)

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".git", "demo-data", "reembed-runs", "**/__pycache__", "bench/results", "tests/fixtures"]
PAGE = 32  # small pages: a run lasts long enough on this machine to lose and add nodes in the middle of it
PAGES_IN_FLIGHT = 2  # per lane stage: the lane's window is PAGES_IN_FLIGHT x (1 + writers) pages


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(head_cpus=1)
    try:
        c.start(workers=2, cpus_per_worker=2, gpus_per_worker=1)
        yield c
    finally:
        left = c.stop()
        assert not left, f"processes of the test cluster outlived its stop: {left}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A little latency per call, so a run lasts long enough to kill a node in the middle of it.
    with EmbeddedProcess(str(tmp_path_factory.mktemp("q")), faults="latency_ms=4-9", seed=3) as proc:
        yield proc


def _config(tmp: Path, port: int, source: str, target: str, **pipeline) -> Path:
    cfg = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": source, "text_field": "text"},
        "target": {"collection": target, "alias": f"{source}_live", "vector_name": "dense"},
        "model": {"name": "hash:32"},
        "pipeline": {"shards": 4, "scroll_page": PAGE, "upload_batch": 64, "pages_in_flight": PAGES_IN_FLIGHT,
                     "upload_actors": 1, "scroll_actors": 1, "checkpoint_interval_s": 0.2, **pipeline},
        "checkpoint": {"store": "uri", "uri": str(tmp / "ckpt")},
        "dead_letter": {"dir": str(tmp / "runs")},
    }
    path = tmp / f"{target}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _submit(cluster: LocalCluster, config: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
         "python", "-m", "engine", "run", "--config", str(config), "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _summary(proc: subprocess.Popen, timeout: float = 400) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    if os.environ.get("REEMBED_TEST_SHOW_JOB"):
        print(out[-8000:])
    assert proc.returncode == 0, out[-6000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("{") and '"job_id"' in ln]
    assert lines, out[-3000:]
    return json.loads(lines[-1])


def _progress(ckpt: Path) -> tuple[int, list[dict]]:
    """Points committed and the lanes at work, as the job's checkpoint says (store: uri)."""
    files = list(ckpt.glob("*.json")) if ckpt.exists() else []
    if not files:
        return 0, []
    try:
        state = json.loads(files[0].read_text())
    except (OSError, ValueError):
        return 0, []
    return sum(s["written"] + s["skipped"] for s in state["shards"]), state.get("lanes", [])


def _lane_nodes(cluster: LocalCluster) -> dict[str, set[str]]:
    """Lane name -> the nodes its live actors (conductor, embedding actor, readers, writers) run on."""
    from ray.util.state import list_actors

    lanes: dict[str, set[str]] = {}
    for actor in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000):
        name = actor.name or ""
        if "-lane-" in name:
            lane = name.split("-lane-")[0] + "-lane-" + name.split("-lane-")[1].split("-")[0]
            lanes.setdefault(lane, set()).add(actor.node_id)
    return lanes


def test_lanes_packed_per_node_then_a_node_lost_and_a_node_added_mid_run(cluster, server, tmp_path):
    """Every GPU node runs a lane whose actors all sit on that node (Ray's state API, sampled while the job runs); a
    node that joins mid-run gets a lane that takes work; a node SIGKILLed mid-run gives its leases back, and what is
    written twice stays within its lane's pages in flight. One run for all of it: each cluster job costs a minute here.
    """
    n = 45_000
    client = client_for(server.port)
    seed_collection(client, "src_b", make_payloads(n, seed=12))
    client.close()
    # Paced at 600 points/s (the job's global cap, split across its lanes): the run (75 s) outlasts a node joining
    # and its lane starting — the node unpacks the job's working_dir into its own temp dir first, and that took
    # over 40 s in one run on this 2-core machine (at 1,000 points/s the job once ended before the new lane worked).
    config = _config(tmp_path, server.port, "src_b", "dst_b", shards=3, max_points_per_s=600)
    proc = _submit(cluster, config)
    killed = None
    added_at = None
    seen: dict[str, set[str]] = {}  # lane -> the nodes its live actors were seen on, before the kill
    sampled = 0.0
    deadline = time.monotonic() + 400
    last_move, last_done, stall = time.monotonic(), 0, 0.0  # stall: the longest wait for the next commit, after the kill
    while proc.poll() is None and time.monotonic() < deadline:
        done, lanes = _progress(tmp_path / "ckpt")
        if done != last_done:
            if killed is not None:
                stall = max(stall, time.monotonic() - last_move)
            last_move, last_done = time.monotonic(), done
        working = [lane for lane in lanes if lane["points"] > 0]
        if killed is None and time.monotonic() - sampled >= 1.0:
            for lane, nodes in _lane_nodes(cluster).items():
                seen.setdefault(lane, set()).update(nodes)
            sampled = time.monotonic()
        if added_at is None and working:
            cluster.add_worker(cpus=2, gpus=1)  # a node joins (an autoscaler's new node) while the job runs
            added_at = done
        if killed is None and len(working) == 3:
            # The new node's lane took work: now the node of one of the first lanes goes, SIGKILLed with all on it.
            assert done < 0.8 * n, f"the new node's lane took work only at {done} of {n} points: too late to kill"
            names = cluster.node_ids()
            first = sorted(working, key=lambda lane: lane["lane"])[0]
            victim = next(node for node in cluster.nodes if node.name == names.get(first["node_id"]))
            cluster.kill(victim)
            killed = (first["lane"], done)
        time.sleep(0.2)
    summary = _summary(proc)
    assert killed is not None and added_at is not None, (killed, added_at)
    assert summary["points_written"] + summary["points_skipped"] == n
    assert_exact(server.port, "src_b", "dst_b")
    lanes = {lane["lane"]: lane for lane in summary["lanes"]}
    assert killed[0] in lanes and len(lanes) == 3, lanes  # the two first lanes, and one on the node that joined
    assert len({lane["node_id"] for lane in lanes.values()}) == 3, "three GPU nodes, three lanes, one on each"
    assert all(lane["gpus"] == 1 and lane["points"] > 0 for lane in lanes.values()), lanes
    assert seen and all(len(nodes) == 1 for nodes in seen.values()), seen  # a lane never spans nodes
    assert summary["driver_cpu_s"] < 30
    assert summary["leases_returned"] >= 1
    # Written twice: the lost lane's pages in flight, and what it committed since its last report to the driver
    # (a report at most every LANE_REPORT_MIN_S when there is news; half a second here at its rate).
    window_points = PAGES_IN_FLIGHT * 2 * PAGE
    lane_rate = summary["pipeline_points_per_s"] / 2
    assert summary["points_redone"] <= window_points + lane_rate * 0.5, summary
    newest = max(lanes, key=lambda name: int(name.rsplit("-", 1)[1]))
    assert newest != killed[0] and lanes[newest]["points"] > 0, lanes
    print(f"node added at {added_at} points, lane {killed[0][-6:]} lost with its node at {killed[1]}: "
          f"{summary['leases_returned']} leases returned, {summary['points_redone']} points written twice, "
          f"{summary['pages_redone']} pages redone, {summary['splits']} splits, lanes "
          f"{[(name[-6:], lane['points']) for name, lane in lanes.items()]}, driver CPU {summary['driver_cpu_s']} s, "
          f"longest wait between commits after the kill {stall:.1f} s (checkpoint saved every 0.2 s)")


def test_verify_and_catch_up_on_the_cluster(cluster, server, tmp_path, monkeypatch):
    import ray
    from qdrant_client import grpc as pb

    from engine.app import job as jobs
    from engine.app.catchup_job import run_catch_up
    from engine.app.verify_job import run_verify
    from engine.config import load_config
    from engine.qdrant import values, wire

    n = 6_000
    client = client_for(server.port)
    seed_collection(client, "src_c", make_payloads(n, seed=13))
    config = _config(tmp_path, server.port, "src_c", "dst_c")
    if ray.is_initialized():  # a Ray node an earlier tier's test left in this process: this test drives the cluster
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    try:
        cfg = load_config(config, env={})
        jobs.run_job(cfg, progress=False)
        # The application changes the source after the backfill: one insert, one update, one delete.
        new = pb.PointStruct(id=wire.point_id(10**9), payload=values.payload_from_python({"text": "late arrival"}))
        new.vectors.vector.dense.data.extend([0.5] * 8)
        client.upsert_raw(wire.upsert_request("src_c", [new.SerializeToString()], insert_only=False), "insert")
        first = next(iter(make_payloads(n, seed=13)))
        changed = pb.PointStruct(id=wire.point_id(first), payload=values.payload_from_python({"text": "rewritten"}))
        changed.vectors.vector.dense.data.extend([0.25] * 8)
        client.upsert_raw(wire.upsert_request("src_c", [changed.SerializeToString()], insert_only=False), "update")
        client.delete_points("src_c", [list(make_payloads(n, seed=13))[-1]])
        outcome = run_catch_up(cfg)
        assert (outcome["inserted"], outcome["updated"], outcome["deleted"]) == (1, 1, 1), outcome
        assert_exact(server.port, "src_c", "dst_c")
        result = run_verify(cfg, sample=10**9)
        assert result.passed, [c.detail for c in result.failures()]
    finally:
        client.close()
        ray.shutdown()
