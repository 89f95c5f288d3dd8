"""Throughput of the embedded Qdrant endpoint over gRPC, next to qdrant-client's local mode on disk.

What it measures (the endpoint runs as its own process, as in the demo and the chaos tests):
  * upsert: N points x DIM floats with a small payload, BATCH points per request, IN_FLIGHT requests outstanding,
    wait=true. Requests are serialised before the clock starts, so the figure is the endpoint's ceiling, not the
    client's (a real client also spends CPU building them; on 2 cores client and server share the machine).
  * scroll: the pipeline's read pattern: pages of PAGE points, payload on, vectors off, IN_FLIGHT cursors each
    reading its own id range; and the same with vectors on (what verification reads).
  * baseline: the same work through `QdrantClient(path=...)` (local mode, on disk), on BASELINE_N points because it is
    slow; all figures are points per second, so the sizes do not enter the ratios.

Usage: python bench/embedded_server.py [--n 100000] [--dim 384] [--baseline-n 3000]
The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdrant_client import QdrantClient, models  # noqa: E402
from qdrant_client import grpc as pb  # noqa: E402

from engine.embedded.process import EmbeddedProcess  # noqa: E402

COLLECTION = "bench"


def payload_of(i: int) -> dict:
    return {"text": f"document {i}: a short passage about topic {i % 97}", "n": i, "lang": "en"}


def dense_from_bytes(row: np.ndarray) -> pb.DenseVector:
    # The cheap way for a client to build a DenseVector: raw float32 bytes as the packed field.
    raw = row.astype("<f4", copy=False).tobytes()
    return pb.DenseVector.FromString(b"\x0a" + _varint(len(raw)) + raw)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def build_upserts(vectors: np.ndarray, batch: int) -> list[bytes]:
    requests = []
    for lo in range(0, len(vectors), batch):
        req = pb.UpsertPoints(collection_name=COLLECTION, wait=True)
        for i in range(lo, min(lo + batch, len(vectors))):
            point = req.points.add()
            point.id.num = i
            point.vectors.vector.dense.CopyFrom(dense_from_bytes(vectors[i]))
            for key, value in payload_of(i).items():
                if isinstance(value, int):
                    point.payload[key].integer_value = value
                else:
                    point.payload[key].string_value = value
        requests.append(req.SerializeToString())
    return requests


def run_windowed(calls: list[Callable[[], grpc.Future]], in_flight: int) -> None:
    """Keep `in_flight` calls outstanding until all are done; raise the first failure."""
    pending: list[grpc.Future] = []
    for call in calls:
        if len(pending) >= in_flight:
            pending.pop(0).result()
        pending.append(call())
    for future in pending:
        future.result()


def bench_endpoint(args: argparse.Namespace, vectors: np.ndarray, workdir: Path) -> dict:
    requests = build_upserts(vectors, args.batch)
    with EmbeddedProcess(workdir / "endpoint") as proc:
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        channel = grpc.insecure_channel(proc.address, options=options)
        pb.CollectionsStub(channel).Create(
            pb.CreateCollection(
                collection_name=COLLECTION,
                vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=args.dim, distance=pb.Distance.Cosine)),
            )
        )
        upsert_raw = channel.unary_unary(
            "/qdrant.Points/Upsert",
            request_serializer=None,  # already bytes
            response_deserializer=pb.PointsOperationResponse.FromString,
        )
        started = time.perf_counter()
        run_windowed([lambda r=r: upsert_raw.future(r) for r in requests], args.in_flight)
        upsert_s = time.perf_counter() - started

        points = pb.PointsStub(channel)
        count = points.Count(pb.CountPoints(collection_name=COLLECTION, exact=True)).result.count
        if count != args.n:
            raise SystemExit(f"endpoint holds {count} points after upserting {args.n}")

        def scroll_all(with_vectors: bool) -> float:
            bounds = np.linspace(0, args.n, args.in_flight + 1).astype(int)
            seen = [0] * args.in_flight

            def cursor(k: int) -> None:
                offset, end = int(bounds[k]), int(bounds[k + 1])
                while offset is not None and offset < end:
                    reply = points.Scroll(
                        pb.ScrollPoints(
                            collection_name=COLLECTION,
                            offset=pb.PointId(num=offset),
                            limit=args.page,
                            with_payload=pb.WithPayloadSelector(enable=True),
                            with_vectors=pb.WithVectorsSelector(enable=with_vectors),
                        )
                    )
                    seen[k] += sum(1 for p in reply.result if p.id.num < end)
                    offset = reply.next_page_offset.num if reply.HasField("next_page_offset") else None

            threads = [threading.Thread(target=cursor, args=(k,)) for k in range(args.in_flight)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            if sum(seen) != args.n:
                raise SystemExit(f"scroll saw {sum(seen)} points, expected {args.n}")
            return elapsed

        scroll_s = scroll_all(with_vectors=False)
        scroll_vec_s = scroll_all(with_vectors=True)
        channel.close()
    return {
        "upsert_pts_s": args.n / upsert_s,
        "scroll_pts_s": args.n / scroll_s,
        "scroll_with_vectors_pts_s": args.n / scroll_vec_s,
    }


def bench_local_mode(args: argparse.Namespace, vectors: np.ndarray, workdir: Path) -> dict:
    n = min(args.baseline_n, len(vectors))
    client = QdrantClient(path=str(workdir / "local"))
    client.create_collection(COLLECTION,
                             vectors_config=models.VectorParams(size=args.dim, distance=models.Distance.COSINE))
    batches = [
        models.Batch(
            ids=list(range(lo, min(lo + args.batch, n))),
            vectors=vectors[lo : min(lo + args.batch, n)].tolist(),
            payloads=[payload_of(i) for i in range(lo, min(lo + args.batch, n))],
        )
        for lo in range(0, n, args.batch)
    ]
    started = time.perf_counter()
    for batch in batches:
        client.upsert(COLLECTION, batch, wait=True)
    upsert_s = time.perf_counter() - started

    def scroll_all(with_vectors: bool) -> float:
        started = time.perf_counter()
        offset, seen = None, 0
        while True:
            records, offset = client.scroll(
                COLLECTION, offset=offset, limit=args.page, with_payload=True, with_vectors=with_vectors
            )
            seen += len(records)
            if offset is None:
                break
        if seen != n:
            raise SystemExit(f"local mode scroll saw {seen} points, expected {n}")
        return time.perf_counter() - started

    scroll_s = scroll_all(False)
    scroll_vec_s = scroll_all(True)
    client.close()
    return {
        "n": n,
        "upsert_pts_s": n / upsert_s,
        "scroll_pts_s": n / scroll_s,
        "scroll_with_vectors_pts_s": n / scroll_vec_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="points through the endpoint")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=256, help="points per upsert request")
    parser.add_argument("--page", type=int, default=1024, help="points per scroll page")
    parser.add_argument("--in-flight", type=int, default=4, help="upsert requests outstanding / scroll cursors")
    parser.add_argument("--baseline-n", type=int, default=3000, help="points through local mode (slow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    vectors = np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="reembed-bench-embedded-") as tmp:
        workdir = Path(tmp)
        endpoint = bench_endpoint(args, vectors, workdir)
        local = bench_local_mode(args, vectors, workdir)

    print(f"embedded endpoint over gRPC: {args.n} x {args.dim}-d, batch {args.batch}, {args.in_flight} in flight")
    print(f"  upsert                 {endpoint['upsert_pts_s']:>10,.0f} points/s")
    print(f"  scroll (payload)       {endpoint['scroll_pts_s']:>10,.0f} points/s")
    print(f"  scroll (payload+vecs)  {endpoint['scroll_with_vectors_pts_s']:>10,.0f} points/s")
    print(f"qdrant-client local mode on disk: {local['n']} points")
    print(f"  upsert                 {local['upsert_pts_s']:>10,.0f} points/s")
    print(f"  scroll (payload)       {local['scroll_pts_s']:>10,.0f} points/s")
    print(f"  scroll (payload+vecs)  {local['scroll_with_vectors_pts_s']:>10,.0f} points/s")
    ratios = {key: endpoint[key] / local[key] for key in ("upsert_pts_s", "scroll_pts_s", "scroll_with_vectors_pts_s")}
    print(
        "ratio endpoint / local mode: upsert {upsert_pts_s:.1f}x, scroll {scroll_pts_s:.1f}x, "
        "scroll with vectors {scroll_with_vectors_pts_s:.1f}x".format(**ratios)
    )
    print(
        json.dumps(
            {
                "bench": "embedded_server",
                "n": args.n,
                "dim": args.dim,
                "batch": args.batch,
                "page": args.page,
                "in_flight": args.in_flight,
                "endpoint": {k: round(v, 1) for k, v in endpoint.items()},
                "local_mode": {k: round(v, 1) for k, v in local.items()},
                "ratio": {k: round(v, 2) for k, v in ratios.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
