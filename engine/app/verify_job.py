"""`reembed verify` as a job: the config and the run's checkpoint turned into the narrow `VerifyContext` the verify
room takes (engine/verify/context.py), the checks run (engine/verify/runner.py), the result stored in the job's
checkpoint (which the swap and cleanup gates read) and written as verify.json and the report in the run directory.

At cluster scale (Ray initialised, or RAY_ADDRESS set): count parity runs as one Ray task per shard
(actors/tasks.py), and on a cluster with GPUs the sampled points are re-embedded by a remote embedder on a GPU
(actors/remote_embedder.py). Otherwise: a few threads, and the in-process embedder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import ExitStack
from typing import Any

from engine.app import wiring
from engine.config import JobConfig
from engine.embed import build_embedder
from engine.embed.base import identity
from engine.errors import ConfigError, PreconditionError
from engine.flow.checkpoint import CheckpointStore
from engine.flow.state import CheckSummary, Decision, JobState, VerifySummary
from engine.qdrant.client import QdrantGrpc
from engine.verify.context import (
    GrpcClients,
    HybridPlan,
    MapShards,
    VectorNames,
    VerifyContext,
    VerifyOptions,
    thread_map,
)
from engine.verify.evalset import EvalQuery, load_eval
from engine.verify.report import write_report
from engine.verify.result import VerifyResult
from engine.verify.runner import run_checks

log = logging.getLogger(__name__)


def _check_models(cfg: JobConfig, state: JobState, embedder) -> None:
    if not state.model:
        return
    now = identity(embedder.describe())
    before = identity(state.model)
    diff = [k for k in now if now[k] != before.get(k)]
    if diff:
        raise PreconditionError(
            f"the model in the config ({cfg.model.name}) differs from the one the run used "
            f"({state.model.get('name')}) in {', '.join(diff)}; verify with the run's model settings"
        )


def load_finished_state(store: CheckpointStore, job_id: str, what: str) -> JobState:
    state = store.load(job_id)
    if state is None or not state.finished:
        raise PreconditionError(
            f"{what} needs a finished run: job {job_id} has {'no checkpoint' if state is None else 'not finished'} "
            f"({store.describe()}); run `reembed run --config ...` to completion first"
        )
    return state


def summary_of(result: VerifyResult) -> VerifySummary:
    """What the checkpoint keeps of a verify: enough for the gates, `status` and a report written elsewhere."""
    return VerifySummary(
        passed=result.passed, at=result.at, checked_points=result.checked_points, full=result.full,
        checks=[CheckSummary(c.name, c.status, c.detail) for c in result.checks],
        failed=[c.name for c in result.failures()], report=result.report, elapsed_s=round(result.elapsed_s, 3))


def record(store: CheckpointStore, job_id: str, result: VerifyResult) -> JobState:
    """Store the result as the job's latest verify (re-reading the state so concurrent events are kept)."""
    state = store.load(job_id)
    if state is None:
        raise PreconditionError(f"the checkpoint of job {job_id} disappeared during verify ({store.describe()})")
    state.record_verify(summary_of(result))
    store.save(state)
    return state


# --- the context ------------------------------------------------------------------------------------------------

def vector_names(cfg: JobConfig, decision: Decision | None) -> VectorNames:
    """What the run wrote, as its strategy decided (engine.migration.strategies)."""
    source = cfg.source.vector_name or ""
    if decision is None:
        return VectorNames(source=source, dense=cfg.target.vector_name or "")
    copied = dict(decision.copy_vectors) if decision.layout == "new_collection" else {}
    return VectorNames(source=source, dense=decision.dense_name, sparse=decision.sparse_name,
                       multi=decision.multi_name, copied=copied)


def _on_ray() -> bool:
    """Whether this verify runs on a Ray cluster: Ray already initialised here, or RAY_ADDRESS names one (joined)."""
    ray = sys.modules.get("ray")  # not imported: not initialised, and a local verify need not pay for importing it
    if not os.environ.get("RAY_ADDRESS") and (ray is None or not ray.is_initialized()):
        return False
    from actors.start import start_ray

    start_ray()
    return True


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _map_shards(on_ray: bool) -> MapShards:
    if not on_ray:
        return thread_map
    from actors.tasks import ray_map

    return ray_map


def _embedders(cfg: JobConfig, on_ray: bool, job_id: str, stack: ExitStack) -> tuple[Any, Any]:
    """(the embedder that recomputes the sample, the one that embeds queries; None: the first)."""
    if on_ray and _cluster_gpus() >= 1:
        from actors.remote_embedder import RemoteEmbedder

        remote = RemoteEmbedder({"dense": cfg.model_spec(), "sparse": None, "shortcut": None}, job_id)
        stack.callback(remote.close)
        log.info("verify re-embeds its sample on a cluster GPU")
        # A late-interaction model encodes queries differently (markers, [MASK] padding); the worker only embeds
        # documents, so the few queries use an in-process copy of the model.
        queries = build_embedder(cfg.model_spec()) if cfg.model.kind == "late_interaction" else None
        return remote, queries
    return build_embedder(cfg.model_spec()), None


def _sparse_spec(cfg: JobConfig) -> dict:
    sp = cfg.sparse
    return {"model": sp.model, "language": sp.language, "k": sp.k, "b": sp.b, "avg_len": sp.avg_len,
            "max_length": sp.max_length, "device": cfg.model.device}


