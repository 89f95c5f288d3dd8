"""Which road of the migration guide a job takes, decided from the server version and the source schema before
anything is written, and the schema work each road needs (new vectors, new collections, deferred indexing).

The guide's rules (FACTS.md, SEED-GUIDE.md):
- adding (or dropping) a named vector on an existing collection needs Qdrant >= 1.18 and a collection created with
  named vectors; otherwise the job writes a new collection and the application switches with an alias;
- side-by-side on an older server (or an unnamed source) is a new collection defined with both vectors, the old
  ones copied; hybrid likewise adds a sparse vector (IDF modifier) in place or in a new collection;
- HNSW building is deferred only for vectors the job creates, never by `m: 0` on an existing vector.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import grpc as pb

from engine import tunables
from engine.errors import PreconditionError
from engine.flow.state import Decision, IndexDeferral
from engine.qdrant.client import QdrantGrpc, ServerInfo
from engine.qdrant.strict import StrictMode

log = logging.getLogger(__name__)

VECTOR_SCHEMA_SINCE = (1, 18, 0)  # CreateVectorName / DeleteVectorName
UPDATE_MODE_SINCE = (1, 17, 0)  # upsert update_mode insert_only


def version_text(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


@dataclass
class SourceSchema:
    """The vectors and indexes of the source collection; "" is the unnamed default vector."""

    collection: str
    dense: dict[str, pb.VectorParams]
    sparse: dict[str, pb.SparseVectorParams]
    payload_indexes: list[str]
    points: int
    info: pb.CollectionInfo | None = None  # the whole description: the new collection copies its layout

    @property
    def unnamed(self) -> bool:
        return "" in self.dense

    @classmethod
    def from_info(cls, collection: str, info: pb.CollectionInfo, points: int) -> "SourceSchema":
        vc = info.config.params.vectors_config
        dense: dict[str, pb.VectorParams] = {}
        if vc.HasField("params"):
            dense[""] = vc.params
        elif vc.HasField("params_map"):
            dense.update(vc.params_map.map.items())
        sparse = dict(info.config.params.sparse_vectors_config.map.items())
        return cls(collection, dense, sparse, sorted(info.payload_schema.keys()), points, info)

    def names(self) -> list[str]:
        return sorted(self.dense) + sorted(self.sparse)

    def describe(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "points": self.points,
            "vectors": {n or "(unnamed)": {"size": int(p.size), "distance": pb.Distance.Name(p.distance)}
                        for n, p in self.dense.items()},
            "sparse_vectors": {n: {"modifier": pb.Modifier.Name(p.modifier) if p.HasField("modifier") else "None"}
                               for n, p in self.sparse.items()},
            "named_vectors": not self.unnamed,
            "payload_indexes": self.payload_indexes,
        }


def in_place_blockers(server: ServerInfo, schema: SourceSchema) -> list[str]:
    """Why a vector cannot be added to the source collection; empty when it can."""
    out = []
    if server.version_tuple() < VECTOR_SCHEMA_SINCE:
        out.append(f"the server is Qdrant {server.version} and adding a vector to an existing collection needs 1.18")
    if schema.unnamed:
        out.append(f"{schema.collection!r} has one unnamed vector and only collections with named vectors can "
                   "take another")
    return out


def _require_target(cfg, what: str, why: list[str]) -> str:
    name = cfg.target.collection
    if name is None or name == cfg.source.collection:
        raise PreconditionError(
            f"strategy {what} cannot write into {cfg.source.collection!r}: {'; '.join(why)}; set target.collection "
            f"to a new collection name (e.g. {cfg.source.collection}_v2) and it is created "
            + ("with both vectors, the old ones copied" if what in ("side_by_side", "hybrid")
               else "and switched to with an alias")
        )
    return name


def _copies(cfg, schema: SourceSchema) -> dict[str, str]:
    """Every stored vector of the source goes along into a side-by-side/hybrid collection; the unnamed one is
    renamed to target.old_vector_name (a collection holding several vectors names them all)."""
    return {name: (name or cfg.target.old_vector_name) for name in [*schema.dense, *schema.sparse]}


def decide(cfg, server: ServerInfo, schema: SourceSchema) -> Decision:
    """The road this job takes, or a PreconditionError naming why the requested one cannot work and what to use."""
    requested = cfg.strategy
    blockers = in_place_blockers(server, schema)
    wants_source = cfg.target.collection in (None, cfg.source.collection)
    src = cfg.source.collection
    _check_source_vector(cfg, schema)
    shortcut = cfg.shortcut.kind != "none"
    vector_input = (cfg.source.vector_name or "") if shortcut else None
    # Config keeps null (and "") as None: for hybrid that means no new dense vector (sparse only); for every other
    # strategy a dense vector is the point of the job, and None names the collection's one unnamed vector "".
    dense = cfg.target.vector_name
    if dense is None and requested != "hybrid":
        dense = ""
    sparse = cfg.target.sparse_vector_name if requested == "hybrid" else None

    if requested == "auto":
        if wants_source and not blockers:
            decision = Decision(requested, "in_place", "in_place", src, dense, None, vector_input=vector_input,
                                reason=f"server {server.version} and named vectors: add {dense!r} to {src!r} and "
                                       "backfill it with UpdateVectors (no second collection)")
        elif not wants_source:
            decision = Decision(requested, "new_collection", "new_collection", cfg.target.collection, dense, None,
                                vector_input=vector_input,
                                reason=f"target.collection {cfg.target.collection!r} is set: write a new collection "
                                       "and switch the alias")
        else:
            raise PreconditionError(
                f"strategy auto cannot add a vector to {src!r}: {'; '.join(blockers)}; set target.collection to a new "
                f"collection name (e.g. {src}_v2) so auto uses new_collection with an alias swap"
            )
    elif requested == "new_collection":
        decision = Decision(requested, "new_collection", "new_collection", cfg.target.collection, dense, None,
                            vector_input=vector_input, reason="requested: new collection, payload copied, alias swap")
    elif requested == "in_place":
        if blockers:
            raise PreconditionError(
                f"strategy in_place is not possible here: {'; '.join(blockers)}; use strategy: new_collection "
                f"(set target.collection, e.g. {src}_v2, and target.alias) to re-embed into a new collection and "
                "swap an alias"
            )
        decision = Decision(requested, "in_place", "in_place", src, dense, None, vector_input=vector_input,
                            reason=f"add {dense!r} to {src!r} (CreateVectorName) and backfill with UpdateVectors")
    else:  # side_by_side, hybrid
        if wants_source:
            if blockers:
                _require_target(cfg, requested, blockers)
            decision = Decision(requested, requested, "in_place", src, dense, sparse, vector_input=vector_input,
                                reason=f"add {', '.join(repr(n) for n in (dense, sparse) if n)} to {src!r} beside "
                                       "its vectors and backfill with UpdateVectors")
        else:
            decision = Decision(requested, requested, "new_collection", cfg.target.collection, dense, sparse,
                                copy_vectors=_copies(cfg, schema), vector_input=vector_input,
                                reason=f"a new collection {cfg.target.collection!r} with the source's vectors copied "
                                       f"and {', '.join(repr(n) for n in (dense, sparse) if n)} added")
    _check_names(cfg, decision, schema)
    return decision


def _check_source_vector(cfg, schema: SourceSchema) -> None:
    name = cfg.source.vector_name or ""
    if cfg.source.vector_name is not None and schema.unnamed:
        raise PreconditionError(
            f"source.vector_name is {cfg.source.vector_name!r} but {schema.collection!r} has one unnamed vector; "
            "remove source.vector_name"
        )
    if name and name not in schema.dense:
        raise PreconditionError(
            f"source.vector_name {name!r} is not a dense vector of {schema.collection!r} (vectors: "
            f"{', '.join(n or '(unnamed)' for n in schema.names()) or 'none'}); fix source.vector_name"
        )
    if cfg.shortcut.kind != "none":
        if name not in schema.dense:
            raise PreconditionError(
                f"shortcut {cfg.shortcut.kind} transforms the stored vectors but {schema.collection!r} has no "
                f"{'unnamed' if not name else repr(name)} dense vector; set source.vector_name to the old vector"
            )
        size = int(schema.dense[name].size)
        if cfg.shortcut.kind == "matryoshka" and cfg.shortcut.dim > size:
            raise PreconditionError(
                f"shortcut.dim {cfg.shortcut.dim} is larger than the stored {size}-d vectors; set shortcut.dim "
                f"below {size}"
            )


def _check_names(cfg, d: Decision, schema: SourceSchema) -> None:
    if d.layout == "new_collection":
        new = [n for n in (d.dense_name, d.sparse_name) if n is not None]
        clash = [n for n in new if n in d.copy_vectors.values()]
        if clash:
            raise PreconditionError(
                f"the new vector name {clash[0]!r} is also a vector copied from {schema.collection!r}; choose another "
                "target.vector_name / target.sparse_vector_name (or target.old_vector_name)"
            )
    if d.dense_name == "" and d.layout != "new_collection":
        raise PreconditionError("an in-place job adds a named vector; set target.vector_name")
    if d.dense_name == "" and d.copy_vectors:
        raise PreconditionError(
            f"target.vector_name is null (one unnamed vector) but strategy {d.strategy} copies the old vectors beside "
            "the new one into a collection that must name each; set target.vector_name, e.g. dense_v2"
        )


# --- schema work -------------------------------------------------------------------------------------------------

def dense_params(cfg, dim: int) -> pb.VectorParams:
    params = pb.VectorParams(size=int(dim), distance=getattr(pb.Distance, cfg.target.distance),
                             on_disk=cfg.target.on_disk)
    if cfg.target.hnsw_m is not None:
        params.hnsw_config.m = cfg.target.hnsw_m
    if cfg.target.hnsw_ef_construct is not None:
        params.hnsw_config.ef_construct = cfg.target.hnsw_ef_construct
    return params


def new_collection_request(cfg, d: Decision, schema: SourceSchema, dim: int | None) -> pb.CreateCollection:
    """The CreateCollection of a new-collection layout: the new vectors plus every copied one with its own params,
    in the source's layout (`carry_layout`: shards, replication, sharding method, quantization, HNSW, optimizers,
    WAL, strict mode, payload storage) with the overrides of `target.layout`."""
    req = pb.CreateCollection(collection_name=d.collection)
    if d.dense_name == "":
        if dim is None:
            raise PreconditionError("the model reports no output dimension, so the new vector cannot be sized; "
                                    "check model.name points at an embedding model (its config needs hidden_size)")
        req.vectors_config.params.CopyFrom(dense_params(cfg, dim))
        carry_layout(req, schema.info, cfg.target.layout)
        return req
    pmap = req.vectors_config.params_map.map
    for src_name, name in d.copy_vectors.items():
        if src_name in schema.dense:
            pmap[name].CopyFrom(schema.dense[src_name])
        else:
            req.sparse_vectors_config.map[name].CopyFrom(schema.sparse[src_name])
    if d.dense_name is not None:
        if dim is None:
            raise PreconditionError("the model reports no output dimension, so the new vector cannot be sized; "
                                    "check model.name points at an embedding model (its config needs hidden_size)")
        pmap[d.dense_name].CopyFrom(dense_params(cfg, dim))
    if d.sparse_name is not None:
        req.sparse_vectors_config.map[d.sparse_name].CopyFrom(pb.SparseVectorParams(modifier=pb.Modifier.Idf))
    if not pmap and not req.sparse_vectors_config.map:
        raise PreconditionError("the new collection would hold no vector; set target.vector_name")
    carry_layout(req, schema.info, cfg.target.layout)
    return req


# --- the new collection's layout ----------------------------------------------------------------------------------
# What CreateCollection copies from the source (lib/api/src/grpc/proto/collections.proto: CollectionInfo.config
# against CreateCollection). Fields a server does not know are ignored by it, and it reports only fields it knows.

def carry_layout(req: pb.CreateCollection, source: pb.CollectionInfo | None, layout: Any = None) -> None:
    """Give a new collection the source's layout, then apply `target.layout` overrides (`layout`: the config's
    LayoutConfig, or None for none).

    Copied: shard_number, replication_factor, write_consistency_factor, on_disk_payload and the payload storage
    params, sharding_method (custom: the shard keys are created in a separate step, `shard_keys_request`), the id
    tracker params, hnsw_config, optimizers_config, wal_config, quantization_config and strict_mode_config. The
    optimizers config is copied whole: the job's HNSW deferral (`defer_index`) raises indexing_threshold after the
    creation and restores the copied value. Not copied: metadata (the job writes its own provenance there) and
    read_fan_out_factor / read_fan_out_delay_ms (CreateCollection has no such field; UpdateCollection sets them).
    """
    if source is not None:
        config, params = source.config, source.config.params
        if params.shard_number:
            req.shard_number = params.shard_number
        for name in ("replication_factor", "write_consistency_factor", "sharding_method"):
            if params.HasField(name):
                setattr(req, name, getattr(params, name))
        req.on_disk_payload = params.on_disk_payload  # a plain bool in CollectionParams: always reported
        for name in ("payload", "id_tracker"):  # payload: Qdrant 1.19; id_tracker: qdrant-client's newer protos
            if _has_field(params, name) and name in req.DESCRIPTOR.fields_by_name:
                getattr(req, name).CopyFrom(getattr(params, name))
        for src_name, dst_name in (("hnsw_config", "hnsw_config"), ("optimizer_config", "optimizers_config"),
                                   ("wal_config", "wal_config"), ("quantization_config", "quantization_config"),
                                   ("strict_mode_config", "strict_mode_config")):
            if config.HasField(src_name):
                getattr(req, dst_name).CopyFrom(getattr(config, src_name))
    if layout is not None:
        _apply_layout(req, layout)


def _has_field(msg: Any, name: str) -> bool:
    return name in msg.DESCRIPTOR.fields_by_name and msg.HasField(name)


# Qdrant's quantization guide: int8 scalar with the 0.99 quantile, quantized vectors kept in RAM while the originals
# may live on disk. `always_ram` is deprecated in 1.19 for `memory` but still honoured, and older servers know only it.
_QUANTIZATION = {
    "scalar": lambda: pb.QuantizationConfig(scalar=pb.ScalarQuantization(type=pb.QuantizationType.Int8,
                                                                          quantile=0.99, always_ram=True)),
    "binary": lambda: pb.QuantizationConfig(binary=pb.BinaryQuantization(always_ram=True)),
}


def _apply_layout(req: pb.CreateCollection, layout: Any) -> None:
    if layout.shard_number is not None:
        req.shard_number = layout.shard_number
    if layout.replication_factor is not None:
        req.replication_factor = layout.replication_factor
    if layout.write_consistency_factor is not None:
        req.write_consistency_factor = layout.write_consistency_factor
    if req.HasField("replication_factor") and req.HasField("write_consistency_factor") \
            and req.write_consistency_factor > req.replication_factor:
        # e.g. the source's factor 2 with a replication_factor of 1 set here: no write could ever be acknowledged
        req.write_consistency_factor = req.replication_factor
    if layout.on_disk_payload is not None:
        req.on_disk_payload = layout.on_disk_payload
        if req.HasField("payload"):  # `payload.memory` overrides the flag: keep the two in step (Memory::from_on_disk)
            req.payload.memory = pb.Memory.Cold if layout.on_disk_payload else pb.Memory.Cached
    if layout.quantization != "keep":
        req.ClearField("quantization_config")
        if layout.quantization in _QUANTIZATION:
            req.quantization_config.CopyFrom(_QUANTIZATION[layout.quantization]())
        # the choice applies to every vector: a copied vector's own quantization would override the collection's
        for params in req.vectors_config.params_map.map.values():
            params.ClearField("quantization_config")
        if req.vectors_config.HasField("params"):
            req.vectors_config.params.ClearField("quantization_config")
    if layout.strict_mode == "off":
        # explicitly disabled: an absent config takes the server's default for new collections (storage.collection.
        # strict_mode, lib/storage/src/content_manager/toc/create_collection.rs), which may be on
        req.strict_mode_config.CopyFrom(pb.StrictModeConfig(enabled=False))


def layout_summary(req: pb.CreateCollection) -> str:
    """One line for `reembed plan`: the new collection's layout as it will be created."""
    shards = f"{req.shard_number or 'default'} shard(s)"
    if req.HasField("sharding_method") and req.sharding_method == pb.ShardingMethod.Custom:
        shards += " per shard key (custom sharding)"
    parts = [shards, f"replication {req.replication_factor if req.HasField('replication_factor') else 'default'}"]
    if req.HasField("write_consistency_factor"):
        parts.append(f"write consistency {req.write_consistency_factor}")
    kind = req.quantization_config.WhichOneof("quantization") if req.HasField("quantization_config") else None
    parts.append(f"{kind} quantization" if kind else "no quantization")
    parts.append("payload on disk" if req.on_disk_payload else "payload in RAM")
    strict = StrictMode.from_proto(req.strict_mode_config if req.HasField("strict_mode_config") else None)
    parts.append(strict.describe())
    return ", ".join(parts)


