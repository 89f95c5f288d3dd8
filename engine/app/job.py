"""One migration job from config to summary: preconditions first (nothing is written until every check passed),
then target creation, shard plan, the coordinator, and the summary.

Order of checks: server reachable and its version; source exists; the text field exists in the source; the target,
if it exists, is this job's and fits the model; the model loads on the workers; an existing checkpoint matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from qdrant_client import grpc as pb

from engine.flow import shards as planning
from engine.migration import strategies
from engine.flow.checkpoint import (CheckpointStore, JobState, QdrantCheckpointStore, UriCheckpointStore, check_resume,
                               fingerprint)
from engine.flow.deadletters import DeadLetters
from engine.errors import ReembedError, PreconditionError, QdrantUnavailable
from engine.flow.page import PageMeta
from engine.flow.coordinator import Coordinator, RunStats
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc, ServerInfo
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.qdrant.values import TextSpec
from engine.verify.report import record_run, write_report_quietly
from engine.flow.sink import SinkSpec
from actors.start import start_ray

log = logging.getLogger(__name__)

TEXT_PROBE_POINTS = 256  # points read to check the text field exists before anything is written
METADATA_KEY = "reembed"  # collection metadata key holding the job id and model provenance (Qdrant >= 1.16)
# A first contact fails fast: a mistyped host should not wait out the full retry deadline.
CONNECT_POLICY = RetryPolicy(max_attempts=4, base_delay_s=0.25, max_delay_s=2.0, deadline_s=10.0)


def endpoint_of(cfg) -> Endpoint:
    host, port, tls = cfg.qdrant.endpoint()
    return Endpoint(host=host, port=port, tls=tls, api_key=cfg.qdrant.api_key_value(),
                    ca_cert=cfg.qdrant.tls_ca_cert, timeout_s=cfg.qdrant.timeout_s)


def policy_of(cfg) -> RetryPolicy:
    r = cfg.retry
    return RetryPolicy(max_attempts=r.max_attempts, base_delay_s=r.base_delay_s, max_delay_s=r.max_delay_s,
                       deadline_s=r.deadline_s)


def text_spec_of(cfg) -> TextSpec:
    if cfg.source.text_dataset is not None:
        raise PreconditionError(
            "this step reads the text from the payload, but the job's text lives in source.text_dataset "
            f"({cfg.source.text_dataset}); it is not available for external-text jobs"
        )
    if cfg.source.text_template:
        return TextSpec(template=cfg.source.text_template)
    return TextSpec(field=cfg.source.text_field)


def target_collection(cfg) -> str:
    return cfg.target.collection or cfg.source.collection


def job_id_of(cfg) -> str:
    """Stable per (source, target, vector): re-running the same command finds the same job."""
    key = f"{cfg.source.collection}|{target_collection(cfg)}|{cfg.target.vector_name or ''}|{cfg.strategy}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def connect(cfg) -> tuple[QdrantGrpc, ServerInfo]:
    endpoint = endpoint_of(cfg)
    probe = QdrantGrpc(endpoint, CONNECT_POLICY)
    try:
        info = probe.health()
    except QdrantUnavailable:
        raise PreconditionError(
            f"cannot reach Qdrant over gRPC at {endpoint.address} (tried {CONNECT_POLICY.max_attempts} times); "
            "check qdrant.url / qdrant.grpc_port (or QDRANT_URL) and that the server is up"
        ) from None
    finally:
        probe.close()
    log.info("connected to %s at %s, version %s", info.title, endpoint.address, info.version)
    return QdrantGrpc(endpoint, policy_of(cfg)), info


def make_store(cfg, client: QdrantGrpc) -> CheckpointStore:
    if cfg.checkpoint.store == "uri":
        return UriCheckpointStore(cfg.checkpoint.uri)
    return QdrantCheckpointStore(client, cfg.checkpoint.collection)


def text_description(cfg) -> str:
    """What the new vectors are computed from, for fingerprints and reports."""
    if cfg.shortcut.kind != "none":
        return f"vector:{cfg.source.vector_name or ''}"
    if cfg.source.text_dataset is not None:
        s = cfg.source
        return f"parquet:{s.text_dataset}#{s.text_dataset_id_column}->{s.text_dataset_text_column}"
    return text_spec_of(cfg).describe()


def check_source(cfg, client: QdrantGrpc) -> tuple[pb.CollectionInfo, int]:
    src = cfg.source.collection
    info = client.collection_info(src)
    if info is None:
        known = ", ".join(sorted(client.list_collections())[:10]) or "none"
        raise PreconditionError(
            f"source collection {src!r} does not exist on {client.endpoint.address} (collections: {known}); "
            "set source.collection to an existing collection or alias"
        )
    total = client.count(src, exact=True)
    if total == 0 or cfg.shortcut.kind != "none":
        return info, total  # a shortcut reads stored vectors, not text (strategies.decide checks the vector)
    points, _ = client.scroll(src, None, TEXT_PROBE_POINTS, with_payload=cfg.source.text_dataset is None)
    if cfg.source.text_dataset is not None:
        from engine.flow.text import ExternalTexts

        s = cfg.source
        ext = ExternalTexts(s.text_dataset, s.text_dataset_id_column, s.text_dataset_text_column)
        found = ext.lookup([wire.id_value(p.id) for p in points])
        if all(reason is not None and reason.startswith("no row") for _, reason in found.values()):
            raise PreconditionError(
                f"none of {len(points)} sampled point ids of {src!r} has a row in source.text_dataset "
                f"({s.text_dataset}, column {s.text_dataset_id_column!r}); check the dataset and the id column"
            )
        return info, total
    spec = text_spec_of(cfg)
    reasons = [spec.extract(p.payload)[1] for p in points]
    if all(r is not None and r.startswith("missing field") for r in reasons):
        seen = sorted({k for p in points for k in p.payload.keys()})[:12]
        raise PreconditionError(
            f"the text field ({spec.describe()}) is absent from every one of {len(points)} sampled points of "
            f"{src!r} (payload fields seen: {', '.join(seen) or 'none'}); set source.text_field or "
            "source.text_template to where the text lives"
        )
    return info, total


def _target_vector_size(info: pb.CollectionInfo, name: str) -> int | None:
    vc = info.config.params.vectors_config
    if vc.HasField("params"):
        return int(vc.params.size) if name == "" else None
    if vc.HasField("params_map") and name in vc.params_map.map:
        return int(vc.params_map.map[name].size)
    return None


def _metadata_job(info: pb.CollectionInfo) -> str | None:
    meta = values.payload_to_python(info.config.metadata) if hasattr(info.config, "metadata") else {}
    tag = meta.get(METADATA_KEY)
    return tag.get("job_id") if isinstance(tag, dict) else None


def check_target(cfg, client: QdrantGrpc, job_id: str, dim: int | None,
                 decision: "strategies.Decision | None" = None) -> pb.CollectionInfo | None:
    """The existing new-collection target, checked to be this job's and to fit; None when it does not exist yet."""
    name = decision.collection if decision is not None else target_collection(cfg)
    if name == cfg.source.collection:
        raise PreconditionError(
            "target.collection equals source.collection; new_collection never writes the source: "
            "choose a new target.collection name"
        )
    info = client.collection_info(name)
    if info is None:
        return None
    owner = _metadata_job(info)
    if owner is not None and owner != job_id:
        raise PreconditionError(
            f"target collection {name!r} belongs to another reembed job ({owner}); choose another "
            "target.collection, or delete that collection if the other job is abandoned"
        )
    if owner is None and client.count(name) > 0:
        raise PreconditionError(
            f"target collection {name!r} already exists with points and was not created by reembed; "
            "choose a new target.collection name"
        )
    if dim is not None or (decision is not None and decision.sparse_name):
        d = decision or strategies.Decision(cfg.strategy, cfg.strategy, "new_collection", name,
                                            cfg.target.vector_name or "", None)
        strategies.check_new_collection_target(info, d, dim)
    return info


