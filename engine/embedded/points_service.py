"""`qdrant.Points` on qdrant-edge shards: writes, reads, queries, payload indexes and vector names.

A collection has one or more shards (sharding.py): writes are split by point id over the shards that own the ids,
or go to every shard of the selected shard keys when they select by filter; reads reach every selected shard and
are merged (merge.py) as Qdrant's collection layer merges them. Strict mode (strict_mode.py) is checked before a
request touches a shard; each shard then charges its own read/write rate limiter.

Writes are applied synchronously by qdrant-edge, so `wait=true` and `wait=false` both reply after the write is
applied (wait=false reports Acknowledged, as Qdrant does). qdrant-edge holds the GIL while it works, so calls
run right on the server's event loop thread: handing them to other threads only adds switching (measured with
asyncio.to_thread: half the throughput).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import grpc
import qdrant_edge as qe
from qdrant_client import grpc as pb

from engine.embedded import convert as cv
from engine.embedded import merge, schema
from engine.embedded import strict_mode as sm
from engine.embedded.catalog import Catalog, Collection, Shard
from engine.embedded.compat import Compat
from engine.embedded.queries import QueryBuilder, Resolver, referenced_ids
from engine.embedded.rate_limit import READ, WRITE
from engine.embedded.sharding import Selector, ShardGroup, selector_in
from engine.embedded.status import (
    ApiError,
    as_api_error,
    bad_input,
    bad_request,
    invalid_argument,
    not_found,
    rpc,
    some_shards_failed,
    unsupported,
    validation_error,
)
from engine.embedded.storage_reads import StorageReadCounter
from engine.qdrant.values import payload_to_python

log = logging.getLogger(__name__)

_UPDATE_MODES = {
    pb.UpdateMode.Upsert: qe.UpdateMode.Upsert,
    pb.UpdateMode.InsertOnly: qe.UpdateMode.InsertOnly,
    pb.UpdateMode.UpdateOnly: qe.UpdateMode.UpdateOnly,
}

# Operation built for the shard that owns the points at these positions of the request (None: all of them).
MakeOp = Callable[[Optional[Sequence[int]]], qe.UpdateOperation]


class Stats:
    """Points written and read and queries answered, for the operator's periodic log line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._since = time.monotonic()

    def add(self, what: str, n: int) -> None:
        with self._lock:
            self._counts[what] += n

    def take(self) -> tuple[dict[str, int], float]:
        """The counts since the last take, and the seconds they span; resets both."""
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
            now = time.monotonic()
            elapsed, self._since = now - self._since, now
        return counts, elapsed


@dataclass
class ShardWrite:
    """One shard's part of a write, and what it costs that shard's write rate limiter (points touched)."""

    shard: Shard
    op: qe.UpdateOperation
    cost: int


def _pick(items: Sequence[Any], positions: Optional[Sequence[int]]) -> list[Any]:
    return list(items) if positions is None else [items[i] for i in positions]


def _wants_payload(with_payload: Any) -> bool:
    return with_payload is not False


