"""`reembed plan`: what a job would do on this server, before it does anything — the strategy and why (or why
not), the source schema, the shard plan, the bytes to write and an ETA from a short calibration; for shortcuts,
the recall they keep; for side_by_side, which vectors stay on disk while both models live and why; the guide's
advice for a small source. `reembed fit-map`: learn (and save) the linear-map shortcut. Neither writes to Qdrant.

A change that is quantization only is answered before any model is loaded: "no re-embedding needed", with the
UpdateCollection that does it (`reembed requantize` sends it). The model counts as the one that made the source
vectors when model.name equals verify.old_model (the config's own name for that model) or when the source's
reembed metadata records it (a collection an earlier job wrote); target.layout.quantization names the change.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from google.protobuf.json_format import MessageToDict
from qdrant_client import grpc as pb

from engine.app import wiring
from engine.app.lanes import vectorizer_spec
from engine.app.preconditions import probe
from engine.flow import shards as planning
from engine.flow.state import Decision
from engine.migration import strategies
from engine.migration.target import metadata_tag

log = logging.getLogger(__name__)

CALIBRATION_TEXTS = 64  # enough for a stable texts/s figure, few enough to take seconds on a CPU
POINT_OVERHEAD_BYTES = 24  # id, field tags and lengths per written point
SIZE_SAMPLE_POINTS = 64  # points read whole (payload and every vector) to size the source's data


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

    vec = build_vectorizer(vectorizer_spec(cfg, decision, None))
    vec.embed(texts[:4])  # warm-up: first-call costs are not throughput
    t0 = time.perf_counter()
    made = vec.embed(texts)
    rate = len(texts) / max(1e-9, time.perf_counter() - t0)
    out = {"texts": len(texts), "texts_per_s": round(rate, 1), "where": "this machine (driver process)"}
    multi = getattr(made, "multi", None)
    if multi is not None and len(multi):  # a multivector's bytes grow with its text: one row per token
        out["tokens_per_text"] = round(float(multi.data.shape[0]) / len(multi), 1)
    return out


def source_bytes(client, collection: str, total: int) -> float:
    """The source's data in bytes: a sample of whole points (payload and every vector, as Qdrant sends them) times
    the count. What the guide's small-collection advice is about."""
    points, _ = client.scroll(collection, None, SIZE_SAMPLE_POINTS, with_payload=True, with_vectors=True)
    if not points:
        return 0.0
    return sum(len(p.SerializeToString()) for p in points) / len(points) * total


def requantize_answer(cfg, info: pb.CollectionInfo) -> strategies.Requantize | None:
    """The quantization-only answer for this config's source (see the module docstring), or None."""
    recorded = (metadata_tag(info) or {}).get("model")
    return strategies.quantization_only(
        info, cfg.source.collection, requested=cfg.target.layout.quantization, strategy=cfg.strategy,
        shortcut=cfg.shortcut.kind, model_name=cfg.model.name, model_kind=cfg.model.kind,
        matryoshka_dim=cfg.model.matryoshka_dim, old_model=cfg.verify.old_model,
        recorded_model=recorded if isinstance(recorded, dict) else None, vector=cfg.source.vector_name)


def requantize_summary(answer: strategies.Requantize) -> dict[str, Any]:
    request = None if answer.request is None else MessageToDict(answer.request, preserving_proto_field_name=True)
    return {"collection": answer.collection, "current": answer.current, "requested": answer.requested,
            "evidence": answer.evidence, "update_collection": request,
            "command": "reembed requantize --config CONFIG --apply" if request is not None else None}


def on_disk_plan(decision: Decision, dim: int | None) -> list[dict[str, Any]]:
    """The vectors side_by_side keeps on disk while both models live, why, and what swap/cleanup put back. With the
    model's dimension known, the new dense vector is listed only when it is large enough to go there."""
    out = []
    for record in decision.on_disk:
        reason = record.reason
        if record.collection == decision.collection and record.vector == decision.dense_name and dim:
            params = pb.VectorParams(size=dim)
            if decision.multi_name is not None:
                params.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
            why = strategies.on_disk_reason(params)
            if why is None:
                continue
            reason = f"new vector: {why}"
        asked = record.restore_on_disk is not None or record.restore_memory is not None
        out.append({"collection": record.collection, "vector": record.vector or "(unnamed)", "reason": reason,
                    "after": (f"swap/cleanup put it back as asked (on_disk {record.restore_on_disk}"
                              + (f", memory {record.restore_memory})" if record.restore_memory else ")")) if asked
                    else "stays on disk after swap/cleanup: no placement was asked for (set target.on_disk, or the "
                         "source vector's on_disk, to have it put back)"})
    return out


