"""The lanes' share of the config, turned once into the narrow records the Ray pool and its lanes take."""

from __future__ import annotations

from dataclasses import replace

from qdrant_client import grpc as pb

from actors.lane import LaneSpec
from actors.sizing import LaneOptions
from engine import tunables
from engine.app import wiring
from engine.config import JobConfig
from engine.flow.lane import RedoPolicy
from engine.flow.sink import SinkSpec
from engine.flow.source import SourceSpec
from engine.flow.state import Decision
from engine.qdrant.pacing import PacingSettings
from engine.qdrant.strict import StrictMode


def vectorizer_spec(cfg: JobConfig, decision: Decision, shortcut: dict | None) -> dict:
    """The embedding actors' spec (engine/embed/vectorize.py): the dense model, a sparse encoder, a shortcut."""
    sparse = None
    if decision.sparse_name is not None:
        sp = cfg.sparse
        sparse = {"model": sp.model, "language": sp.language, "k": sp.k, "b": sp.b, "avg_len": sp.avg_len,
                  "max_length": sp.max_length, "device": cfg.model.device}
    dense = cfg.model_spec() if decision.dense_name is not None and shortcut is None else None
    return {"dense": dense, "sparse": sparse, "shortcut": shortcut}


def sink_spec(cfg: JobConfig, decision: Decision, target: StrictMode) -> SinkSpec:
    p = cfg.pipeline
    # The job's points/s cap reaches each writer as its share, set by the pool as lanes come and go.
    pacing = replace(PacingSettings.from_pipeline(p), max_points_per_s=None)
    return SinkSpec(collection=decision.collection, vector_name=decision.dense_name or "",
                    sparse_name=decision.sparse_name or "",
                    mode="update_vectors" if decision.layout == "in_place" else "insert_only",
                    upload_batch=target.upsert_batch(p.upload_batch), max_request_bytes=p.max_request_bytes,
                    requests_in_flight=p.upload_requests_in_flight, pacing=pacing)


def source_spec(cfg: JobConfig, decision: Decision, source: pb.CollectionInfo | None) -> SourceSpec:
    """How the lanes read: by one scroll on a single-shard source, by ids then Get on one of several shards (a
    scroll asks every shard for a whole page); page and batch sizes inside the source's strict-mode limits."""
    text = None if decision.vector_input is not None else wiring.text_spec_of(cfg)
    strict = StrictMode.from_info(source)
    shards = int(source.config.params.shard_number) if source is not None else 1
    return SourceSpec(collection=cfg.source.collection, text=text,
                      copy_vectors=tuple(sorted(decision.copy_vectors.items())), vector_input=decision.vector_input,
                      copy_payload=decision.layout == "new_collection", fetch_by_id=shards > 1,
                      get_batch=strict.get_batch(tunables.GET_BATCH))


def lane_options(cfg: JobConfig) -> LaneOptions:
    p = cfg.pipeline
    return LaneOptions(gpus_per_lane=float(p.embed_gpus_per_actor), cpu_lanes_per_node=p.cpu_lanes_per_node,
                       readers=p.scroll_actors, writers=p.upload_actors, io_cpus=p.io_cpus,
                       requests_in_flight=p.upload_requests_in_flight, use_gpus=cfg.model.device != "cpu")


def lane_spec(cfg: JobConfig, job_id: str, decision: Decision, vectorizer: dict, runs_root: str,
              source: pb.CollectionInfo | None = None, target: pb.CollectionInfo | None = None) -> LaneSpec:
    """`source` and `target`: the collections as the server describes them (shards, strict mode)."""
    p = cfg.pipeline
    writers = p.upload_actors or 1
    return LaneSpec(job_id=job_id, endpoint=wiring.endpoint_of(cfg), policy=wiring.policy_of(cfg),
                    source=source_spec(cfg, decision, source), sink=sink_spec(cfg, decision,
                                                                               StrictMode.from_info(target)),
                    vectorizer=vectorizer, page_size=StrictMode.from_info(source).page_limit(p.scroll_page),
                    pages_in_flight=p.pages_in_flight * (1 + writers), redo=RedoPolicy(), runs_root=runs_root)
