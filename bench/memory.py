"""Growth: peak RSS of the driver and of each actor, and wall time, as the collection grows (10k → 100k → 1M points
by default), with the zero-cost embedder `hash:384`, against the embedded endpoint, one fresh endpoint per size —
for the run, then verify (count parity over every id of every shard, 1,000 sampled points re-embedded) and
catch-up (a diff of source and target over every shard, after the source changed): every O(N) step runs on the
cluster, so the driver's memory must stay flat in N for all three.

Each size is seeded by a child process (so this driver never holds the corpus), then re-embedded by run_job while a
sampler reads the RSS of every process in this process's tree every 0.2 s. Ray is started once, before the first
size, so every size pays the same (no) Ray start.

    .venv/bin/python bench/memory.py --sizes 10000,100000
    .venv/bin/python bench/memory.py                       # 10k, 100k, 1M (seeding 1M takes a minute or two)

JSON (last line), lists in the order of `points`:
  peak_rss_mb          peak of the simultaneous sum driver + all actors (MiB): what reembed itself holds
  peak_rss_by_role_mb  per role: driver, scroll-i, embed-i, upload-i (each actor's own peak), plus endpoint and
                       ray-system (Ray's raylet, GCS, agents and idle workers, summed) for context
  wall_s               run_job's elapsed time (checks, actors, model, pipeline, summary; not seeding)
  pipeline_s           coordinator start to last commit
  seed_s               seeding time per size (reported, not part of wall_s)
  cpu_us_per_point_by_role  CPU per point of each process over the pipeline: tells whose cost grows with size
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402  (sets RAY_AUTH_MODE before Ray starts)

DIM = 384


def one_size(n: int, seed: int, pipeline: dict) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="reembed-memory-"))
    try:
        with common.endpoint() as ep:
            seed_s = common.seed_in_child(ep.port, "src", n, seed)
            sampler = common.TreeSampler().start()

            def on_pipeline(running: bool) -> None:
                sampler.rebase() if running else sampler.freeze()

            cfg = common.reembed_config(ep.port, workdir, "src", "dst", f"hash:{DIM}", **pipeline)
            run = common.run_reembed(cfg, sampler.set_roles, on_pipeline)
            sampler.stop()
            written = common.count_points(ep.port, "dst")
            later = {"verify": _stage(lambda: _verify(cfg)), "catch-up": _stage(lambda: _catch_up(cfg, ep.port, n))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    s = run.summary
    return {
        "verify_driver_peak_rss_mb": later["verify"]["driver"], "verify_s": later["verify"]["seconds"],
        "catch_up_driver_peak_rss_mb": later["catch-up"]["driver"], "catch_up_s": later["catch-up"]["seconds"],
        "points": n, "written": s["points_written"], "target_count": written, "seed_s": seed_s,
        "wall_s": s["elapsed_s"], "pipeline_s": s["points_this_run"] / s["pipeline_points_per_s"],
        "pipeline_points_per_s": s["pipeline_points_per_s"],
        "peak_rss_mb": sampler.peak_sum["driver+actors"], "peak_rss_all_mb": sampler.peak_sum["all"],
        "peak_rss_by_role_mb": {k: round(v, 1) for k, v in sorted(sampler.peak_role.items())},
        "cpu_s": sampler.cpu_by_role(), "samples": sampler.samples,
    }


def _stage(fn) -> dict:
    """Peak RSS of the driver (and of everything else) while `fn` runs, and its seconds."""
    sampler = common.TreeSampler().start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        sampler.stop()
    return {"driver": round(sampler.peak_role.get("driver", 0.0), 1), "seconds": round(time.perf_counter() - t0, 1)}


def _verify(cfg) -> None:
    from engine.app.verify_job import run_verify

    result = run_verify(cfg, write_reports=False)
    if not result.passed:
        raise SystemExit(f"verify failed: {[c.detail for c in result.failures()]}")


def _catch_up(cfg, port: int, n: int) -> None:
    """The source changes after the backfill (a hundred new points), then catch-up reconciles the whole target."""
    from qdrant_client import grpc as pb

    from engine.app.catchup_job import run_catch_up
    from engine.qdrant import values, wire
    from engine.qdrant.client import QdrantGrpc
    from engine.qdrant.connection import Endpoint

    blobs = []
    for i, text in enumerate(common.corpus(100, seed=n + 1)):
        point = pb.PointStruct(id=wire.point_id(10 * n + i + 1), payload=values.payload_from_python({"text": text}))
        point.vectors.vector.dense.data.extend([1.0] * common.SOURCE_DIM)
        blobs.append(point.SerializeToString())
    with QdrantGrpc(Endpoint("127.0.0.1", port)) as client:
        client.upsert_raw(wire.upsert_request("src", blobs, insert_only=False), "new points")
    outcome = run_catch_up(cfg)
    if outcome["inserted"] != 100:
        raise SystemExit(f"catch-up inserted {outcome['inserted']} points, not 100")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated point counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    common.pipeline_args(parser)
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs at least one positive size")
    pipeline = common.pipeline_of(args)
    what_ifs = common.apply_what_ifs(args)

    from actors.start import start_ray

    t0 = time.perf_counter()
    start_ray()
    ray_start_s = time.perf_counter() - t0
    print(f"Ray started in {ray_start_s:.1f} s; pipeline {pipeline or 'defaults'}; embedder hash:{DIM}")
    rows = []
    try:
        for n in sizes:
            row = one_size(n, args.seed, pipeline)
            rows.append(row)
            roles = row["peak_rss_by_role_mb"]
            actors = ", ".join(f"{k} {v:.0f}" for k, v in roles.items() if k not in ("driver", "endpoint",
                                                                                   common.RAY_ROLE))
            print(f"{n:>9,} points: seeded in {row['seed_s']:.1f} s; reembed wall {row['wall_s']:.1f} s "
                  f"(pipeline {row['pipeline_s']:.1f} s, {row['pipeline_points_per_s']:,.0f} points/s); peak RSS "
                  f"driver+actors {row['peak_rss_mb']:.0f} MiB (driver {roles.get('driver', 0):.0f}; {actors}); "
                  f"endpoint {roles.get('endpoint', 0):.0f}, Ray's own processes {roles.get(common.RAY_ROLE, 0):.0f}")
            own = sum(v for k, v in row["cpu_s"].items() if k != "endpoint")
            print(f"{'':>17} CPU per point: reembed's processes {1e6 * own / n:.0f} µs (driver, actors, Ray), "
                  f"endpoint {1e6 * row['cpu_s'].get('endpoint', 0.0) / n:.0f} µs")
            print(f"{'':>17} verify {row['verify_s']:.1f} s, driver peak {row['verify_driver_peak_rss_mb']:.0f} MiB; "
                  f"catch-up {row['catch_up_s']:.1f} s, driver peak {row['catch_up_driver_peak_rss_mb']:.0f} MiB")
    finally:
        common.shutdown_ray()

    figures: dict = {
        "points": [r["points"] for r in rows],
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in rows],
        "peak_rss_by_role_mb": [r["peak_rss_by_role_mb"] for r in rows],
        "peak_rss_all_processes_mb": [round(r["peak_rss_all_mb"], 1) for r in rows],
        "wall_s": [r["wall_s"] for r in rows],
        "pipeline_s": [round(r["pipeline_s"], 2) for r in rows],
        "pipeline_points_per_s": [r["pipeline_points_per_s"] for r in rows],
        "seed_s": [round(r["seed_s"], 1) for r in rows],
        "cpu_s_by_role": [{k: round(v, 2) for k, v in r["cpu_s"].items()} for r in rows],
        "cpu_us_per_point_by_role": [{k: round(1e6 * v / r["points"], 1) for k, v in r["cpu_s"].items()}
                                     for r in rows],
        "written": [r["written"] for r in rows],
        "verify_driver_peak_rss_mb": [r["verify_driver_peak_rss_mb"] for r in rows],
        "catch_up_driver_peak_rss_mb": [r["catch_up_driver_peak_rss_mb"] for r in rows],
        "verify_s": [r["verify_s"] for r in rows], "catch_up_s": [r["catch_up_s"] for r in rows],
        "ray_start_s": ray_start_s, "model": f"hash:{DIM}", "pipeline": pipeline or "defaults", "what_if": what_ifs,
        **common.machine(),
    }
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        growth = b["peak_rss_mb"] / a["peak_rss_mb"] - 1
        per_point = (b["pipeline_s"] / b["points"]) / (a["pipeline_s"] / a["points"])
        figures["rss_growth_last_step"] = growth
        figures["time_per_point_ratio_last_step"] = per_point
        print(f"{a['points']:,} → {b['points']:,} points: peak RSS (driver+actors) {growth:+.1%} (target within "
              f"±20 %); pipeline time per point ×{per_point:.2f} (1.00 = linear)")
        for stage in ("verify", "catch_up"):
            key = f"{stage}_driver_peak_rss_mb"
            grew = b[key] / a[key] - 1 if a[key] else 0.0
            figures[f"{stage}_driver_rss_growth_last_step"] = grew
            print(f"{'':>17} {stage.replace('_', '-')}: driver peak RSS {grew:+.1%} (target within ±20 %)")
    common.emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
