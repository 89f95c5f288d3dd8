"""`make demo`: a real migration on the embedded default, end to end.

Starts the embedded Qdrant endpoint, fills a source collection with docstrings of Python's standard library embedded
by a legacy model (hashed bag-of-words), re-embeds it with all-MiniLM-L6-v2 through the Ray pipeline, swaps the
alias, and shows the same queries searched before and after through the alias.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path

from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app import wiring
from engine.migration.cutover import swap
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint

log = logging.getLogger(__name__)

DEMO_CONFIG = "demo.yaml"  # in the package engine.configs (the top-level configs/ folder, shipped in the wheel)
LEGACY_DIM = 256  # hashed bag-of-words buckets of the "old model"
SEED_BATCH = 256


def demo_config() -> Path:
    """The demo's job config, from the installed package (a wheel) or the checkout alike."""
    path = resources.files("engine.configs") / DEMO_CONFIG
    return Path(str(path))


def seed_source(client: QdrantGrpc, collection: str, passages: list[dict], legacy) -> int:
    """The 'production' collection before the migration: unnamed legacy vectors, payload {module, title, text}."""
    req = pb.CreateCollection(collection_name=collection)
    req.vectors_config.params.CopyFrom(pb.VectorParams(size=legacy.dim, distance=pb.Distance.Cosine))
    client.create_collection(req)
    client.create_field_index(collection, "module", pb.FieldType.FieldTypeKeyword)
    rows = list(passages)
    # A few records without usable text, as real collections have: they must be reported, never dropped.
    start = max(p["id"] for p in rows) + 1
    rows += [{"id": start, "module": "legacy", "title": "image-only record"},
             {"id": start + 1, "module": "legacy", "title": "empty record", "text": ""}]
    for i in range(0, len(rows), SEED_BATCH):
        batch = rows[i:i + SEED_BATCH]
        vecs = legacy.embed([r.get("text") or r["title"] for r in batch])
        blobs = []
        for r, v in zip(batch, vecs):
            payload = values.payload_from_python({k: r[k] for k in ("module", "title", "text") if k in r})
            base = pb.PointStruct(id=wire.point_id(r["id"]), payload=payload).SerializeToString()
            blobs.append(base + wire.vectors_field({"": wire.dense_vector(wire.f32_bytes(v))}))
        client.upsert_raw(wire.upsert_request(collection, blobs, wait=True, insert_only=False), "seed demo source")
    return len(rows)


def _top(client: QdrantGrpc, collection: str, vector, using: str | None, k: int = 3) -> list[str]:
    hits = client.search(collection, vector, using=using, limit=k)
    return [f"{values.to_python(h.payload['title'])} ({h.score:.2f})" for h in hits]


def run_demo(data_dir: str = "demo-data", limit: int = 3000, keep: bool = False) -> int:
    from engine.app.demo_corpus import demo_queries, stdlib_passages
    from engine.app.verify_job import run_verify
    from engine.config import load_config
    from engine.embed import HashedBowEmbedder, build_embedder
    from engine.embedded.process import EmbeddedProcess

    t0 = time.monotonic()
    root = Path(data_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    passages = stdlib_passages(limit=limit)
    legacy = HashedBowEmbedder(LEGACY_DIM)
    with EmbeddedProcess(str(root / "qdrant")) as server:
        cfg = load_config(demo_config(), overrides=[f"qdrant.grpc_port={server.port}",
                                                    f"dead_letter.dir={root / 'runs'}"])
        endpoint = Endpoint(host="127.0.0.1", port=server.port)
        client = QdrantGrpc(endpoint)
        n = seed_source(client, cfg.source.collection, passages, legacy)
        print(f"demo: endpoint on {server.address}; source {cfg.source.collection!r} holds {n} points "
              f"(stdlib docstrings, legacy {LEGACY_DIM}-d hashed bag-of-words vectors)", flush=True)

        summary = jobs.run_job(cfg)
        target = wiring.target_collection(cfg)
        alias = cfg.target.alias
        assert alias is not None  # configs/demo.yaml sets target.alias
        # Before the swap the application's alias points at the old collection.
        client.update_aliases([pb.AliasOperations(create_alias=pb.CreateAlias(
            collection_name=cfg.source.collection, alias_name=alias))])
        queries = demo_queries()
        model = build_embedder(cfg.model_spec())
        before = {q: _top(client, alias, legacy.embed([q])[0], None) for q in queries}
        # The guide's last step before cutover: verify. The swap is gated on it.
        result = run_verify(cfg)
        for line in result.lines():
            print(f"  {line}")
        if not result.passed:
            print(f"demo: verify failed; the alias stays on the old collection. Report: {result.report}")
            return 1
        swap(client, wiring.make_store(cfg, client), summary["job_id"], alias, cfg.source.collection, target)
        after = {q: _top(client, alias, model.embed([q])[0], cfg.target.vector_name) for q in queries}
        print(f"\ndemo: alias {alias!r} now points at {target!r}. Same queries through the alias:\n")
        for q in queries:
            print(f"  query: {q}")
            print(f"    before (legacy): {'; '.join(before[q])}")
            print(f"    after  (MiniLM): {'; '.join(after[q])}")
        print(f"\ndemo: migrated {summary['points_written']} points, {summary['points_skipped']} without usable "
              f"text kept and listed in {summary['dead_letters']}; total demo time {time.monotonic() - t0:.0f}s")
        print(f"demo: verify passed; report (open in a browser): {result.report}\n")
        client.close()
    if not keep:
        shutil.rmtree(root / "qdrant", ignore_errors=True)
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0
