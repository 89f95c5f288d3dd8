"""`reembed run --catch-up`: after the backfill, reconcile the target with what the application changed in the
source meanwhile — on the lanes, per shard of the job's plan, checkpointed like the backfill (an interrupted
catch-up resumes; a finished one starts a fresh pass when asked again)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from actors.pool import RayLanePool
from actors.start import start_ray
from engine import tunables
from engine.app import wiring
from engine.app.lanes import lane_options, lane_spec, vectorizer_spec
from engine.app.preconditions import count_points, range_splitter
from engine.config import JobConfig
from engine.errors import PreconditionError
from engine.flow.checkpoint import fingerprint
from engine.flow.coordinator import Coordinator, CoordinatorOptions
from engine.flow.deadletters import DeadLetters
from engine.flow.state import JobState, ShardState
from engine.migration.catchup import SCAN_PAGE, TALLY_KEYS, CatchUpSpec
from engine.qdrant.strict import StrictMode

log = logging.getLogger(__name__)


def catch_up_id(job_id: str) -> str:
    return f"{job_id}.catch-up"


def run_catch_up(cfg: JobConfig) -> dict[str, Any]:
    client, _ = wiring.connect(cfg)
    try:
        store = wiring.make_store(cfg, client)
        job_id = wiring.job_id_of(cfg)
        state = store.load(job_id)
        if state is None or not state.finished:
            raise PreconditionError("catch-up needs a finished backfill; run `reembed run` to completion first")
        d = state.decision
        if (d is None or d.layout != "new_collection" or d.copy_vectors or d.sparse_name or d.multi_name
                or cfg.shortcut.kind != "none"):
            raise PreconditionError(
                "--catch-up reconciles a plain new_collection re-embed only; for this job have the application "
                "write the new vector too, or run the job again with --restart"
            )
        source_info = client.collection_info(cfg.source.collection)
        if source_info is None:
            raise PreconditionError(f"source collection {cfg.source.collection!r} no longer exists, so there is "
                                    "nothing to catch up from; point source.collection at the live collection")
        target_info = client.collection_info(d.collection)
        spec = CatchUpSpec(source=cfg.source.collection, target=d.collection, text=wiring.text_spec_of(cfg),
                           source_page=StrictMode.from_info(source_info).page_limit(SCAN_PAGE),
                           target_page=StrictMode.from_info(target_info).page_limit(SCAN_PAGE))
        # Strict mode as the backfill keeps it: no exact count where it is refused, a split sample and pages inside
        # the source's query limit, writes inside the target's batch limits.
        total = count_points(client, cfg.source.collection, source_info)
        pass_state = store.load(catch_up_id(job_id))
        if pass_state is None or pass_state.finished:
            shards = [ShardState(shard=i, lo=s.lo, hi=s.hi, cursor=s.lo, shard_key=s.shard_key)
                      for i, s in enumerate(state.shards)]
            parts = {"catch_up_of": state.fingerprint, "started": time.time()}
            pass_state = JobState(job_id=catch_up_id(job_id), fingerprint=fingerprint(parts), boundaries=[],
                                  shards=shards, parts=parts, server=state.server, decision=d)
            store.save(pass_state)
        start_ray()
        root = wiring.runs_root(cfg)
        lanes = replace(lane_spec(cfg, job_id, d, vectorizer_spec(cfg, d, None), root, source=source_info,
                                  target=target_info), source=spec)
        pool = RayLanePool(lanes, lane_options(cfg), name_prefix=f"reembed-{job_id}-cu",
                           max_lanes=cfg.pipeline.embed_actors)
        try:
            pool.wait_first(cfg.pipeline.lane_start_timeout_s)
            stats = Coordinator(
                pass_state, pool, store,
                splitter=range_splitter(client, cfg.source.collection, source_info, total),
                options=CoordinatorOptions(save_interval_s=cfg.pipeline.checkpoint_interval_s,
                                           streams_per_lane=cfg.pipeline.streams_per_lane,
                                           steal_min_points=tunables.STEAL_MIN_PAGES * cfg.pipeline.scroll_page,
                                           lane_wait_s=cfg.pipeline.lane_start_timeout_s)).run()
        finally:
            pool.close()
        pass_state.finished = True
        store.save(pass_state)
        outcome: dict[str, Any] = {k: stats.tally.get(k, 0) for k in TALLY_KEYS}
        outcome["dead_letters"] = stats.dead_count
        state = store.load(job_id) or state
        if stats.dead_count:
            state.dead_letters, _ = DeadLetters(root, job_id).finish()
        state.add_event("catch_up", **outcome)
        store.save(state)
        log.info("catch-up %s -> %s: %s", cfg.source.collection, d.collection, outcome)
        return outcome
    finally:
        client.close()