def shard_keys_request(collection: str, keys: Sequence[str | int], *, shards_per_key: int | None = None,
                       replication_factor: int | None = None) -> list[pb.CreateShardKeyRequest]:
    """The CreateShardKey requests that give a custom-sharded new collection the source's shard keys (strings or
    non-negative integers, e.g. from `shard_keys_of` on the source's ListShardKeys reply). Without overrides each
    key gets the collection's shard_number and replication_factor (src/common/collections.rs, create_sharding_key);
    the placement on peers is left to the server."""
    out = []
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise PreconditionError(f"shard key {key!r} is neither a string nor an integer; Qdrant's keys are one "
                                    "or the other")
        if isinstance(key, int) and key < 0:
            raise PreconditionError(f"shard key {key} is negative; Qdrant's integer shard keys are unsigned")
        create = pb.CreateShardKey(shard_key=pb.ShardKey(keyword=key) if isinstance(key, str)
                                   else pb.ShardKey(number=key))
        if shards_per_key is not None:
            create.shards_number = shards_per_key
        if replication_factor is not None:
            create.replication_factor = replication_factor
        out.append(pb.CreateShardKeyRequest(collection_name=collection, request=create))
    return out


def shard_keys_of(reply: pb.ListShardKeysResponse) -> list[str | int]:
    """The shard keys of a Collections.ListShardKeys reply, as strings and integers."""
    return [d.key.keyword if d.key.WhichOneof("key") == "keyword" else int(d.key.number) for d in reply.shard_keys]


