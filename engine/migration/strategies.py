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
from dataclasses import dataclass, field
from typing import Any

from qdrant_client import grpc as pb

from engine import tunables
from engine.errors import PreconditionError
from engine.qdrant.client import QdrantGrpc, ServerInfo

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
        return cls(collection, dense, sparse, sorted(info.payload_schema.keys()), points)

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


@dataclass
class Decision:
    requested: str
    strategy: str  # resolved: new_collection | in_place | side_by_side | hybrid
    layout: str  # in_place (new vectors added to the source) | new_collection (a new collection is written)
    collection: str  # the collection written
    dense_name: str | None  # the new dense vector; None when hybrid adds a sparse vector only
    sparse_name: str | None
    copy_vectors: dict[str, str] = field(default_factory=dict)  # source name -> name in the new collection
    vector_input: str | None = None  # shortcuts: stored vector transformed instead of text
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "strategy": self.strategy, "layout": self.layout,
                "collection": self.collection, "dense_vector": self.dense_name, "sparse_vector": self.sparse_name,
                "copy_vectors": dict(self.copy_vectors), "vector_input": self.vector_input, "reason": self.reason}


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
    """The CreateCollection of a new-collection layout: the new vectors plus every copied one with its own params."""
    req = pb.CreateCollection(collection_name=d.collection)
    if d.dense_name == "":
        if dim is None:
            raise PreconditionError("the model reports no output dimension, so the new vector cannot be sized; "
                                    "check model.name points at an embedding model (its config needs hidden_size)")
        req.vectors_config.params.CopyFrom(dense_params(cfg, dim))
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
    return req


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

def defer_index(client: QdrantGrpc, cfg, d: Decision, created: list[str]) -> dict | None:
    """Stop HNSW building for what this job creates while it loads, and return how to restore it.

    A new collection: its optimizer indexing_threshold is raised (the guide's bulk-load advice), the server's value
    kept for the restore. An in-place vector: only that new dense vector's HNSW `m` is set to 0 — never a vector
    that existed before (FACTS.md: it might drop its graph) and never the collection-wide threshold, which would
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
        return {"kind": "indexing_threshold", "collection": d.collection, "restore": restore, "restored": False}
    if d.dense_name is None or d.dense_name not in created:
        return None
    restore_m = cfg.target.hnsw_m if cfg.target.hnsw_m is not None else int(info.config.hnsw_config.m)
    _set_vector_m(client, d.collection, d.dense_name, 0)
    log.info("HNSW deferred on new vector %s.%s (m=0 during the load, then %d)", d.collection, d.dense_name,
             restore_m)
    return {"kind": "vector_m", "collection": d.collection, "vector": d.dense_name, "restore": restore_m,
            "restored": False}


def _set_vector_m(client: QdrantGrpc, collection: str, vector: str, m: int) -> None:
    req = pb.UpdateCollection(collection_name=collection)
    req.vectors_config.params_map.map[vector].hnsw_config.m = m
    client.update_collection(req)


def restore_index(client: QdrantGrpc, deferred: dict | None, timeout_s: float = tunables.INDEX_GREEN_TIMEOUT_S
                  ) -> dict | None:
    """Undo `defer_index`, then wait for the collection to turn green (the index built). Idempotent."""
    if deferred is None:
        return None
    if not deferred.get("restored"):
        if deferred["kind"] == "indexing_threshold":
            client.update_collection(pb.UpdateCollection(
                collection_name=deferred["collection"],
                optimizers_config=pb.OptimizersConfigDiff(indexing_threshold=int(deferred["restore"]))))
        else:
            _set_vector_m(client, deferred["collection"], deferred["vector"], int(deferred["restore"]))
        deferred["restored"] = True
        log.info("HNSW restored on %s; waiting for the index to build", deferred["collection"])
    status, waited = client.wait_green(deferred["collection"], timeout_s)
    deferred["status"] = status
    deferred["waited_s"] = round(waited, 1)
    if status != "Green":
        log.warning("%s is still %s after %.0f s; the index keeps building in the background, search works but is "
                    "slower until it is green", deferred["collection"], status, waited)
    return deferred
