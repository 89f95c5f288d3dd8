"""A scroll page of very large payloads whose reply exceeds the gRPC message limit (64 MiB) is read again with
fewer points per call instead of failing the page after retries; nothing is skipped or read twice."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.embedded.server import EmbeddedServer
from engine.flow.source import QdrantSource
from engine.flow.text import PayloadText
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint

pytestmark = pytest.mark.integration
BIG = 15 * 2**20  # five of these in one reply: 75 MiB, over the 64 MiB limit of both ends


def test_oversized_scroll_reply_is_read_in_smaller_calls(tmp_path):
    with EmbeddedServer(tmp_path / "q") as server:
        client = QdrantGrpc(Endpoint("127.0.0.1", server.port))
        req = pb.CreateCollection(collection_name="c")
        req.vectors_config.params_map.map["old"].CopyFrom(pb.VectorParams(size=4, distance=pb.Distance.Cosine))
        client.create_collection(req)
        ids = list(range(1, 13))
        for i in ids:
            text = (f"{i} " * (BIG // 2))[:BIG] if 3 <= i <= 7 else f"small point {i}"
            blob = pb.PointStruct(id=wire.point_id(i), payload=values.payload_from_python({"text": text})
                                  ).SerializeToString()
            client.upsert_raw(wire.upsert_request("c", [blob + wire.vectors_field(
                {"old": wire.dense_vector(np.ones(4, dtype="<f4").tobytes())})]), "seed")
        source = QdrantSource(client, "c", PayloadText(field="text"))
        seen, sizes, start, seq = [], [], None, 0
        while True:
            meta, texts, body = source.read_page(0, seq, start, None, 10)
            seen += body.ids
            sizes.append(meta.n_points)
            assert [t.split(" ", 1)[0] for t in texts] == [str(i) if 3 <= i <= 7 else "small" for i in body.ids]
            if meta.exhausted:
                break
            start, seq = meta.next_offset, seq + 1
        assert seen == ids  # every point once, in order
        assert sizes[0] < 10  # the first page was cut to fit
        assert sum(sizes) == len(ids)
        # A re-read of a range (to_stop, as after a lost worker) covers exactly that range, however it is cut.
        meta, _, body = source.read_page(0, 0, 2, 9, 10, to_stop=True)
        assert body.ids == list(range(2, 9)) and meta.next_offset is None
        client.close()
