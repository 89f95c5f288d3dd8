"""One migration job from config to summary: preconditions first (nothing is written until every check passed),
then the lanes, the target, the shard plan, the coordinator, the index, and the summary.

Order of checks: server reachable and its version; source exists; its text is where the config says; the strategy
fits the server and the schema; the target, if it exists, is this job's and fits the model; the model loads on the
lanes; an existing checkpoint matches. The lanes are released before the index is rebuilt, so GPUs are not held
while the server builds HNSW.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from qdrant_client import grpc as pb

from actors.metrics import StageSampler, metrics
from actors.pool import RayLanePool
from actors.start import start_ray, wait_for_gpus
from engine import tunables
from engine.app import doctor, wiring
from engine.app.lanes import lane_options, lane_spec, vectorizer_spec
from engine.app.preconditions import Probe, probe, range_splitter
from engine.app.progress import Progress
from engine.config import JobConfig
from engine.embed.base import IDENTITY_KEYS
from engine.errors import QdrantRequestError
from engine.flow import shards as planning
from engine.flow.checkpoint import CheckpointStore, check_resume, fingerprint
from engine.flow.coordinator import Coordinator, CoordinatorOptions, RunStats
from engine.flow.deadletters import DeadLetters
from engine.flow.state import Decision, JobState
from engine.migration import strategies
from engine.migration.target import check_target, create_target
from engine.qdrant.client import QdrantGrpc, ServerInfo
from engine.qdrant.pacing import SearchProbe
from engine.qdrant.points import stored_vector
from engine.qdrant.strict import StrictMode
from engine.verify.report import record_run, write_report_quietly

log = logging.getLogger(__name__)



def fingerprint_parts(cfg: JobConfig, model: dict, boundaries: list, decision: Decision) -> dict[str, Any]:
    """Everything that decides which points a resumed job may skip: a resume with another source, target, model,
    text or plan would mix vectors or miss points, so it is refused."""
    parts: dict[str, Any] = {
        "source": cfg.source.collection,
        "target": decision.collection,
        "vector": cfg.target.vector_name or "",
        "strategy": cfg.strategy,
        "text": wiring.text_description(cfg),
        "model": {k: model.get(k) for k in IDENTITY_KEYS},
        "boundaries": boundaries,
    }
    if decision.strategy != "new_collection" or model.get("sparse"):
        parts["layout"] = _v1_decision(decision)
        parts["sparse"] = model.get("sparse")
    return parts


def _v1_decision(decision: Decision) -> dict[str, Any]:
    """The decision as version-1 checkpoints spelled it inside their fingerprints (kept so they still resume)."""
    return {"requested": decision.requested, "strategy": decision.strategy, "layout": decision.layout,
            "collection": decision.collection, "dense_vector": decision.dense_name,
            "sparse_vector": decision.sparse_name, "copy_vectors": dict(decision.copy_vectors),
            "vector_input": decision.vector_input, "reason": decision.reason}


def run_job(cfg: JobConfig, *, restart: bool = False, progress: bool = True, catch_up: bool = False,
            on_pool: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the job; returns the summary. Raises ReembedError subclasses with one-line causes.

    `catch_up` then reconciles the target with source changes made while the backfill ran."""
    result = _run_backfill(cfg, restart=restart, progress=progress, on_pool=on_pool)
    if catch_up:
        from engine.app.catchup_job import run_catch_up

        result["catch_up"] = run_catch_up(cfg)
    return result