def create_target(cfg, client: QdrantGrpc, source: pb.CollectionInfo, job_id: str, model: dict,
                  server: ServerInfo, decision: "strategies.Decision", schema: "strategies.SourceSchema") -> None:
    name = decision.collection
    dim = model.get("dim")
    req = strategies.new_collection_request(cfg, decision, schema, int(dim) if dim is not None else None)
    if server.version_tuple() >= (1, 16, 0):
        prov = {k: v for k, v in model.items() if isinstance(v, (str, int, float, bool)) or v is None}
        for key, value in values.payload_from_python({METADATA_KEY: {"job_id": job_id, "model": prov}}).items():
            req.metadata[key].CopyFrom(value)
    client.create_collection(req)
    # Payload indexes before ingest (Qdrant bulk guidance): the same fields the source indexes.
    for field_name, schema_ in source.payload_schema.items():
        client.create_field_index(name, field_name, schema_.data_type,
                                  schema_.params if schema_.HasField("params") else None)
    log.info("created target %s (vectors %s, sparse %s, %d payload indexes)", name,
             sorted(req.vectors_config.params_map.map) or [f"(unnamed) {dim}-d"],
             sorted(req.sparse_vectors_config.map), len(source.payload_schema))


def fingerprint_parts(cfg, model: dict, boundaries: list,
                      decision: "strategies.Decision | None" = None) -> dict[str, Any]:
    from engine.embed.base import IDENTITY_KEYS

    parts = {
        "source": cfg.source.collection,
        "target": decision.collection if decision is not None else target_collection(cfg),
        "vector": cfg.target.vector_name or "",
        "strategy": cfg.strategy,
        "text": text_description(cfg),
        "model": {k: model.get(k) for k in IDENTITY_KEYS},
        "boundaries": boundaries,
    }
    if decision is not None and decision.strategy != "new_collection" or model.get("sparse"):
        parts["layout"] = decision.as_dict() if decision is not None else None
        parts["sparse"] = model.get("sparse")
    return parts


