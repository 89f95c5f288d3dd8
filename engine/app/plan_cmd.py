"""`reembed plan`: what a job would do on this server, before it does anything — the strategy and why (or why
not), the source schema, the shard plan, the bytes to write and an ETA from a short calibration; for shortcuts,
the recall they keep. `reembed fit-map`: learn (and save) the linear-map shortcut. Neither writes to Qdrant."""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from engine.app import job as jobs
from engine.app import wiring
from engine.flow import shards as planning

log = logging.getLogger(__name__)

CALIBRATION_TEXTS = 64  # enough for a stable texts/s figure, few enough to take seconds on a CPU
POINT_OVERHEAD_BYTES = 24  # id, field tags and lengths per written point


def _payload_bytes(client, collection: str) -> float:
    points, _ = client.scroll(collection, None, 128, with_payload=True)
    if not points:
        return 0.0
    return sum(len(p.SerializeToString()) for p in points) / len(points)


def calibrate(cfg, client, decision) -> dict[str, Any] | None:
    """Texts/s of the new model on this machine, embedding a sample of the source's texts."""
    if cfg.shortcut.kind != "none":
        return None
    spec = wiring.text_spec_of(cfg)
    points, _ = client.scroll(cfg.source.collection, None, CALIBRATION_TEXTS, with_payload=spec.needs_payload)
    texts = [t for t, _ in spec.open().texts(points) if t is not None]
    if not texts:
        return None
    from engine.embed.vectorize import build_vectorizer

    vec = build_vectorizer(jobs.vectorizer_spec(cfg, decision, None))
    vec.embed(texts[:4])  # warm-up: first-call costs are not throughput
    t0 = time.perf_counter()
    vec.embed(texts)
    rate = len(texts) / max(1e-9, time.perf_counter() - t0)
    return {"texts": len(texts), "texts_per_s": round(rate, 1), "where": "this machine (driver process)"}


def make_plan(cfg, calibration: bool = True) -> dict[str, Any]:
    client, server = wiring.connect(cfg)
    try:
        found = jobs.probe(cfg, client, server)
        total, schema, decision = found.total, found.schema, found.decision
        boundaries = planning.plan_boundaries(client, cfg.source.collection, cfg.pipeline.shards)
        out: dict[str, Any] = {"server": server.version, "source": schema.describe(), "decision": decision.to_dict(),
                               "shards": len(boundaries) + 1, "boundaries": [str(b) for b in boundaries]}
        cal = calibrate(cfg, client, decision) if calibration else None
        dim = None
        if cfg.shortcut.kind == "matryoshka":
            from engine.migration import shortcuts

            dim = cfg.shortcut.dim
            out["shortcut"] = shortcuts.measure_matryoshka(cfg, client)
        elif cfg.shortcut.kind == "linear_map":
            from engine.migration import shortcuts

            path, report = shortcuts.fit_and_save(cfg, client, wiring.text_spec_of(cfg).open(),
                                                  wiring.map_file(cfg, wiring.job_id_of(cfg)))
            out["shortcut"] = {**report, "map_file": path}
            dim = report["new_dim"]
        elif decision.dense_name is not None:
            from engine.embed import build_embedder

            dim = build_embedder(cfg.model_spec()).dim
        per_point = POINT_OVERHEAD_BYTES + (4 * dim if dim else 0) + (400 if decision.sparse_name else 0)
        if decision.layout == "new_collection":
            per_point += _payload_bytes(client, cfg.source.collection)
            per_point += sum(4 * int(p.size) for n, p in schema.dense.items() if n in decision.copy_vectors)
        out["bytes_to_write"] = int(per_point * total)
        out["new_vector_dim"] = dim
        if cal is not None:
            out["calibration"] = cal
            out["eta_s_at_calibrated_rate"] = round(total / cal["texts_per_s"], 1) if cal["texts_per_s"] else None
        return out
    finally:
        client.close()


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.app.commands import _load

    cfg = _load(args)
    result = make_plan(cfg, calibration=not args.no_calibrate)
    if args.json:
        print(json.dumps(result, default=str, sort_keys=True))
        return 0
    d = result["decision"]
    print(f"server: Qdrant {result['server']}")
    src = result["source"]
    print(f"source: {src['collection']} — {src['points']:,} points, vectors "
          f"{json.dumps(src['vectors'])}, sparse {json.dumps(src['sparse_vectors'])}, "
          f"payload indexes {src['payload_indexes']}")
    print(f"strategy: {d['strategy']} ({d['layout']} layout, requested {d['requested']}) -> {d['collection']}")
    print(f"  why: {d['reason']}")
    print(f"shards: {result['shards']}; bytes to write ≈ {result['bytes_to_write'] / 1e6:,.1f} MB")
    if "calibration" in result:
        c = result["calibration"]
        print(f"calibration: {c['texts_per_s']:,} texts/s on {c['where']} ({c['texts']} texts); "
              f"ETA at that rate ≈ {result['eta_s_at_calibrated_rate']:,} s (GPU workers are faster)")
    if "shortcut" in result:
        print(f"shortcut: {json.dumps(result['shortcut'])}")
    print(json.dumps(result, default=str, sort_keys=True))
    return 0


def cmd_fit_map(args: argparse.Namespace) -> int:
    from engine.migration import shortcuts
    from engine.app.commands import _load
    from engine.errors import ConfigError

    cfg = _load(args)
    if cfg.shortcut.kind != "linear_map":
        raise ConfigError("fit-map needs shortcut.kind: linear_map in the config")
    client, _ = wiring.connect(cfg)
    try:
        path, report = shortcuts.fit_and_save(cfg, client, wiring.text_spec_of(cfg).open(),
                                              wiring.map_file(cfg, wiring.job_id_of(cfg)))
    finally:
        client.close()
    print(json.dumps({**report, "map_file": path}, sort_keys=True))
    return 0


def register(sub) -> None:
    from engine.app.commands import _config_args

    p = sub.add_parser("plan", help="probe the server and source, and show the strategy, shards, bytes and ETA")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print only the JSON plan")
    p.add_argument("--no-calibrate", action="store_true", help="skip the model calibration (no model load)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("fit-map", help="learn the linear-map shortcut old->new on a sample and report recall@10")
    _config_args(p)
    p.set_defaults(func=cmd_fit_map)

