"""Collection configuration: CreateCollection/UpdateCollection requests -> the CollectionConfig that Get echoes,
and that config -> qdrant-edge's EdgeConfig.

The stored form is Qdrant's own `CollectionConfig` message with every default filled in, so Get answers exactly
what a Qdrant server would for the parameters we support, and a restart rebuilds the same EdgeConfig.
"""

from __future__ import annotations

from typing import Any, Optional

import qdrant_edge as qe
from qdrant_client import grpc as pb

from engine.embedded.convert import (
    DEFAULT_VECTOR,
    VectorSchema,
    comparator_in,
    datatype_in,
    distance_in,
    modifier_in,
)
from engine.embedded.status import bad_input, unsupported, validation_error

# Qdrant's defaults (config/config.yaml, lib/collection/src/config.rs), echoed by Get when a request leaves them out.
DEFAULT_HNSW = pb.HnswConfigDiff(m=16, ef_construct=100, full_scan_threshold=10000, max_indexing_threads=0,
                                 on_disk=False)
DEFAULT_OPTIMIZERS = pb.OptimizersConfigDiff(
    deleted_threshold=0.2,
    vacuum_min_vector_number=1000,
    default_segment_number=0,
    indexing_threshold=10000,
    flush_interval_sec=5,
    # Unset in config.yaml; Get reports it as the Auto setting (operations/conversions.rs).
    max_optimization_threads=pb.MaxOptimizationThreads(setting=pb.MaxOptimizationThreads.Setting.Auto),
)
DEFAULT_WAL = pb.WalConfigDiff(wal_capacity_mb=32, wal_segments_ahead=0, wal_retain_closed=1)

MAX_VECTOR_SIZE = 65536  # Qdrant's upper bound on a dense vector's dimension
_FORBIDDEN_NAME_CHARS = set('<>:"/\\|?*\0')


def validate_collection_name(name: str) -> None:
    """Qdrant's rules (names become directories): 1-255 chars, no path or shell metacharacters."""
    if not name or len(name) > 255:
        raise bad_input(f"Collection name must be 1 to 255 characters long, got {len(name)}")
    bad = sorted(set(name) & _FORBIDDEN_NAME_CHARS)
    if bad or name in (".", ".."):
        raise bad_input(f"Collection name `{name}` must not contain any of <>:\"/\\|?* or be . or ..")


def validate_vector_name(name: str, kind: str) -> None:
    if len(name.encode()) > 200:
        raise bad_input(f"Invalid {kind} vector name `{name}`: must be at most 200 bytes long")
    if set(name) & _FORBIDDEN_NAME_CHARS or name in (".", ".."):
        raise bad_input(f"Invalid {kind} vector name `{name}`: must not contain <>:\"/\\|?* or be . or ..")


def _validate_vector_params(name: str, params: pb.VectorParams) -> None:
    where = f"vector `{name}`" if name else "the unnamed vector"
    if not 1 <= params.size <= MAX_VECTOR_SIZE:
        raise bad_input(f"Vector size {params.size} for {where} is invalid: must be from 1 to {MAX_VECTOR_SIZE}")
    distance_in(params.distance, where)
    if params.HasField("multivector_config"):
        comparator_in(params.multivector_config, where)
    datatype_in(params)


