"""Blue-green cutover: point the alias at the new collection with one create-alias action, point it back, and delete
the old collection only when asked to and only when nothing points at it.

Qdrant applies the actions of one UpdateAliases request one by one and saves each (update_aliases in
lib/storage/src/content_manager/toc/collection_meta_ops.rs, AliasPersistence::insert/remove in
lib/storage/src/content_manager/alias_mapping.rs of the qdrant repository): a [delete, create] pair whose create
fails (the target gone, a name clash) leaves the application without its alias. A single `create_alias` replaces
an existing alias of that name in one step (`insert` into the alias map overwrites and saves), so that is the only
action sent; the alias is then read back to confirm where it points.

The gate: `swap` and `cleanup` refuse unless the latest `reembed verify` of the job passed (the state's verify
summary); `force` overrides, and the event records that it was forced and what the latest verify said.

Both also end a side-by-side comparison: the vectors the job kept on disk while both models lived get back the
placement the user had asked for (`restore_on_disk`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from qdrant_client import grpc as pb

from engine.errors import PreconditionError
from engine.flow.checkpoint import CheckpointStore
from engine.flow.state import JobState
from engine.qdrant.client import QdrantGrpc

log = logging.getLogger(__name__)


def _finished_state(store: CheckpointStore, job_id: str, what: str) -> JobState:
    state = store.load(job_id)
    if state is None or not state.finished:
        raise PreconditionError(
            f"{what} refused: job {job_id} has not finished a run ({store.describe()}); "
            "run `reembed run --config ...` to completion first"
        )
    return state


def verify_gate(state: JobState, what: str, force: bool) -> dict | None:
    """The latest verify of the job if it passed; else refuse, unless forced. Returns what the event records."""
    latest = state.verify
    seen: dict[str, Any] | None = (
        None if latest is None else {"passed": bool(latest.passed), "at": latest.at, "failed": list(latest.failed)})
    if seen is not None and seen["passed"]:
        return seen
    if force:
        log.warning("%s forced without a passing verify (%s); recorded in the job's events", what,
                    "never verified" if seen is None else "latest verify failed: " + ", ".join(seen["failed"]))
        return seen
    if seen is None:
        raise PreconditionError(
            f"{what} refused: job {state.job_id} has not been verified; run `reembed verify --config ...` "
            "(or add --force to override; it is recorded)"
        )
    assert latest is not None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen["at"])) if seen["at"] else "?"
    raise PreconditionError(
        f"{what} refused: the latest verify of job {state.job_id} ({when}) failed: {', '.join(seen['failed'])}; "
        f"fix the target and run `reembed verify` again (see {latest.report or 'its output'}), or add "
        "--force to override (recorded)"
    )


def point_alias(client: QdrantGrpc, alias: str, collection: str) -> str | None:
    """(Re)point `alias` at `collection` with one create-alias action; returns the collection it pointed at before.

    One action, never [delete, create]: Qdrant saves each action on its own, so a failed create after a delete
    would leave the application's alias gone. The alias is read back afterwards: if it does not point at
    `collection`, the cutover is reported as failed with where it points."""
    if client.collection_exists(alias) and alias not in client.list_aliases():
        raise PreconditionError(
            f"{alias!r} is a collection, not an alias, so it cannot be switched; point the application at an alias "
            "(set target.alias to a new name) and switch that"
        )
    if not client.collection_exists(collection):
        raise PreconditionError(f"collection {collection!r} does not exist; the alias {alias!r} was left as it was")
    before = client.list_aliases().get(alias)
    client.update_aliases([pb.AliasOperations(create_alias=pb.CreateAlias(collection_name=collection,
                                                                           alias_name=alias))])
    now = client.list_aliases().get(alias)
    if now != collection:
        raise PreconditionError(
            f"alias {alias!r} points at {now!r} after the switch, not {collection!r}; check the server's aliases "
            "(reembed status) and run the command again"
        )
    return before


def swap(client: QdrantGrpc, store: CheckpointStore, job_id: str, alias: str | None, source: str, target: str,
         force: bool = False) -> dict:
    if not alias:
        raise PreconditionError("swap needs target.alias in the config: the name the application queries")
    state = _finished_state(store, job_id, "swap")
    verified = verify_gate(state, "swap", force)
    before = point_alias(client, alias, target)
    restored = restore_on_disk(client, state)
    event = state.add_event("swap", alias=alias, **{"from": before or source, "to": target}, forced=force,
                            verify=verified, **({"on_disk_restored": restored} if restored else {}))
    store.save(state)
    log.info("alias %s now points at %s (was %s)", alias, target, before)
    return event.to_dict()


def rollback(client: QdrantGrpc, store: CheckpointStore, job_id: str, alias: str | None, source: str) -> dict:
    if not alias:
        raise PreconditionError("rollback needs target.alias in the config")
    state = store.load(job_id)
    if state is None:
        raise PreconditionError(f"no checkpoint for job {job_id}; nothing to roll back")
    if not client.collection_exists(source):
        raise PreconditionError(
            f"cannot roll back: source collection {source!r} no longer exists (cleanup already deleted it)"
        )
    before = point_alias(client, alias, source)
    event = state.add_event("rollback", alias=alias, **{"from": before, "to": source})
    store.save(state)
    log.info("alias %s points back at %s", alias, source)
    return event.to_dict()


def cleanup(client: QdrantGrpc, store: CheckpointStore, job_id: str, source: str, target: str,
            confirm: bool, force: bool = False) -> dict:
    if source == target:
        raise PreconditionError(
            f"this job wrote its new vectors into {source!r} itself; cleanup would delete them too — drop the old "
            "vector instead: reembed cleanup --drop-vector OLD --confirm"
        )
    if not confirm:
        raise PreconditionError(f"cleanup deletes collection {source!r} for good; add --confirm to proceed")
    state = _finished_state(store, job_id, "cleanup")
    pointing = sorted(a for a, c in client.list_aliases().items() if c == source)
    if pointing:
        raise PreconditionError(
            f"collection {source!r} is still the target of alias(es) {', '.join(pointing)}; "
            "run `reembed swap` first (or delete those aliases)"
        )
    if not client.collection_exists(target):
        raise PreconditionError(f"target collection {target!r} does not exist; refusing to delete the source")
    verified = verify_gate(state, "cleanup", force)
    if client.collection_exists(source):
        client.delete_collection(source)
    restored = restore_on_disk(client, state)
    event = state.add_event("cleanup", deleted=source, forced=force, verify=verified,
                            **({"on_disk_restored": restored} if restored else {}))
    store.save(state)
    return event.to_dict()


def drop_vector(client: QdrantGrpc, store: CheckpointStore, job_id: str, collection: str, vector: str,
                confirm: bool, force: bool = False) -> dict:
    """After an in-place (or side-by-side) migration: drop the old named vector and all its data
    (DeleteVectorName, Qdrant >= 1.18). Refuses the vector the job wrote, and anything without --confirm."""
    from engine.migration.strategies import VECTOR_SCHEMA_SINCE, SourceSchema, version_text

    if not confirm:
        raise PreconditionError(
            f"cleanup --drop-vector deletes vector {vector!r} and all its data from {collection!r} for good; "
            "add --confirm to proceed"
        )
    state = _finished_state(store, job_id, "cleanup")
    written = set(state.decision.new_vectors) if state.decision is not None else set()
    if vector in written:
        raise PreconditionError(
            f"vector {vector!r} is the one this job wrote; --drop-vector takes the OLD vector's name"
        )
    info = client.collection_info(collection)
    if info is None:
        raise PreconditionError(f"collection {collection!r} does not exist; nothing to drop")
    schema = SourceSchema.from_info(collection, info, 0)
    if vector not in schema.dense and vector not in schema.sparse:
        if vector in state.dropped_vectors:
            return {"action": "drop_vector", "collection": collection, "vector": vector, "already": True}
        raise PreconditionError(
            f"{collection!r} has no vector named {vector!r} (vectors: {', '.join(schema.names()) or 'none'}); "
            "check the name"
        )
    if schema.unnamed:
        raise PreconditionError(f"{collection!r} has an unnamed vector; only named vectors can be dropped")
    server = client.health()
    if server.version_tuple() < VECTOR_SCHEMA_SINCE:
        raise PreconditionError(
            f"dropping a vector needs Qdrant {version_text(VECTOR_SCHEMA_SINCE)} (server is {server.version}); "
            "keep it, or re-embed into a new collection without it and swap the alias"
        )
    verified = verify_gate(state, "cleanup", force)
    client.delete_vector_name(collection, vector)
    state.dropped_vectors = sorted({*state.dropped_vectors, vector})
    restored = restore_on_disk(client, state)
    event = state.add_event("drop_vector", collection=collection, vector=vector, forced=force, verify=verified,
                            **({"on_disk_restored": restored} if restored else {}))
    store.save(state)
    log.info("dropped vector %s from %s", vector, collection)
    return event.to_dict()


def restore_on_disk(client: QdrantGrpc, state: JobState) -> list[dict]:
    """Give the vectors a side-by-side job kept on disk while both models lived (the decision's `on_disk` records)
    the placement the user had asked for: the source's own setting for a copied vector, target.on_disk for the new
    one. Returns what was changed, for the event.

    Idempotent, so swap, cleanup and drop_vector all call it: a vector already placed as asked, or gone (dropped,
    its collection deleted), is left alone, and one nobody asked a placement for stays on disk."""
    decision = state.decision
    done: list[dict] = []
    for record in decision.on_disk if decision is not None else ():
        on_disk, memory = record.restore_on_disk, record.restore_memory
        if on_disk is None and memory is None:
            continue
        info = client.collection_info(record.collection)
        if info is None:
            continue
        vc = info.config.params.vectors_config
        unnamed = record.vector == "" and vc.HasField("params")
        if not unnamed and record.vector not in vc.params_map.map:
            continue
        params = vc.params if unnamed else vc.params_map.map[record.vector]
        have_memory = pb.Memory.Name(params.memory) if params.HasField("memory") else None
        if (on_disk is None or params.on_disk == on_disk) and (memory is None or have_memory == memory):
            continue
        req = pb.UpdateCollection(collection_name=record.collection)
        diff = req.vectors_config.params if unnamed else req.vectors_config.params_map.map[record.vector]
        if on_disk is not None:
            diff.on_disk = on_disk
        if memory is not None:
            diff.memory = pb.Memory.Value(memory)
        client.update_collection(req)
        done.append({"collection": record.collection, "vector": record.vector, "on_disk": on_disk, "memory": memory})
        log.info("vector %s.%s placed as asked again (on_disk %s, memory %s): both models no longer live side by "
                 "side", record.collection, record.vector or "(unnamed)", on_disk, memory)
    return done
