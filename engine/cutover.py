"""Blue-green cutover: point the alias at the new collection in one atomic UpdateAliases request, point it back,
and delete the old collection only when asked to and only when nothing points at it."""

from __future__ import annotations

import logging
import time

from qdrant_client import grpc as pb

from engine.checkpoint import CheckpointStore, JobState
from engine.errors import PreconditionError
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


def point_alias(client: QdrantGrpc, alias: str, collection: str) -> str | None:
    """Atomically (re)point `alias` at `collection`; returns the collection it pointed at before, if any."""
    if client.collection_exists(alias) and alias not in client.list_aliases():
        raise PreconditionError(
            f"{alias!r} is a collection, not an alias, so it cannot be switched; point the application at an alias "
            "(set target.alias to a new name) and switch that"
        )
    before = client.list_aliases().get(alias)
    actions = []
    if before is not None:
        actions.append(pb.AliasOperations(delete_alias=pb.DeleteAlias(alias_name=alias)))
    actions.append(pb.AliasOperations(create_alias=pb.CreateAlias(collection_name=collection, alias_name=alias)))
    client.update_aliases(actions)  # one request: Qdrant applies its actions atomically
    return before


def swap(client: QdrantGrpc, store: CheckpointStore, job_id: str, alias: str | None, source: str, target: str,
         force: bool = False) -> dict:
    if not alias:
        raise PreconditionError("swap needs target.alias in the config: the name the application queries")
    state = _finished_state(store, job_id, "swap")
    before = point_alias(client, alias, target)
    event = {"action": "swap", "alias": alias, "from": before or source, "to": target, "at": time.time(),
             "forced": force}
    state.events.append(event)
    store.save(state)
    log.info("alias %s now points at %s (was %s)", alias, target, before)
    return event


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
    event = {"action": "rollback", "alias": alias, "from": before, "to": source, "at": time.time()}
    state.events.append(event)
    store.save(state)
    log.info("alias %s points back at %s", alias, source)
    return event


def cleanup(client: QdrantGrpc, store: CheckpointStore, job_id: str, source: str, target: str,
            confirm: bool, force: bool = False) -> dict:
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
    if client.collection_exists(source):
        client.delete_collection(source)
    event = {"action": "cleanup", "deleted": source, "at": time.time(), "forced": force}
    state.events.append(event)
    store.save(state)
    return event
