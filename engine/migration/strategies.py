"""Which road of the migration guide a job takes, decided from the server version and the source schema before
anything is written, and the schema work each road needs (new vectors, new collections, deferred indexing).

The rules of Qdrant's model-migration guide:
- adding (or dropping) a named vector on an existing collection needs Qdrant >= 1.18 and a collection created with
  named vectors; otherwise the job writes a new collection and the application switches with an alias;
- side-by-side on an older server (or an unnamed source) is a new collection defined with both vectors, the old
  ones copied; hybrid likewise adds a sparse vector (IDF modifier) in place or in a new collection;
- HNSW building is deferred only for vectors the job creates, never by `m: 0` on an existing vector;
- a late-interaction model (ColBERT) writes a multivector: a dense vector with a MaxSim multivector_config;
- while both models live in one collection (side_by_side), multivectors and large dense vectors go on disk ("put
  large vectors on disk during side-by-side migration"), and `swap` / `cleanup` put back what the user had asked for;
- a change of quantization alone needs no model run: Qdrant re-quantizes the stored vectors after one
  UpdateCollection (`requantize_request`), and a small collection is faster re-indexed than migrated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from qdrant_client import grpc as pb

from engine import tunables
from engine.errors import PreconditionError
from engine.flow.state import Decision, IndexDeferral, OnDiskOverride
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
            "vectors": {n or "(unnamed)": {"size": int(p.size), "distance": pb.Distance.Name(p.distance),
                                           **({"multivector": "MaxSim"} if p.HasField("multivector_config") else {})}
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
    if cfg.model.kind == "late_interaction":
        decision = _late_interaction(decision, cfg.target.distance, cfg.shortcut.kind)
    if decision.strategy == "side_by_side":
        new_vector = pb.VectorParams(size=_dim_hint(cfg.model.name, cfg.model.matryoshka_dim, cfg.shortcut.dim) or 0,
                                     on_disk=cfg.target.on_disk)
        if decision.multi_name is not None:
            new_vector.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
        asked = cfg.target.on_disk if "on_disk" in cfg.target.model_fields_set else None
        decision = replace(decision, on_disk=on_disk_overrides(decision, schema, new_vector=new_vector, asked=asked))
    _check_names(cfg, decision, schema)
    return decision


def _late_interaction(d: Decision, distance: str, shortcut: str) -> Decision:
    """A late-interaction model writes its new vector as a multivector (one row per token, scored by MaxSim): the
    vector named target.vector_name is created with a multivector_config, so `dense_name` and `multi_name` name the
    same vector (the writer and the schema code read `dense_name` for the name, `multi_name` for the kind)."""
    if shortcut != "none":
        raise PreconditionError(
            f"shortcut {shortcut} derives one dense vector from each stored one, but model.kind late_interaction "
            "embeds the text into token vectors; remove the shortcut section or set model.kind: dense"
        )
    if d.dense_name is None:
        return d  # hybrid without target.vector_name: only the sparse vector is made, the model is not run
    if distance not in ("Cosine", "Dot"):
        raise PreconditionError(
            f"target.distance {distance} does not fit model.kind late_interaction: MaxSim sums the best similarity "
            "of unit token vectors; set target.distance to Cosine or Dot"
        )
    return replace(d, multi_name=d.dense_name,
                   reason=f"{d.reason}; {d.dense_name or '(unnamed)'!r} is a multivector (late interaction: one "
                          "vector per token, MaxSim)")


def _dim_hint(model_name: str, matryoshka_dim: int | None, shortcut_dim: int | None) -> int | None:
    """The new vectors' dimension where the config alone says it (a shortcut's or Matryoshka dim, a test embedder's
    `hash:<dim>`); None when only the loaded model knows."""
    if shortcut_dim is not None:
        return int(shortcut_dim)
    if matryoshka_dim is not None:
        return int(matryoshka_dim)
    kind, sep, dim = model_name.partition(":")
    if sep and kind in ("hash", "hashed-bow") and dim.isdigit():
        return int(dim)
    return None


# --- on disk while both models live (side_by_side) ---------------------------------------------------------------

def on_disk_reason(params: pb.VectorParams) -> str | None:
    """Why a vector goes on disk while both models live in its collection, or None when it keeps its placement.

    The guide: co-locating large vectors (ColBERT above all) with dense ones degrades every query, "put large vectors
    on disk during side-by-side migration". Large: every multivector, and a dense vector of at least
    tunables.SIDE_BY_SIDE_ON_DISK_BYTES per point (its datatype's bytes)."""
    if params.HasField("multivector_config"):
        return "a multivector (one vector per token, the guide's large vector)"
    dtype = pb.Datatype.Name(params.datatype) if params.HasField("datatype") else "Default"
    nbytes = int(int(params.size) * _DATATYPE_BYTES.get(dtype, 4.0))
    if nbytes >= tunables.SIDE_BY_SIDE_ON_DISK_BYTES:
        return (f"{int(params.size)}-d, {nbytes:,} bytes per vector (at least {tunables.SIDE_BY_SIDE_ON_DISK_BYTES:,}: "
                "a large vector)")
    return None


def _asked_placement(params: pb.VectorParams) -> tuple[bool | None, str | None]:
    """The placement a vector's params ask for: (on_disk, memory name), None where they leave it to the server."""
    on_disk = bool(params.on_disk) if params.HasField("on_disk") else None
    memory = None
    if _has_field(params, "memory") and params.memory != pb.Memory.MemoryUnknown:
        memory = pb.Memory.Name(params.memory)
    return on_disk, memory


def _force_on_disk(params: pb.VectorParams) -> None:
    params.on_disk = True
    if _has_field(params, "memory") and params.memory != pb.Memory.MemoryUnknown:
        params.memory = pb.Memory.Cold  # `memory` wins over the flag (Memory::resolve, lib/segment/src/types.rs)


def on_disk_overrides(d: Decision, schema: SourceSchema, *, new_vector: pb.VectorParams | None,
                      asked: bool | None) -> tuple[OnDiskOverride, ...]:
    """side_by_side: the vectors put on disk while both models live, each with the placement `swap` / `cleanup`
    put back (the user's own: the source's params for a copied vector, `asked` — target.on_disk where the config
    sets it — for the new one; None where nothing was asked, and then the vector stays on disk).

    In a new collection: each copied vector and the new one that `on_disk_reason` names and that would be in RAM.
    In place: the new vector only; an existing vector of the live collection keeps its storage, since changing it
    rewrites every segment under the application's searches. `new_vector` sizes the new vector (size 0: only the
    loaded model knows; recorded anyway, and put on disk at creation if it turns out large)."""
    if d.strategy != "side_by_side":
        return ()
    out: list[OnDiskOverride] = []
    if d.layout == "new_collection":
        for src, dst in d.copy_vectors.items():
            params = schema.dense.get(src)
            why = on_disk_reason(params) if params is not None else None
            if params is not None and why and not _cold(params, "on_disk"):
                on_disk, memory = _asked_placement(params)
                out.append(OnDiskOverride(d.collection, dst, f"copied {src or '(unnamed)'!r}: {why}", on_disk, memory))
    if d.dense_name is not None and new_vector is not None and not _cold(new_vector, "on_disk"):
        why = on_disk_reason(new_vector) if new_vector.size or new_vector.HasField("multivector_config") else (
            f"if the model's vectors are {tunables.SIDE_BY_SIDE_ON_DISK_BYTES:,} bytes or more (a large vector)")
        if why is not None:
            out.append(OnDiskOverride(d.collection, d.dense_name, f"new vector: {why}", asked, None))
    return tuple(out)


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
        req.vectors_config.params.CopyFrom(_new_vector_params(dense_params(cfg, dim), d))
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
        pmap[d.dense_name].CopyFrom(_new_vector_params(dense_params(cfg, dim), d))
    if d.sparse_name is not None:
        req.sparse_vectors_config.map[d.sparse_name].CopyFrom(pb.SparseVectorParams(modifier=pb.Modifier.Idf))
    if not pmap and not req.sparse_vectors_config.map:
        raise PreconditionError("the new collection would hold no vector; set target.vector_name")
    if d.strategy == "side_by_side":
        for params in pmap.values():  # both models live here: large vectors on disk (see on_disk_overrides)
            if on_disk_reason(params) and not _cold(params, "on_disk"):
                _force_on_disk(params)
    carry_layout(req, schema.info, cfg.target.layout)
    return req


def _new_vector_params(params: pb.VectorParams, d: Decision) -> pb.VectorParams:
    """The new vector's params; a late-interaction model's is a multivector compared by MaxSim (the only comparator
    Qdrant has, lib/segment/src/types.rs MultiVectorComparator)."""
    if d.multi_name is not None:
        params.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
    return params


# --- the new collection's layout ----------------------------------------------------------------------------------
# What CreateCollection copies from the source (lib/api/src/grpc/proto/collections.proto: CollectionInfo.config
# against CreateCollection). Fields a server does not know are ignored by it, and it reports only fields it knows.
_CopiedConfig = Literal["hnsw_config", "optimizer_config", "wal_config", "quantization_config", "strict_mode_config"]


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
        copied: tuple[tuple[_CopiedConfig, str], ...] = (
            ("hnsw_config", "hnsw_config"), ("optimizer_config", "optimizers_config"), ("wal_config", "wal_config"),
            ("quantization_config", "quantization_config"), ("strict_mode_config", "strict_mode_config"))
        for src_name, dst_name in copied:
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


# --- changes that need no model run --------------------------------------------------------------------------------

def quantization_of(info: pb.CollectionInfo) -> str:
    """What quantization a collection's dense vectors use, as target.layout.quantization spells it (none, scalar,
    binary; product and turboquant by their names): a vector's own config wins over the collection's. "mixed" when
    its vectors differ."""
    config = info.config
    default = config.quantization_config.WhichOneof("quantization") if config.HasField("quantization_config") else None
    kinds = set()
    for params in _dense_of(config.params.vectors_config).values():
        own = params.quantization_config.WhichOneof("quantization") if params.HasField("quantization_config") else None
        kinds.add(own or default or "none")
    if not kinds:
        return default or "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def requantize_request(collection: str, info: pb.CollectionInfo, quantization: str) -> pb.UpdateCollection:
    """The UpdateCollection that gives every dense vector of `collection` the quantization `quantization` (none,
    scalar or binary, with the same settings a new collection gets): the collection's config set, and each vector's
    own config cleared so that it follows the collection's (a per-vector `disabled` diff clears it:
    CollectionParams::update_vectors_from_other in lib/collection/src/config.rs). Qdrant then re-quantizes the
    stored vectors in the background; the originals are untouched, so no model runs."""
    if quantization not in ("none", *_QUANTIZATION):
        raise PreconditionError(f"quantization {quantization!r} cannot be applied; set target.layout.quantization to "
                                f"none, {' or '.join(_QUANTIZATION)}")
    req = pb.UpdateCollection(collection_name=collection)
    if quantization == "none":
        req.quantization_config.disabled.SetInParent()
    else:
        built = _QUANTIZATION[quantization]()
        getattr(req.quantization_config, quantization).CopyFrom(getattr(built, quantization))
    vc = info.config.params.vectors_config
    for name, params in _dense_of(vc).items():
        if params.HasField("quantization_config"):
            diff = req.vectors_config.params if name == "" and vc.HasField("params") else \
                req.vectors_config.params_map.map[name]
            diff.quantization_config.disabled.SetInParent()
    return req


@dataclass(frozen=True)
class Requantize:
    """A requested change that is quantization only: no re-embedding, one UpdateCollection on the source."""

    collection: str
    current: str  # the source's quantization (quantization_of)
    requested: str  # target.layout.quantization
    request: pb.UpdateCollection | None  # None: the source has it already
    evidence: str  # why the model is taken to be the one that made the source vectors


def same_model_evidence(model_name: str, old_model: str | None, recorded_model: Mapping[str, Any] | None) -> str | None:
    """Why model.name is the model that made the source vectors, or None when nothing says so. Two sources: the
    config says it (verify.old_model, "the model that made the source vectors", equals model.name), or the source's
    own reembed metadata records that model (a collection written by an earlier job)."""
    if old_model is not None and old_model == model_name:
        return f"model.name equals verify.old_model ({model_name!r}), the model that made the source vectors"
    if recorded_model and recorded_model.get("name") == model_name:
        return f"the source's reembed metadata records model {model_name!r} as the one that wrote its vectors"
    return None


def quantization_only(info: pb.CollectionInfo, collection: str, *, requested: str, strategy: str, shortcut: str,
                      model_name: str, model_kind: str, matryoshka_dim: int | None, old_model: str | None,
                      recorded_model: Mapping[str, Any] | None, vector: str | None) -> Requantize | None:
    """The quantization-only answer, or None when the job really needs the model.

    Quantization only: target.layout.quantization names one (not keep), the model is the one that made the source
    vectors (same_model_evidence), the job asks for nothing else a model or a new vector would be needed for (no
    hybrid sparse vector, no shortcut), and the source vector (source.vector_name, else the only dense one) has
    the model's kind and, where the config tells it, its dimension."""
    if requested == "keep" or strategy == "hybrid" or shortcut != "none":
        return None
    evidence = same_model_evidence(model_name, old_model, recorded_model)
    if evidence is None:
        return None
    dense = _dense_of(info.config.params.vectors_config)
    name = vector if vector is not None else (next(iter(dense)) if len(dense) == 1 else None)
    params = dense.get(name) if name is not None else None
    if params is not None:
        if params.HasField("multivector_config") != (model_kind == "late_interaction"):
            return None
        dim = _dim_hint(model_name, matryoshka_dim, None)
        if dim is not None and dim != int(params.size):
            return None
    current = quantization_of(info)
    request = None if current == requested else requantize_request(collection, info, requested)
    return Requantize(collection, current, requested, request, evidence)


def small_collection_advice(source_bytes: float) -> str | None:
    """The guide's advice for a small source (tunables.SMALL_COLLECTION_BYTES), or None above it."""
    if source_bytes >= tunables.SMALL_COLLECTION_BYTES:
        return None
    return (f"the source holds ~{source_bytes / 1e6:,.1f} MB, under the guide's "
            f"{tunables.SMALL_COLLECTION_BYTES / 1e6:,.0f} MB: re-indexing it from the source data (upload it again "
            "with the new model) is faster than a migration")


def shard_keys_request(collection: str, keys: Sequence[str | int], *, shards_per_key: int | None = None,
                       replication_factor: int | None = None,
                       shards_by_key: Mapping[str | int, int] | None = None) -> list[pb.CreateShardKeyRequest]:
    """The CreateShardKey requests that give a custom-sharded new collection the source's shard keys (strings or
    non-negative integers, e.g. from `shard_keys_of` on the source's ListShardKeys reply). Without overrides each
    key gets the collection's shard_number and replication_factor (src/common/collections.rs, create_sharding_key);
    `shards_by_key` (the source's own counts, QdrantGrpc.shards_per_key) keeps a key created with its own
    shards_number as wide as it was; the placement on peers is left to the server."""
    out = []
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise PreconditionError(f"shard key {key!r} is neither a string nor an integer; Qdrant's keys are one "
                                    "or the other")
        if isinstance(key, int) and key < 0:
            raise PreconditionError(f"shard key {key} is negative; Qdrant's integer shard keys are unsigned")
        create = pb.CreateShardKey(shard_key=pb.ShardKey(keyword=key) if isinstance(key, str)
                                   else pb.ShardKey(number=key))
        width = (shards_by_key or {}).get(key, shards_per_key)
        if width is not None:
            create.shards_number = width
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
        _check_kind(have, d, d.collection, d.dense_name)
    if d.sparse_name is not None and d.sparse_name not in tmp.sparse:
        raise PreconditionError(
            f"target collection {d.collection!r} has no sparse vector {d.sparse_name!r}; choose a new target.collection"
        )


def _check_kind(have: pb.VectorParams, d: Decision, collection: str, name: str) -> None:
    """An existing vector the job would write must be of the kind the model makes: a multivector for a late-interaction
    model, a plain dense vector otherwise (Qdrant refuses the other with "Wrong usage of multi vectors")."""
    is_multi = have.HasField("multivector_config")
    if is_multi != (d.multi_name is not None):
        made, held = ("token vectors (a multivector)", "a plain dense vector") if d.multi_name is not None else (
            "one vector per text", "a multivector")
        raise PreconditionError(
            f"the model makes {made} but vector {name or '(unnamed)'!r} of {collection!r} is {held}; choose a new "
            "target.collection / target.vector_name (or fix model.kind)"
        )


def add_vectors_in_place(client: QdrantGrpc, cfg, d: Decision, schema: SourceSchema, dim: int | None,
                         owned: set[str]) -> list[str]:
    """CreateVectorName for each new vector of an in-place layout. A name that exists already is reused only when
    this job created it (`owned`, from its checkpoint); returns the names created now.

    A late-interaction model's vector is created with a MaxSim multivector_config. CreateVectorName has no storage
    setting, so a new dense vector that target.on_disk asks to be on disk, or that side_by_side keeps on disk while
    both models live (on_disk_reason), is moved there by an UpdateCollection right after (again on a resume, if a
    crash came between the two)."""
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
            if kind == "dense":
                _check_kind(schema.dense[name], d, schema.collection, name)
                _place_new_vector(client, cfg.target.on_disk, d, name, schema.dense[name])
            continue
        if kind == "dense":
            creation = pb.DenseVectorCreationConfig(size=int(dim or 0),
                                                    distance=getattr(pb.Distance, cfg.target.distance))
            if d.multi_name == name:
                creation.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
            client.create_vector_name(d.collection, name, dense=creation)
            _place_new_vector(client, cfg.target.on_disk, d, name,
                              pb.VectorParams(size=creation.size, multivector_config=creation.multivector_config)
                              if creation.HasField("multivector_config") else pb.VectorParams(size=creation.size))
        else:
            client.create_vector_name(d.collection, name,
                                      sparse=pb.SparseVectorCreationConfig(modifier=pb.Modifier.Idf))
        created.append(name)
        log.info("created %s vector %r on %s", kind, name, d.collection)
    return created


def _place_new_vector(client: QdrantGrpc, target_on_disk: bool, d: Decision, name: str,
                      params: pb.VectorParams) -> None:
    """Put a vector this job created in place on disk when target.on_disk asks for it or side_by_side keeps it
    there while both models live."""
    why = on_disk_reason(params) if d.strategy == "side_by_side" else None
    if not (target_on_disk or why) or _cold(params, "on_disk"):
        return
    req = pb.UpdateCollection(collection_name=d.collection)
    req.vectors_config.params_map.map[name].on_disk = True
    client.update_collection(req)
    log.info("vector %s.%s on disk (%s)", d.collection, name, why or "target.on_disk")


# --- HNSW deferral ------------------------------------------------------------------------------------------------

def defer_index(client: QdrantGrpc, cfg, d: Decision, created: list[str]) -> IndexDeferral | None:
    """Stop HNSW building for what this job creates while it loads, and return how to restore it.

    A new collection: its optimizer indexing_threshold is raised (the guide's bulk-load advice), the server's value
    kept for the restore. An in-place vector: only that new dense vector's HNSW `m` is set to 0 — never a vector
    that existed before (Qdrant warns that m=0 on an existing collection may drop its graph) and never the
    collection-wide threshold, which would
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
