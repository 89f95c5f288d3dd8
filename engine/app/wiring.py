"""The composition root's first step: the job config turned, once, into the narrow objects the rooms below take
(the endpoint, the retry policy, the text source, the job's identity and names). Nothing below engine/app reads the
whole config; data walks down from here."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from engine.config import JobConfig
from engine.errors import PreconditionError, QdrantUnavailable
from engine.flow.checkpoint import CheckpointStore, QdrantCheckpointStore, UriCheckpointStore
from engine.flow.rundir import RunDir, resolve_root
from engine.flow.text import TextSpec
from engine.qdrant.client import QdrantGrpc, ServerInfo
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy

log = logging.getLogger(__name__)

METADATA_KEY = "reembed"  # collection metadata key holding the job id and model provenance (Qdrant >= 1.16)
# A first contact fails fast: a mistyped host should not wait out the full retry deadline.
CONNECT_POLICY = RetryPolicy(max_attempts=4, base_delay_s=0.25, max_delay_s=2.0, deadline_s=10.0,
                             outage_budget_s=10.0)


def endpoint_of(cfg: JobConfig) -> Endpoint:
    host, port, tls = cfg.qdrant.endpoint()
    return Endpoint(host=host, port=port, tls=tls, api_key=cfg.qdrant.api_key_value(),
                    ca_cert=cfg.qdrant.tls_ca_cert, timeout_s=cfg.qdrant.timeout_s)


def policy_of(cfg: JobConfig) -> RetryPolicy:
    r = cfg.retry
    return RetryPolicy(max_attempts=r.max_attempts, base_delay_s=r.base_delay_s, max_delay_s=r.max_delay_s,
                       deadline_s=r.deadline_s, outage_budget_s=r.outage_budget_s)


def text_spec_of(cfg: JobConfig) -> TextSpec:
    """Where the job's text comes from: a payload field, a template, or an external Parquet dataset."""
    s = cfg.source
    if s.text_dataset is not None:
        return TextSpec(dataset=s.text_dataset, id_column=s.text_dataset_id_column,
                        text_column=s.text_dataset_text_column)
    if s.text_template:
        return TextSpec(template=s.text_template)
    assert s.text_field is not None  # the config guarantees exactly one text source
    return TextSpec(field=s.text_field)


def text_description(cfg: JobConfig) -> str:
    """What the new vectors are computed from, for fingerprints and reports."""
    if cfg.shortcut.kind != "none":
        return f"vector:{cfg.source.vector_name or ''}"
    return text_spec_of(cfg).describe()


def target_collection(cfg: JobConfig) -> str:
    return cfg.target.collection or cfg.source.collection


def job_id_of(cfg: JobConfig) -> str:
    """Stable per (source, target, vector, strategy): re-running the same command finds the same job."""
    key = f"{cfg.source.collection}|{target_collection(cfg)}|{cfg.target.vector_name or ''}|{cfg.strategy}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def connect(cfg: JobConfig) -> tuple[QdrantGrpc, ServerInfo]:
    """A client with the job's retry policy, after a fast first contact that names a wrong address in one line."""
    endpoint = endpoint_of(cfg)
    probe = QdrantGrpc(endpoint, CONNECT_POLICY)
    try:
        info = probe.health()
    except QdrantUnavailable:
        raise PreconditionError(
            f"cannot reach Qdrant over gRPC at {endpoint.address} (for {CONNECT_POLICY.outage_budget_s:.0f} s); "
            "check qdrant.url / qdrant.grpc_port (or QDRANT_URL / QDRANT_GRPC_PORT) and that the server is up"
        ) from None
    finally:
        probe.close()
    log.info("connected to %s at %s, version %s", info.title, endpoint.address, info.version)
    return QdrantGrpc(endpoint, policy_of(cfg), announce_waits=True), info


def make_store(cfg: JobConfig, client: QdrantGrpc) -> CheckpointStore:
    if cfg.checkpoint.store == "uri":
        assert cfg.checkpoint.uri is not None  # the config refuses store=uri without a uri
        return UriCheckpointStore(cfg.checkpoint.uri)
    return QdrantCheckpointStore(client, cfg.checkpoint.collection)


def runs_root(cfg: JobConfig) -> str:
    """Where every job keeps its run directory: absolute, or a URI (see engine/flow/rundir.py)."""
    return resolve_root(cfg.dead_letter.dir, cfg.checkpoint.uri if cfg.checkpoint.store == "uri" else None)


def run_dir(cfg: JobConfig, job_id: str) -> RunDir:
    """The job's run directory: dead letters, verify results, reports."""
    return RunDir(runs_root(cfg), job_id)


def map_file(cfg: JobConfig, job_id: str) -> str:
    """Where the linear-map shortcut keeps its learned map: shortcut.map_file, else in the run directory (a run
    directory behind a URI keeps it on this machine, under the default local root, as numpy writes local files)."""
    if cfg.shortcut.map_file is not None:
        return cfg.shortcut.map_file
    local = run_dir(cfg, job_id).local_path("linear_map.npz")
    if local is None:
        local = Path(RunDir(resolve_root(None, None), job_id).join("linear_map.npz"))
    return str(local)