def make_plan(cfg, calibration: bool = True) -> dict[str, Any]:
    client, server = wiring.connect(cfg)
    try:
        info = client.collection_info(cfg.source.collection)
        answer = requantize_answer(cfg, info) if info is not None else None
        if answer is not None:
            # No model is loaded and no text is read: the stored vectors stay, Qdrant re-quantizes them.
            assert info is not None
            total = int(info.points_count)
            out: dict[str, Any] = {"server": server.version, "reembed_needed": False,
                   "source": strategies.SourceSchema.from_info(cfg.source.collection, info, total).describe(),
                   "requantize": requantize_summary(answer)}
            _advise(out, client, cfg.source.collection, total)
            return out
        found = probe(cfg, client, server)
        total, schema, decision = found.total, found.schema, found.decision
        boundaries = planning.plan_boundaries(client, cfg.source.collection, cfg.pipeline.shards)
        out = {"server": server.version, "reembed_needed": True, "source": schema.describe(),
               "decision": decision.to_dict(), "shards": len(boundaries) + 1,
               "boundaries": [str(b) for b in boundaries]}
        _advise(out, client, cfg.source.collection, total)
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
        rows = 1.0
        if decision.multi_name is not None:  # one row per token: the calibration measured how many
            rows = float(cal["tokens_per_text"]) if cal is not None and "tokens_per_text" in cal else 0.0
            if not rows:
                out["multivector_bytes"] = "unknown without calibration (one row per token of each text)"
        per_point: float = POINT_OVERHEAD_BYTES + (4 * dim * rows if dim else 0) + (400 if decision.sparse_name else 0)
        if decision.layout == "new_collection" and decision.copy_vectors:
            # every stored vector goes along with the payload: the sampled whole point, multivectors' rows included
            per_point += out["source_bytes"] / total if total else 0.0
        elif decision.layout == "new_collection":
            per_point += _payload_bytes(client, cfg.source.collection)
        out["bytes_to_write"] = int(per_point * total)
        out["new_vector_dim"] = dim
        if decision.on_disk:
            out["on_disk"] = on_disk_plan(decision, dim)
        if cal is not None:
            out["calibration"] = cal
            out["eta_s_at_calibrated_rate"] = round(total / cal["texts_per_s"], 1) if cal["texts_per_s"] else None
        return out
    finally:
        client.close()


def _advise(out: dict[str, Any], client, collection: str, total: int) -> None:
    out["source_bytes"] = int(source_bytes(client, collection, total))
    advice = strategies.small_collection_advice(out["source_bytes"])
    if advice is not None:
        out["advice"] = advice


def _print_requantize(result: dict[str, Any]) -> None:
    r = result["requantize"]
    print(f"server: Qdrant {result['server']}")
    print(f"no re-embedding needed: quantization only ({r['current']} -> {r['requested']}); {r['evidence']}")
    if r["update_collection"] is None:
        print(f"  {r['collection']} already uses {r['requested']} quantization: nothing to change")
    else:
        print(f"  Qdrant re-quantizes the stored vectors after one UpdateCollection on {r['collection']}: "
              f"{json.dumps(r['update_collection'], sort_keys=True)}")
        print(f"  send it and wait for green: {r['command']}")


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.app.args import load

    cfg = load(args)
    result = make_plan(cfg, calibration=not args.no_calibrate)
    if args.json:
        print(json.dumps(result, default=str, sort_keys=True))
        return 0
    if not result["reembed_needed"]:
        _print_requantize(result)
        if "advice" in result:
            print(f"advice: {result['advice']}")
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
    for placed in result.get("on_disk", ()):
        print(f"on disk while both models live: {placed['collection']}.{placed['vector']} — {placed['reason']}; "
              f"{placed['after']}")
    if "advice" in result:
        print(f"advice: {result['advice']}")
    print(json.dumps(result, default=str, sort_keys=True))
    return 0


def cmd_fit_map(args: argparse.Namespace) -> int:
    from engine.app.args import load
    from engine.errors import ConfigError
    from engine.migration import shortcuts

    cfg = load(args)
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
    from engine.app.args import job_command

    p = job_command(sub, "plan", cmd_plan, "probe the server and source, and show the strategy, shards, bytes and ETA")
    p.add_argument("--json", action="store_true", help="print only the JSON plan")
    p.add_argument("--no-calibrate", action="store_true", help="skip the model calibration (no model load)")

    job_command(sub, "fit-map", cmd_fit_map, "learn the linear-map shortcut old->new on a sample and report recall@10")
