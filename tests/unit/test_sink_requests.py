"""What the sink puts on the wire, decoded with qdrant-client's own protobuf classes: a new collection gets
`UpsertPoints` with `update_mode=InsertOnly` (a point the application already wrote with the new model is never
overwritten), in place gets `UpdatePointVectors` (only the new vector, nothing else of the point), every request says
`wait=true` (the ordered commit moves a cursor only past applied writes), and every point of the page is sent exactly
once with its own payload and its own vector.

The sink builds requests at the wire level (engine/qdrant/wire.py) and sends them over a grpc.aio channel; here the
channel is a recorder that answers `Completed`, so nothing runs but the sink's own code."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.embed.vectorset import MultiVectors, VectorSet
from engine.flow.page import PageBody
from engine.flow.sink import VANISHED, QdrantSink, SinkSpec
from engine.qdrant import retry, values, wire

FAST = retry.RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0, deadline_s=5.0, outage_budget_s=5.0)


class Refusal(grpc.RpcError):
    """A gRPC failure as the channel raises it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return ()


class Recorder:
    """A grpc.aio channel and endpoint in one: records every request (raw bytes as the sink serialised them) and
    answers writes with `status` and Get with the points of `held` (id -> vector names it carries)."""

    address = "recorder:0"
    timeout_s = 5.0

    def __init__(self, status: int = pb.UpdateStatus.Completed, held: dict | None = None, refuse=None) -> None:
        self.status = status
        self.held = held or {}
        self.refuse = refuse  # (method, request bytes) -> an RpcError to raise, or None
        self.sent: list[tuple[str, bytes]] = []
        self.gets: list[pb.GetPoints] = []
        self.metadata_seen: list = []
        self.timeouts: list = []
        self.closed = 0

    # --- the endpoint ---
    def aio_channel(self) -> "Recorder":
        return self

    def metadata(self):
        return (("api-key", "k"),)

    # --- the channel ---
    def unary_unary(self, method, request_serializer=None, response_deserializer=None):
        async def call(request, metadata=None, timeout=None):
            self.metadata_seen.append(metadata)
            self.timeouts.append(timeout)
            if method == "/qdrant.Points/Get":
                self.gets.append(request)
                found = [pb.RetrievedPoint(id=pid) for pid in request.ids if wire.id_value(pid) in self.held]
                for p in found:
                    for name in self.held[wire.id_value(p.id)]:
                        vec = p.vectors.vector if name == "" else p.vectors.vectors.vectors[name]
                        vec.dense.data.extend([1.0, 2.0])
                return response_deserializer(pb.GetResponse(result=found).SerializeToString())
            raw = request if request_serializer is None else request_serializer(request)
            self.sent.append((method, raw))
            if self.refuse is not None:
                err = self.refuse(method, raw)
                if err is not None:
                    raise err
            reply = pb.PointsOperationResponse(result=pb.UpdateResult(operation_id=1, status=self.status))
            return response_deserializer(reply.SerializeToString())

        return call

    async def close(self) -> None:
        self.closed += 1

    # --- decoding ---
    def upserts(self) -> list[pb.UpsertPoints]:
        assert all(m == "/qdrant.Points/Upsert" for m, _ in self.sent), [m for m, _ in self.sent]
        return [pb.UpsertPoints.FromString(raw) for _, raw in self.sent]

    def updates(self) -> list[pb.UpdatePointVectors]:
        assert all(m == "/qdrant.Points/UpdateVectors" for m, _ in self.sent), [m for m, _ in self.sent]
        return [pb.UpdatePointVectors.FromString(raw) for _, raw in self.sent]


IDS = [3, 7, "1b4e28ba-2fa1-11d2-883f-0016d3cca427", 12, 40, 41, 99]
NO_TEXT = {12}  # a point without usable text: no new vector