def config_from_create(req: pb.CreateCollection, with_metadata: bool) -> pb.CollectionConfig:
    """The full CollectionConfig for a CreateCollection request (validated; defaults filled as Qdrant does)."""
    config = pb.CollectionConfig()
    params = config.params
    # Auto sharding: this many shards; custom sharding: shards per shard key unless CreateShardKey says otherwise.
    params.shard_number = req.shard_number if req.HasField("shard_number") else 1
    if params.shard_number < 1:  # lib/api/build.rs: CreateCollection.shard_number range(min = 1)
        raise validation_error("shard_number", f"value {params.shard_number} invalid, must be 1 or larger")
    params.on_disk_payload = req.on_disk_payload if req.HasField("on_disk_payload") else True
    params.replication_factor = req.replication_factor if req.HasField("replication_factor") else 1
    params.write_consistency_factor = req.write_consistency_factor if req.HasField("write_consistency_factor") else 1
    if req.HasField("sharding_method"):
        params.sharding_method = req.sharding_method
    if req.HasField("payload"):
        params.payload.CopyFrom(req.payload)
    if req.HasField("id_tracker"):
        params.id_tracker.CopyFrom(req.id_tracker)

    dense_count = 0
    if req.HasField("vectors_config"):
        vc = req.vectors_config
        kind = vc.WhichOneof("config")
        if kind == "params":
            _validate_vector_params(DEFAULT_VECTOR, vc.params)
            dense_count = 1
        elif kind == "params_map":
            for name, vp in vc.params_map.map.items():
                validate_vector_name(name, "dense")
                _validate_vector_params(name, vp)
                dense_count += 1
        params.vectors_config.CopyFrom(vc)
    if params.vectors_config.WhichOneof("config") is None:
        # No dense vector: Qdrant stores VectorsConfig::Multi({}) and reports an empty map (operations/conversions.rs)
        params.vectors_config.params_map.SetInParent()
    if req.HasField("sparse_vectors_config"):
        for name in req.sparse_vectors_config.map:
            if name == DEFAULT_VECTOR:
                raise bad_input("Sparse vector name cannot be empty")
            validate_vector_name(name, "sparse")
        params.sparse_vectors_config.CopyFrom(req.sparse_vectors_config)
    if dense_count == 0 and not params.sparse_vectors_config.map:
        # Qdrant allows it (vectors added later with CreateVectorName); qdrant-edge 0.9 refuses an empty schema.
        raise unsupported("a collection without any dense or sparse vector")

    config.hnsw_config.CopyFrom(DEFAULT_HNSW)
    if req.HasField("hnsw_config"):
        config.hnsw_config.MergeFrom(req.hnsw_config)
    config.optimizer_config.CopyFrom(DEFAULT_OPTIMIZERS)
    if req.HasField("optimizers_config"):
        config.optimizer_config.MergeFrom(req.optimizers_config)
    config.wal_config.CopyFrom(DEFAULT_WAL)
    if req.HasField("wal_config"):
        config.wal_config.MergeFrom(req.wal_config)
    if req.HasField("quantization_config"):
        config.quantization_config.CopyFrom(req.quantization_config)
        quantization_in(config.quantization_config)  # validate now, not at the next restart
    if req.HasField("strict_mode_config"):
        config.strict_mode_config.CopyFrom(req.strict_mode_config)
    if with_metadata:
        for key, value in req.metadata.items():
            config.metadata[key].CopyFrom(value)
    return config


def apply_update(config: pb.CollectionConfig, req: pb.UpdateCollection, with_metadata: bool) -> bool:
    """Merge an UpdateCollection into `config` in place. Returns True when the storage engine must be reopened."""
    reopen = False
    if req.HasField("optimizers_config"):
        config.optimizer_config.MergeFrom(req.optimizers_config)
        reopen = True
    if req.HasField("hnsw_config"):
        config.hnsw_config.MergeFrom(req.hnsw_config)
        reopen = True
    if req.HasField("params"):
        diff = req.params
        for field in ("replication_factor", "write_consistency_factor", "read_fan_out_factor", "read_fan_out_delay_ms"):
            if diff.HasField(field):
                setattr(config.params, field, getattr(diff, field))
        if diff.HasField("on_disk_payload"):
            config.params.on_disk_payload = diff.on_disk_payload
            reopen = True
        if diff.HasField("payload"):
            config.params.payload.MergeFrom(diff.payload)
        if diff.HasField("id_tracker"):
            config.params.id_tracker.MergeFrom(diff.id_tracker)
    if req.HasField("vectors_config"):
        _merge_vectors_diff(config, req.vectors_config)
        reopen = True
    if req.HasField("sparse_vectors_config"):
        sparse = config.params.sparse_vectors_config.map
        for name, diff in req.sparse_vectors_config.map.items():
            if name not in sparse:
                raise bad_input(f"Not existing vector name error: {name}")
            sparse[name].MergeFrom(diff)
        reopen = True
    if req.HasField("quantization_config"):
        q = req.quantization_config
        kind = q.WhichOneof("quantization")
        if kind == "disabled":
            config.ClearField("quantization_config")
        elif kind is not None:
            config.quantization_config.CopyFrom(pb.QuantizationConfig(**{kind: getattr(q, kind)}))
            quantization_in(config.quantization_config)
        reopen = True
    if req.HasField("strict_mode_config"):
        config.strict_mode_config.MergeFrom(req.strict_mode_config)
    if with_metadata:
        for key, value in req.metadata.items():  # Qdrant merges metadata keys into the existing map
            config.metadata[key].CopyFrom(value)
    return reopen


