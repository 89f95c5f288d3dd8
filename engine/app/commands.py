"""The job commands: run, status, swap, rollback, cleanup, requantize, demo."""

from __future__ import annotations

import argparse
import json
import logging

from engine.app import job as jobs
from engine.app import wiring
from engine.app.args import job_command, load
from engine.migration.cutover import cleanup, drop_vector, rollback, swap

log = logging.getLogger(__name__)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load(args)
    result = jobs.run_job(cfg, restart=args.restart, progress=not args.quiet, catch_up=args.catch_up)
    print(jobs.dumps(result), flush=True)
    return 0


def _store(cfg):
    client, _ = wiring.connect(cfg)
    return client, wiring.make_store(cfg, client)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args)
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
    cfg = load(args)
    client, store = _store(cfg)
    event = swap(client, store, wiring.job_id_of(cfg), cfg.target.alias, cfg.source.collection,
                 wiring.target_collection(cfg), force=args.force)
    print(json.dumps(event, default=str))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    cfg = load(args)
    client, store = _store(cfg)
    print(json.dumps(rollback(client, store, wiring.job_id_of(cfg), cfg.target.alias, cfg.source.collection),
                     default=str))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    cfg = load(args)
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


def cmd_requantize(args: argparse.Namespace) -> int:
    """Change the source's quantization to target.layout.quantization without a model run: Qdrant re-quantizes the
    stored vectors after one UpdateCollection (strategies.requantize_request). Prints the request; --apply sends it
    and waits for the collection to turn green."""
    from google.protobuf.json_format import MessageToDict

    from engine import tunables
    from engine.errors import PreconditionError
    from engine.migration import strategies

    cfg = load(args)
    requested = cfg.target.layout.quantization
    if requested == "keep":
        raise PreconditionError("target.layout.quantization is keep, so there is no quantization to change; set it "
                                "to none, scalar or binary")
    client, _ = wiring.connect(cfg)
    try:
        collection = client.resolve(cfg.source.collection)  # an alias names the collection it points at
        info = client.collection_info(collection)
        if info is None:
            raise PreconditionError(f"source collection {cfg.source.collection!r} does not exist; set "
                                    "source.collection to the collection to re-quantize")
        current = strategies.quantization_of(info)
        out: dict = {"collection": collection, "current": current, "requested": requested}
        if current == requested:
            out.update(update_collection=None, applied=False, note=f"already {requested}: nothing to change")
            print(json.dumps(out, sort_keys=True))
            return 0
        request = strategies.requantize_request(collection, info, requested)
        out["update_collection"] = MessageToDict(request, preserving_proto_field_name=True)
        out["applied"] = False
        if args.apply:
            client.update_collection(request)
            status, waited = client.wait_green(collection, args.timeout_s or tunables.INDEX_GREEN_TIMEOUT_S)
            out.update(applied=True, status=status, waited_s=round(waited, 1),
                       quantization_now=strategies.quantization_of(client.collection_info(collection) or info))
            log.info("%s re-quantized %s -> %s (status %s after %.0f s)", collection, current, requested, status,
                     waited)
        print(json.dumps(out, sort_keys=True))
    finally:
        client.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.app.demo import run_demo

    return run_demo(data_dir=args.data, limit=args.limit, keep=args.keep)


def register(sub) -> None:
    p = job_command(sub, "run", cmd_run, "run or resume a migration job")
    p.add_argument("--restart", action="store_true", help="discard this job's checkpoint and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--catch-up", action="store_true",
                   help="after the backfill, reconcile source changes made during it (inserts, updates, deletes)")

    job_command(sub, "status", cmd_status, "per-shard progress from the checkpoint")

    p = job_command(sub, "swap", cmd_swap, "point the alias at the new collection (atomic)")
    p.add_argument("--force", action="store_true", help="swap even without a passing verify (recorded)")

    job_command(sub, "rollback", cmd_rollback, "point the alias back at the source collection")

    p = job_command(sub, "cleanup", cmd_cleanup,
                    "delete the old collection after a swap, or (--drop-vector) the old vector")
    p.add_argument("--drop-vector", metavar="OLD",
                   help="in-place jobs: drop this old named vector (and its data) instead of a collection")
    p.add_argument("--confirm", action="store_true", help="required: the deletion cannot be undone")
    p.add_argument("--force", action="store_true", help="clean up even without a passing verify (recorded)")

    p = job_command(sub, "requantize", cmd_requantize,
                    "change only the source's quantization (target.layout.quantization): no model run; prints the "
                    "UpdateCollection, --apply sends it")
    p.add_argument("--apply", action="store_true", help="send the request and wait for the collection to turn green")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="stop waiting for green after this long (default: the index-build timeout, 6 h)")

    p = sub.add_parser("demo", help="a real migration on the embedded endpoint: stdlib docstrings, legacy -> MiniLM")
    p.add_argument("--data", default="demo-data", help="endpoint data directory (wiped at start)")
    p.add_argument("--limit", type=int, default=3000, help="passages to migrate")
    p.add_argument("--keep", action="store_true", help="leave the endpoint data in place at the end")
    p.set_defaults(func=cmd_demo)