def page(ids=IDS, no_text=NO_TEXT, shard_key=None, overwrite=()) -> tuple[PageBody, np.ndarray]:
    """A page as the source hands it over (each point's id and payload as PointStruct bytes) and its vectors: the
    row of point i is [i, i + 0.5, -i] so every vector names its point."""
    blobs, text_index = [], []
    for pos, pid in enumerate(ids):
        payload = {"text": f"text of {pid}", "n": pos, "tags": ["a", str(pid)]}
        blobs.append(pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
                     .SerializeToString())
        if pid not in no_text:
            text_index.append(pos)
    vectors = np.array([[pos, pos + 0.5, -pos] for pos in text_index], dtype=np.float32)
    body = PageBody(ids=list(ids), blobs=blobs, text_index=text_index, shard_key=shard_key,
                    overwrite=list(overwrite))
    return body, vectors


def write(sink: QdrantSink, body: PageBody, vectors, check_present: bool = False):
    return asyncio.run(sink.write(0, 4, body, vectors, check_present=check_present))


def sink(rec: Recorder, **spec) -> QdrantSink:
    return QdrantSink(rec, SinkSpec(collection="dst", **{"vector_name": "dense", **spec}), policy=FAST)


def dense(vectors: pb.Vectors, name: str) -> list[float]:
    if name == "":
        return list(vectors.vector.dense.data)
    return list(vectors.vectors.vectors[name].dense.data)


def test_a_new_collection_gets_insert_only_upserts_with_wait():
    rec = Recorder()
    body, vectors = page()
    ack = write(sink(rec), body, vectors)
    requests = rec.upserts()
    assert requests, "nothing was sent"
    for req in requests:
        assert req.collection_name == "dst"
        assert req.update_mode == pb.UpdateMode.InsertOnly  # an existing point is left as the application wrote it
        assert req.HasField("wait") and req.wait is True  # applied before the cursor moves, not just in the WAL
        assert not req.HasField("shard_key_selector")
    points = [p for req in requests for p in req.points]
    assert [wire.id_value(p.id) for p in points] == IDS  # every point once, in page order
    for pos, p in enumerate(points):
        assert values.payload_to_python(p.payload) == {"text": f"text of {IDS[pos]}", "n": pos,
                                                       "tags": ["a", str(IDS[pos])]}
        if IDS[pos] in NO_TEXT:
            # kept (its payload copied) with no vector at all: a named-vector collection allows that
            assert p.vectors.WhichOneof("vectors_options") == "vectors" and not p.vectors.vectors.vectors
        else:
            assert list(p.vectors.vectors.vectors) == ["dense"]
            assert dense(p.vectors, "dense") == [pos, pos + 0.5, -pos]
    assert ack.written == len(IDS) - len(NO_TEXT) and ack.skipped == len(NO_TEXT) and ack.dead == []
    assert ack.requests == len(requests) and (ack.shard, ack.seq) == (0, 4)
    assert all(md == (("api-key", "k"),) for md in rec.metadata_seen)


def test_in_place_writes_are_update_vectors_with_wait_and_only_the_new_vector():
    rec = Recorder()
    body, vectors = page()
    ack = write(sink(rec, mode="update_vectors"), body, vectors)
    requests = rec.updates()
    for req in requests:
        assert req.collection_name == "dst" and req.HasField("wait") and req.wait is True
    points = [p for req in requests for p in req.points]
    # A point without text is not touched at all in place: its old vectors and payload stay as they are.
    with_text = [pid for pid in IDS if pid not in NO_TEXT]
    assert [wire.id_value(p.id) for p in points] == with_text
    for p in points:
        pos = IDS.index(wire.id_value(p.id))
        assert list(p.vectors.vectors.vectors) == ["dense"] and dense(p.vectors, "dense") == [pos, pos + 0.5, -pos]
    assert ack.written == len(with_text) and ack.skipped == len(NO_TEXT)


def test_an_unnamed_vector_collection_gets_no_point_without_a_vector():
    rec = Recorder()
    body, vectors = page()
    ack = write(sink(rec, vector_name=""), body, vectors)
    points = [p for req in rec.upserts() for p in req.points]
    assert [wire.id_value(p.id) for p in points] == [pid for pid in IDS if pid not in NO_TEXT]
    for p in points:
        pos = IDS.index(wire.id_value(p.id))
        assert p.vectors.WhichOneof("vectors_options") == "vector" and dense(p.vectors, "") == [pos, pos + 0.5, -pos]
    assert all(req.update_mode == pb.UpdateMode.InsertOnly and req.wait for req in rec.upserts())
    assert ack.skipped == len(NO_TEXT)