def is_custom_sharded(info: pb.CollectionInfo) -> bool:
    params = info.config.params
    return params.HasField("sharding_method") and params.sharding_method == pb.ShardingMethod.Custom


# --- headroom -----------------------------------------------------------------------------------------------------

_GIB = 1024**3
# Bytes per dimension of the stored vectors (VectorParams.datatype; TurboN is TurboQuant N-bit storage,
# lib/segment/src/types.rs VectorStorageDatatype).
_DATATYPE_BYTES = {"Default": 4.0, "Float32": 4.0, "Float16": 2.0, "Uint8": 1.0, "Turbo4": 0.5, "Turbo8": 1.0,
                   "Turbo16": 2.0}
_DEFAULT_HNSW_M = 16  # Qdrant's default m (lib/segment/src/types.rs HnswConfig)
_DEFAULT_WAL_MB = 32  # Qdrant's default wal_capacity_mb (lib/collection/src/config.rs WalConfig)


@dataclass(frozen=True)
class Footprint:
    """RAM and disk of one collection, all replicas together."""

    ram_bytes: int
    disk_bytes: int

    def describe(self) -> str:
        return f"{self.ram_bytes / _GIB:,.1f} GiB RAM, {self.disk_bytes / _GIB:,.1f} GiB disk"


@dataclass(frozen=True)
class Headroom:
    """What a new-collection migration needs beside the source, for `reembed plan`.

    `server_free_*` is None: Qdrant's public gRPC API reports no node memory or disk (qdrant.proto has HealthCheck
    only; the collections and points services describe collections). Qdrant 1.19's REST `GET /quotas` reports used
    percentages per peer, not bytes, and telemetry is REST as well; the operator compares against the nodes."""

    points: int
    source: Footprint  # the source as the same model estimates it: a scale to compare with
    new: Footprint
    server_free_ram_bytes: int | None = None
    server_free_disk_bytes: int | None = None
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        free = "free memory/disk: not reported over gRPC, check the nodes"
        if self.server_free_ram_bytes is not None and self.server_free_disk_bytes is not None:
            free = (f"free {self.server_free_ram_bytes / _GIB:,.1f} GiB RAM, "
                    f"{self.server_free_disk_bytes / _GIB:,.1f} GiB disk")
        return (f"new collection ~{self.new.describe()} for {self.points:,} points, beside the source's "
                f"~{self.source.describe()}; {free}")