def _hybrid_plan(cfg: JobConfig, decision: Decision | None, names: VectorNames, embedder: Any,
                 old_embedder: Any, eval_queries: list[EvalQuery] | None) -> HybridPlan | None:
    """Which dense vector sits beside the new sparse one, and which model embeds queries for it."""
    if decision is None or decision.sparse_name is None or not eval_queries:
        return None
    if names.dense is not None and embedder is not None and names.multi is None:
        dense, queries, origin = names.dense, embedder, "new"
    elif decision.layout == "in_place":
        dense, queries, origin = names.source, old_embedder, "kept"
    elif names.source in names.copied:
        dense, queries, origin = names.copied[names.source], old_embedder, "copied"
    else:
        log.info("hybrid quality skipped: the target has no dense vector beside %r", decision.sparse_name)
        return None
    from engine.embed.sparse import build_sparse
    from engine.verify.hybrid import SparseQueries

    return HybridPlan(dense=dense, dense_queries=queries, sparse=decision.sparse_name,
                      sparse_queries=SparseQueries(build_sparse(_sparse_spec(cfg))), dense_origin=origin)


def run_verify(cfg: JobConfig, *, sample: int | None = None, eval_file: str | None = None,
               write_reports: bool = True) -> VerifyResult:
    """Verify the job of `cfg`, store the result in its checkpoint and write verify.json and the report.

    `sample`: points checked (default verify.sample; at least the collection size checks every point).
    `eval_file`: labelled queries (default verify.eval_file). Raises ReembedError subclasses for bad input."""
    v = cfg.verify
    sample = v.sample if sample is None else sample
    if sample < 1:
        raise ConfigError(f"--sample {sample} must be at least 1 (a number at least the collection size checks "
                          "every point)")
    eval_path = eval_file or v.eval_file
    eval_queries = load_eval(eval_path) if eval_path else None
    if v.max_ndcg_drop is not None and (eval_queries is None or v.old_model is None):
        raise ConfigError("verify.max_ndcg_drop compares old and new labelled nDCG; it needs an eval file "
                          "(--eval or verify.eval_file) and verify.old_model, or set it to null")
    client, _server = wiring.connect(cfg)
    with ExitStack() as stack:
        stack.callback(client.close)
        job_id = wiring.job_id_of(cfg)
        store = wiring.make_store(cfg, client)
        state = load_finished_state(store, job_id, "verify")
        decision = state.decision
        source = cfg.source.collection
        target = decision.collection if decision is not None else wiring.target_collection(cfg)
        names = vector_names(cfg, decision)
        not_from_text = None
        if decision is not None and decision.vector_input is not None:
            not_from_text = (f"the new vectors are computed from the stored vector {decision.vector_input!r} "
                             "(a shortcut), not from the text")
        on_ray = _on_ray()
        embedder = query_embedder = None
        if names.new is not None and not_from_text is None:
            embedder, query_embedder = _embedders(cfg, on_ray, job_id, stack)
            _check_models(cfg, state, embedder)
        old_embedder = None
        if v.old_model:
            old_embedder = build_embedder({"name": v.old_model})
            _check_old_dim(client, source, cfg.source.vector_name or "", old_embedder, v.old_model)
        ctx = VerifyContext(
            clients=GrpcClients(wiring.endpoint_of(cfg), wiring.policy_of(cfg)), source=source, target=target,
            vectors=names, text=wiring.text_spec_of(cfg).open(), shards=state.shards,
            options=VerifyOptions(sample=sample, min_cosine=v.min_cosine, min_hnsw_recall=v.min_hnsw_recall, k=v.k,
                                  queries=v.queries, max_ndcg_drop=v.max_ndcg_drop),
            embedder=embedder, query_embedder=query_embedder, old_embedder=old_embedder, dim=state.model_dim,
            not_from_text=not_from_text, eval_queries=eval_queries,
            hybrid=_hybrid_plan(cfg, decision, names, query_embedder or embedder, old_embedder, eval_queries),
            dead_letter_path=state.dead_letters, job_id=job_id, model=dict(state.model),
            map_shards=_map_shards(on_ray),
        )
        result = run_checks(ctx)
        out_dir = wiring.run_dir(cfg, job_id)
        if write_reports:
            result.report = out_dir.display("report.html")
        state = record(store, job_id, result)
        if write_reports:
            details = result.to_dict()
            out_dir.write_text("verify.json", json.dumps(details, indent=1, sort_keys=True))
            result.report = write_report(cfg, state, out_dir, verify=details)
        level = logging.INFO if result.passed else logging.WARNING
        log.log(level, "verify of job %s %s in %.1fs (%d points checked%s)%s", job_id,
                "passed" if result.passed else "FAILED", result.elapsed_s, result.checked_points,
                ", all" if result.full else "",
                "" if result.passed else ": " + "; ".join(c.name for c in result.failures()))
        return result


def _check_old_dim(client: QdrantGrpc, source: str, vector: str, old_embedder, name: str) -> None:
    info = client.collection_info(source)
    if info is None:
        raise PreconditionError(f"source collection {source!r} does not exist")
    vc = info.config.params.vectors_config
    if vc.HasField("params"):
        dim = int(vc.params.size) if not vector else None
    else:
        dim = int(vc.params_map.map[vector].size) if vector in vc.params_map.map else None
    if dim is None:
        raise PreconditionError(f"source {source!r} has no vector {vector or '(unnamed)'!r} for verify.old_model "
                                "to compare with; set source.vector_name")
    if dim != old_embedder.dim:
        raise PreconditionError(f"verify.old_model {name} makes {old_embedder.dim}-d vectors but the source vector "
                                f"{vector or '(unnamed)'!r} is {dim}-d; set verify.old_model to the model that "
                                "made the source vectors")