def build_runtime(cfg, job_id: str, decision: "strategies.Decision | None" = None,
                  vectorizer: dict | None = None):
    import ray

    from actors.runtime import RayRuntime, RuntimeSpec

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    p = cfg.pipeline
    spec_model = cfg.model_spec()
    if gpus > 0:
        per = float(p.embed_gpus_per_actor)
        n_embed = p.embed_actors or max(1, int(gpus / per))
        gpu_per, cpu_per = per, 1.0
    else:
        n_embed = p.embed_actors or 1
        gpu_per = 0.0
        cpu_per = max(1.0, float(int(cpus // n_embed)))
        if spec_model.get("threads") is None:
            spec_model["threads"] = int(cpu_per)
    if vectorizer is not None and vectorizer.get("dense"):
        vectorizer = {**vectorizer, "dense": spec_model}  # the thread count chosen above
    in_place = decision is not None and decision.layout == "in_place"
    sink = SinkSpec(collection=decision.collection if decision is not None else target_collection(cfg),
                    vector_name=(decision.dense_name if decision is not None else cfg.target.vector_name) or "",
                    sparse_name=(decision.sparse_name or "") if decision is not None else "",
                    mode="update_vectors" if in_place else "insert_only", upload_batch=p.upload_batch,
                    max_request_bytes=p.max_request_bytes, requests_in_flight=p.upload_requests_in_flight)
    s = cfg.source
    dataset = None if s.text_dataset is None else {"path": s.text_dataset, "id_column": s.text_dataset_id_column,
                                                  "text_column": s.text_dataset_text_column}
    spec = RuntimeSpec(
        endpoint=endpoint_of(cfg), policy=policy_of(cfg), source_collection=cfg.source.collection,
        text_field=None if cfg.source.text_template else cfg.source.text_field,
        text_template=cfg.source.text_template, model_spec=spec_model, sink=sink,
        scroll_actors=p.scroll_actors, embed_actors=n_embed, upload_actors=p.upload_actors,
        gpus_per_embed_actor=gpu_per, cpus_per_embed_actor=cpu_per, name_prefix=f"reembed-{job_id}",
        copy_vectors=(decision.copy_vectors or None) if decision is not None else None,
        vectorizer=vectorizer, vector_input=decision.vector_input if decision is not None else None,
        text_dataset=dataset,
    )
    return RayRuntime(spec), n_embed


class Progress:
    """Points done / total, points/s and ETA on stderr: a live bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, total: int, done0: int, enabled: bool = True) -> None:
        self.total, self.done0, self.enabled = total, done0, enabled
        self.t0 = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, state: JobState, stats: RunStats) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        done = state.written + state.skipped
        rate = (done - self.done0) / max(1e-6, now - self.t0)
        left = max(0, self.total - done)
        eta = f"{int(left / rate // 60)}m{int(left / rate % 60):02d}s" if rate > 0 else "?"
        frac = min(1.0, done / self.total) if self.total else 1.0
        line = (f"{done:,}/{self.total:,} points ({frac:.0%}) {rate:,.0f} points/s ETA {eta} "
                f"retries {sum(stats.retries.values())} redone pages {stats.pages_redone}")
        if self.tty:
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r[{bar:<30}] {line}   ")
            sys.stderr.flush()
        else:
            log.info("progress: %s", line)

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def run_job(cfg, *, restart: bool = False, progress: bool = True, catch_up: bool = False,
            on_runtime: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the job; returns the summary. Raises ReembedError subclasses with one-line causes.

    `catch_up` then reconciles the target with source changes made while the backfill ran (engine/migration/catchup.py).
    """
    result = _run_backfill(cfg, restart=restart, progress=progress, on_runtime=on_runtime)
    if catch_up:
        result["catch_up"] = run_catch_up(cfg)
    return result


def run_catch_up(cfg) -> dict[str, Any]:
    from engine.migration.catchup import catch_up
    from engine.embed import build_embedder

    client, _ = connect(cfg)
    try:
        store = make_store(cfg, client)
        state = store.load(job_id_of(cfg))
        if state is None or not state.finished:
            raise PreconditionError("catch-up needs a finished backfill; run `reembed run` to completion first")
        decision = state.info.get("decision") or {}
        if (decision.get("layout", "new_collection") != "new_collection" or decision.get("copy_vectors")
                or decision.get("sparse_vector") or cfg.shortcut.kind != "none" or cfg.source.text_dataset):
            raise PreconditionError(
                "--catch-up reconciles a plain new_collection re-embed only; for this job have the application "
                "write the new vector too, or run the job again with --restart"
            )
        outcome = catch_up(client, cfg.source.collection, target_collection(cfg), cfg.target.vector_name or "",
                           text_spec_of(cfg), build_embedder(cfg.model_spec()))
        if outcome.dead:
            meta = PageMeta(shard=-1, seq=0, start="catch-up", next_offset=None, n_points=0, n_texts=0)
            DeadLetters(cfg.dead_letter.dir, state.job_id).record(-1, outcome.dead, meta)
            state.info["dead_letters"], _ = DeadLetters(cfg.dead_letter.dir, state.job_id).finish()
        state.events.append({"action": "catch_up", "at": time.time(), **outcome.as_dict()})
        store.save(state)
        return outcome.as_dict()
    finally:
        client.close()


def vectorizer_spec(cfg, decision: "strategies.Decision", shortcut: dict | None) -> dict | None:
    """The embedding workers' spec when they do more than run the dense model (engine/embed/vectorize.py)."""
    if shortcut is None and decision.sparse_name is None:
        return None
    sparse = None
    if decision.sparse_name is not None:
        sp = cfg.sparse
        sparse = {"model": sp.model, "language": sp.language, "k": sp.k, "b": sp.b, "avg_len": sp.avg_len,
                  "max_length": sp.max_length, "device": cfg.model.device}
    dense = cfg.model_spec() if decision.dense_name is not None and shortcut is None else None
    return {"dense": dense, "sparse": sparse, "shortcut": shortcut}


def probe(cfg, client: QdrantGrpc, server: ServerInfo
          ) -> tuple[pb.CollectionInfo, int, "strategies.SourceSchema", "strategies.Decision"]:
    """Every check that needs no model: the source, its text, its schema, and the strategy for this server."""
    source_info, total = check_source(cfg, client)
    schema = strategies.SourceSchema.from_info(cfg.source.collection, source_info, total)
    decision = strategies.decide(cfg, server, schema)
    return source_info, total, schema, decision


def _run_backfill(cfg, *, restart: bool, progress: bool, on_runtime) -> dict[str, Any]:
    t0 = time.monotonic()
    client, server = connect(cfg)
    try:
        # The version and the schema decide the road before anything is written (the guide's first rule).
        source_info, total, schema, decision = probe(cfg, client, server)
        log.info("strategy %s (%s layout): %s", decision.strategy, decision.layout, decision.reason)
        if decision.layout == "new_collection" and server.version_tuple() < strategies.UPDATE_MODE_SINCE:
            log.warning("server %s predates update_mode (1.17): writes are plain upserts, so a point the application "
                        "writes into the target during the run may be overwritten by the backfill; keep the "
                        "application writing to the old collection until swap", server.version)
        job_id = job_id_of(cfg)
        if decision.layout == "new_collection":
            check_target(cfg, client, job_id, dim=None, decision=decision)
        store = make_store(cfg, client)
        state = store.load(job_id)
        owned: list[str] = list((state.info.get("created_vectors") or []) if state is not None else [])
        if state is not None and restart:
            # Replaced (not deleted) once every check has passed, so a refused restart leaves the old one intact.
            log.info("--restart: starting job %s over (the target keeps what was written)", job_id)
            state = None
        if state is not None and state.finished:
            log.info("job %s already finished; nothing to do", job_id)
            if state.info.get("index") and not state.info["index"].get("restored"):
                state.info["index"] = strategies.restore_index(client, state.info["index"])
                store.save(state)
            return summary(cfg, job_id, state, total, t0, None, already=True)
        shortcut = None
        if cfg.shortcut.kind != "none":
            from engine.migration import shortcuts

            shortcut = shortcuts.runtime_spec(cfg, client, schema, job_id)
    except BaseException:
        client.close()
        raise

    start_ray()
    runtime, n_embed = build_runtime(cfg, job_id, decision, vectorizer_spec(cfg, decision, shortcut))
    try:
        model = runtime.describe_model()
        dim = int(model["dim"]) if model.get("dim") is not None else None
        parts_of = lambda b: fingerprint_parts(cfg, model, b, decision)  # noqa: E731
        if state is not None:
            check_resume(state, fingerprint(parts_of(state.boundaries)),
                         differences=_diff(state.info.get("parts", {}), parts_of(state.boundaries)))
        if decision.layout == "new_collection":
            target_info = check_target(cfg, client, job_id, dim=dim, decision=decision)
            if target_info is None:
                create_target(cfg, client, source_info, job_id, model, server, decision, schema)
                owned = sorted({*owned, decision.collection})
        if state is None:
            boundaries = planning.plan_boundaries(client, cfg.source.collection, cfg.pipeline.shards)
            parts = parts_of(boundaries)
            state = JobState(job_id=job_id, fingerprint=fingerprint(parts), boundaries=boundaries,
                             shards=planning.shard_states(boundaries),
                             info={"parts": parts, "server": server.version, "model": model,
                                   "config": cfg.redacted(), "decision": decision.as_dict()})
        if decision.layout == "in_place":
            # Recorded before creating, so a crash between the two still lets the resumed job own the vectors.
            wanted = [n for n in (decision.dense_name, decision.sparse_name) if n is not None]
            state.info["created_vectors"] = sorted({*owned, *wanted})
            store.save(state)
            created = strategies.add_vectors_in_place(client, cfg, decision, schema, dim, set(owned))
        else:
            state.info["created_vectors"] = owned
            created = [decision.dense_name] if decision.dense_name else []
        if "index" not in state.info and (decision.layout == "new_collection" and decision.collection in owned
                                          and state.written == 0 or decision.layout == "in_place" and created):
            state.info["index"] = strategies.defer_index(client, cfg, decision, created)
        store.save(state)
        if on_runtime is not None:
            on_runtime(runtime)
        dead = DeadLetters(cfg.dead_letter.dir, job_id)
        bar = Progress(total, state.written + state.skipped, enabled=progress)
        window = cfg.pipeline.pages_in_flight * (n_embed + cfg.pipeline.upload_actors)
        coordinator = Coordinator(state, runtime, store, page_size=cfg.pipeline.scroll_page, window=window,
                                  on_progress=bar, on_dead=dead.record,
                                  save_interval_s=cfg.pipeline.checkpoint_interval_s)
        log.info("job %s: %d points in %s, %d shards (%d done), %d embed / %d upload / %d scroll actors",
                 job_id, total, cfg.source.collection, len(state.shards), sum(s.done for s in state.shards),
                 n_embed, cfg.pipeline.upload_actors, cfg.pipeline.scroll_actors)
        done0 = state.written + state.skipped
        t_pipe = time.monotonic()
        stats = coordinator.run()
        stats.processed = state.written + state.skipped - done0
        stats.pipeline_s = time.monotonic() - t_pipe
        bar.close()
        state.info["index"] = strategies.restore_index(client, state.info.get("index"))
        state.finished = True
        state.info["dead_letters"], _ = dead.finish()
        state.info["runs"] = record_run(state.info.get("runs"), stats, runtime, window)
        store.save(state)
    finally:
        runtime.shutdown()
        client.close()
    result = summary(cfg, job_id, state, total, t0, stats)
    result["report"] = write_report_quietly(cfg, state)  # report.json + report.html in the run directory
    return result


def _diff(before: dict, now: dict) -> str:
    keys = [k for k in now if before.get(k) != now.get(k)]
    return ", ".join(f"{k} changed" for k in keys)


def summary(cfg, job_id: str, state: JobState, total: int, t0: float, stats: RunStats | None,
            already: bool = False) -> dict[str, Any]:
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {
        "job_id": job_id,
        "strategy": (state.info.get("decision") or {}).get("strategy", cfg.strategy),
        "layout": (state.info.get("decision") or {}).get("layout", "new_collection"),
        "source": cfg.source.collection,
        "target": (state.info.get("decision") or {}).get("collection", target_collection(cfg)),
        "index": state.info.get("index"),
        "points_total": total,
        "points_written": state.written,
        "points_skipped": state.skipped,
        "elapsed_s": round(elapsed, 3),
        "points_per_s": 0.0,
        "already_complete": already,
        "dead_letters": state.info.get("dead_letters"),
    }
    if stats is not None:
        # End to end (start-up and model load included) and the pipeline alone, for this run's points only.
        out["points_per_s"] = round(stats.processed / elapsed, 1) if elapsed > 0 else 0.0
        out["pipeline_points_per_s"] = round(stats.processed / stats.pipeline_s, 1) if stats.pipeline_s else 0.0
        out.update(points_this_run=stats.processed, pages_written=stats.pages_written, pages_redone=stats.pages_redone,
                   points_redone=stats.points_redone, retries=stats.retries, write_requests=stats.write_requests)
    return out


def dumps(summary_: dict[str, Any]) -> str:
    return json.dumps(summary_, sort_keys=True, default=str)
