"""`reembed verify` (exit 0 on pass, 1 on fail) and `reembed report`."""

from __future__ import annotations

import argparse
import json
import sys

from engine.app.args import job_command, load


def _sample(text: str) -> int:
    if text.strip().lower() == "all":
        return sys.maxsize  # at least the collection size: every point is checked
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give a count such as 1000, or all") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1 (or all)")
    return value


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.app.verify_job import run_verify

    cfg = load(args)
    result = run_verify(cfg, sample=args.sample, eval_file=args.eval)
    for line in result.lines():
        print(line)
    verdict = "PASSED" if result.passed else "FAILED (" + ", ".join(c.name for c in result.failures()) + ")"
    print(f"verify {verdict}; report: {result.report}", flush=True)
    print(json.dumps({"job_id": result.job_id, "passed": result.passed, "failed": [c.name for c in result.failures()],
                      "checked_points": result.checked_points, "report": result.report}), flush=True)
    return 0 if result.passed else 1


def cmd_report(args: argparse.Namespace) -> int:
    from engine.app import wiring
    from engine.errors import PreconditionError
    from engine.verify.report import write_report

    cfg = load(args)
    client, _ = wiring.connect(cfg)
    try:
        store = wiring.make_store(cfg, client)
        job_id = wiring.job_id_of(cfg)
        state = store.load(job_id)
    finally:
        client.close()
    if state is None:
        raise PreconditionError(f"no checkpoint for job {job_id} ({store.describe()}); run `reembed run --config ...` "
                                "first")
    path = write_report(cfg, state, wiring.run_dir(cfg, job_id))
    print(f"report: {path}", flush=True)
    return 0


def register(sub) -> None:
    p = job_command(sub, "verify", cmd_verify,
                    "check the target before cutover (exit 0 pass, 1 fail); writes the report")
    p.add_argument("--sample", type=_sample, default=None, metavar="N",
                   help="points to check (default verify.sample); 'all' or any N >= the collection checks every point")
    p.add_argument("--eval", default=None, metavar="FILE",
                   help="labelled queries: JSONL or Parquet rows of {query, relevant_ids} (default verify.eval_file)")

    job_command(sub, "report", cmd_report, "write report.json and report.html for the job (no server writes)")
