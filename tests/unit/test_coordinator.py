"""The coordinator over the thread runtime with an in-memory source and sink: every id ends up written exactly as
the source holds it, whatever pages are lost on the way, and the cursor only ever moves over acknowledged pages."""

import random
import uuid

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.flow.checkpoint import JobState, UriCheckpointStore
from engine.flow.local_runtime import LocalRuntime
from engine.flow.page import WriteAck
from engine.flow.coordinator import Coordinator, WorkerLost
from engine.flow.shards import boundaries_from_sample, shard_states
from engine.qdrant import values, wire
from engine.qdrant.values import TextSpec
from engine.flow.source import QdrantSource


class MemoryClient:
    """Scroll semantics of Qdrant over a dict: id order, inclusive offset, next_page_offset."""

    def __init__(self, points):
        self.points = sorted(points.items(), key=lambda kv: wire.id_key(kv[0]))
        self.keys = [wire.id_key(k) for k, _ in self.points]

    def scroll(self, collection, offset, limit, with_payload=True, with_vectors=False):
        import bisect

        i = 0 if offset is None else bisect.bisect_left(self.keys, wire.id_key(offset))
        page = self.points[i:i + limit]
        nxt = self.points[i + limit][0] if i + limit < len(self.points) else None
        out = [pb.RetrievedPoint(id=wire.point_id(pid), payload=values.payload_from_python(payload))
               for pid, payload in page]
        return out, nxt


class MemorySink:
    def __init__(self):
        self.target = {}
        self.writes = 0

    async def write(self, shard, seq, body, vectors):
        for row, pos in enumerate(body.text_index):
            pid = body.ids[pos]
            self.target.setdefault(pid, []).append(float(vectors[row][0]))
            self.writes += 1
        return WriteAck(shard=shard, seq=seq, written=len(body.text_index),
                        skipped=len(body.ids) - len(body.text_index), requests=1)

    async def close(self):
        pass


class LenEmbedder:
    dim = 2

    def embed(self, texts):
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def make_points(n, seed=0):
    rng = random.Random(seed)
    pts = {}
    for i in range(n):
        pid = i * 3 if i % 2 else str(uuid.UUID(int=rng.getrandbits(128)))
        if i % 17 == 0:
            pts[pid] = {"other": 1}  # no text: dead letter
        else:
            pts[pid] = {"text": "x" * (1 + i % 50)}
    return pts


@pytest.mark.parametrize("fault_rate", [0.0, 0.15])
def test_every_point_written_once_per_success_and_cursor_ordered(tmp_path, fault_rate):
    pts = make_points(1200)
    client = MemoryClient(pts)
    cuts = boundaries_from_sample(list(pts), 5)
    state = JobState(job_id="t", fingerprint="f", boundaries=cuts, shards=shard_states(cuts))
    store = UriCheckpointStore(str(tmp_path))
    rng = random.Random(42)
    lost = []

    def fault(stage, shard, seq):
        if rng.random() < fault_rate:
            lost.append((stage, shard, seq))
            raise WorkerLost(f"injected {stage}")

    sink = MemorySink()
    runtime = LocalRuntime(QdrantSource(client, "src", TextSpec(field="text")), LenEmbedder(), sink, threads=3,
                           fault=fault)
    dead = []
    try:
        stats = Coordinator(state, runtime, store, page_size=37, window=6,
                            on_dead=lambda s, d, m: dead.extend(d)).run()
    finally:
        runtime.shutdown()
    with_text = {pid for pid, p in pts.items() if "text" in p}
    assert set(sink.target) == with_text  # nothing lost, nothing extra
    for pid in with_text:  # every write carried the right vector
        assert set(sink.target[pid]) == {float(len(pts[pid]["text"]))}
    assert state.written == len(with_text) and state.skipped == len(pts) - len(with_text)
    assert all(s.done for s in state.shards)
    assert {pid for pid, _ in dead} == set(pts) - with_text
    assert store.load("t").written == len(with_text)
    if fault_rate:
        assert lost and stats.pages_redone == len(lost)


def test_resume_from_a_saved_cursor_skips_committed_pages(tmp_path):
    pts = {i: {"text": f"t{i}"} for i in range(500)}
    client = MemoryClient(pts)
    state = JobState(job_id="r", fingerprint="f", boundaries=[250], shards=shard_states([250]))
    state.shards[0].cursor, state.shards[0].written = 100, 100  # pages up to id 100 were committed earlier
    state.shards[1].done, state.shards[1].written = True, 250
    sink = MemorySink()
    runtime = LocalRuntime(QdrantSource(client, "src", TextSpec(field="text")), LenEmbedder(), sink)
    try:
        Coordinator(state, runtime, UriCheckpointStore(str(tmp_path)), page_size=64, window=4).run()
    finally:
        runtime.shutdown()
    assert set(sink.target) == set(range(100, 250))
    assert state.written == 500


def test_a_page_that_always_fails_stops_the_job(tmp_path):
    from engine.errors import ReembedError

    pts = {i: {"text": "a"} for i in range(50)}

    def fault(stage, shard, seq):
        if seq == 0 and stage == "write":
            raise WorkerLost("poisoned")

    runtime = LocalRuntime(QdrantSource(MemoryClient(pts), "s", TextSpec(field="text")), LenEmbedder(),
                           MemorySink(), fault=fault)
    state = JobState(job_id="p", fingerprint="f", boundaries=[], shards=shard_states([]))
    try:
        with pytest.raises(ReembedError, match="failed 6 times"):
            Coordinator(state, runtime, UriCheckpointStore(str(tmp_path)), page_size=10, window=2).run()
    finally:
        runtime.shutdown()
    assert state.shards[0].cursor is None  # nothing past the failed page was committed
