"""In place, the application may delete points while the job runs: Qdrant refuses a whole UpdateVectors request
that names a vanished point. The sink must write every point still there and report the vanished ones."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.embedded.server import EmbeddedServer
from engine.errors import NotFound
from engine.flow.page import PageBody
from engine.flow.sink import VANISHED, QdrantSink, SinkSpec
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint

pytestmark = pytest.mark.integration
DIM = 8


def _collection(client: QdrantGrpc, ids: list) -> None:
    req = pb.CreateCollection(collection_name="c")
    for name in ("old", "new"):
        req.vectors_config.params_map.map[name].CopyFrom(pb.VectorParams(size=DIM, distance=pb.Distance.Cosine))
    client.create_collection(req)
    old = np.ones(DIM, dtype="<f4").tobytes()
    blobs = [pb.PointStruct(id=wire.point_id(i)).SerializeToString() + wire.vectors_field(
        {"old": wire.dense_vector(old)}) for i in ids]
    client.upsert_raw(wire.upsert_request("c", blobs, insert_only=False), "seed")


def test_update_vectors_leaves_out_points_deleted_meanwhile(tmp_path):
    ids = [1, 2, 3, str(uuid.UUID(int=7)), 5, 6]
    with EmbeddedServer(tmp_path / "q") as server:
        endpoint = Endpoint("127.0.0.1", server.port)
        client = QdrantGrpc(endpoint)
        _collection(client, ids)
        gone = [2, str(uuid.UUID(int=7))]
        client.delete_points("c", gone)
        # Point 6 has no usable text: it is not sent at all, whatever happens to the others.
        body = PageBody(ids=ids, blobs=[b""] * len(ids), text_index=[0, 1, 2, 3, 4])
        vectors = np.random.default_rng(0).standard_normal((5, DIM)).astype(np.float32)
        # upload_batch 2 so that one request holds only vanished points and another a mix.
        sink = QdrantSink(endpoint, SinkSpec(collection="c", vector_name="new", mode="update_vectors",
                                             upload_batch=2))

        async def run():
            try:
                return await sink.write(0, 0, body, vectors)
            finally:
                await sink.close()

        ack = asyncio.run(run())
        assert sorted(map(str, (pid for pid, _ in ack.dead))) == sorted(map(str, gone))
        assert {why for _, why in ack.dead} == {VANISHED}
        assert (ack.written, ack.skipped) == (3, 3)
        stored = {wire.id_value(p.id): p for p in client.get("c", [1, 3, 5, 6], with_vectors=True)}
        for row, pid in ((0, 1), (2, 3), (4, 5)):
            got = np.array(stored[pid].vectors.vectors.vectors["new"].dense.data, dtype=np.float32)
            np.testing.assert_allclose(got, vectors[row] / np.linalg.norm(vectors[row]), rtol=1e-6)
        assert "new" not in stored[6].vectors.vectors.vectors
        assert client.count("c") == 4  # nothing re-created
        client.close()


def test_a_missing_collection_is_still_an_error(tmp_path):
    with EmbeddedServer(tmp_path / "q") as server:
        endpoint = Endpoint("127.0.0.1", server.port)
        sink = QdrantSink(endpoint, SinkSpec(collection="nope", vector_name="new", mode="update_vectors"))
        body = PageBody(ids=[1], blobs=[b""], text_index=[0])

        async def run():
            try:
                return await sink.write(0, 0, body, np.ones((1, DIM), dtype=np.float32))
            finally:
                await sink.close()

        with pytest.raises(NotFound, match="nope"):
            asyncio.run(run())
