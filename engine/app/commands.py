"""The job commands: run, status, swap, rollback, cleanup, demo."""

from __future__ import annotations

import argparse
import json
import logging

from engine.app import job as jobs
from engine.app import wiring
from engine.migration.cutover import cleanup, drop_vector, rollback, swap

log = logging.getLogger(__name__)


def _load(args: argparse.Namespace):
    from engine.config import load_config

    return load_config(args.config, overrides=args.set or ())


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="job YAML (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pipeline.shards=16 (repeatable)")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    result = jobs.run_job(cfg, restart=args.restart, progress=not args.quiet, catch_up=args.catch_up)
    print(jobs.dumps(result), flush=True)
    return 0


def _store(cfg):
    client, _ = wiring.connect(cfg)
    return client, wiring.make_store(cfg, client)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    client, store = _store(cfg)
    job_id = wiring.job_id_of(cfg)
    state = store.load(job_id)
    if state is None:
        print(json.dumps({"job_id": job_id, "state": "not started"}))
        return 0
    for s in state.shards:
        status = "done" if s.done else f"at {s.cursor!r}"
        print(f"shard {s.shard:>4} [{s.lo!r}, {s.hi!r}) {status:<24} written {s.written:>10,} skipped {s.skipped:>8,}")
    lanes = state.lanes
    for lane in lanes:
        print(f"lane {lane.lane} on node {lane.node_id[:12]} ({lane.gpus:g} GPU): {lane.points:,} points, "
              f"{lane.pages_redone} pages redone")
    out = {"job_id": job_id, "state": "finished" if state.finished else "in progress",
           "shards": len(state.shards), "shards_done": sum(s.done for s in state.shards),
           "points_written": state.written, "points_skipped": state.skipped,
           "lanes": [lane.to_dict() for lane in lanes], "events": [e.to_dict() for e in state.events]}
    print(json.dumps(out, default=str))
    client.close()
    return 0


def cmd_swap(args: argparse.Namespace) -> int:
    cfg = _load(args)
    client, store = _store(cfg)
    event = swap(client, store, wiring.job_id_of(cfg), cfg.target.alias, cfg.source.collection,
                 wiring.target_collection(cfg), force=args.force)
    print(json.dumps(event, default=str))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    cfg = _load(args)
    client, store = _store(cfg)
    print(json.dumps(rollback(client, store, wiring.job_id_of(cfg), cfg.target.alias, cfg.source.collection),
                     default=str))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    cfg = _load(args)
    client, store = _store(cfg)
    if args.drop_vector:
        # The collection the job wrote: the source in place, the new collection for side-by-side on old servers.
        state = store.load(wiring.job_id_of(cfg))
        collection = state.decision.collection if state is not None and state.decision is not None \
            else wiring.target_collection(cfg)
        event = drop_vector(client, store, wiring.job_id_of(cfg), collection, args.drop_vector,
                            confirm=args.confirm, force=args.force)
        print(json.dumps(event, default=str))
        return 0
    event = cleanup(client, store, wiring.job_id_of(cfg), cfg.source.collection, wiring.target_collection(cfg),
                    confirm=args.confirm, force=args.force)
    print(json.dumps(event, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.app.demo import run_demo

    return run_demo(data_dir=args.data, limit=args.limit, keep=args.keep)


def register(sub) -> None:
    p = sub.add_parser("run", help="run or resume a migration job")
    _config_args(p)
    p.add_argument("--restart", action="store_true", help="discard this job's checkpoint and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--catch-up", action="store_true",
                   help="after the backfill, reconcile source changes made during it (inserts, updates, deletes)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="per-shard progress from the checkpoint")
    _config_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("swap", help="point the alias at the new collection (atomic)")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="swap even without a passing verify (recorded)")
    p.set_defaults(func=cmd_swap)

    p = sub.add_parser("rollback", help="point the alias back at the source collection")
    _config_args(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("cleanup", help="delete the old collection after a swap, or (--drop-vector) the old vector")
    _config_args(p)
    p.add_argument("--drop-vector", metavar="OLD",
                   help="in-place jobs: drop this old named vector (and its data) instead of a collection")
    p.add_argument("--confirm", action="store_true", help="required: the deletion cannot be undone")
    p.add_argument("--force", action="store_true", help="clean up even without a passing verify (recorded)")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("demo", help="a real migration on the embedded endpoint: stdlib docstrings, legacy -> MiniLM")
    p.add_argument("--data", default="demo-data", help="endpoint data directory (wiped at start)")
    p.add_argument("--limit", type=int, default=3000, help="passages to migrate")
    p.add_argument("--keep", action="store_true", help="leave the endpoint data in place at the end")
    p.set_defaults(func=cmd_demo)