def _merge_vectors_diff(config: pb.CollectionConfig, diff: pb.VectorsConfigDiff) -> None:
    vc = config.params.vectors_config
    kind = diff.WhichOneof("config")
    if kind == "params":
        if vc.WhichOneof("config") != "params":
            raise bad_input("Not existing vector name error: ")
        _merge_vector_params(vc.params, diff.params)
    elif kind == "params_map":
        for name, vdiff in diff.params_map.map.items():
            if vc.WhichOneof("config") == "params" and name == DEFAULT_VECTOR:
                _merge_vector_params(vc.params, vdiff)
            elif name in vc.params_map.map:
                _merge_vector_params(vc.params_map.map[name], vdiff)
            else:
                raise bad_input(f"Not existing vector name error: {name}")


def _merge_vector_params(params: pb.VectorParams, diff: pb.VectorParamsDiff) -> None:
    if diff.HasField("hnsw_config"):
        params.hnsw_config.MergeFrom(diff.hnsw_config)
    if diff.HasField("on_disk"):
        params.on_disk = diff.on_disk
    if diff.HasField("memory"):
        params.memory = diff.memory
    if diff.HasField("quantization_config"):
        q = diff.quantization_config
        kind = q.WhichOneof("quantization")
        if kind == "disabled":
            params.ClearField("quantization_config")
        elif kind is not None:
            params.quantization_config.CopyFrom(pb.QuantizationConfig(**{kind: getattr(q, kind)}))


# ----------------------------------------------------------------------------------------------------------------
# views of a stored config


def dense_vectors(config: pb.CollectionConfig) -> dict[str, pb.VectorParams]:
    vc = config.params.vectors_config
    if vc.WhichOneof("config") == "params":
        return {DEFAULT_VECTOR: vc.params}
    return dict(vc.params_map.map.items())


def sparse_vectors(config: pb.CollectionConfig) -> dict[str, pb.SparseVectorParams]:
    return dict(config.params.sparse_vectors_config.map.items())


def is_single_unnamed(config: pb.CollectionConfig) -> bool:
    """Collections created with one unnamed vector answer with the single-vector form, as Qdrant does."""
    return config.params.vectors_config.WhichOneof("config") == "params"


def vector_schema(config: pb.CollectionConfig) -> VectorSchema:
    dense = dense_vectors(config)
    return VectorSchema(
        {name: vp.size for name, vp in dense.items()},
        set(sparse_vectors(config)),
        {name for name, vp in dense.items() if vp.HasField("multivector_config")},
        {name: vp.distance for name, vp in dense.items()},
    )