def _run_backfill(cfg: JobConfig, *, restart: bool, progress: bool,
                  on_pool: Callable[[Any], None] | None) -> dict[str, Any]:
    t0 = time.monotonic()
    client, server = wiring.connect(cfg)
    try:
        # The version and the schema decide the road before anything is written (the guide's first rule).
        found = probe(cfg, client, server)
        # The cheap part of `reembed doctor`: the store and the run directory writable, before anything is written.
        doctor.require(doctor.preflight(cfg, client, server, found=found))
        decision = found.decision
        log.info("strategy %s (%s layout): %s", decision.strategy, decision.layout, decision.reason)
        if decision.layout == "new_collection" and server.version_tuple() < strategies.UPDATE_MODE_SINCE:
            log.warning("server %s predates update_mode (1.17): writes are plain upserts, so a point the application "
                        "writes into the target during the run may be overwritten by the backfill; keep the "
                        "application writing to the old collection until swap", server.version)
        job_id = wiring.job_id_of(cfg)
        if decision.layout == "new_collection":
            check_target(client, decision, cfg.source.collection, job_id, dim=None)
        store = wiring.make_store(cfg, client)
        state = store.load(job_id)
        owned = list(state.created_vectors) if state is not None else []
        if state is not None and restart:
            # Replaced (not deleted) once every check has passed, so a refused restart leaves the old one intact.
            log.info("--restart: starting job %s over (the target keeps what was written)", job_id)
            state = None
        if state is not None and state.finished:
            log.info("job %s already finished; nothing to do", job_id)
            if state.index is not None and not state.index.restored:
                state.index = strategies.restore_index(client, state.index)
                store.save(state)
            return summary(cfg, state, found.total, t0, None, already=True)
        shortcut = None
        if cfg.shortcut.kind != "none":
            from engine.migration import shortcuts

            shortcut = shortcuts.runtime_spec(cfg, client, found.schema, wiring.text_spec_of(cfg).open(),
                                              wiring.map_file(cfg, job_id))
        start_ray()
        if cfg.pipeline.min_gpus:
            wait_for_gpus(cfg.pipeline.min_gpus, cfg.pipeline.resource_wait_s)
        root = wiring.runs_root(cfg)
        # The target's strict mode: the source's own in place, the one carried over to a new collection.
        strict_target = found.source_info if cfg.target.layout.strict_mode == "keep" or \
            decision.layout == "in_place" else None
        pool = RayLanePool(lane_spec(cfg, job_id, decision, vectorizer_spec(cfg, decision, shortcut), root,
                                     source=found.source_info, target=strict_target),
                           lane_options(cfg), name_prefix=f"reembed-{job_id}", max_lanes=cfg.pipeline.embed_actors,
                           max_points_per_s=cfg.pipeline.max_points_per_s)
    except BaseException:
        client.close()
        raise
    try:
        try:
            pool.wait_first(cfg.pipeline.lane_start_timeout_s)
            model = pool.model or {}
            state, owned = _prepare(cfg, client, server, store, found, state, owned, model, job_id)
            if on_pool is not None:
                on_pool(pool)
            dead = DeadLetters(root, job_id)
            bar = Progress(found.total, state.written + state.skipped, enabled=progress)
            metrics().set_job(job_id)
            sampler = StageSampler(("scroll", "process"))  # pages in flight per stage: gauges and the report's plot

            prober = search_probe(cfg, client, found.schema)
            probed = [0.0]

            def on_progress(state_: JobState, stats_: RunStats) -> None:
                sampler(scroll=sum(r for r, _ in stats_.in_flight.values()),
                        process=sum(p for _, p in stats_.in_flight.values()))
                if prober is not None and time.monotonic() - probed[0] >= tunables.SEARCH_PROBE_INTERVAL_S:
                    prober.measure()
                    pool.observe_search_p99(prober.p99_ms())
                    probed[0] = time.monotonic()
                bar(state_, stats_)

            coordinator = Coordinator(
                state, pool, store,
                splitter=range_splitter(client, cfg.source.collection, found.source_info, found.total),
                on_progress=on_progress, options=CoordinatorOptions(
                    save_interval_s=cfg.pipeline.checkpoint_interval_s,
                    streams_per_lane=cfg.pipeline.streams_per_lane,
                    steal_min_points=tunables.STEAL_MIN_PAGES * cfg.pipeline.scroll_page,
                    lane_wait_s=cfg.pipeline.lane_start_timeout_s))
            log.info("job %s: %d points in %s, %d shards (%d done); lanes as nodes offer them", job_id, found.total,
                     cfg.source.collection, len(state.shards), sum(s.done for s in state.shards))
            done0 = state.written + state.skipped
            t_pipe = time.monotonic()
            stats = coordinator.run()
            stats.processed = state.written + state.skipped - done0
            stats.pipeline_s = time.monotonic() - t_pipe
            bar.close()
        finally:
            # GPUs go back before the index build, which can take hours at 100M points.
            pool.close()
        state.index = strategies.restore_index(client, state.index)
        state.finished = True
        state.dead_letters, _ = dead.finish()
        state.runs = record_run(state.runs, stats, sampler.series())
        store.save(state)
    finally:
        client.close()
    result = summary(cfg, state, found.total, t0, stats)
    # report.json + report.html in the run directory
    result["report"] = write_report_quietly(cfg, state, wiring.run_dir(cfg, state.job_id))
    return result


def _shards_per_key(client: QdrantGrpc, collection: str) -> dict[Any, int] | None:
    """The source's shards per key, or None (each key then gets the collection's shard_number) where the server
    will not tell: cluster info can be closed to a collection-scoped API key."""
    try:
        return client.shards_per_key(collection)
    except QdrantRequestError as exc:
        log.warning("cannot read the shards per key of %r (%s); each target key gets the collection's shard_number",
                    collection, exc)
        return None