def _cold(msg: Any, flag: str) -> bool:
    """Whether a component stays on disk (read through the page cache) rather than in RAM. The explicit `memory`
    wins over the deprecated flag (Memory::resolve in lib/segment/src/types.rs): Cold is on disk, Cached and Pinned
    are RAM; without either, RAM."""
    if _has_field(msg, "memory") and msg.memory != pb.Memory.MemoryUnknown:
        return msg.memory == pb.Memory.Cold
    return _has_field(msg, flag) and bool(getattr(msg, flag))


def _placed(msg: Any, flag: str) -> bool:
    return _has_field(msg, "memory") or _has_field(msg, flag)


def _quantized_bytes(q: pb.QuantizationConfig, dim: int) -> tuple[float, bool | None]:
    """Bytes per vector of a quantization (collections.proto: ScalarQuantization int8, ProductQuantization's
    compression ratio against float32, BinaryQuantization's bits, TurboQuantization's bits) and whether it is held
    in RAM (None: it follows its vectors)."""
    kind = q.WhichOneof("quantization")
    if kind is None:
        return 0.0, None
    sub = getattr(q, kind)
    ram = None
    if _has_field(sub, "memory") and sub.memory != pb.Memory.MemoryUnknown:
        ram = sub.memory != pb.Memory.Cold
    elif _has_field(sub, "always_ram") and sub.always_ram:
        ram = True
    if kind == "scalar":
        return float(dim), ram
    if kind == "product":
        ratio = {pb.CompressionRatio.x4: 4, pb.CompressionRatio.x8: 8, pb.CompressionRatio.x16: 16,
                 pb.CompressionRatio.x32: 32, pb.CompressionRatio.x64: 64}.get(sub.compression, 4)
        return 4.0 * dim / ratio, ram
    if kind == "binary":
        bits = {pb.BinaryQuantizationEncoding.OneBit: 1.0, pb.BinaryQuantizationEncoding.TwoBits: 2.0,
                pb.BinaryQuantizationEncoding.OneAndHalfBits: 1.5}.get(sub.encoding, 1.0)
        return dim * bits / 8.0, ram
    bits = {pb.TurboQuantBitSize.Bits1: 1.0, pb.TurboQuantBitSize.Bits1_5: 1.5, pb.TurboQuantBitSize.Bits2: 2.0,
            pb.TurboQuantBitSize.Bits4: 4.0, pb.TurboQuantBitSize.Bits8: 8.0}.get(sub.bits, 4.0)
    return dim * bits / 8.0, ram  # turboquant