def add_dense_vector(config: pb.CollectionConfig, name: str, creation: pb.DenseVectorCreationConfig) -> bool:
    """Add a named dense vector to the config. Returns False when it already exists with the same schema."""
    validate_vector_name(name, "dense")
    if name in sparse_vectors(config):
        raise bad_input(f"Vector `{name}` already exists as a sparse vector")
    params = pb.VectorParams(size=creation.size, distance=creation.distance)
    if creation.HasField("datatype"):
        params.datatype = creation.datatype
    if creation.HasField("multivector_config"):
        params.multivector_config.CopyFrom(creation.multivector_config)
    _validate_vector_params(name, params)
    existing = dense_vectors(config).get(name)
    if existing is not None:
        if existing.size != params.size or existing.distance != params.distance:
            raise bad_input(f"Vector `{name}` already exists with a different configuration")
        return False
    vc = config.params.vectors_config
    if vc.WhichOneof("config") == "params":  # the unnamed vector becomes "" in a map, as Qdrant does
        unnamed = pb.VectorParams()
        unnamed.CopyFrom(vc.params)
        vc.params_map.map[DEFAULT_VECTOR].CopyFrom(unnamed)
    vc.params_map.map[name].CopyFrom(params)
    return True


def add_sparse_vector(config: pb.CollectionConfig, name: str, creation: pb.SparseVectorCreationConfig) -> bool:
    if name == DEFAULT_VECTOR:
        raise bad_input("Sparse vector name cannot be empty")
    validate_vector_name(name, "sparse")
    if name in dense_vectors(config):
        raise bad_input(f"Vector `{name}` already exists as a dense vector")
    params = pb.SparseVectorParams()
    if creation.HasField("modifier"):
        params.modifier = creation.modifier
    if creation.HasField("datatype"):
        params.index.datatype = creation.datatype
    existing = sparse_vectors(config).get(name)
    if existing is not None:
        if existing.modifier != params.modifier:
            raise bad_input(f"Sparse vector `{name}` already exists with a different configuration")
        return False
    config.params.sparse_vectors_config.map[name].CopyFrom(params)
    return True


def drop_vector(config: pb.CollectionConfig, name: str) -> bool:
    """Remove a vector name from the config. Returns False when there is no such vector (a no-op, like Qdrant)."""
    vc = config.params.vectors_config
    if vc.WhichOneof("config") == "params" and name == DEFAULT_VECTOR:
        raise bad_input("Cannot delete the unnamed vector when it is the only dense vector in the collection")
    if vc.WhichOneof("config") == "params_map" and name in vc.params_map.map:
        del vc.params_map.map[name]
        return True
    sparse = config.params.sparse_vectors_config.map
    if name in sparse:
        del sparse[name]
        return True
    return False


# ----------------------------------------------------------------------------------------------------------------
# -> qdrant-edge


def _memory(message: Any) -> Any:
    if not message.HasField("memory"):
        return None
    return {pb.Memory.Cold: qe.Memory.Cold, pb.Memory.Cached: qe.Memory.Cached, pb.Memory.Pinned: qe.Memory.Pinned}.get(
        message.memory
    )


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def hnsw_in(hnsw: pb.HnswConfigDiff) -> qe.HnswIndexConfig:
    return qe.HnswIndexConfig(
        m=hnsw.m,
        ef_construct=hnsw.ef_construct,
        full_scan_threshold=hnsw.full_scan_threshold,
        max_indexing_threads=hnsw.max_indexing_threads,
        on_disk=_opt(hnsw, "on_disk"),
        payload_m=_opt(hnsw, "payload_m"),
        inline_storage=_opt(hnsw, "inline_storage"),
        memory=_memory(hnsw),
    )


_COMPRESSION = {
    pb.CompressionRatio.x4: "X4",
    pb.CompressionRatio.x8: "X8",
    pb.CompressionRatio.x16: "X16",
    pb.CompressionRatio.x32: "X32",
    pb.CompressionRatio.x64: "X64",
}


