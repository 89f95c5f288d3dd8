"""What the endpoint acknowledged survives a clean restart and a crash (kill -9) of its process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from engine.embedded.process import EmbeddedProcess
from engine.embedded.server import EmbeddedServer
from engine.errors import PreconditionError

pytestmark = pytest.mark.integration


def endpoint_client(port: int) -> QdrantClient:
    return QdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True, check_compatibility=False)


def snapshot(client: QdrantClient) -> dict:
    """Everything a restart must keep, as plain data."""
    out: dict = {"collections": sorted(c.name for c in client.get_collections().collections)}
    for name in out["collections"]:
        info = client.get_collection(name)
        points, _ = client.scroll(name, limit=1000, with_vectors=True)
        out[name] = {
            "config": info.config.model_dump(),
            "payload_schema": {k: v.model_dump() for k, v in info.payload_schema.items()},
            "points_count": info.points_count,
            "points": [(p.id, p.payload, p.vector) for p in points],
            "aliases": sorted(a.alias_name for a in client.get_collection_aliases(name).aliases),
        }
    return out


def populate(client: QdrantClient) -> None:
    client.create_collection(
        "docs",
        vectors_config={"old": models.VectorParams(size=3, distance=models.Distance.COSINE, on_disk=True)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        hnsw_config=models.HnswConfigDiff(m=8, ef_construct=64),
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=20000),
        metadata={"model": "all-MiniLM-L6-v2", "dims": 384},
    )
    client.upsert(
        "docs",
        [
            models.PointStruct(
                id=i,
                vector={"old": [1.0, float(i), 2.0], "bm25": models.SparseVector(indices=[i], values=[1.0])},
                payload={"text": f"doc {i}", "n": i},
            )
            for i in range(20)
        ],
    )
    client.create_payload_index("docs", "n", models.PayloadSchemaType.INTEGER)
    client.create_payload_index("docs", "text", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True))
    client.create_vector_name("docs", "new", models.DenseVectorNameConfig(dense=models.DenseVectorConfig(size=2, distance=models.Distance.DOT)))
    client.update_vectors("docs", [models.PointVectors(id=i, vector={"new": [float(i), 1.0]}) for i in range(0, 20, 2)])
    client.update_collection("docs", metadata={"stage": "backfill"}, optimizers_config=models.OptimizersConfigDiff(deleted_threshold=0.3))
    client.create_collection("plain", vectors_config=models.VectorParams(size=2, distance=models.Distance.EUCLID))
    client.upsert("plain", [models.PointStruct(id="0a8e1b5c-7f9e-4d0b-9f0e-2b1d9c3e4f5a", vector=[1.0, 2.0], payload={"u": "é"})])
    client.create_collection("doomed", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="docs", alias_name="live")),
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="doomed", alias_name="gone")),
        ]
    )
    client.delete_collection("doomed")  # its alias goes with it


def test_clean_restart_keeps_everything(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path) as server:
        client = endpoint_client(server.port)
        populate(client)
        before = snapshot(client)
        client.close()
    with EmbeddedServer(tmp_path) as server:
        client = endpoint_client(server.port)
        after = snapshot(client)
        assert client.count("live").count == 20
        client.close()

    assert after == before
    assert before["collections"] == ["docs", "plain"]
    docs = before["docs"]
    assert docs["aliases"] == ["live"]
    assert docs["config"]["metadata"] == {"model": "all-MiniLM-L6-v2", "dims": 384, "stage": "backfill"}
    assert docs["config"]["hnsw_config"]["m"] == 8 and docs["config"]["optimizer_config"]["deleted_threshold"] == 0.3
    assert sorted(docs["config"]["params"]["vectors"]) == ["new", "old"]
    assert docs["payload_schema"]["n"]["points"] == 20 and docs["payload_schema"]["text"]["params"]["is_tenant"] is True


def test_second_server_on_same_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path):
        with pytest.raises(PreconditionError, match="in use by another embedded endpoint"):
            EmbeddedServer(tmp_path).start()


def test_kill_9_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with EmbeddedProcess(tmp_path / "data") as proc:
        client = endpoint_client(proc.port)
        populate(client)
        for lo in range(100, 400, 50):  # several acknowledged batches after the set-up
            client.upsert("plain", [models.PointStruct(id=i, vector=[float(i), 1.0], payload={"i": i}) for i in range(lo, lo + 50)], wait=True)
        client.update_collection_aliases(
            change_aliases_operations=[models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="plain", alias_name="p"))]
        )
        before = snapshot(client)
        address = proc.address
        proc.kill()
        proc.restart()
        assert proc.address == address  # same port: the client that holds the address reconnects
        after = snapshot(client)
        assert client.count("p").count == 301
        client.close()
        assert proc.stop() == 0  # SIGTERM: a clean stop, shards flushed
    assert after == before


def test_taken_port_is_refused(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "a") as first:
        with pytest.raises(PreconditionError, match=f"cannot listen on 127.0.0.1:{first.port}: address in use"):
            EmbeddedServer(tmp_path / "b", port=first.port).start()
        # the refused server released its data dir again
        with EmbeddedServer(tmp_path / "b") as second:
            assert second.port != first.port


def test_a_data_dir_of_the_first_format_is_moved_to_shards(tmp_path: Path) -> None:
    """Collections written before shards existed (format 1: one shard at collections/<name>/shard/) open as one
    shard 0, and are rewritten in the current format."""
    with EmbeddedServer(tmp_path) as server:
        client = endpoint_client(server.port)
        client.create_collection("old", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        client.upsert("old", [models.PointStruct(id=i, vector=[1.0, float(i)]) for i in range(7)])
        client.close()
    coll_dir = tmp_path / "collections" / "old"
    os.replace(coll_dir / "shards" / "0", coll_dir / "shard")
    (coll_dir / "shards").rmdir()
    doc = json.loads((coll_dir / "config.json").read_text())
    doc["format"] = 1
    del doc["layout"]
    (coll_dir / "config.json").write_text(json.dumps(doc))
    with EmbeddedServer(tmp_path) as server:
        client = endpoint_client(server.port)
        assert client.count("old").count == 7
        client.close()
    assert (coll_dir / "shards" / "0").is_dir() and json.loads((coll_dir / "config.json").read_text())["format"] == 2