class PointsService(pb.PointsServicer):
    def __init__(self, catalog: Catalog, compat: Compat, reads: Optional[StorageReadCounter] = None) -> None:
        self.catalog = catalog
        self.compat = compat
        self.stats = Stats()
        self.reads = reads if reads is not None else StorageReadCounter()
        self._operation_ids = itertools.count(1)
        self._ignored_fields_logged: set[str] = set()

    # -- helpers --------------------------------------------------------------------------------------------------

    def _done(self, wait: bool, started: float) -> pb.PointsOperationResponse:
        status = pb.UpdateStatus.Completed if wait else pb.UpdateStatus.Acknowledged
        return pb.PointsOperationResponse(
            result=pb.UpdateResult(operation_id=next(self._operation_ids), status=status),
            time=time.perf_counter() - started,
        )

    def _ignored(self, field: str) -> None:
        # An old server drops fields it does not know; say so once in the log so an operator can see why.
        if field not in self._ignored_fields_logged:
            self._ignored_fields_logged.add(field)
            log.warning(
                "emulating Qdrant %s: request field `%s` is ignored, as that version would", self.compat.version_text,
                field
            )

    def _update_filter(self, request: Any) -> Optional[qe.Filter]:
        if not request.HasField("update_filter"):
            return None
        if not self.compat.update_filter:
            self._ignored("update_filter")
            return None
        return cv.filter_in(request.update_filter)

    # -- routing writes ---------------------------------------------------------------------------------------------

    @staticmethod
    def _by_id(coll: Collection, groups: list[ShardGroup], ids: Sequence[Any], make: MakeOp) -> list[ShardWrite]:
        """The write split over the shards that own `ids` (lib/collection/src/operations/mod.rs split_iter_by_shard)."""
        only = coll.only_shard
        if only is not None:
            return [ShardWrite(only, make(None), len(ids))] if ids else []
        writes = []
        for group in groups:
            owners = coll.layout.ring(group.key).shards_for(ids).tolist()
            positions: dict[int, list[int]] = {}
            for pos, shard_id in enumerate(owners):
                positions.setdefault(shard_id, []).append(pos)
            for shard_id in sorted(positions):
                writes.append(ShardWrite(coll.shards[shard_id], make(positions[shard_id]), len(positions[shard_id])))
        return writes

    @staticmethod
    def _to_all(
        coll: Collection, groups: list[ShardGroup], op: qe.UpdateOperation, flt: Optional[qe.Filter]
    ) -> list[ShardWrite]:
        """A write by filter: every shard of the groups, each charged its estimated matches (at least 1)."""
        writes = []
        for group in groups:
            for shard_id in group.shard_ids:
                shard = coll.shards[shard_id]
                cost = 1
                if shard.write_limiter is not None and flt is not None:
                    cost = max(1, shard.edge.count(qe.CountRequest(exact=False, filter=flt)))
                writes.append(ShardWrite(shard, op, cost))
        return writes

    def _selected(self, coll: Collection, message: Any, ids: Optional[Sequence[Any]], make: MakeOp,
                  flt: Optional[qe.Filter] = None) -> list[ShardWrite]:
        groups = coll.layout.write_groups(selector_in(message))
        if ids is not None:
            return self._by_id(coll, groups, ids, make)
        return self._to_all(coll, groups, make(None), flt)

    @staticmethod
    def _execute(coll: Collection, writes: list[ShardWrite]) -> None:
        """Apply each shard's part; failures on some shards only are reported as Qdrant words them."""
        if not writes:  # collection/point_ops.rs update_from_client: no shard took part
            raise bad_request("Empty update request")
        for write in writes:
            if write.shard.write_limiter is not None:
                write.shard.write_limiter.try_consume(max(1, write.cost), WRITE)
        errors: list[ApiError] = []
        for write in writes:
            try:
                write.shard.edge.update(write.op)
            except Exception as exc:  # noqa: BLE001 - the other shards' parts still apply, as in Qdrant
                errors.append(as_api_error(exc))
        coll.dirty = True
        if errors:
            raise some_shards_failed(errors, len(writes))

    def _selector_writes(self, coll: Collection, message: Any, selector: pb.PointsSelector,
                         by_ids: Callable[[list], qe.UpdateOperation],
                         by_filter: Callable[[qe.Filter], qe.UpdateOperation]) -> list[ShardWrite]:
        kind = selector.WhichOneof("points_selector_one_of")
        if kind == "points":
            ids = [cv.point_id_in(pid) for pid in selector.points.ids]
            return self._selected(coll, message, ids, lambda pos: by_ids(_pick(ids, pos)))
        if kind == "filter":
            flt = cv.filter_in(selector.filter) or qe.Filter()
            strict = coll.strict_mode
            if strict is not None:
                sm.check_filter(strict, selector.filter, coll.payload_schema, write=True)
            return self._selected(coll, message, None, lambda _: by_filter(flt), flt)
        raise bad_input("Points selector is empty: give point ids or a filter")

    # -- building points --------------------------------------------------------------------------------------------

    @staticmethod
    def _points_in(points: Iterable[pb.PointStruct], coll: Collection) -> tuple[list[qe.Point], list[Any]]:
        # The upsert hot loop (~50 % of the endpoint's cost per point): locals bound once, no per-point messages.
        check = coll.vector_schema.check
        single = coll.single_unnamed
        point_id_in = cv.point_id_in
        vectors_in = cv.vectors_in
        to_python = payload_to_python
        Point = qe.Point
        out: list[qe.Point] = []
        ids = []
        append = out.append
        vectors: dict[str, cv.EdgeVector] | cv.EdgeVector  # named, or the bare form of a single unnamed vector
        for point in points:
            if not point.HasField("id"):
                raise invalid_argument("Empty ID is not allowed")
            if not point.HasField("vectors"):  # lib/api/src/grpc/conversions.rs PointStruct: "Expected some vectors"
                raise invalid_argument("Expected some vectors")
            pid = point.id
            ident = pid.num if pid.WhichOneof("point_id_options") == "num" else point_id_in(pid)
            vectors = vectors_in(point.vectors)
            check(vectors)
            if single and len(vectors) == 1 and cv.DEFAULT_VECTOR in vectors:
                vectors = vectors[cv.DEFAULT_VECTOR]  # the bare form skips a dict per point in qdrant-edge
            payload = point.payload
            # qdrant-edge reads any float sequence (dense_floats' memoryviews); its stub asks for lists
            append(Point(ident, vectors, to_python(payload) if payload else None))  # type: ignore[arg-type]
            ids.append(ident)
        return out, ids

    @staticmethod
    def _point_vectors_in(
        points: Iterable[pb.PointVectors], coll: Collection
    ) -> tuple[list[qe.PointVectors], list[Any]]:
        check = coll.vector_schema.check
        out = []
        ids = []
        for point in points:
            if not point.HasField("id"):
                raise invalid_argument("id is expected")
            if not point.HasField("vectors"):
                raise invalid_argument("vectors is expected")
            ident = cv.point_id_in(point.id)
            vectors = cv.vectors_in(point.vectors)  # an empty NamedVectors is let through, as over Qdrant's gRPC
            check(vectors)
            out.append(qe.PointVectors(ident, vectors))  # type: ignore[arg-type]  # as in _points_in
            ids.append(ident)
        return out, ids

    def _upsert_mode(self, request: Any) -> Any:
        if not request.HasField("update_mode"):
            return None
        if not self.compat.update_mode:
            self._ignored("update_mode")
            return None
        mode = _UPDATE_MODES.get(request.update_mode)
        if mode is None:
            raise bad_input(f"Unknown update_mode {request.update_mode}")
        return mode

    def _upsert_writes(self, coll: Collection, request: Any) -> tuple[list[ShardWrite], int]:
        points, ids = self._points_in(request.points, coll)
        strict = coll.strict_mode
        if strict is not None:
            sm.check_write_batch(strict, len(points), "upsert limit", request)
        flt, mode = self._update_filter(request), self._upsert_mode(request)
        make = lambda pos: qe.UpdateOperation.upsert_points(_pick(points, pos), flt, mode)  # noqa: E731
        return self._selected(coll, request, ids, make), len(points)

    def _update_vectors_writes(self, coll: Collection, request: Any) -> tuple[list[ShardWrite], int]:
        points, ids = self._point_vectors_in(request.points, coll)
        strict = coll.strict_mode
        if strict is not None:
            sm.check_write_batch(strict, len(points), "update limit", request)
        flt = self._update_filter(request)
        make = lambda pos: qe.UpdateOperation.update_vectors(_pick(points, pos), flt)  # noqa: E731
        return self._selected(coll, request, ids, make), len(points)

    # -- writes ---------------------------------------------------------------------------------------------------

    @rpc
    def Upsert(self, request: pb.UpsertPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            writes, count = self._upsert_writes(coll, request)
            self._execute(coll, writes)
        self.stats.add("points written", count)
        return self._done(request.wait, started)

    @rpc
    def UpdateVectors(self, request: pb.UpdatePointVectors,
                      context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            writes, count = self._update_vectors_writes(coll, request)
            self._execute(coll, writes)
        self.stats.add("points written", count)
        return self._done(request.wait, started)

    def _delete_writes(self, coll: Collection, message: Any, selector: pb.PointsSelector) -> list[ShardWrite]:
        return self._selector_writes(
            coll, message, selector, qe.UpdateOperation.delete_points, qe.UpdateOperation.delete_points_by_filter
        )

    @rpc
    def Delete(self, request: pb.DeletePoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            if not request.HasField("points"):
                raise invalid_argument("PointSelector is missing")
            self._execute(coll, self._delete_writes(coll, request, request.points))
        return self._done(request.wait, started)

    def _delete_vectors_writes(self, coll: Collection, message: Any) -> list[ShardWrite]:
        names = list(message.vectors.names)
        for name in names:
            if name not in coll.vector_schema.dense and name not in coll.vector_schema.sparse:
                raise bad_input(f"Not existing vector name error: {name}")
        return self._selector_writes(
            coll,
            message,
            message.points_selector,
            lambda ids: qe.UpdateOperation.delete_vectors(ids, names),
            lambda flt: qe.UpdateOperation.delete_vectors_by_filter(flt, names),
        )

    @rpc
    def DeleteVectors(self, request: pb.DeletePointVectors,
                      context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            self._execute(coll, self._delete_vectors_writes(coll, request))
        return self._done(request.wait, started)

    def _payload_writes(self, coll: Collection, message: Any, overwrite: bool) -> list[ShardWrite]:
        if not message.HasField("points_selector"):
            raise bad_input("Points selector is empty: give point ids or a filter")
        payload = payload_to_python(message.payload)
        key = message.key if message.HasField("key") else None
        if overwrite:
            by_ids, by_filter = qe.UpdateOperation.overwrite_payload, qe.UpdateOperation.overwrite_payload_by_filter
        else:
            by_ids, by_filter = qe.UpdateOperation.set_payload, qe.UpdateOperation.set_payload_by_filter
        return self._selector_writes(
            coll,
            message,
            message.points_selector,
            lambda ids: by_ids(ids, payload, key),
            lambda flt: by_filter(flt, payload, key),
        )

    def _set_payload(self, request: Any, overwrite: bool) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            self._execute(coll, self._payload_writes(coll, request, overwrite))
        return self._done(request.wait, started)

    @rpc
    def SetPayload(self, request: pb.SetPayloadPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        return self._set_payload(request, overwrite=False)

    @rpc
    def OverwritePayload(self, request: pb.SetPayloadPoints,
                         context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        return self._set_payload(request, overwrite=True)

    def _delete_payload_writes(self, coll: Collection, message: Any) -> list[ShardWrite]:
        if not message.HasField("points_selector"):
            raise bad_input("Points selector is empty: give point ids or a filter")
        keys = list(message.keys)
        return self._selector_writes(
            coll,
            message,
            message.points_selector,
            lambda ids: qe.UpdateOperation.delete_payload(ids, keys),
            lambda flt: qe.UpdateOperation.delete_payload_by_filter(flt, keys),
        )

    @rpc
    def DeletePayload(self, request: pb.DeletePayloadPoints,
                      context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            self._execute(coll, self._delete_payload_writes(coll, request))
        return self._done(request.wait, started)

    def _clear_payload_writes(self, coll: Collection, message: Any, selector: pb.PointsSelector) -> list[ShardWrite]:
        return self._selector_writes(
            coll, message, selector, qe.UpdateOperation.clear_payload, qe.UpdateOperation.clear_payload_by_filter
        )

    @rpc
    def ClearPayload(self, request: pb.ClearPayloadPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            self._execute(coll, self._clear_payload_writes(coll, request, request.points))
        return self._done(request.wait, started)

    @rpc
    def UpdateBatch(self, request: pb.UpdateBatchPoints, context: grpc.ServicerContext) -> pb.UpdateBatchResponse:
        started = time.perf_counter()
        status = pb.UpdateStatus.Completed if request.wait else pb.UpdateStatus.Acknowledged
        results = []
        with self.catalog.reading(request.collection_name) as coll:
            for operation in request.operations:  # one after the other, each applied in full (src/common/update.rs)
                self._execute(coll, self._batch_writes(operation, coll))
                results.append(pb.UpdateResult(operation_id=next(self._operation_ids), status=status))
        return pb.UpdateBatchResponse(result=results, time=time.perf_counter() - started)

    def _batch_writes(self, operation: pb.PointsUpdateOperation, coll: Collection) -> list[ShardWrite]:
        kind = operation.WhichOneof("operation")
        if kind == "upsert":
            return self._upsert_writes(coll, operation.upsert)[0]
        if kind == "update_vectors":
            return self._update_vectors_writes(coll, operation.update_vectors)[0]
        if kind == "delete_points":
            return self._delete_writes(coll, operation.delete_points, operation.delete_points.points)
        if kind in ("set_payload", "overwrite_payload"):
            return self._payload_writes(coll, getattr(operation, kind), overwrite=kind == "overwrite_payload")
        if kind == "delete_payload":
            return self._delete_payload_writes(coll, operation.delete_payload)
        if kind == "clear_payload":
            return self._clear_payload_writes(coll, operation.clear_payload, operation.clear_payload.points)
        if kind == "delete_vectors":
            return self._delete_vectors_writes(coll, operation.delete_vectors)
        raise unsupported(f"batch operation `{kind}`")

    # -- reads ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _read_shards(coll: Collection, message: Any) -> list[Shard]:
        """The shards a read reaches (select_shards): all without a shard key selector."""
        selector: Optional[Selector] = selector_in(message)
        if selector is None and coll.only_shard is not None:
            return [coll.only_shard]
        return [coll.shards[s] for g in coll.layout.read_groups(selector) for s in g.shard_ids]

    @staticmethod
    def _charge(shards: Iterable[Shard], cost: int) -> None:
        """Each shard's read rate limiter, as local_shard/shard_ops.rs charges it."""
        for shard in shards:
            if shard.read_limiter is not None:
                shard.read_limiter.try_consume(cost, READ)

    def _count_reads(self, coll: Collection, points: int, with_payload: Any) -> None:
        self.reads.add(coll.name, points, _wants_payload(with_payload))
        self.stats.add("points read", points)

    @staticmethod
    def _filter_cost(message: Any, field: str = "filter") -> int:
        """operation_rate_cost: 1, plus one per filter condition."""
        return 1 + (sm.conditions_count(getattr(message, field)) if message.HasField(field) else 0)

    @rpc
    def Get(self, request: pb.GetPoints, context: grpc.ServicerContext) -> pb.GetResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            ids = [cv.point_id_in(pid) for pid in request.ids]
            with_payload = cv.with_payload_in(request.with_payload, True) if request.HasField("with_payload") else True
            with_vectors = cv.with_vectors_in(request.with_vectors) if request.HasField("with_vectors") else False
            shards = self._read_shards(coll, request)
            # Qdrant asks every selected shard for every id and charges each len(ids); the points live only in the
            # shard their ring names, so only that shard is asked here: the answer is the same.
            self._charge(shards, len(ids))
            found: dict[Any, Any] = {}
            for shard, positions in self._owners(coll, request, shards, ids):
                records = shard.edge.retrieve(_pick(ids, positions), with_payload, with_vectors)
                self._count_reads(coll, len(records), with_payload)
                for record in records:
                    found[merge.id_key(record.id)] = record
            response = pb.GetResponse()
            result = response.result
            single = coll.single_unnamed
            for pid in ids:  # in request order, each point once (collection/point_ops.rs retrieve)
                record = found.pop(merge.id_key(pid), None)
                if record is not None:
                    cv.fill_retrieved(result.add(), record, single)
        response.time = time.perf_counter() - started
        return response

    @staticmethod
    def _owners(
        coll: Collection, message: Any, shards: list[Shard], ids: list[Any]
    ) -> list[tuple[Shard, Optional[list[int]]]]:
        if len(shards) == 1 or not ids:
            return [(shards[0], None)] if shards and ids else []
        selected = {s.id for s in shards}
        out: dict[int, list[int]] = {}
        for group in coll.layout.groups.values():
            if not group.shard_ids or not selected.intersection(group.shard_ids):
                continue
            for pos, shard_id in enumerate(coll.layout.ring(group.key).shards_for(ids).tolist()):
                out.setdefault(shard_id, []).append(pos)
        return [(coll.shards[s], positions) for s, positions in sorted(out.items()) if s in selected]

    @rpc
    def Scroll(self, request: pb.ScrollPoints, context: grpc.ServicerContext) -> pb.ScrollResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            limit = request.limit if request.HasField("limit") else cv.DEFAULT_QUERY_LIMIT
            if limit < 1:  # lib/api/build.rs: ScrollPoints.limit range(min = 1)
                raise validation_error("limit", f"value {limit} invalid, must be 1 or larger")
            strict = coll.strict_mode
            if strict is not None:
                sm.check_scroll(strict, request, coll.payload_schema)
            ordered = request.HasField("order_by")
            with_payload = cv.with_payload_in(request.with_payload, True) if request.HasField("with_payload") else True
            shards = self._read_shards(coll, request)
            self._charge(shards, self._filter_cost(request))

            def scroll(shard_limit: int) -> qe.ScrollRequest:
                return qe.ScrollRequest(
                    offset=cv.point_id_in(request.offset) if request.HasField("offset") else None,
                    limit=shard_limit,
                    filter=cv.optional_filter(request),
                    with_payload=with_payload,
                    with_vector=cv.with_vectors_in(request.with_vectors) if request.HasField("with_vectors") else False,
                    order_by=cv.order_by_in(request.order_by) if ordered else None,
                )

            if len(shards) == 1:
                records, next_offset = shards[0].edge.scroll(scroll(limit))
                self._count_reads(coll, len(records) + (next_offset is not None), with_payload)
            else:
                # Every shard is asked for limit + 1 points (point_ops.rs scroll_by): S-fold reads, merged here.
                answers = []
                for shard in shards:
                    answer, _ = shard.edge.scroll(scroll(limit if ordered else limit + 1))
                    self._count_reads(coll, len(answer), with_payload)
                    answers.append(answer)
                if ordered:
                    order = request.order_by
                    descending = order.HasField("direction") and order.direction == pb.Direction.Desc
                    records, next_offset = merge.scroll_by_order(answers, limit, descending), None
                else:
                    records, next_offset = merge.scroll_by_id(answers, limit)
            response = pb.ScrollResponse()
            result = response.result
            single = coll.single_unnamed
            fill = cv.fill_retrieved
            for record in records:
                fill(result.add(), record, single)
            if next_offset is not None and not ordered:
                cv.fill_point_id(response.next_page_offset, next_offset)
        response.time = time.perf_counter() - started
        return response

    @rpc
    def Count(self, request: pb.CountPoints, context: grpc.ServicerContext) -> pb.CountResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            strict = coll.strict_mode
            if strict is not None:
                sm.check_count(strict, request, coll.payload_schema)
            exact = request.exact if request.HasField("exact") else True
            shards = self._read_shards(coll, request)
            self._charge(shards, self._filter_cost(request))
            count_request = qe.CountRequest(exact=exact, filter=cv.optional_filter(request))
            count = sum(shard.edge.count(count_request) for shard in shards)
        return pb.CountResponse(result=pb.CountResult(count=count), time=time.perf_counter() - started)

    def _resolver(self, coll: Collection, request: pb.QueryPoints) -> Resolver:
        """Reads the vector of a point used as a query input (collection_query.rs ids_into_vectors)."""

        def fetch(target: Collection, message: Any, pid: Any, name: str) -> Any:
            for shard, positions in self._owners(target, message, self._read_shards(target, message), [pid]):
                for record in shard.edge.retrieve(_pick([pid], positions), False, [name]):
                    self._count_reads(target, 1, False)
                    vectors = record.vector
                    if not isinstance(vectors, dict):  # the bare form of a single unnamed vector
                        vectors = {} if vectors is None else {cv.DEFAULT_VECTOR: vectors}
                    vector = vectors.get(name)
                    if vector is not None:
                        return vector
            raise not_found(f'Vector with name "{name}" for point not found')

        def resolve(pid: Any, name: str, lookup: Optional[pb.LookupLocation]) -> Any:
            if lookup is None:
                return fetch(coll, request, pid, name)
            try:
                other = self.catalog.resolve_name(lookup.collection_name)
            except ApiError:
                raise not_found(f"Collection {lookup.collection_name} not found") from None
            if other == coll.name:
                return fetch(coll, lookup, pid, name)
            with self.catalog.reading(other) as target:
                return fetch(target, lookup, pid, name)

        return resolve

    def _query(self, coll: Collection, request: pb.QueryPoints) -> list[Any]:
        """One query: straight to a single shard, else every selected shard and merged as query.rs merges."""
        shards = self._read_shards(coll, request)
        with_payload = cv.with_payload_in(request.with_payload, False) if request.HasField("with_payload") else False
        builder = QueryBuilder(self._resolver(coll, request), referenced_ids(request))
        self._charge(shards, self._query_cost(request))
        if len(shards) == 1:
            points = shards[0].edge.query(builder.request(request))
            self._count_reads(coll, len(points), with_payload)
            return points
        limit = request.limit if request.HasField("limit") else cv.DEFAULT_QUERY_LIMIT
        offset = request.offset if request.HasField("offset") else 0
        kind = request.query.WhichOneof("variant") if request.HasField("query") else None
        if kind in ("fusion", "rrf"):
            fused = self._fused(coll, request, shards, kind, builder)
            if request.HasField("score_threshold"):
                fused = list(itertools.takewhile(lambda p: p.score >= request.score_threshold, fused))
            return fused[offset : offset + limit]
        if kind == "nearest_with_mmr":
            raise unsupported("MMR queries on a collection with several shards")
        shard_request = builder.request(request, limit=offset + limit, offset=0)
        answers = []
        for shard in shards:
            answer = shard.edge.query(shard_request)
            self._count_reads(coll, len(answer), with_payload)
            answers.append(answer)
        return merge.best_first(answers, self._larger_is_better(coll, request.query if kind else None, request))[
            offset : offset + limit
        ]

    def _fused(
        self, coll: Collection, request: pb.QueryPoints, shards: list[Shard], kind: str, builder: QueryBuilder
    ) -> list[Any]:
        with_payload = cv.with_payload_in(request.with_payload, False) if request.HasField("with_payload") else False
        intermediates = []
        for pf in request.prefetch:
            sub = builder.prefetch_request(pf, request)
            answers = []
            for shard in shards:
                answer = shard.edge.query(sub)
                self._count_reads(coll, len(answer), with_payload)
                answers.append(answer)
            pf_limit = pf.limit if pf.HasField("limit") else cv.DEFAULT_QUERY_LIMIT
            order = self._larger_is_better(coll, pf.query if pf.HasField("query") else None, pf)
            intermediates.append(merge.best_first(answers, order)[:pf_limit])
        if kind == "rrf":
            k = request.query.rrf.k if request.query.rrf.HasField("k") else cv.DEFAULT_RRF_K
            return merge.rrf(intermediates, k, list(request.query.rrf.weights) or None)
        if request.query.fusion == pb.Fusion.DBSF:
            return merge.dbsf(intermediates)
        return merge.rrf(intermediates, cv.DEFAULT_RRF_K, None)

    @staticmethod
    def _larger_is_better(coll: Collection, query: Optional[pb.Query], message: Any) -> Optional[bool]:
        """lib/shard/src/query/mod.rs query_result_order, for one query stage."""
        kind = query.WhichOneof("variant") if query is not None else None
        if kind is None:
            return False  # no query: by id, ascending
        if kind == "sample":
            return None
        if kind == "order_by":
            return query.order_by.HasField("direction") and query.order_by.direction == pb.Direction.Desc  # type: ignore[union-attr]
        average = kind == "recommend" and (
            not query.recommend.HasField("strategy")  # type: ignore[union-attr]
            or query.recommend.strategy == pb.RecommendStrategy.AverageVector  # type: ignore[union-attr]
        )
        # distance-scored queries rank by the vector's distance order (QueryEnum::is_distance_scored)
        if kind in ("nearest", "nearest_with_mmr") or average:
            using = message.using if message.HasField("using") else None
            return coll.vector_schema.larger_is_better(using)
        return True

    @staticmethod
    def _query_cost(request: pb.QueryPoints) -> int:
        """Read rate cost: one per nearest-style search (a multivector costs its vector count), one per scroll-like
        stage, plus filter conditions (shard/src/search.rs search_rate_cost, query/scroll.rs scroll_rate_cost)."""

        def stage(message: Any) -> int:
            cost = 1
            if message.HasField("query") and message.query.WhichOneof("variant") == "nearest":
                nearest = message.query.nearest
                if nearest.WhichOneof("variant") == "multi_dense":
                    cost = len(nearest.multi_dense.vectors)
            if message.HasField("filter"):
                cost += sm.conditions_count(message.filter)
            return cost + sum(stage(p) for p in message.prefetch)

        return stage(request)

    def _fill_query(self, coll: Collection, request: pb.QueryPoints, out: Any) -> None:
        if request.HasField("limit") and request.limit < 1:  # lib/api/build.rs: QueryPoints.limit range(min = 1)
            raise validation_error("limit", f"value {request.limit} invalid, must be 1 or larger")
        strict = coll.strict_mode
        if strict is not None:
            sm.check_query(strict, coll, request)
        single = coll.single_unnamed
        vectors = cv.wants_vectors(request)
        for point in self._query(coll, request):
            cv.fill_scored(out.add(), point, single, vectors)

    @rpc
    def Query(self, request: pb.QueryPoints, context: grpc.ServicerContext) -> pb.QueryResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            response = pb.QueryResponse()
            self._fill_query(coll, request, response.result)
            self.stats.add("queries", 1)
        response.time = time.perf_counter() - started
        return response

    @rpc
    def QueryBatch(self, request: pb.QueryBatchPoints, context: grpc.ServicerContext) -> pb.QueryBatchResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            strict = coll.strict_mode
            if strict is not None:
                sm.check_query_batch(strict, coll, request)
            response = pb.QueryBatchResponse()
            for query in request.query_points:
                self._fill_query(coll, query, response.result.add().result)
            self.stats.add("queries", len(request.query_points))
        response.time = time.perf_counter() - started
        return response

    @rpc
    def Facet(self, request: pb.FacetCounts, context: grpc.ServicerContext) -> pb.FacetResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            limit = request.limit if request.HasField("limit") else 10
            shards = self._read_shards(coll, request)
            self._charge(shards, self._filter_cost(request))
            facet_request = qe.FacetRequest(
                key=request.key,
                limit=limit,
                exact=request.exact if request.HasField("exact") else False,
                filter=cv.optional_filter(request),
            )
            answers = [shard.edge.facet(facet_request) for shard in shards]
            hits = answers[0].hits if len(answers) == 1 else merge.facet_hits(answers, limit)
            response = pb.FacetResponse()
            for hit in hits:
                out = response.hits.add()
                out.count = hit.count
                value = hit.value
                if type(value) is bool:
                    out.value.bool_value = value
                elif type(value) is int:
                    out.value.integer_value = value
                else:
                    out.value.string_value = str(value)
        response.time = time.perf_counter() - started
        return response

    # -- schema: payload indexes and vector names ---------------------------------------------------------------

    @staticmethod
    def _apply_everywhere(coll: Collection, op: qe.UpdateOperation) -> None:
        """A schema operation on every shard (OperationToShard::ToAll)."""
        for shard in coll.shards.values():
            shard.edge.update(op)
        coll.dirty = True

    @rpc
    def CreateFieldIndex(
        self, request: pb.CreateFieldIndexCollection, context: grpc.ServicerContext
    ) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        info, edge_schema = cv.field_index_in(request)
        with self.catalog.writing(request.collection_name) as coll:
            self._apply_everywhere(coll, qe.UpdateOperation.create_field_index(request.field_name, edge_schema))
            coll.payload_schema[request.field_name] = info
            coll.save()
        return self._done(request.wait, started)

    @rpc
    def DeleteFieldIndex(
        self, request: pb.DeleteFieldIndexCollection, context: grpc.ServicerContext
    ) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.writing(request.collection_name) as coll:
            self._apply_everywhere(coll, qe.UpdateOperation.delete_field_index(request.field_name))
            if coll.payload_schema.pop(request.field_name, None) is not None:
                coll.save()
        return self._done(request.wait, started)

    def _require_vector_names(self, method: str) -> None:
        if not self.compat.vector_names:
            raise ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Method not found: /qdrant.Points/{method} (this endpoint emulates Qdrant "
                f"{self.compat.version_text}; vector names need 1.18)",
            )

    @rpc
    def CreateVectorName(
        self, request: pb.CreateVectorNameRequest, context: grpc.ServicerContext
    ) -> pb.PointsOperationResponse:
        self._require_vector_names("CreateVectorName")
        started = time.perf_counter()
        name = request.vector_name
        kind = request.WhichOneof("vector_config")
        with self.catalog.writing(request.collection_name) as coll:
            config = pb.CollectionConfig()
            config.CopyFrom(coll.config)  # changed on a copy: the stored config moves only if the shards agree
            if kind == "dense_config":
                dense = request.dense_config
                if schema.add_dense_vector(config, name, dense):
                    where = f"vector `{name}`"
                    multi = None
                    if dense.HasField("multivector_config"):
                        multi = cv.comparator_in(dense.multivector_config, where)
                    op = qe.UpdateOperation.create_dense_vector(
                        name, dense.size, cv.distance_in(dense.distance, where), multi, cv.datatype_in(dense)
                    )
                    self._apply_schema_change(coll, config, op)
            elif kind == "sparse_config":
                sparse = request.sparse_config
                if schema.add_sparse_vector(config, name, sparse):
                    op = qe.UpdateOperation.create_sparse_vector(name, cv.modifier_in(sparse), cv.datatype_in(sparse))
                    self._apply_schema_change(coll, config, op)
            else:
                raise bad_input("CreateVectorName needs dense_config or sparse_config")
        return self._done(request.wait, started)

    @rpc
    def DeleteVectorName(
        self, request: pb.DeleteVectorNameRequest, context: grpc.ServicerContext
    ) -> pb.PointsOperationResponse:
        self._require_vector_names("DeleteVectorName")
        started = time.perf_counter()
        with self.catalog.writing(request.collection_name) as coll:
            config = pb.CollectionConfig()
            config.CopyFrom(coll.config)
            if schema.drop_vector(config, request.vector_name):
                self._apply_schema_change(coll, config, qe.UpdateOperation.delete_vector_name(request.vector_name))
        return self._done(request.wait, started)

    def _apply_schema_change(self, coll: Collection, config: pb.CollectionConfig, op: qe.UpdateOperation) -> None:
        # Shards first, config second: qdrant-edge logs the change in its WAL before we record it as done.
        self._apply_everywhere(coll, op)
        coll.config = config
        coll.save()
        coll.refresh_derived()
