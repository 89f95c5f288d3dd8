"""Multivector write and read rates on the embedded endpoint, against a dense vector, for the README.

What the engine does with a late-interaction model's vectors, timed alone (no model, no Ray): the writer's path
(QdrantSink.write: the page's token matrices encoded at the wire level, requests cut by bytes, a few in flight,
insert_only upserts with wait=true) and the reader's copy path (QdrantSource.read_page copying the stored vector
verbatim, as side_by_side into a new collection does). The same is done for one dense vector per point, so the
ratio says what a ColBERT vector costs beside the dense one it replaces or joins.

    .venv/bin/python bench/multivector.py                  # 4k points, 120 tokens x 128-d vs 384-d dense
    .venv/bin/python bench/multivector.py --n 20000 --tokens 180

Printed per kind: points/s and MB/s (the bytes of the vectors themselves, float32) for writes and reads, the
client's own encoding rate (QdrantSink.encode alone: what the engine costs before the server), and the ratio
multivector / dense. JSON (last line) has every figure. The endpoint shares the machine's cores with this
process: the figures are this machine's, not a Qdrant server's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path insert: bench runs as a script

PAGE = 256  # points per page handed to the writer (the sink then cuts requests by bytes)


def _page_vectors(kind: str, count: int, args: argparse.Namespace, rng: np.random.Generator):
    from engine.embed.vectorset import MultiVectors, VectorSet

    if kind == "dense":
        return rng.standard_normal((count, args.dense_dim)).astype(np.float32)
    # ragged like real documents: lengths spread +-50 % around the mean
    lengths = rng.integers(max(1, args.tokens // 2), args.tokens + args.tokens // 2 + 1, size=count)
    data = rng.standard_normal((int(lengths.sum()), args.token_dim)).astype(np.float32)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return VectorSet(dense=None, sparse=None, multi=MultiVectors(data, offsets))


def _vector_bytes(vectors) -> int:
    return int(vectors.nbytes) if isinstance(vectors, np.ndarray) else int(vectors.multi.data.nbytes)


def create(client, collection: str, kind: str, args: argparse.Namespace) -> None:
    from qdrant_client import grpc as pb

    req = pb.CreateCollection(collection_name=collection)
    params = pb.VectorParams(size=args.dense_dim if kind == "dense" else args.token_dim, distance=pb.Distance.Cosine)
    if kind == "multi":
        params.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
        params.hnsw_config.m = 0  # ColBERT kept for rescoring, as the guide advises; the dense one is indexed later
    req.vectors_config.params_map.map["v"].CopyFrom(params)
    client.create_collection(req)


def write(port: int, collection: str, kind: str, args: argparse.Namespace) -> tuple[float, int, float]:
    """Seconds and vector bytes to write args.n points through the engine's sink, and the seconds the sink's
    encoding alone took (the same pages, encoded once more without sending)."""
    from qdrant_client import grpc as pb

    from engine.flow.page import PageBody
    from engine.flow.sink import QdrantSink, SinkSpec
    from engine.qdrant import values, wire
    from engine.qdrant.connection import Endpoint

    rng = np.random.default_rng(1)
    pages = []
    for start in range(0, args.n, PAGE):
        count = min(PAGE, args.n - start)
        ids = list(range(start + 1, start + count + 1))
        blobs = [pb.PointStruct(id=wire.point_id(i), payload=values.payload_from_python({"i": i}))
                 .SerializeToString() for i in ids]
        pages.append((PageBody(ids=ids, blobs=blobs, text_index=list(range(count))),
                      _page_vectors(kind, count, args, rng)))
    nbytes = sum(_vector_bytes(v) for _, v in pages)
    sink = QdrantSink(Endpoint("127.0.0.1", port), SinkSpec(collection=collection, vector_name="v"))
    t0 = time.perf_counter()
    for body, vec in pages:
        sink.encode(body, vec)
    encode_s = time.perf_counter() - t0

    async def run() -> float:
        t0 = time.perf_counter()
        # two pages at once: a lane's writer has several pages in flight
        for k in range(0, len(pages), 2):
            await asyncio.gather(*(sink.write(0, k + j, body, vec) for j, (body, vec) in enumerate(pages[k:k + 2])))
        seconds = time.perf_counter() - t0
        await sink.close()
        return seconds

    return asyncio.run(run()), nbytes, encode_s


def read(port: int, collection: str, args: argparse.Namespace) -> tuple[float, int, int]:
    """Seconds, points and reply bytes to read the whole collection through the source's copy path."""
    from engine.flow.source import QdrantSource
    from engine.flow.text import PayloadText
    from engine.qdrant.client import QdrantGrpc
    from engine.qdrant.connection import Endpoint

    with QdrantGrpc(Endpoint("127.0.0.1", port)) as client:
        source = QdrantSource(client, collection, PayloadText(field="i"), copy_vectors={"v": "v"})
        t0 = time.perf_counter()
        points = nbytes = 0
        start = None
        while True:
            meta, _, body = source.read_page(0, 0, start, None, args.page)
            points += meta.n_points
            nbytes += sum(len(b) for b in body.blobs)
            start = meta.next_offset
            if start is None:
                return time.perf_counter() - t0, points, nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="points per collection")
    parser.add_argument("--tokens", type=int, default=120, help="mean token vectors per point (ColBERT: ~100-180)")
    parser.add_argument("--token-dim", type=int, default=128, help="token vector size (ColBERT: 128)")
    parser.add_argument("--dense-dim", type=int, default=384, help="the dense vector compared against")
    parser.add_argument("--page", type=int, default=256, help="points per read (the source halves it if too big)")
    args = parser.parse_args(argv)

    from engine.qdrant.client import QdrantGrpc
    from engine.qdrant.connection import Endpoint

    figures: dict = {"machine": common.machine(), "n": args.n, "tokens": args.tokens, "token_dim": args.token_dim,
                     "dense_dim": args.dense_dim}
    with common.endpoint() as proc:
        with QdrantGrpc(Endpoint("127.0.0.1", proc.port)) as client:
            for kind in ("dense", "multi"):
                create(client, f"bench_{kind}", kind, args)
        for kind in ("dense", "multi"):
            seconds, nbytes, encode_s = write(proc.port, f"bench_{kind}", kind, args)
            figures[f"{kind}_encode_mb_per_s"] = nbytes / encode_s / 1e6
            figures[f"{kind}_write_points_per_s"] = args.n / seconds
            figures[f"{kind}_write_mb_per_s"] = nbytes / seconds / 1e6
            figures[f"{kind}_vector_bytes_per_point"] = nbytes / args.n
            seconds, points, wire_bytes = read(proc.port, f"bench_{kind}", args)
            assert points == args.n, (kind, points)
            figures[f"{kind}_read_points_per_s"] = points / seconds
            figures[f"{kind}_read_mb_per_s"] = nbytes / seconds / 1e6
            figures[f"{kind}_read_wire_bytes_per_point"] = wire_bytes / points
    for what in ("write", "read"):
        for unit in ("points_per_s", "mb_per_s"):
            figures[f"ratio_{what}_{unit}"] = figures[f"multi_{what}_{unit}"] / figures[f"dense_{what}_{unit}"]
    for kind, label in (("dense", f"dense {args.dense_dim}-d"),
                        ("multi", f"multivector ~{args.tokens} x {args.token_dim}-d")):
        print(f"{label:<32} {figures[f'{kind}_vector_bytes_per_point'] / 1e3:8.1f} KB/point   "
              f"write {figures[f'{kind}_write_points_per_s']:9,.0f} points/s {figures[f'{kind}_write_mb_per_s']:7.1f} "
              f"MB/s   read {figures[f'{kind}_read_points_per_s']:9,.0f} points/s "
              f"{figures[f'{kind}_read_mb_per_s']:7.1f} MB/s   "
              f"client encode {figures[f'{kind}_encode_mb_per_s']:7,.0f} MB/s")
    print(f"multivector / dense: write {figures['ratio_write_points_per_s']:.3f}x points/s "
          f"({figures['ratio_write_mb_per_s']:.2f}x MB/s), read {figures['ratio_read_points_per_s']:.3f}x points/s "
          f"({figures['ratio_read_mb_per_s']:.2f}x MB/s)")
    common.emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