@dataclass(frozen=True)
class _Shape:
    """The parts of a collection the estimate needs, from a CollectionInfo or a CreateCollection alike."""

    vectors: dict[str, pb.VectorParams]
    has_sparse: bool
    hnsw: pb.HnswConfigDiff
    quantization: pb.QuantizationConfig | None
    payload_cold: bool
    replicas: int
    shards: int
    wal: pb.WalConfigDiff | None

    @classmethod
    def of_info(cls, info: pb.CollectionInfo) -> _Shape:
        cfg, p = info.config, info.config.params
        payload_cold = _cold(p.payload, "") if _has_field(p, "payload") and _placed(p.payload, "") \
            else bool(p.on_disk_payload)
        return cls(_dense_of(p.vectors_config), bool(p.sparse_vectors_config.map), cfg.hnsw_config,
                   cfg.quantization_config if cfg.HasField("quantization_config") else None, payload_cold,
                   int(p.replication_factor or 1), int(p.shard_number or 1),
                   cfg.wal_config if cfg.HasField("wal_config") else None)

    @classmethod
    def of_request(cls, req: pb.CreateCollection) -> _Shape:
        if req.HasField("payload") and _placed(req.payload, ""):
            payload_cold = _cold(req.payload, "")
        else:  # Qdrant's default keeps payloads on disk (lib/collection/src/config.rs default_on_disk_payload)
            payload_cold = req.on_disk_payload if req.HasField("on_disk_payload") else True
        return cls(_dense_of(req.vectors_config), bool(req.sparse_vectors_config.map), req.hnsw_config,
                   req.quantization_config if req.HasField("quantization_config") else None, payload_cold,
                   int(req.replication_factor or 1), int(req.shard_number or 1),
                   req.wal_config if req.HasField("wal_config") else None)

    def footprint(self, points: int, payload_bytes: float, sparse_bytes: float, shard_keys: int) -> Footprint:
        ram = disk = 0.0  # per point and replica
        for params in self.vectors.values():
            dim = int(params.size)
            dtype = pb.Datatype.Name(params.datatype) if params.HasField("datatype") else "Default"
            original = dim * _DATATYPE_BYTES.get(dtype, 4.0)
            vectors_cold = _cold(params, "on_disk")
            q = params.quantization_config if params.HasField("quantization_config") else self.quantization
            q_bytes, q_ram = _quantized_bytes(q, dim) if q is not None else (0.0, None)
            own = params.hnsw_config if params.HasField("hnsw_config") else pb.HnswConfigDiff()
            m = int(own.m) if own.HasField("m") else int(self.hnsw.m) if self.hnsw.HasField("m") else _DEFAULT_HNSW_M
            graph = 2 * m * 4 * 1.1  # level 0 holds 2m u32 links per point; the upper levels add about a tenth
            graph_cold = _cold(own, "on_disk") if _placed(own, "on_disk") else _cold(self.hnsw, "on_disk")
            disk += original + q_bytes + graph
            ram += 0.0 if vectors_cold else original
            ram += q_bytes if (q_ram if q_ram is not None else not vectors_cold) else 0.0
            ram += 0.0 if graph_cold else graph
        if self.has_sparse:
            disk += sparse_bytes
            ram += sparse_bytes
        disk += payload_bytes
        ram += 0.0 if self.payload_cold else payload_bytes
        wal = self.wal
        wal_mb = int(wal.wal_capacity_mb) if wal is not None and wal.HasField("wal_capacity_mb") else _DEFAULT_WAL_MB
        ahead = int(wal.wal_segments_ahead) if wal is not None and wal.HasField("wal_segments_ahead") else 0
        wal_bytes = wal_mb * (1 + ahead) * 1024 * 1024 * self.shards * max(1, shard_keys) * self.replicas
        return Footprint(ram_bytes=int(ram * points * self.replicas),
                         disk_bytes=int(disk * points * self.replicas + wal_bytes))