def _prepare(cfg: JobConfig, client: QdrantGrpc, server: ServerInfo, store: CheckpointStore, found: Probe,
             state: JobState | None, owned: list[str], model: dict, job_id: str) -> tuple[JobState, list[str]]:
    """With the model known: the resume check, the target, the plan, the vectors created in place, the index
    deferral. Returns the state, saved."""
    decision = found.decision
    dim = int(model["dim"]) if model.get("dim") is not None else None
    if state is not None:
        now = fingerprint_parts(cfg, model, state.boundaries, decision)
        check_resume(state, fingerprint(now), differences=_diff(state.parts, now))
    keys = client.list_shard_keys(cfg.source.collection) if strategies.is_custom_sharded(found.source_info) else None
    if decision.layout == "new_collection":
        if check_target(client, decision, cfg.source.collection, job_id, dim=dim) is None:
            request = strategies.new_collection_request(cfg, decision, found.schema, dim)
            create_target(client, request, found.source_info, job_id, model, server)
            owned = sorted({*owned, decision.collection})
            widths = _shards_per_key(client, cfg.source.collection) if keys else None
            for key_request in strategies.shard_keys_request(decision.collection, keys or [], shards_by_key=widths):
                client.create_shard_key(key_request)  # before any write: each write names its key
    if state is None:
        sample_limit = StrictMode.from_info(found.source_info).sample_limit(10**9)
        if keys is not None:
            boundaries: list[Any] = planning.plan_keyed(client, cfg.source.collection, keys, cfg.pipeline.shards,
                                                        sample_limit=sample_limit)
        else:
            boundaries = planning.plan_boundaries(client, cfg.source.collection, cfg.pipeline.shards,
                                                  sample_limit=sample_limit)
        parts = fingerprint_parts(cfg, model, boundaries, decision)
        state = JobState(job_id=job_id, fingerprint=fingerprint(parts), boundaries=boundaries,
                         shards=planning.shard_states(boundaries), parts=parts, server=server.version,
                         model=model, config=cfg.redacted(), decision=decision)
    if decision.layout == "in_place":
        # Recorded before creating, so a crash between the two still lets the resumed job own the vectors.
        state.created_vectors = sorted({*owned, *decision.new_vectors})
        store.save(state)
        created = strategies.add_vectors_in_place(client, cfg, decision, found.schema, dim, set(owned))
    else:
        state.created_vectors = owned
        created = [decision.dense_name] if decision.dense_name else []
    fresh_target = decision.layout == "new_collection" and decision.collection in owned and state.written == 0
    if state.index is None and (fresh_target or decision.layout == "in_place" and created):
        state.index = strategies.defer_index(client, cfg, decision, created)
    store.save(state)
    return state, owned


def search_probe(cfg: JobConfig, client: QdrantGrpc, schema: strategies.SourceSchema) -> SearchProbe | None:
    """With pipeline.protect_search_p99_ms, a probe timing a top-10 search on the source (with one of its stored
    vectors: a realistic query) that the writers back off on."""
    if cfg.pipeline.protect_search_p99_ms is None or not schema.dense:
        return None
    name = cfg.source.vector_name or ("" if "" in schema.dense else sorted(schema.dense)[0])
    points, _ = client.scroll(cfg.source.collection, None, 1, with_payload=False,
                              with_vectors=True if name == "" else pb.WithVectorsSelector(
                                  include=pb.VectorsSelector(names=[name])))
    vector = stored_vector(points[0], name) if points else None
    if vector is None:
        log.warning("pipeline.protect_search_p99_ms is set but no stored %r vector was found to probe with; the "
                    "writers pace on the server's refusals and latency alone", name or "(unnamed)")
        return None
    return SearchProbe.for_collection(client, cfg.source.collection, vector.tolist(), using=name or None)


def _diff(before: dict, now: dict) -> str:
    keys = [k for k in now if before.get(k) != now.get(k)]
    return ", ".join(f"{k} changed" for k in keys)


def summary(cfg: JobConfig, state: JobState, total: int, t0: float, stats: RunStats | None,
            already: bool = False) -> dict[str, Any]:
    elapsed = time.monotonic() - t0
    d = state.decision
    out: dict[str, Any] = {
        "job_id": state.job_id,
        "strategy": d.strategy if d is not None else cfg.strategy,
        "layout": d.layout if d is not None else "new_collection",
        "source": cfg.source.collection,
        "target": d.collection if d is not None else wiring.target_collection(cfg),
        "index": state.index.to_dict() if state.index is not None else None,
        "points_total": total,
        "points_written": state.written,
        "points_skipped": state.skipped,
        "elapsed_s": round(elapsed, 3),
        "points_per_s": 0.0,
        "already_complete": already,
        "dead_letters": state.dead_letters,
        "run_dir": str(wiring.run_dir(cfg, state.job_id)),
    }
    if stats is not None:
        # End to end (start-up and model load included) and the pipeline alone, for this run's points only.
        out["points_per_s"] = round(stats.processed / elapsed, 1) if elapsed > 0 else 0.0
        out["pipeline_points_per_s"] = round(stats.processed / stats.pipeline_s, 1) if stats.pipeline_s else 0.0
        out.update(points_this_run=stats.processed, pages_written=stats.pages_written, pages_redone=stats.pages_redone,
                   points_redone=stats.points_redone, retries=stats.retries, write_requests=stats.write_requests,
                   splits=stats.splits, leases_returned=stats.leases_returned,
                   driver_cpu_s=round(stats.driver_cpu_s, 3),
                   lanes=[{"lane": r.lane, "node_id": r.node_id, "gpus": r.gpus, "points": r.points,
                           "pages": r.pages, "pages_redone": r.pages_redone, "points_redone": r.points_redone}
                          for r in stats.lanes.values()])
    return out


def dumps(summary_: dict[str, Any]) -> str:
    return json.dumps(summary_, sort_keys=True, default=str)
