"""`reembed verify` as a job: the config turned into what the verifier needs (the run's decision, model and text
source), the checks run, the result stored in the job's checkpoint (which the swap and cleanup gates read) and
written as verify.json and the report in the run directory."""

from __future__ import annotations

import json
import logging
import time

from engine.app import wiring
from engine.config import JobConfig
from engine.embed import build_embedder
from engine.embed.base import identity
from engine.errors import ConfigError, PreconditionError
from engine.flow.checkpoint import CheckpointStore
from engine.flow.state import CheckSummary, JobState, VerifySummary
from engine.qdrant.client import QdrantGrpc
from engine.verify.report import write_report
from engine.verify.verifier import Verifier, VerifyResult, load_eval

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


def run_verify(cfg: JobConfig, *, sample: int | None = None, eval_file: str | None = None,
               write_reports: bool = True) -> VerifyResult:
    """Verify the job of `cfg`, store the result in its checkpoint and write verify.json and the report.

    `sample`: points checked (default verify.sample; at least the collection size checks every point).
    `eval_file`: labelled queries (default verify.eval_file). Raises ReembedError subclasses for bad input."""
    t0 = time.monotonic()
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
    try:
        job_id = wiring.job_id_of(cfg)
        store = wiring.make_store(cfg, client)
        state = load_finished_state(store, job_id, "verify")
        # What the run wrote, as its strategy decided (engine.migration.strategies).
        decision = state.decision
        source = cfg.source.collection
        target = decision.collection if decision is not None else wiring.target_collection(cfg)
        target_vector = decision.dense_name if decision is not None else (cfg.target.vector_name or "")
        not_from_text = None
        if decision is not None and decision.vector_input is not None:
            not_from_text = (f"the new vectors are computed from the stored vector {decision.vector_input!r} "
                             "(a shortcut), not from the text")
        embedder = None
        if target_vector is not None and not_from_text is None:
            embedder = build_embedder(cfg.model_spec())
            _check_models(cfg, state, embedder)
        old_embedder = None
        if v.old_model:
            old_embedder = build_embedder({"name": v.old_model})
            _check_old_dim(client, source, cfg.source.vector_name or "", old_embedder, v.old_model)
        verifier = Verifier(
            client, source=source, target=target, source_vector=cfg.source.vector_name or "",
            target_vector=target_vector, text=wiring.text_spec_of(cfg).open(), embedder=embedder,
            state=state, sample=sample, min_cosine=v.min_cosine, min_hnsw_recall=v.min_hnsw_recall, k=v.k,
            queries=v.queries, old_embedder=old_embedder, eval_queries=eval_queries, max_ndcg_drop=v.max_ndcg_drop,
            dead_letter_path=state.dead_letters, dim=state.model_dim, not_from_text=not_from_text,
        )
        checks, extra = verifier.run()
        result = VerifyResult(
            job_id=job_id, passed=not any(c.failed for c in checks), at=time.time(), source=source, target=target,
            checked_points=extra["checked"], full=extra["full"], checks=checks, shards=extra["shards"],
            index=extra["index"], quality=extra["quality"], dead_letters=extra["dead_letters"],
            provenance=extra["provenance"], elapsed_s=time.monotonic() - t0,
        )
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
    finally:
        client.close()


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