def _dense_of(vc: pb.VectorsConfig) -> dict[str, pb.VectorParams]:
    if vc.HasField("params"):
        return {"": vc.params}
    return dict(vc.params_map.map.items())


def estimate_headroom(source: pb.CollectionInfo, new: pb.CreateCollection, points: int | None = None, *,
                      payload_bytes_per_point: float, sparse_bytes_per_point: float = 0.0,
                      shard_keys: int = 1) -> Headroom:
    """The RAM and disk the new collection will take beside the source: points x (per vector: its bytes by
    datatype, quantized bytes, ~8m bytes of HNSW links; plus payload and sparse bytes) x replicas, plus the WAL of
    every shard. RAM counts what is not kept on disk (`on_disk` / `memory: Cold`; quantized vectors are in RAM when
    `always_ram` or when their vectors are). `payload_bytes_per_point` and `sparse_bytes_per_point` come from a
    sample of the source (a sparse value is 8 bytes, index and weight); `points` defaults to the source's count;
    `shard_keys` is the number of custom shard keys. An estimate within tens of percent: segment overheads, payload
    indexes and an optimizer's temporary copy of a segment are left out."""
    n = int(points if points is not None else source.points_count)
    src = _Shape.of_info(source).footprint(n, payload_bytes_per_point, sparse_bytes_per_point, shard_keys)
    target = _Shape.of_request(new).footprint(n, payload_bytes_per_point, sparse_bytes_per_point, shard_keys)
    notes: list[str] = []
    if new.HasField("strict_mode_config"):
        notes += StrictMode.from_proto(new.strict_mode_config).capacity_problems(n)
    return Headroom(points=n, source=src, new=target, notes=tuple(notes))


