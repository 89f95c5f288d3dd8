"""`qdrant.Points` on qdrant-edge: writes, reads, queries, payload indexes and vector names.

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
from typing import Any, Iterable, Optional

import grpc
import qdrant_edge as qe
from qdrant_client import grpc as pb

from engine.embedded import convert as cv
from engine.embedded import schema
from engine.embedded.catalog import Catalog, Collection
from engine.embedded.compat import Compat
from engine.embedded.status import ApiError, bad_input, rpc, unsupported
from engine.qdrant.values import payload_to_python

log = logging.getLogger(__name__)

_UPDATE_MODES = {
    pb.UpdateMode.Upsert: qe.UpdateMode.Upsert,
    pb.UpdateMode.InsertOnly: qe.UpdateMode.InsertOnly,
    pb.UpdateMode.UpdateOnly: qe.UpdateMode.UpdateOnly,
}


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


class PointsService(pb.PointsServicer):
    def __init__(self, catalog: Catalog, compat: Compat) -> None:
        self.catalog = catalog
        self.compat = compat
        self.stats = Stats()
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
                "emulating Qdrant %s: request field `%s` is ignored, as that version would", self.compat.version_text, field
            )

    def _update_filter(self, request: Any) -> Optional[qe.Filter]:
        if not request.HasField("update_filter"):
            return None
        if not self.compat.update_filter:
            self._ignored("update_filter")
            return None
        return cv.filter_in(request.update_filter)

    @staticmethod
    def _apply(coll: Collection, operation: qe.UpdateOperation) -> None:
        coll.shard.update(operation)
        coll.dirty = True

    def _selector(self, selector: pb.PointsSelector) -> tuple[Optional[list], Optional[qe.Filter]]:
        kind = selector.WhichOneof("points_selector_one_of")
        if kind == "points":
            return [cv.point_id_in(pid) for pid in selector.points.ids], None
        if kind == "filter":
            return None, cv.filter_in(selector.filter) or qe.Filter()
        raise bad_input("Points selector is empty: give point ids or a filter")

    @staticmethod
    def _points_in(points: Iterable[pb.PointStruct], coll: Collection) -> list[qe.Point]:
        # The upsert hot loop (~50 % of the endpoint's cost per point): locals bound once, no per-point messages.
        check = coll.vector_schema.check
        single = coll.single_unnamed
        point_id_in = cv.point_id_in
        vectors_in = cv.vectors_in
        to_python = payload_to_python
        Point = qe.Point
        out = []
        append = out.append
        for point in points:
            pid = point.id
            ident = pid.num if pid.WhichOneof("point_id_options") == "num" else point_id_in(pid)
            vectors = vectors_in(point.vectors)
            check(vectors)
            if single and len(vectors) == 1 and cv.DEFAULT_VECTOR in vectors:
                vectors = vectors[cv.DEFAULT_VECTOR]  # the bare form skips a dict per point in qdrant-edge
            payload = point.payload
            append(Point(ident, vectors, to_python(payload) if payload else None))
        return out

    @staticmethod
    def _point_vectors_in(points: Iterable[pb.PointVectors], coll: Collection) -> list[qe.PointVectors]:
        check = coll.vector_schema.check
        out = []
        for point in points:
            vectors = cv.vectors_in(point.vectors)
            if not vectors:
                raise bad_input(f"No vectors given for point {cv.point_id_in(point.id)}")
            check(vectors)
            out.append(qe.PointVectors(cv.point_id_in(point.id), vectors))
        return out

    def _upsert_operation(self, points: list[qe.Point], request: Any) -> qe.UpdateOperation:
        mode = None
        if request.HasField("update_mode"):
            if self.compat.update_mode:
                mode = _UPDATE_MODES.get(request.update_mode)
                if mode is None:
                    raise bad_input(f"Unknown update_mode {request.update_mode}")
            else:
                self._ignored("update_mode")
        return qe.UpdateOperation.upsert_points(points, self._update_filter(request), mode)

    # -- writes ---------------------------------------------------------------------------------------------------

    @rpc
    def Upsert(self, request: pb.UpsertPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            points = self._points_in(request.points, coll)
            self._apply(coll, self._upsert_operation(points, request))
        self.stats.add("points written", len(points))
        return self._done(request.wait, started)

    @rpc
    def UpdateVectors(self, request: pb.UpdatePointVectors, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            points = self._point_vectors_in(request.points, coll)
            self._apply(coll, qe.UpdateOperation.update_vectors(points, self._update_filter(request)))
        self.stats.add("points written", len(points))
        return self._done(request.wait, started)

    @rpc
    def Delete(self, request: pb.DeletePoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            ids, flt = self._selector(request.points)
            op = qe.UpdateOperation.delete_points(ids) if ids is not None else qe.UpdateOperation.delete_points_by_filter(flt)
            self._apply(coll, op)
        return self._done(request.wait, started)

    @rpc
    def DeleteVectors(self, request: pb.DeletePointVectors, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            ids, flt = self._selector(request.points_selector)
            names = list(request.vectors.names)
            for name in names:
                if name not in coll.vector_schema.dense and name not in coll.vector_schema.sparse:
                    raise bad_input(f"Not existing vector name error: {name}")
            op = (
                qe.UpdateOperation.delete_vectors(ids, names)
                if ids is not None
                else qe.UpdateOperation.delete_vectors_by_filter(flt, names)
            )
            self._apply(coll, op)
        return self._done(request.wait, started)

    def _set_payload(self, request: Any, overwrite: bool) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            if not request.HasField("points_selector"):
                raise bad_input("Points selector is empty: give point ids or a filter")
            ids, flt = self._selector(request.points_selector)
            payload = payload_to_python(request.payload)
            key = request.key if request.HasField("key") else None
            if overwrite:
                op = (
                    qe.UpdateOperation.overwrite_payload(ids, payload, key)
                    if ids is not None
                    else qe.UpdateOperation.overwrite_payload_by_filter(flt, payload, key)
                )
            else:
                op = (
                    qe.UpdateOperation.set_payload(ids, payload, key)
                    if ids is not None
                    else qe.UpdateOperation.set_payload_by_filter(flt, payload, key)
                )
            self._apply(coll, op)
        return self._done(request.wait, started)

    @rpc
    def SetPayload(self, request: pb.SetPayloadPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        return self._set_payload(request, overwrite=False)

    @rpc
    def OverwritePayload(self, request: pb.SetPayloadPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        return self._set_payload(request, overwrite=True)

    @rpc
    def DeletePayload(self, request: pb.DeletePayloadPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            if not request.HasField("points_selector"):
                raise bad_input("Points selector is empty: give point ids or a filter")
            ids, flt = self._selector(request.points_selector)
            keys = list(request.keys)
            op = (
                qe.UpdateOperation.delete_payload(ids, keys)
                if ids is not None
                else qe.UpdateOperation.delete_payload_by_filter(flt, keys)
            )
            self._apply(coll, op)
        return self._done(request.wait, started)

    @rpc
    def ClearPayload(self, request: pb.ClearPayloadPoints, context: grpc.ServicerContext) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            ids, flt = self._selector(request.points)
            op = qe.UpdateOperation.clear_payload(ids) if ids is not None else qe.UpdateOperation.clear_payload_by_filter(flt)
            self._apply(coll, op)
        return self._done(request.wait, started)

    @rpc
    def UpdateBatch(self, request: pb.UpdateBatchPoints, context: grpc.ServicerContext) -> pb.UpdateBatchResponse:
        started = time.perf_counter()
        status = pb.UpdateStatus.Completed if request.wait else pb.UpdateStatus.Acknowledged
        results = []
        with self.catalog.reading(request.collection_name) as coll:
            for operation in request.operations:
                self._apply(coll, self._batch_operation(operation, coll))
                results.append(pb.UpdateResult(operation_id=next(self._operation_ids), status=status))
        return pb.UpdateBatchResponse(result=results, time=time.perf_counter() - started)

    def _batch_operation(self, operation: pb.PointsUpdateOperation, coll: Collection) -> qe.UpdateOperation:
        kind = operation.WhichOneof("operation")
        if kind == "upsert":
            op = operation.upsert
            return self._upsert_operation(self._points_in(op.points, coll), op)
        if kind == "update_vectors":
            op = operation.update_vectors
            return qe.UpdateOperation.update_vectors(self._point_vectors_in(op.points, coll), self._update_filter(op))
        if kind == "delete_points":
            ids, flt = self._selector(operation.delete_points.points)
            return qe.UpdateOperation.delete_points(ids) if ids is not None else qe.UpdateOperation.delete_points_by_filter(flt)
        if kind in ("set_payload", "overwrite_payload"):
            op = getattr(operation, kind)
            ids, flt = self._selector(op.points_selector)
            payload = payload_to_python(op.payload)
            key = op.key if op.HasField("key") else None
            by_ids = qe.UpdateOperation.set_payload if kind == "set_payload" else qe.UpdateOperation.overwrite_payload
            by_filter = (
                qe.UpdateOperation.set_payload_by_filter
                if kind == "set_payload"
                else qe.UpdateOperation.overwrite_payload_by_filter
            )
            return by_ids(ids, payload, key) if ids is not None else by_filter(flt, payload, key)
        if kind == "delete_payload":
            op = operation.delete_payload
            ids, flt = self._selector(op.points_selector)
            keys = list(op.keys)
            return (
                qe.UpdateOperation.delete_payload(ids, keys)
                if ids is not None
                else qe.UpdateOperation.delete_payload_by_filter(flt, keys)
            )
        if kind == "clear_payload":
            ids, flt = self._selector(operation.clear_payload.points)
            return qe.UpdateOperation.clear_payload(ids) if ids is not None else qe.UpdateOperation.clear_payload_by_filter(flt)
        if kind == "delete_vectors":
            op = operation.delete_vectors
            ids, flt = self._selector(op.points_selector)
            names = list(op.vectors.names)
            return (
                qe.UpdateOperation.delete_vectors(ids, names)
                if ids is not None
                else qe.UpdateOperation.delete_vectors_by_filter(flt, names)
            )
        raise unsupported(f"batch operation `{kind}`")

    # -- reads ----------------------------------------------------------------------------------------------------

    @rpc
    def Get(self, request: pb.GetPoints, context: grpc.ServicerContext) -> pb.GetResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            ids = [cv.point_id_in(pid) for pid in request.ids]
            with_payload = cv.with_payload_in(request.with_payload, True) if request.HasField("with_payload") else True
            with_vectors = cv.with_vectors_in(request.with_vectors) if request.HasField("with_vectors") else False
            records = coll.shard.retrieve(ids, with_payload, with_vectors)
            response = pb.GetResponse()
            result = response.result
            single = coll.single_unnamed
            for record in records:
                cv.fill_retrieved(result.add(), record, single)
        self.stats.add("points read", len(records))
        response.time = time.perf_counter() - started
        return response

    @rpc
    def Scroll(self, request: pb.ScrollPoints, context: grpc.ServicerContext) -> pb.ScrollResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            limit = request.limit if request.HasField("limit") else cv.DEFAULT_QUERY_LIMIT
            if limit < 1:
                raise bad_input(f"Validation error in body: [limit: value {limit} invalid, must be 1 or larger]")
            scroll = qe.ScrollRequest(
                offset=cv.point_id_in(request.offset) if request.HasField("offset") else None,
                limit=limit,
                filter=cv.optional_filter(request),
                with_payload=cv.with_payload_in(request.with_payload, True) if request.HasField("with_payload") else True,
                with_vector=cv.with_vectors_in(request.with_vectors) if request.HasField("with_vectors") else False,
                order_by=cv.order_by_in(request.order_by) if request.HasField("order_by") else None,
            )
            records, next_offset = coll.shard.scroll(scroll)
            response = pb.ScrollResponse()
            result = response.result
            single = coll.single_unnamed
            fill = cv.fill_retrieved
            for record in records:
                fill(result.add(), record, single)
            if next_offset is not None and not request.HasField("order_by"):
                cv.fill_point_id(response.next_page_offset, next_offset)
        self.stats.add("points read", len(records))
        response.time = time.perf_counter() - started
        return response

    @rpc
    def Count(self, request: pb.CountPoints, context: grpc.ServicerContext) -> pb.CountResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            exact = request.exact if request.HasField("exact") else True
            count = coll.shard.count(qe.CountRequest(exact=exact, filter=cv.optional_filter(request)))
        return pb.CountResponse(result=pb.CountResult(count=count), time=time.perf_counter() - started)

    @rpc
    def Query(self, request: pb.QueryPoints, context: grpc.ServicerContext) -> pb.QueryResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            points = coll.shard.query(cv.query_request_in(request))
            self.stats.add("queries", 1)
            response = pb.QueryResponse()
            result = response.result
            single = coll.single_unnamed
            vectors = cv.wants_vectors(request)
            for point in points:
                cv.fill_scored(result.add(), point, single, vectors)
        response.time = time.perf_counter() - started
        return response

    @rpc
    def QueryBatch(self, request: pb.QueryBatchPoints, context: grpc.ServicerContext) -> pb.QueryBatchResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            queries = [cv.query_request_in(q) for q in request.query_points]
            batches = coll.shard.query_batch(qe.QueryBatchRequest(queries)) if queries else []
            self.stats.add("queries", len(queries))
            response = pb.QueryBatchResponse()
            single = coll.single_unnamed
            for query, points in zip(request.query_points, batches):
                batch = response.result.add()
                vectors = cv.wants_vectors(query)
                for point in points:
                    cv.fill_scored(batch.result.add(), point, single, vectors)
        response.time = time.perf_counter() - started
        return response

    @rpc
    def Facet(self, request: pb.FacetCounts, context: grpc.ServicerContext) -> pb.FacetResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            facets = coll.shard.facet(
                qe.FacetRequest(
                    key=request.key,
                    limit=request.limit if request.HasField("limit") else 10,
                    exact=request.exact if request.HasField("exact") else False,
                    filter=cv.optional_filter(request),
                )
            )
            response = pb.FacetResponse()
            for hit in facets.hits:
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

    @rpc
    def CreateFieldIndex(
        self, request: pb.CreateFieldIndexCollection, context: grpc.ServicerContext
    ) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        info, edge_schema = cv.field_index_in(request)
        with self.catalog.writing(request.collection_name) as coll:
            self._apply(coll, qe.UpdateOperation.create_field_index(request.field_name, edge_schema))
            coll.payload_schema[request.field_name] = info
            coll.save()
        return self._done(request.wait, started)

    @rpc
    def DeleteFieldIndex(
        self, request: pb.DeleteFieldIndexCollection, context: grpc.ServicerContext
    ) -> pb.PointsOperationResponse:
        started = time.perf_counter()
        with self.catalog.writing(request.collection_name) as coll:
            self._apply(coll, qe.UpdateOperation.delete_field_index(request.field_name))
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
            config.CopyFrom(coll.config)  # changed on a copy: the stored config moves only if the shard agrees
            if kind == "dense_config":
                dense = request.dense_config
                if schema.add_dense_vector(config, name, dense):
                    distance = cv.distance_in(dense.distance, f"vector `{name}`")
                    op = qe.UpdateOperation.create_dense_vector(name, dense.size, distance, None, cv.datatype_in(dense))
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
        # Shard first, config second: qdrant-edge logs the change in its WAL before we record it as done.
        self._apply(coll, op)
        coll.config = config
        coll.save()
        coll.refresh_derived()
