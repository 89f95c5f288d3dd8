"""Sink: writes a page's points with their new vectors over one grpc.aio channel.

Requests carry 64-256 points (Qdrant's bulk guidance) and stay far below the server's 32 MiB request cap; a bounded
number of requests is in flight per writer. Every write is idempotent — `insert_only` upserts for a new collection
(a point the live application already wrote with the new model is never overwritten), `UpdateVectors` in place —
so retries after an unknown outcome are harmless.

A late-interaction model's token matrices go as MultiDenseVectors under the new vector's name (in Qdrant a
multivector is a dense vector with a multivector_config). A ColBERT point is ~90 KB (180 tokens x 128 floats), so
its requests are cut by bytes (max_request_bytes) long before they reach upload_batch points.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np
from qdrant_client import grpc as pb

from engine import tunables
from engine.embed.vectorset import MultiVectors, VectorSet
from engine.errors import PointNotFound
from engine.flow.page import PageBody, WriteAck
from engine.qdrant import retry, wire
from engine.qdrant.connection import MAX_MESSAGE_BYTES, Endpoint
from engine.qdrant.pacing import PacingSettings, WriteController

log = logging.getLogger(__name__)

VANISHED = "deleted from the collection while the job ran (UpdateVectors: not found); nothing to re-embed"


@dataclass(frozen=True)
class SinkSpec:
    collection: str
    vector_name: str  # "" = the unnamed default vector
    mode: str = "insert_only"  # insert_only | update_vectors
    sparse_name: str = ""  # hybrid: the sparse vector's name (the embedder then hands over a VectorSet)
    upload_batch: int = tunables.UPLOAD_BATCH
    max_request_bytes: int = tunables.MAX_REQUEST_BYTES
    requests_in_flight: int = tunables.UPLOAD_REQUESTS_IN_FLIGHT
    wait: bool = True  # ordered commit needs "applied", not "in the WAL"
    pacing: PacingSettings | None = None  # None: requests_in_flight at a fixed pace


class QdrantSink:
    def __init__(self, endpoint: Endpoint, spec: SinkSpec, policy: retry.RetryPolicy | None = None) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self.policy = policy or retry.RetryPolicy()
        self._channel: grpc.aio.Channel | None = None
        self._method = "/qdrant.Points/Upsert" if spec.mode == "insert_only" else "/qdrant.Points/UpdateVectors"
        pacing = spec.pacing or PacingSettings(initial_in_flight=spec.requests_in_flight,
                                               min_in_flight=min(spec.requests_in_flight, 1),
                                               max_in_flight=spec.requests_in_flight, target_latency_ms=None)
        self.controller = WriteController(pacing)
        self.stats = retry.RetryStats()  # the writer's: who is waiting for Qdrant now, across its pages

    def _ensure_channel(self):
        # Created lazily inside the running event loop: grpc.aio channels bind to the loop that made them.
        if self._channel is None:
            self._channel = self.endpoint.aio_channel()
            self._call = self._channel.unary_unary(
                self._method, request_serializer=None,
                response_deserializer=pb.PointsOperationResponse.FromString,
            )
        return self._call

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _vector_fields(self, body: PageBody, vectors: np.ndarray | VectorSet | None,
                       field: int) -> dict[int, bytes]:
        """Page position -> serialised `Vectors` field(s) (number `field`) with every new vector of that point.

        Dense and sparse go as two fields: repeated message fields merge on the wire, so a reader sees one
        `Vectors` holding both. The dense field is a precomputed prefix plus the row's raw float32 bytes.
        """
        fields: dict[int, bytes] = {}
        if vectors is None or not len(body.text_index):
            return fields
        if isinstance(vectors, MultiVectors):
            vectors = VectorSet(dense=None, sparse=None, multi=vectors)
        dense, sparse = (vectors.dense, vectors.sparse) if isinstance(vectors, VectorSet) else (vectors, None)
        multi = vectors.multi if isinstance(vectors, VectorSet) else None
        if multi is not None:
            if dense is not None:
                raise ValueError("the embedder made a dense vector and a multivector for one vector name; a job "
                                 "writes one of them (model.kind dense or late_interaction)")
            self._multi_fields(body, multi, field, fields)
        if dense is not None:
            arr = np.ascontiguousarray(dense, dtype="<f4")
            step = 4 * arr.shape[1]
            prefix = wire.dense_field_prefix(self.spec.vector_name, arr.shape[1], field)
            raw = arr.tobytes()
            for row, pos in enumerate(body.text_index):
                fields[pos] = prefix + raw[row * step:(row + 1) * step]
        if sparse is not None:
            # An empty sparse vector (a text of stopwords only) is still written: the point was processed.
            name = self.spec.sparse_name
            for row, pos in enumerate(body.text_index):
                idx, val = sparse[row]
                fields[pos] = fields.get(pos, b"") + wire.vectors_field({name: wire.sparse_vector(idx, val)}, field)
        return fields

    def _multi_fields(self, body: PageBody, multi: MultiVectors, field: int, fields: dict[int, bytes]) -> None:
        """Each text's token matrix as a MultiDenseVector under the new vector's name (a multivector in Qdrant is
        a dense vector with a multivector_config). The page's rows are encoded in one pass; each point's multivector
        is a slice of that body behind a header computed from its length."""
        if len(multi) != len(body.text_index):
            raise ValueError(f"the embedder made {len(multi)} multivectors for {len(body.text_index)} texts")
        body_bytes, step = wire.multi_dense_body(multi.data)
        name = self.spec.vector_name
        offsets = multi.offsets
        for row, pos in enumerate(body.text_index):
            lo, hi = int(offsets[row]), int(offsets[row + 1])
            if hi == lo:
                raise ValueError(f"the model made no token vectors for point {body.ids[pos]!r}; Qdrant refuses an "
                                 "empty multivector (check the checkpoint's skiplist and doc_maxlen)")
            head = wire.multi_dense_header((hi - lo) * step)
            vec_len = len(head) + (hi - lo) * step
            fields[pos] = (fields.get(pos, b"") + wire.vector_field_prefix(name, vec_len, field) + head
                           + body_bytes[lo * step:hi * step])

    def encode(self, body: PageBody, vectors: np.ndarray | VectorSet | None
               ) -> tuple[list[wire.PointIdValue], list[bytes]]:
        """Serialised points (PointStruct or PointVectors) in page order, with the new vectors where there are."""
        _, ids, out = self._encode(body, vectors)
        return ids, out

    def _encode(self, body: PageBody, vectors: np.ndarray | VectorSet | None
                ) -> tuple[list[int], list[wire.PointIdValue], list[bytes]]:
        positions: list[int] = []
        ids: list[wire.PointIdValue] = []
        out: list[bytes] = []
        if self.spec.mode == "insert_only":
            unnamed = self.spec.vector_name == ""
            fields = self._vector_fields(body, vectors, 4)
            for pos, blob in enumerate(body.blobs):
                vec = fields.get(pos)
                if vec is None and unnamed:
                    continue  # an unnamed-vector collection cannot hold a point without a vector; it is dead-lettered
                positions.append(pos)
                ids.append(body.ids[pos])
                # Two `vectors` fields merge on the wire: copied old vectors (in the blob) plus the new ones.
                out.append(blob + (vec if vec is not None else wire.EMPTY_NAMED_VECTORS))
        else:
            for pos, vec in self._vector_fields(body, vectors, 2).items():
                pid = wire.point_id(body.ids[pos]).SerializeToString()
                positions.append(pos)
                ids.append(body.ids[pos])
                out.append(wire.point_vectors_raw(pid, vec))
        return positions, ids, out

    def _request(self, points: Sequence[bytes], shard_key: wire.ShardKeyValue | None, overwrite: bool) -> bytes:
        if self.spec.mode == "insert_only":
            return wire.upsert_request(self.spec.collection, points, wait=self.spec.wait, insert_only=not overwrite,
                                       shard_key=shard_key)
        return wire.update_vectors_request(self.spec.collection, points, wait=self.spec.wait, shard_key=shard_key)

    async def _send(self, request: bytes, points: int, what: str, stats: retry.RetryStats) -> None:
        call = self._ensure_channel()
        md = self.endpoint.metadata()
        timeout = self.endpoint.timeout_s

        async def applied() -> None:
            reply = await call(request, metadata=md, timeout=timeout)
            if self.spec.wait and reply.result.status != pb.UpdateStatus.Completed:
                # The ordered commit may move a cursor only past writes the server has applied; an answer that
                # says anything else (Acknowledged: in the WAL only) is an unknown outcome, so the write is sent
                # again (it is idempotent).
                raise retry.UnknownOutcome(
                    f"the server answered {pb.UpdateStatus.Name(reply.result.status)}, not Completed, to a wait=true "
                    "write")

        async with self.controller.slot(points=points) as slot:
            await retry.call_async(applied, what=what, address=self.endpoint.address, policy=self.policy,
                                   stats=stats, on_retry=slot.on_retry)

    async def _send_points(self, ids: list[wire.PointIdValue], points: list[bytes], what: str,
                           stats: retry.RetryStats, shard_key: wire.ShardKeyValue | None,
                           overwrite: bool = False) -> list[tuple[wire.PointIdValue, str]]:
        """Send one request. In place, the application may delete points while the job runs; Qdrant then refuses
        the whole UpdateVectors request: the points still there are sent again and the vanished ones returned."""
        vanished: list[tuple[wire.PointIdValue, str]] = []
        while points:
            try:
                await self._send(self._request(points, shard_key, overwrite), len(points), what, stats)
                break
            except PointNotFound:
                if self.spec.mode != "update_vectors":
                    raise
                present = await self._existing(ids, what, stats, shard_key)
                gone = [k for k, pid in enumerate(ids) if pid not in present]
                if not gone:
                    raise  # the server names a point that is there: not a deletion we can route around
                vanished += [(ids[k], VANISHED) for k in gone]
                keep = [k for k, pid in enumerate(ids) if pid in present]
                ids, points = [ids[k] for k in keep], [points[k] for k in keep]
        if vanished:
            log.info("%s: %d point(s) deleted by the application meanwhile, left out", what, len(vanished))
        return vanished

    def _get(self):
        assert self._channel is not None
        return self._channel.unary_unary("/qdrant.Points/Get", request_serializer=pb.GetPoints.SerializeToString,
                                         response_deserializer=pb.GetResponse.FromString)

    async def _lookup(self, ids: list[wire.PointIdValue], what: str, stats: retry.RetryStats,
                      shard_key: wire.ShardKeyValue | None, vector: str | None) -> list[pb.RetrievedPoint]:
        """The points of `ids` the collection holds now: ids only, or with the one vector `vector`."""
        self._ensure_channel()
        get = self._get()
        req = pb.GetPoints(collection_name=self.spec.collection, ids=[wire.point_id(i) for i in ids])
        req.with_payload.enable = False
        if vector is None:
            req.with_vectors.enable = False
        elif vector == "":
            req.with_vectors.enable = True
        else:
            req.with_vectors.include.names.append(vector)
        if shard_key is not None:
            req.shard_key_selector.CopyFrom(wire.shard_key_selector(shard_key))
        md, timeout = self.endpoint.metadata(), self.endpoint.timeout_s
        reply = await retry.call_async(lambda: get(req, metadata=md, timeout=timeout), what=f"look up {what}",
                                       address=self.endpoint.address, policy=self.policy, stats=stats)
        return list(reply.result)

    async def _existing(self, ids: list[wire.PointIdValue], what: str, stats: retry.RetryStats,
                        shard_key: wire.ShardKeyValue | None) -> set[wire.PointIdValue]:
        """Which of `ids` the collection holds now (ids only: no payload, no vectors)."""
        return {wire.id_value(p.id) for p in await self._lookup(ids, what, stats, shard_key, None)}

    async def count_present(self, body: PageBody, stats: retry.RetryStats) -> int:
        """How many of the page's points with a new vector already carry it in the target: what a redo of a page
        whose earlier write may have been applied writes a second time."""
        ids = [body.ids[pos] for pos in body.text_index]
        if not ids:
            return 0
        name = self.spec.vector_name if self.spec.vector_name or not self.spec.sparse_name else self.spec.sparse_name
        found = await self._lookup(ids, "points already written", stats, body.shard_key, name)
        return sum(1 for p in found if p.HasField("vectors") and _has_vector(p.vectors, name))

    async def write(self, shard: int, seq: int, body: PageBody, vectors: np.ndarray | VectorSet | None,
                    check_present: bool = False) -> WriteAck:
        stats = retry.RetryStats(parent=self.stats)  # per page, so the coordinator can add them up
        already = await self.count_present(body, stats) if check_present else 0
        positions, ids, points = self._encode(body, vectors)
        written = len(body.text_index)
        skipped = len(body.ids) - written
        dead: list[tuple[wire.PointIdValue, str]] = []
        # What our own channel can send: Qdrant's gRPC service sets no limit of its own (its 32 MiB cap is REST's),
        # and a point that came through a scroll reply fits in one message.
        limit = MAX_MESSAGE_BYTES - 64 * 1024  # headroom for the request header and framing
        overwrite = set(body.overwrite)
        groups = [[k for k, pos in enumerate(positions) if (pos in overwrite) == flag] for flag in (False, True)]
        sends = []
        for flag, members in zip((False, True), groups):
            g_ids, g_points = [ids[k] for k in members], [points[k] for k in members]
            for a, b in wire.split_by_size(g_points, self.spec.upload_batch, self.spec.max_request_bytes):
                if b - a == 1 and len(g_points[a]) > limit:
                    # One point alone exceeds what can be sent: record it, never crash the job.
                    dead.append((g_ids[a], f"point is {len(g_points[a])} bytes, over the gRPC message limit "
                                           f"({MAX_MESSAGE_BYTES} bytes)"))
                    continue
                what = f"write {b - a} points to {self.spec.collection!r} (shard {shard}, page {seq})"
                sends.append(self._send_points(g_ids[a:b], g_points[a:b], what, stats, body.shard_key, flag))
        for vanished in await asyncio.gather(*sends):
            dead += vanished
        if dead:
            dead_ids = {pid for pid, _ in dead}
            text_ids = {body.ids[p] for p in body.text_index}
            lost_written = len(dead_ids & text_ids)
            written -= lost_written  # a text point that could not be written at all becomes a dead letter
            skipped += lost_written
        return WriteAck(shard=shard, seq=seq, written=written, skipped=skipped, dead=dead,
                        requests=len(sends), retries=stats.snapshot(), already_present=already)


def _has_vector(vectors: pb.VectorsOutput, name: str) -> bool:
    if name == "":
        return vectors.HasField("vector")
    return name in vectors.vectors.vectors