def check_new_collection_target(info: pb.CollectionInfo, d: Decision, dim: int | None) -> None:
    """A target that exists already (this job's, resumed) must hold the vectors this job writes."""
    tmp = SourceSchema.from_info(d.collection, info, 0)
    if d.dense_name is not None and dim is not None:
        have = tmp.dense.get(d.dense_name)
        if have is None:
            raise PreconditionError(
                f"target collection {d.collection!r} has no vector named {d.dense_name or '(unnamed)'!r}; fix "
                "target.vector_name or choose a new target.collection"
            )
        if int(have.size) != int(dim):
            raise PreconditionError(
                f"the model makes {dim}-d vectors but target {d.collection!r} vector {d.dense_name or '(unnamed)'!r} "
                f"is {int(have.size)}-d; choose a new target.collection (or set model.matryoshka_dim to match)"
            )
    if d.sparse_name is not None and d.sparse_name not in tmp.sparse:
        raise PreconditionError(
            f"target collection {d.collection!r} has no sparse vector {d.sparse_name!r}; choose a new target.collection"
        )


def add_vectors_in_place(client: QdrantGrpc, cfg, d: Decision, schema: SourceSchema, dim: int | None,
                         owned: set[str]) -> list[str]:
    """CreateVectorName for each new vector of an in-place layout. A name that exists already is reused only when
    this job created it (`owned`, from its checkpoint); returns the names created now."""
    created = []
    wanted: list[tuple[str, str]] = []
    if d.dense_name is not None:
        wanted.append((d.dense_name, "dense"))
    if d.sparse_name is not None:
        wanted.append((d.sparse_name, "sparse"))
    for name, kind in wanted:
        exists = name in schema.dense or name in schema.sparse
        if exists and name not in owned:
            raise PreconditionError(
                f"{schema.collection!r} already has a vector named {name!r} that this job did not create; pick "
                f"another target.{'vector_name' if kind == 'dense' else 'sparse_vector_name'} (or drop that vector "
                "if it is a leftover)"
            )
        if exists:
            if kind == "dense" and (name not in schema.dense or int(schema.dense[name].size) != int(dim or 0)):
                raise PreconditionError(
                    f"vector {name!r} of {schema.collection!r} does not match the model's {dim}-d output; drop it "
                    "(reembed cleanup --drop-vector) or pick another target.vector_name"
                )
            continue
        if kind == "dense":
            client.create_vector_name(d.collection, name, dense=pb.DenseVectorCreationConfig(
                size=int(dim or 0), distance=getattr(pb.Distance, cfg.target.distance)))
        else:
            client.create_vector_name(d.collection, name,
                                      sparse=pb.SparseVectorCreationConfig(modifier=pb.Modifier.Idf))
        created.append(name)
        log.info("created %s vector %r on %s", kind, name, d.collection)
    return created


