"""Write pacing against a rate-limited Qdrant: the adaptive controller (engine/qdrant/pacing.py: AIMD on requests in
flight and on rate, retry-after as a pause) against fixed concurrency (`pipeline.adaptive_pacing: false`: each
writer keeps upload_requests_in_flight requests in flight whatever the server answers, a refused request retried
after its own retry-after), in one run: same data, same endpoint, same limit.

The endpoint refuses writes over R points/s (`--faults rate_limit=R`: a bucket of R tokens refilled at R/s, refusals
as Qdrant's strict-mode rate limiter sends them, RESOURCE_EXHAUSTED with a whole-second retry-after). The source is
seeded before the limit is switched on (the endpoint restarted on the same data with it), and checkpoints are kept
in a local directory, so the limit meters the contenders' writes only. The model is the zero-cost `hash:64`
embedder, so the writers are the only thing that paces a run.

    .venv/bin/python bench/pacing.py                          # R = 2,000 points/s, 120,000 points
    .venv/bin/python bench/pacing.py --rate 5000 --n 100000 --order fixed,adaptive

Printed per contender: points/s over the pipeline (coordinator start to last commit) and as a share of R, write
requests and how many were refused (RESOURCE_EXHAUSTED answers / all write attempts). Target for the adaptive one:
≥ 0.8 R with ≤ 5 % refused. Numbers and ratios only: nothing here passes or fails on time.
JSON (last line): `<contender>_points_per_s`, `<contender>_share_of_limit`, `<contender>_refused`, ...
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402  (sets HF_HUB_OFFLINE / RAY_AUTH_MODE before Ray or models load)

DIM = 64
CONTENDERS = {"adaptive": True, "fixed": False}  # name -> pipeline.adaptive_pacing
TARGET_SHARE = 0.8  # of the rate limit
TARGET_REFUSED = 0.05  # of the write attempts
REFUSED_CAUSE = "resource_exhausted"  # engine/qdrant/retry.py RetryStats cause of a rate-limit refusal


def job_config(port: int, workdir: Path, target: str, adaptive: bool, pipeline: dict[str, Any]):
    from engine.config import config_from_dict

    return config_from_dict({
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": target, "vector_name": common.VECTOR},
        "model": {"name": f"hash:{DIM}"},
        "strategy": "new_collection",
        "pipeline": {**pipeline, "adaptive_pacing": adaptive},
        # a local store: checkpoint saves would otherwise draw on the same rate limit as the data
        "checkpoint": {"store": "uri", "uri": str(workdir / "checkpoints")},
        "dead_letter": {"dir": str(workdir / "runs")},
    }, env={})


def refused_share(summary: dict[str, Any]) -> tuple[int, int, float]:
    """(refusals, write attempts, refusals / attempts). Only writes are rate-limited here, so every
    RESOURCE_EXHAUSTED retry is a refused write; each write request was sent once plus once per retry."""
    refused = int(summary["retries"].get(REFUSED_CAUSE, 0))
    attempts = int(summary["write_requests"]) + refused
    return refused, attempts, refused / attempts if attempts else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="the endpoint's write limit R in points/s")
    parser.add_argument("--n", type=int, default=120_000,
                        help="points in the source collection (a minute per contender at the default R: the "
                             "controller's first seconds of learning stay a small part of the run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="adaptive,fixed", help="which contender runs first")
    parser.add_argument("--verbose", action="store_true")
    common.pipeline_args(parser)
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose)
    order = [s.strip() for s in args.order.split(",") if s.strip()]
    if sorted(order) != sorted(CONTENDERS):
        parser.error("--order takes adaptive,fixed or fixed,adaptive")
    if args.rate <= 0 or args.n < 1:
        parser.error("--rate must be above 0 and --n at least 1")

    from engine import tunables
    from engine.embedded.process import EmbeddedProcess

    pipeline = common.pipeline_of(args)
    figures: dict[str, Any] = {"n": args.n, "rate_limit": args.rate, "model": f"hash:{DIM}",
                               "pipeline": pipeline or "defaults", **common.machine()}
    workdir = Path(tempfile.mkdtemp(prefix="reembed-pacing-"))
    try:
        with common.endpoint() as plain:
            figures["seed_s"] = common.seed_source(plain.port, "src", args.n, args.seed)
            data_dir = plain.data_dir
            print(f"seeded {args.n:,} points in {figures['seed_s']:.1f} s")
            plain.stop()  # the same data, served again with the limit on
            limited = EmbeddedProcess(data_dir, faults=f"rate_limit={args.rate:g}",
                                      log_path=workdir / "endpoint.log")
            with limited:
                print(f"endpoint limited to {args.rate:,.0f} points/s; pipeline {pipeline or 'defaults'} "
                      f"({tunables.UPLOAD_REQUESTS_IN_FLIGHT} requests in flight per writer by default)")
                for name in order:
                    cfg = job_config(limited.port, workdir, f"dst_{name}", CONTENDERS[name], pipeline)
                    s = common.run_reembed(cfg).summary
                    refused, attempts, share = refused_share(s)
                    rate = s["pipeline_points_per_s"]
                    figures.update({
                        f"{name}_points_per_s": rate, f"{name}_share_of_limit": rate / args.rate,
                        f"{name}_refused": share, f"{name}_refusals": refused, f"{name}_write_attempts": attempts,
                        f"{name}_points": s["points_written"] + s["points_skipped"],
                        f"{name}_pipeline_s": s["points_this_run"] / rate if rate else None,
                        f"{name}_retries": s["retries"],
                    })
                    print(f"{name:>8}: {rate:8,.0f} points/s = {rate / args.rate:5.1%} of the limit; "
                          f"{refused:,} of {attempts:,} write attempts refused ({share:.1%}); "
                          f"{s['points_written'] + s['points_skipped']:,} points in "
                          f"{figures[f'{name}_pipeline_s'] or 0:.1f} s")
                    common.shutdown_ray()  # each contender starts on a fresh local Ray, as a job would
                figures["target_counts"] = {f"dst_{name}": common.count_points(limited.port, f"dst_{name}")
                                            for name in order}
    finally:
        common.shutdown_ray()
        shutil.rmtree(workdir, ignore_errors=True)

    adaptive, fixed = figures["adaptive_points_per_s"], figures["fixed_points_per_s"]
    figures["throughput_ratio_adaptive_to_fixed"] = adaptive / fixed if fixed else None
    met = figures["adaptive_share_of_limit"] >= TARGET_SHARE and figures["adaptive_refused"] <= TARGET_REFUSED
    figures["target_met"] = met
    ratio = figures["throughput_ratio_adaptive_to_fixed"]
    print(f"adaptive / fixed throughput: {ratio:.2f}x; refused {figures['adaptive_refused']:.1%} vs "
          f"{figures['fixed_refused']:.1%}; target (adaptive ≥ {TARGET_SHARE:.0%} of R with ≤ "
          f"{TARGET_REFUSED:.0%} refused): {'met' if met else 'not met'}")
    common.emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
