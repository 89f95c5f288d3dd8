"""The driver's own cost: CPU seconds per million points with zero-cost workers, the per-page runtime of the
previous release against today's lanes, in one run.

Before (git commit 1e97de0, the last per-page release, extracted with `git archive` into a temp dir and run in a
child process): the coordinator dispatched every page itself — a read, an embed and a write call to Ray actors, two
gets, a wait over every pending ref. Its actors here return synthetic pages at once.

After (this checkout): the coordinator leases shards to lanes and applies their batched cursor reports; each lane's
loop runs on its node (here: Ray actors on this machine) over `SyntheticStages`, which answer at once. Both runs use
1,024-point pages. The driver's CPU is `time.process_time()` of the driver process around the coordinator's run, so
work done in the lanes or actors is not counted.

    .venv/bin/python bench/coordinator.py                      # 1M points before, 10M after, 4 lanes
    .venv/bin/python bench/coordinator.py --lanes 8 --after-points 50000000

Printed: driver CPU s per million points for each, the ratio (target >= 10x lower), and the acknowledgements one
driver core sustains after (points / driver CPU s; target >= 2M points/s, what 64+ GPUs need).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

BASELINE_COMMIT = "1e97de0"  # the last release with the per-page runtime
PAGE = 1024

BEFORE = textwrap.dedent('''
    """The per-page runtime of the previous release, with actors that answer at once (run in a child process)."""
    import json, os, sys, time
    import ray
    from engine.page import PageBody, PageMeta, WriteAck
    import actors.runtime as rt
    from engine.checkpoint import JobState, UriCheckpointStore
    from engine.pipeline import Coordinator
    from engine.plan import shard_states

    POINTS, SHARDS, PAGE, TMP = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    EMBED, UPLOAD = int(sys.argv[5]), int(sys.argv[6])

    class ZeroScroll:
        def __init__(self, *args, **kwargs):
            pass

        @ray.method(num_returns=3)
        def read(self, shard, seq, start, stop, limit, to_stop):
            lo, hi = start or 0, stop if stop is not None else POINTS
            end = hi if to_stop else min(hi, lo + limit)
            meta = PageMeta(shard=shard, seq=seq, start=start, next_offset=end if end < hi else None,
                            n_points=end - lo, n_texts=1)
            return meta, ["x"], PageBody(ids=[], blobs=[], text_index=[])

    class ZeroEmbed:
        def __init__(self, *args, **kwargs):
            pass

        def describe(self):
            return {"dim": 1}

        def embed(self, texts):
            return None

    class ZeroUpload:
        def __init__(self, *args, **kwargs):
            pass

        async def write(self, shard, seq, body, vectors):
            return WriteAck(shard=shard, seq=seq, written=0, skipped=0, requests=1)

    rt.ScrollWorker, rt.EmbedWorker, rt.UploadWorker = ZeroScroll, ZeroEmbed, ZeroUpload
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    spec = rt.RuntimeSpec(endpoint=None, policy=None, source_collection="s", text_field="text", text_template=None,
                          model_spec={}, sink=None, scroll_actors=2, embed_actors=EMBED, upload_actors=UPLOAD,
                          gpus_per_embed_actor=0.0, cpus_per_embed_actor=0.0)
    runtime = rt.RayRuntime(spec)
    runtime.describe_model()
    cuts = [POINTS * (i + 1) // SHARDS for i in range(SHARDS - 1)]
    state = JobState(job_id="bench", fingerprint="f", boundaries=cuts, shards=shard_states(cuts))
    window = 4 * (EMBED + UPLOAD)
    coordinator = Coordinator(state, runtime, UriCheckpointStore(TMP), page_size=PAGE, window=window)
    cpu0, t0 = time.process_time(), time.monotonic()
    coordinator.run()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    pages = sum(s.pages for s in state.shards)
    print(json.dumps({"points": POINTS, "pages": pages, "driver_cpu_s": cpu, "wall_s": wall}))
    runtime.shutdown()
    ray.shutdown()
''')


def run_before(points: int, shards: int, lanes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE_COMMIT, "engine", "actors"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        script = Path(tmp) / "before.py"
        script.write_text(BEFORE)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run([sys.executable, str(script), str(points), str(shards), str(PAGE), tmp, str(lanes),
                              str(lanes)], capture_output=True, text=True, env=env, cwd=tmp, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"the per-page baseline failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def run_after(points: int, shards: int, lanes: int) -> dict:
    import ray

    from actors.lane import LaneSpec
    from actors.pool import RayLanePool
    from actors.sizing import LaneOptions
    from engine.flow.checkpoint import UriCheckpointStore
    from engine.flow.coordinator import Coordinator, CoordinatorOptions
    from engine.flow.lane import RedoPolicy
    from engine.flow.local_runtime import SyntheticStages
    from engine.flow.shards import shard_states
    from engine.flow.sink import SinkSpec
    from engine.flow.source import SourceSpec
    from engine.flow.state import JobState
    from engine.flow.text import TextSpec
    from engine.qdrant.connection import Endpoint
    from engine.qdrant.retry import RetryPolicy

    # Logical CPUs for `lanes` synthetic lanes (each asks a CPU's worth for its embedding actor, which never runs).
    ray.init(num_cpus=max(os.cpu_count() or 1, 2 * lanes + 2), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-after-") as tmp:
        spec = LaneSpec(job_id="bench", endpoint=Endpoint("127.0.0.1", 1), policy=RetryPolicy(),
                        source=SourceSpec(collection="s", text=TextSpec(field="text")), sink=SinkSpec("t", "v"),
                        vectorizer={}, page_size=PAGE, pages_in_flight=8, redo=RedoPolicy(), runs_root=tmp)
        # CPU lanes that reserve nothing: `lanes` of them on this one node, whatever its size.
        options = LaneOptions(use_gpus=False, cpu_lanes_per_node=lanes, io_cpus=0.1, readers=1, writers=1)
        pool = RayLanePool(spec, options, name_prefix="bench", stages=SyntheticStages(points))
        cuts = [points * (i + 1) // shards for i in range(shards - 1)]
        state = JobState(job_id="bench", fingerprint="f", boundaries=cuts, shards=shard_states(cuts))
        # In integer ids the first shard starts at 0, which SyntheticStages reads as "from the start".
        try:
            pool.wait_first(120)
            coordinator = Coordinator(state, pool, UriCheckpointStore(tmp),
                                      options=CoordinatorOptions(save_interval_s=1.0))
            cpu0, t0 = time.process_time(), time.monotonic()
            stats = coordinator.run()
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        finally:
            pool.close()
            ray.shutdown()
    return {"points": state.written + state.skipped, "pages": sum(s.pages for s in state.shards),
            "driver_cpu_s": cpu, "wall_s": wall, "lanes": len(stats.lanes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-points", type=int, default=1_000_000)
    parser.add_argument("--after-points", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--lanes", type=int, default=4)
    args = parser.parse_args()
    before = run_before(args.before_points, args.shards, args.lanes)
    after = run_after(args.after_points, args.shards, args.lanes)
    per_m_before = before["driver_cpu_s"] / (before["points"] / 1e6)
    per_m_after = after["driver_cpu_s"] / (after["points"] / 1e6)
    sustained = after["points"] / max(after["driver_cpu_s"], 1e-9)
    figures = {
        "before_points": before["points"], "before_pages": before["pages"],
        "before_driver_cpu_s": round(before["driver_cpu_s"], 3), "before_wall_s": round(before["wall_s"], 2),
        "before_driver_cpu_s_per_million_points": round(per_m_before, 3),
        "after_points": after["points"], "after_pages": after["pages"], "after_lanes": after["lanes"],
        "after_driver_cpu_s": round(after["driver_cpu_s"], 3), "after_wall_s": round(after["wall_s"], 2),
        "after_driver_cpu_s_per_million_points": round(per_m_after, 4),
        "ratio_driver_cpu": round(per_m_before / per_m_after, 1),
        "after_acks_per_driver_core_points_per_s": round(sustained),
        "cpus": os.cpu_count(),
    }
    print(f"per-page runtime ({BASELINE_COMMIT}): {before['points']:,} points, {before['pages']:,} pages, driver "
          f"{before['driver_cpu_s']:.2f} CPU s -> {per_m_before:.3f} s per million points")
    print(f"lanes ({args.lanes}, this checkout): {after['points']:,} points, {after['pages']:,} pages, driver "
          f"{after['driver_cpu_s']:.2f} CPU s -> {per_m_after:.4f} s per million points")
    print(f"ratio: {per_m_before / per_m_after:.1f}x less driver CPU per point (target >= 10x); one driver core "
          f"sustains {sustained:,.0f} points/s of acknowledgements (target >= 2,000,000)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
