"""Live writes during a migration: the application inserts, updates and deletes source points while the backfill
runs, and (as the guide advises for blue-green) writes the same changes with the new model into the target — except
for a share of writes it only sends to the source. After the backfill, the catch-up pass must leave the target an
exact mirror: nothing missing, no phantoms, every vector the new model's embedding of the point's current text."""

from __future__ import annotations

import random
import threading
import time

import pytest
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app.catchup_job import run_catch_up
from engine.embed import build_embedder
from engine.embedded.process import EmbeddedProcess
from engine.qdrant import values, wire
from tests.integration.pipeline_support import assert_exact, client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.chaos
N = 2000


class App:
    """The application: writes to the source, and to the target too when `dual` (the guide's advice)."""

    def __init__(self, port: int, ids: list, seed: int = 4) -> None:
        self.client = client_for(port)
        self.model = build_embedder({"name": "hash:32"})
        self.rng = random.Random(seed)
        self.ids = list(ids)
        self.next_id = 10_000_000
        self.ops = {"insert": 0, "update": 0, "delete": 0, "source_only": 0}
        self.stop = threading.Event()

    def _write(self, collection: str, pid, payload: dict, vector_name: str | None) -> None:
        base = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload)).SerializeToString()
        if vector_name is None:  # the source keeps its legacy unnamed 8-d vector
            vec = wire.vectors_field({"": wire.dense_vector(wire.f32_bytes(self.model.embed([payload["text"]])[0][:8]))})
        else:
            vec = wire.vectors_field({vector_name: wire.dense_vector(wire.f32_bytes(
                self.model.embed([payload["text"]])[0]))})
        self.client.upsert_raw(wire.upsert_request(collection, [base + vec], wait=True, insert_only=False), "app")

    def step(self) -> None:
        dual = self.rng.random() < 0.7 and self.client.collection_exists("dst")
        if not dual:
            self.ops["source_only"] += 1
        op = self.rng.choice(["insert", "update", "delete"])
        self.ops[op] += 1
        if op == "delete":
            pid = self.ids.pop(self.rng.randrange(len(self.ids)))
            self.client.delete_points("src", [pid])
            if dual:
                self.client.delete_points("dst", [pid])
            return
        if op == "insert":
            pid = self.next_id
            self.next_id += 1
            self.ids.append(pid)
        else:
            pid = self.rng.choice(self.ids)
        payload = {"text": f"live {op} {self.rng.random():.6f} of {pid}", "meta": {"op": op}}
        self._write("src", pid, payload, None)
        if dual:
            self._write("dst", pid, payload, "dense")

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
            time.sleep(0.01)


def test_live_writes_then_catch_up_gives_exact_mirror(ray_local, tmp_path):
    with EmbeddedProcess(str(tmp_path / "q"), faults="latency_ms=5-15", seed=3) as server:
        payloads = make_payloads(N, seed=21)
        client = client_for(server.port)
        seed_collection(client, "src", payloads)
        client.close()
        app = App(server.port, list(payloads))
        writer = threading.Thread(target=app.run, daemon=True)
        writer.start()
        cfg = config(server.port, tmp_path, page=64)
        try:
            out = jobs.run_job(cfg, progress=False)
        finally:
            app.stop.set()
            writer.join(timeout=30)
        assert sum(app.ops[k] for k in ("insert", "update", "delete")) > 50, app.ops
        result = run_catch_up(cfg)
        assert result["inserted"] + result["updated"] + result["deleted"] > 0, (result, app.ops)
        assert_exact(server.port, "src", "dst")
        # a second catch-up finds nothing left to do
        again = run_catch_up(cfg)
        assert again["inserted"] == again["updated"] == again["deleted"] == 0
        print(f"live writes {app.ops}; backfill {out['points_written']} written; catch-up {result}")