# --- HNSW deferral ------------------------------------------------------------------------------------------------

def defer_index(client: QdrantGrpc, cfg, d: Decision, created: list[str]) -> IndexDeferral | None:
    """Stop HNSW building for what this job creates while it loads, and return how to restore it.

    A new collection: its optimizer indexing_threshold is raised (the guide's bulk-load advice), the server's value
    kept for the restore. An in-place vector: only that new dense vector's HNSW `m` is set to 0 — never a vector
    that existed before (Qdrant warns that m=0 on an existing collection may drop its graph) and never the collection-wide threshold, which would
    leave the application's own new writes to the old vector unindexed. Sparse vectors are indexed on write anyway.
    """
    if not cfg.target.defer_index:
        return None
    info = client.collection_info(d.collection)
    if info is None:
        return None
    if d.layout == "new_collection":
        restore = int(info.config.optimizer_config.indexing_threshold)
        client.update_collection(pb.UpdateCollection(
            collection_name=d.collection,
            optimizers_config=pb.OptimizersConfigDiff(indexing_threshold=tunables.DEFERRED_INDEXING_THRESHOLD_KB)))
        log.info("HNSW deferred on new collection %s (indexing_threshold %d KB during the load, then %d)",
                 d.collection, tunables.DEFERRED_INDEXING_THRESHOLD_KB, restore)
        return IndexDeferral(kind="indexing_threshold", collection=d.collection, restore=restore)
    if d.dense_name is None or d.dense_name not in created:
        return None
    restore_m = cfg.target.hnsw_m if cfg.target.hnsw_m is not None else int(info.config.hnsw_config.m)
    _set_vector_m(client, d.collection, d.dense_name, 0)
    log.info("HNSW deferred on new vector %s.%s (m=0 during the load, then %d)", d.collection, d.dense_name,
             restore_m)
    return IndexDeferral(kind="vector_m", collection=d.collection, restore=restore_m, vector=d.dense_name)


def _set_vector_m(client: QdrantGrpc, collection: str, vector: str, m: int) -> None:
    req = pb.UpdateCollection(collection_name=collection)
    req.vectors_config.params_map.map[vector].hnsw_config.m = m
    client.update_collection(req)


def restore_index(client: QdrantGrpc, deferred: IndexDeferral | None,
                  timeout_s: float = tunables.INDEX_GREEN_TIMEOUT_S) -> IndexDeferral | None:
    """Undo `defer_index`, then wait for the collection to turn green (the index built). Idempotent."""
    if deferred is None:
        return None
    if not deferred.restored:
        if deferred.kind == "indexing_threshold":
            client.update_collection(pb.UpdateCollection(
                collection_name=deferred.collection,
                optimizers_config=pb.OptimizersConfigDiff(indexing_threshold=int(deferred.restore))))
        else:
            assert deferred.vector is not None
            _set_vector_m(client, deferred.collection, deferred.vector, int(deferred.restore))
        deferred.restored = True
        log.info("HNSW restored on %s; waiting for the index to build", deferred.collection)
    status, waited = client.wait_green(deferred.collection, timeout_s)
    deferred.status = status
    deferred.waited_s = round(waited, 1)
    if status != "Green":
        log.warning("%s is still %s after %.0f s; the index keeps building in the background, search works but is "
                    "slower until it is green", deferred.collection, status, waited)
    return deferred