def test_points_the_source_changed_since_the_backfill_go_as_plain_upserts_apart():
    """Catch-up overwrites the points whose source changed (their backfilled vector is stale); every other point of
    the page stays insert_only, in requests of its own."""
    rec = Recorder()
    body, vectors = page(overwrite=[1, 4])
    write(sink(rec), body, vectors)
    modes: dict = {}
    for req in rec.upserts():
        assert req.wait is True
        for p in req.points:
            modes[wire.id_value(p.id)] = req.update_mode
    assert modes == {pid: (pb.UpdateMode.Upsert if pos in (1, 4) else pb.UpdateMode.InsertOnly)
                     for pos, pid in enumerate(IDS)}


@pytest.mark.parametrize("mode", ["insert_only", "update_vectors"])
def test_requests_carry_the_pages_shard_key(mode):
    rec = Recorder()
    body, vectors = page(shard_key="tenant-a")
    write(sink(rec, mode=mode), body, vectors)
    requests = rec.upserts() if mode == "insert_only" else rec.updates()
    for req in requests:
        assert [k.keyword for k in req.shard_key_selector.shard_keys] == ["tenant-a"]


@pytest.mark.parametrize("batch", [1, 2, 3, 100])
def test_a_page_is_cut_into_requests_of_at_most_upload_batch_points(batch):
    rec = Recorder()
    body, vectors = page()
    ack = write(sink(rec, upload_batch=batch), body, vectors)
    requests = rec.upserts()
    assert all(1 <= len(req.points) <= batch for req in requests)
    assert len(requests) == -(-len(IDS) // batch) == ack.requests
    assert sorted(str(wire.id_value(p.id)) for req in requests for p in req.points) == sorted(map(str, IDS))


def test_requests_are_cut_by_bytes_too():
    rec = Recorder()
    body, vectors = page()
    one = len(body.blobs[0]) + 40  # about one point's bytes
    write(sink(rec, max_request_bytes=2 * one), body, vectors)
    requests = rec.upserts()
    assert len(requests) >= len(IDS) // 2 and all(len(req.points) <= 2 for req in requests)
    assert [wire.id_value(p.id) for req in requests for p in req.points] == IDS


def test_hybrid_writes_dense_and_sparse_in_one_vectors_field():
    rec = Recorder()
    body, vectors = page()
    sparse = [(np.array([pos, 100 + pos], dtype=np.uint32), np.array([0.5, 1.5], dtype=np.float32))
              for pos in body.text_index]
    write(sink(rec, sparse_name="bm25"), body, VectorSet(dense=vectors, sparse=sparse))
    for p in (p for req in rec.upserts() for p in req.points):
        pos = IDS.index(wire.id_value(p.id))
        if IDS[pos] in NO_TEXT:
            continue
        named = p.vectors.vectors.vectors
        assert set(named) == {"dense", "bm25"}
        assert list(named["bm25"].sparse.indices) == [pos, 100 + pos]
        assert list(named["bm25"].sparse.values) == [0.5, 1.5]
        assert list(named["dense"].dense.data) == [pos, pos + 0.5, -pos]


def test_a_late_interaction_model_writes_each_points_token_matrix():
    rec = Recorder()
    body, _ = page()
    rows = [np.full((1 + k % 3, 2), k + 1, dtype=np.float32) for k in range(len(body.text_index))]
    write(sink(rec, mode="update_vectors"), body, MultiVectors.from_rows(rows))
    points = [p for req in rec.updates() for p in req.points]
    assert len(points) == len(rows)
    for k, p in enumerate(points):
        multi = p.vectors.vectors.vectors["dense"].multi_dense
        assert [list(v.data) for v in multi.vectors] == rows[k].tolist()


def test_the_sink_waits_for_applied_writes_by_default():
    assert SinkSpec(collection="c", vector_name="v").wait is True


def test_a_redo_counts_the_points_already_written_by_asking_for_the_new_vector():
    body, vectors = page()
    rec = Recorder(held={3: ["dense"], 7: ["old"], 40: ["dense", "old"], 12: ["dense"]})
    ack = write(sink(rec), body, vectors, check_present=True)
    (get,) = rec.gets
    # Only the points that get a new vector are asked for, with that one vector and no payload.
    assert [wire.id_value(i) for i in get.ids] == [pid for pid in IDS if pid not in NO_TEXT]
    assert list(get.with_vectors.include.names) == ["dense"] and get.with_payload.enable is False
    assert ack.already_present == 2  # 3 and 40 carry "dense"; 7 has only the old vector; 12 has no text
    rec = Recorder(held={3: ["dense"]})
    assert write(sink(rec), body, vectors).already_present == 0 and rec.gets == []  # a first write asks nothing


def test_in_place_a_point_deleted_meanwhile_is_left_out_and_the_rest_written():
    gone = 40

    def refuse(method, raw):
        req = pb.UpdatePointVectors.FromString(raw)
        if any(wire.id_value(p.id) == gone for p in req.points):
            return Refusal(grpc.StatusCode.NOT_FOUND, f"No point with id {gone} found")
        return None

    held = {pid: ["dense"] for pid in IDS if pid != gone}
    rec = Recorder(held=held, refuse=refuse)
    ack = write(sink(rec, mode="update_vectors"), *page())
    delivered = [wire.id_value(p.id) for _, raw in rec.sent[1:] for p in pb.UpdatePointVectors.FromString(raw).points]
    assert delivered == [pid for pid in IDS if pid not in NO_TEXT and pid != gone]
    assert ack.dead == [(gone, VANISHED)]
    assert ack.written == len(IDS) - len(NO_TEXT) - 1 and ack.skipped == len(NO_TEXT) + 1


def test_a_missing_point_the_server_names_but_holds_is_an_error_not_a_deletion():
    rec = Recorder(held={pid: ["dense"] for pid in IDS},
                   refuse=lambda m, raw: Refusal(grpc.StatusCode.NOT_FOUND, "No point with id 3 found"))
    with pytest.raises(Exception, match="No point with id 3 found"):
        write(sink(rec, mode="update_vectors"), *page())


def test_a_new_collection_never_routes_around_a_missing_point():
    rec = Recorder(refuse=lambda m, raw: Refusal(grpc.StatusCode.NOT_FOUND, "No point with id 3 found"))
    with pytest.raises(Exception, match="No point with id 3 found"):
        write(sink(rec), *page())
    assert rec.gets == []


def test_every_call_has_a_deadline_and_the_api_key():
    """A call without a deadline could wait forever on a half-open connection, holding its page's commit."""
    body, vectors = page()
    rec = Recorder(held={3: ["dense"]})
    write(sink(rec, mode="update_vectors"), body, vectors, check_present=True)
    assert rec.timeouts and all(t == Recorder.timeout_s for t in rec.timeouts)
    assert rec.metadata_seen and all(md == (("api-key", "k"),) for md in rec.metadata_seen)


@pytest.mark.parametrize("name,held,expected", [("", {3: [""], 7: ["dense"]}, 1), ("dense", {7: ["dense"]}, 1)])
def test_a_redo_asks_for_the_vector_the_job_writes_in_its_collection_and_shard(name, held, expected):
    body, vectors = page(shard_key=9)
    rec = Recorder(held=held)
    ack = write(sink(rec, vector_name=name), body, vectors, check_present=True)
    (get,) = rec.gets
    assert get.collection_name == "dst" and [k.number for k in get.shard_key_selector.shard_keys] == [9]
    if name == "":
        assert get.with_vectors.enable is True  # the unnamed vector: a collection with one vector sends it
    else:
        assert list(get.with_vectors.include.names) == [name]
    assert ack.already_present == expected


def test_a_redo_of_a_page_without_text_asks_nothing():
    body, vectors = page(no_text=set(IDS))
    rec = Recorder(held={pid: ["dense"] for pid in IDS})
    ack = write(sink(rec), body, np.zeros((0, 3), dtype=np.float32), check_present=True)
    assert ack.already_present == 0 and rec.gets == [] and ack.written == 0 and ack.skipped == len(IDS)


def test_without_wait_an_in_place_request_says_so_too():
    rec = Recorder()
    body, vectors = page()
    write(sink(rec, mode="update_vectors", wait=False), body, vectors)
    assert all(req.wait is False for req in rec.updates())


def test_closing_the_sink_closes_its_channel_and_a_later_write_opens_another():
    rec = Recorder()
    s = sink(rec)
    body, vectors = page()

    async def twice():
        await s.write(0, 0, body, vectors)
        await s.close()
        await s.close()  # closing twice is harmless
        await s.write(0, 1, body, vectors)
        await s.close()

    asyncio.run(twice())
    assert rec.closed == 2 and len(rec.upserts()) == 2


def _with_big_point(big: int = 2) -> tuple[PageBody, np.ndarray]:
    body, vectors = page()
    payload = {"text": "x" * 5000}
    body.blobs[big] = pb.PointStruct(id=wire.point_id(IDS[big]), payload=values.payload_from_python(payload)) \
        .SerializeToString()
    return body, vectors


def test_a_point_too_large_to_send_is_a_dead_letter_and_the_rest_of_the_page_is_written(monkeypatch):
    import engine.flow.sink as sink_module

    big = 2
    body, vectors = _with_big_point(big)
    rec = Recorder()
    write(sink(rec, upload_batch=1), body, vectors)
    size = {wire.id_value(p.id): len(p.SerializeToString()) for req in rec.upserts() for p in req.points}
    largest = size[IDS[big]]
    assert largest > 2 * max(n for pid, n in size.items() if pid != IDS[big])

    headroom = 64 * 1024  # what the sink keeps free for the request's header
    monkeypatch.setattr(sink_module, "MAX_MESSAGE_BYTES", largest - 1 + headroom)  # one byte too many
    rec = Recorder()
    ack = write(sink(rec, upload_batch=1), body, vectors)
    assert [wire.id_value(p.id) for req in rec.upserts() for p in req.points] == [p for p in IDS if p != IDS[big]]
    assert ack.dead == [(IDS[big], f"point is {largest} bytes, over the gRPC message limit "
                                   f"({largest - 1 + headroom} bytes)")]
    assert ack.written == len(IDS) - len(NO_TEXT) - 1 and ack.skipped == len(NO_TEXT) + 1

    monkeypatch.setattr(sink_module, "MAX_MESSAGE_BYTES", largest + headroom)  # exactly what fits
    rec = Recorder()
    ack = write(sink(rec, upload_batch=1), body, vectors)
    assert [wire.id_value(p.id) for req in rec.upserts() for p in req.points] == IDS and ack.dead == []


def test_in_place_points_deleted_one_after_the_other_are_all_left_out():
    held = {pid: ["dense"] for pid in IDS if pid != 40}
    refusals = []

    def refuse(method, raw):
        sent = [wire.id_value(p.id) for p in pb.UpdatePointVectors.FromString(raw).points]
        if 40 in sent:
            refusals.append(40)
            return Refusal(grpc.StatusCode.NOT_FOUND, "No point with id 40 found")
        if 41 in sent:  # deleted by the application between the sink's look-up and its second request
            held.pop(41, None)
            refusals.append(41)
            return Refusal(grpc.StatusCode.NOT_FOUND, "No point with id 41 found")
        return None

    rec = Recorder(held=held, refuse=refuse)
    ack = write(sink(rec, mode="update_vectors"), *page())
    assert refusals == [40, 41]
    assert ack.dead == [(40, VANISHED), (41, VANISHED)]
    assert ack.written == len(IDS) - len(NO_TEXT) - 2 and ack.skipped == len(NO_TEXT) + 2