def quantization_in(q: pb.QuantizationConfig) -> Any:
    kind = q.WhichOneof("quantization")
    if kind == "scalar":
        s = q.scalar
        return qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=_opt(s, "quantile"), always_ram=_opt(s, "always_ram"), memory=_memory(s)
        )
    if kind == "product":
        p = q.product
        ratio = getattr(qe.CompressionRatio, _COMPRESSION[p.compression])
        return qe.ProductQuantizationConfig(compression=ratio, always_ram=_opt(p, "always_ram"), memory=_memory(p))
    if kind == "binary":
        b = q.binary
        encoding = None
        if b.HasField("encoding"):
            encoding = getattr(qe.BinaryQuantizationEncoding, pb.BinaryQuantizationEncoding.Name(b.encoding))
        return qe.BinaryQuantizationConfig(always_ram=_opt(b, "always_ram"), encoding=encoding, memory=_memory(b))
    if kind is None:
        return None
    raise unsupported(f"{kind} quantization")


def _edge_vector(name: str, vp: pb.VectorParams, collection_hnsw: pb.HnswConfigDiff) -> qe.EdgeVectorParams:
    hnsw = None
    if vp.HasField("hnsw_config"):
        merged = pb.HnswConfigDiff()
        merged.CopyFrom(collection_hnsw)
        merged.MergeFrom(vp.hnsw_config)
        hnsw = hnsw_in(merged)
    return qe.EdgeVectorParams(
        size=vp.size,
        distance=distance_in(vp.distance, f"vector `{name}`"),
        on_disk=_opt(vp, "on_disk"),
        multivector_config=comparator_in(vp.multivector_config, f"vector `{name}`")
        if vp.HasField("multivector_config")
        else None,
        datatype=datatype_in(vp),
        quantization_config=quantization_in(vp.quantization_config) if vp.HasField("quantization_config") else None,
        hnsw_config=hnsw,
        memory=_memory(vp),
    )


def _edge_sparse(sp: pb.SparseVectorParams) -> qe.EdgeSparseVectorParams:
    index = sp.index if sp.HasField("index") else None
    return qe.EdgeSparseVectorParams(
        full_scan_threshold=_opt(index, "full_scan_threshold") if index is not None else None,
        on_disk=_opt(index, "on_disk") if index is not None else None,
        modifier=modifier_in(sp),
        datatype=datatype_in(index) if index is not None else None,
        memory=_memory(index) if index is not None else None,
    )


def edge_config(config: pb.CollectionConfig, with_vectors: bool = True) -> qe.EdgeConfig:
    """The qdrant-edge shard configuration for a stored CollectionConfig.

    `with_vectors=False` leaves the vector schema to the shard's own files (used when reopening after an update:
    qdrant-edge checks a provided schema against the segments, and vector names added or dropped since creation
    are already recorded there).
    """
    opt = config.optimizer_config
    optimizers = qe.EdgeOptimizersConfig(
        deleted_threshold=_opt(opt, "deleted_threshold"),
        vacuum_min_vector_number=_opt(opt, "vacuum_min_vector_number"),
        default_segment_number=_opt(opt, "default_segment_number"),
        max_segment_size=_opt(opt, "max_segment_size"),
        indexing_threshold=_opt(opt, "indexing_threshold"),
        prevent_unoptimized=_opt(opt, "prevent_unoptimized"),
    )
    vectors: Optional[dict[str, qe.EdgeVectorParams]] = None
    sparse: Optional[dict[str, qe.EdgeSparseVectorParams]] = None
    if with_vectors:
        vectors = {name: _edge_vector(name, vp, config.hnsw_config) for name, vp in dense_vectors(config).items()}
        sparse = {name: _edge_sparse(sp) for name, sp in sparse_vectors(config).items()}
    return qe.EdgeConfig(
        vectors=vectors if with_vectors else None,
        sparse_vectors=sparse or None,
        on_disk_payload=config.params.on_disk_payload,
        hnsw_config=hnsw_in(config.hnsw_config),
        quantization_config=quantization_in(config.quantization_config)
        if config.HasField("quantization_config")
        else None,
        optimizers=optimizers,
    )
