"""The checks a job runs before anything is written: the source exists, its text is where the config says, and
the strategy fits the server and the schema. Shared by `reembed run`, `reembed plan` and `reembed doctor`."""

from __future__ import annotations

from dataclasses import dataclass

from qdrant_client import grpc as pb

from engine import tunables
from engine.app import wiring
from engine.config import JobConfig
from engine.errors import PreconditionError
from engine.flow import shards as planning
from engine.flow.source import SourceSpec
from engine.flow.state import Decision
from engine.migration import strategies
from engine.qdrant.client import QdrantGrpc, ServerInfo
from engine.qdrant.strict import StrictMode

TEXT_PROBE_POINTS = 256  # points read to check the text exists before anything is written


@dataclass
class Probe:
    """What the preconditions found: the source, its size and schema, and the road the job takes."""

    source_info: pb.CollectionInfo
    total: int
    schema: strategies.SourceSchema
    decision: Decision


def check_source(cfg: JobConfig, client: QdrantGrpc) -> tuple[pb.CollectionInfo, int]:
    src = cfg.source.collection
    info = client.collection_info(src)
    if info is None:
        known = ", ".join(sorted(client.list_collections())[:10]) or "none"
        raise PreconditionError(
            f"source collection {src!r} does not exist on {client.endpoint.address} (collections: {known}); "
            "set source.collection to an existing collection or alias"
        )
    total = count_points(client, src, info)
    if total == 0 or cfg.shortcut.kind != "none":
        return info, total  # a shortcut reads stored vectors, not text (strategies.decide checks the vector)
    spec = wiring.text_spec_of(cfg)
    # The first page, read as the lanes will read it (large replies split, unreadable points recorded).
    reader = SourceSpec(collection=src, text=spec, copy_payload=False).open(client)
    key = next(iter(client.list_shard_keys(src)), None) if strategies.is_custom_sharded(info) else None
    meta, _, _ = reader.read_page(0, 0, None, None, StrictMode.from_info(info).page_limit(TEXT_PROBE_POINTS),
                                  shard_key=key)
    reasons = [reason for _, reason in meta.dead]
    if meta.n_texts or not reasons:
        return info, total
    if spec.dataset is not None:
        if all(r.startswith("no row") for r in reasons):
            raise PreconditionError(
                f"none of {len(reasons)} sampled point ids of {src!r} has a row in source.text_dataset "
                f"({spec.dataset}, column {spec.id_column!r}); check the dataset and the id column"
            )
    elif all(r.startswith("missing field") for r in reasons):
        points, _ = client.scroll(src, None, 16, with_payload=True, shard_key=key)
        seen = sorted({k for p in points for k in p.payload.keys()})[:12]
        raise PreconditionError(
            f"the text field ({spec.describe()}) is absent from every one of {len(reasons)} sampled points of "
            f"{src!r} (payload fields seen: {', '.join(seen) or 'none'}); set source.text_field or "
            "source.text_template to where the text lives"
        )
    return info, total


def count_points(client: QdrantGrpc, collection: str, info: pb.CollectionInfo | None) -> int:
    """The collection's points, counted exactly where its strict mode allows it, else estimated: an exact count is a
    full scan, which `search_allow_exact: false` refuses; the estimate is good enough to size plans and splits."""
    return client.count(collection, exact=StrictMode.from_info(info).exact_allowed())


def range_splitter(client: QdrantGrpc, collection: str, info: pb.CollectionInfo | None,
                   total: int) -> planning.SampleSplitter:
    """Where the coordinator splits the source's long ranges: its sample is a Query, so the source's strict-mode
    query limit bounds it like any other (a larger one is refused, and the sample with it)."""
    return planning.SampleSplitter(client, collection, total,
                                   sample=StrictMode.from_info(info).sample_limit(tunables.SPLIT_SAMPLE))


def probe(cfg: JobConfig, client: QdrantGrpc, server: ServerInfo) -> Probe:
    """Every check that needs no model: the source, its text, its schema, and the strategy for this server."""
    source_info, total = check_source(cfg, client)
    schema = strategies.SourceSchema.from_info(cfg.source.collection, source_info, total)
    decision = strategies.decide(cfg, server, schema)
    return Probe(source_info, total, schema, decision)
