"""The new collection a job writes: checked to be this job's own before anything is written to it, created with the
source's payload indexes, and tagged with the job and model in its metadata (Qdrant >= 1.16)."""

from __future__ import annotations

import logging
from typing import Any

from qdrant_client import grpc as pb

from engine.errors import PreconditionError
from engine.flow.state import Decision
from engine.migration import strategies
from engine.qdrant import values
from engine.qdrant.client import QdrantGrpc, ServerInfo

log = logging.getLogger(__name__)

METADATA_KEY = "reembed"  # collection metadata key holding the job id and model provenance (Qdrant >= 1.16)
METADATA_SINCE = (1, 16, 0)


def metadata_job(info: pb.CollectionInfo) -> str | None:
    """The job id a collection was created by, from its metadata; None when reembed did not create it."""
    meta = values.payload_to_python(info.config.metadata) if hasattr(info.config, "metadata") else {}
    tag = meta.get(METADATA_KEY)
    return tag.get("job_id") if isinstance(tag, dict) else None


def metadata_tag(info: pb.CollectionInfo | None) -> dict[str, Any] | None:
    """The whole reembed tag of a collection (job id and model provenance), if any."""
    if info is None:
        return None
    meta = values.payload_to_python(info.config.metadata)
    tag = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    return tag if isinstance(tag, dict) else None


def check_target(client: QdrantGrpc, decision: Decision, source: str, job_id: str,
                 dim: int | None) -> pb.CollectionInfo | None:
    """The existing new-collection target, checked to be this job's and to fit; None when it does not exist yet."""
    name = decision.collection
    if name == source:
        raise PreconditionError(
            "target.collection equals source.collection; new_collection never writes the source: "
            "choose a new target.collection name"
        )
    info = client.collection_info(name)
    if info is None:
        return None
    owner = metadata_job(info)
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
    if dim is not None or decision.sparse_name:
        strategies.check_new_collection_target(info, decision, dim)
    return info


def _field_type(field_name: str, schema_type: pb.PayloadSchemaType.ValueType) -> pb.FieldType.ValueType:
    """The FieldType that creates an index Qdrant reports as `schema_type` (the two enums are numbered apart)."""
    try:
        return pb.FieldType.Value("FieldType" + pb.PayloadSchemaType.Name(schema_type))
    except ValueError:
        raise PreconditionError(
            f"the source's payload index {field_name!r} has type {schema_type}, which reembed cannot recreate; "
            "drop that index from the source or create it on the target yourself"
        ) from None


def create_target(client: QdrantGrpc, request: pb.CreateCollection, source: pb.CollectionInfo, job_id: str,
                  model: dict[str, Any], server: ServerInfo) -> None:
    """Create the new collection, tagged with the job and the model, and index the payload fields the source
    indexes (before the load: Qdrant's bulk guidance)."""
    name = request.collection_name
    if server.version_tuple() >= METADATA_SINCE:
        prov = {k: v for k, v in model.items() if isinstance(v, (str, int, float, bool)) or v is None}
        for key, value in values.payload_from_python({METADATA_KEY: {"job_id": job_id, "model": prov}}).items():
            request.metadata[key].CopyFrom(value)
    client.create_collection(request)
    for field_name, schema_ in source.payload_schema.items():
        client.create_field_index(name, field_name, _field_type(field_name, schema_.data_type),
                                  schema_.params if schema_.HasField("params") else None)
    log.info("created target %s (vectors %s, sparse %s, %d payload indexes)", name,
             sorted(request.vectors_config.params_map.map) or ["(unnamed)"],
             sorted(request.sparse_vectors_config.map), len(source.payload_schema))
