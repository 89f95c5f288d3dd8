"""The guide's version and schema rules (strategies.decide), the config keys of the strategies, and the pieces the
workers run (vectorizer, shortcuts, sparse encoding on the wire)."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.embed.vectorize import build_vectorizer
from engine.embed.vectorset import VectorSet
from engine.errors import ConfigError, PreconditionError
from engine.flow.page import PageBody
from engine.flow.sink import QdrantSink, SinkSpec
from engine.migration import shortcuts, strategies
from engine.qdrant.client import ServerInfo
from tests.config_support import job_config


def schema(named=True, sparse=()):
    dense = {"old": pb.VectorParams(size=16, distance=pb.Distance.Cosine)} if named else \
        {"": pb.VectorParams(size=16, distance=pb.Distance.Cosine)}
    return strategies.SourceSchema("docs", dense, {n: pb.SparseVectorParams() for n in sparse}, [], 10)


def cfg(strategy, target=None, **extra):
    data = {"source": {"collection": "docs"}, "strategy": strategy,
            "target": {} if strategy == "hybrid" else {"vector_name": "dense"}}
    return job_config(data, target, extra)


V16, V17, V18 = ServerInfo("qdrant", "1.16.0"), ServerInfo("qdrant", "1.17.1"), ServerInfo("qdrant", "v1.18.0")


@pytest.mark.parametrize("server,named,target,expect", [
    (V18, True, None, ("in_place", "in_place")),
    (V18, True, "docs_v2", ("new_collection", "new_collection")),
    (V17, True, "docs_v2", ("new_collection", "new_collection")),
    (V18, False, "docs_v2", ("new_collection", "new_collection")),
])
def test_auto_picks(server, named, target, expect):
    d = strategies.decide(cfg("auto", target), server, schema(named))
    assert (d.strategy, d.layout) == expect


@pytest.mark.parametrize("server,named,why", [(V17, True, "1.18"), (V18, False, "unnamed vector")])
def test_auto_without_target_refuses_with_alternative(server, named, why):
    with pytest.raises(PreconditionError, match=f"{why}.*set target.collection"):
        strategies.decide(cfg("auto"), server, schema(named))


@pytest.mark.parametrize("server,named,why", [(V16, True, "1.18"), (V17, True, "1.18"), (V18, False, "unnamed")])
def test_in_place_refusals_name_reason_and_alternative(server, named, why):
    with pytest.raises(PreconditionError) as info:
        strategies.decide(cfg("in_place"), server, schema(named))
    msg = str(info.value)
    assert "in_place" in msg and why in msg and "new_collection" in msg and "\n" not in msg


def test_side_by_side_and_hybrid_layouts():
    d = strategies.decide(cfg("side_by_side"), V18, schema())
    assert d.layout == "in_place" and d.dense_name == "dense" and not d.copy_vectors
    d = strategies.decide(cfg("side_by_side", "docs_ab"), V16, schema(named=False, sparse=("kw",)))
    assert d.layout == "new_collection" and d.copy_vectors == {"": "old", "kw": "kw"}
    with pytest.raises(PreconditionError, match="set target.collection"):
        strategies.decide(cfg("side_by_side"), V16, schema())
    d = strategies.decide(cfg("hybrid", source__vector_name="old"), V18, schema())
    assert d.layout == "in_place" and d.dense_name is None and d.sparse_name == "bm25"
    d = strategies.decide(cfg("hybrid", "docs_h"), V16, schema(named=False))
    assert d.layout == "new_collection" and d.sparse_name == "bm25" and d.copy_vectors == {"": "old"}
    req = strategies.new_collection_request(cfg("hybrid", "docs_h"), d, schema(named=False), None)
    assert set(req.vectors_config.params_map.map) == {"old"}
    assert req.sparse_vectors_config.map["bm25"].modifier == pb.Modifier.Idf


def test_name_clash_and_source_vector_checks():
    with pytest.raises(ConfigError, match="needs its own name"):
        cfg("side_by_side", "docs_ab", target__old_vector_name="dense")
    taken = strategies.SourceSchema("docs", {"dense": pb.VectorParams(size=4)}, {}, [], 1)
    with pytest.raises(PreconditionError, match="also a vector copied"):
        strategies.decide(cfg("side_by_side", "docs_ab"), V16, taken)
    with pytest.raises(PreconditionError, match="not a dense vector"):
        strategies.decide(cfg("in_place", source__vector_name="nope"), V18, schema())
    with pytest.raises(PreconditionError, match="larger than the stored"):
        strategies.decide(cfg("in_place", source__vector_name="old", shortcut__kind="matryoshka", shortcut__dim=64),
                          V18, schema())


def test_config_keys_validate():
    with pytest.raises(ConfigError, match="needs shortcut.dim"):
        cfg("in_place", shortcut__kind="matryoshka")
    with pytest.raises(ConfigError, match="sparse vector cannot be derived"):
        cfg("hybrid", shortcut__kind="linear_map")
    with pytest.raises(ConfigError, match="both set|text comes from one place"):
        cfg("in_place", source__text_field="text", source__text_dataset="x.parquet")
    c = cfg("in_place", source__text_dataset="texts/")
    assert c.source.text_field is None and c.source.text_dataset == "texts/"
    assert cfg("hybrid").target.vector_name is None  # sparse only unless a dense vector is named


def test_vectorizer_shortcuts_and_sparse_on_the_wire():
    rows = [np.arange(1, 9, dtype=np.float32), -np.arange(1, 9, dtype=np.float32)]
    out = build_vectorizer({"shortcut": {"kind": "matryoshka", "dim": 4, "normalize": True}}).embed(rows)
    assert out.shape == (2, 4) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert np.allclose(out[0], np.array([1, 2, 3, 4]) / np.linalg.norm([1, 2, 3, 4]))
    vec = build_vectorizer({"dense": {"name": "hash:8"}, "sparse": {"model": "bm25"}})
    both = vec.embed(["the quick brown fox", "jumps over the lazy dog"])
    assert isinstance(both, VectorSet) and both.dense.shape == (2, 8) and len(both.sparse) == 2
    assert vec.describe()["sparse"]["kind"] == "bm25"
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name="dense", sparse_name="bm25", mode="update_vectors"))
    body = PageBody(ids=[1, 2, 3], blobs=[b"", b"", b""], text_index=[0, 2])
    ids, points = sink.encode(body, both)
    assert ids == [1, 3]
    parsed = pb.PointVectors.FromString(points[0])
    named = parsed.vectors.vectors.vectors
    assert list(named["bm25"].sparse.indices) == both.sparse[0][0].tolist()
    assert np.allclose(named["dense"].dense.data, both.dense[0])


def test_linear_map_fit_and_recall():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((300, 12)).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    x = (y @ q.T).astype(np.float32)  # a rotation: Procrustes recovers it exactly
    for method in ("procrustes", "lstsq"):
        w, b = shortcuts.fit_map(x[:200], y[:200], method)
        mapped = shortcuts.apply_map(x[200:], w, b)
        assert shortcuts.recall_at_k(y[200:], y[200:], mapped / np.linalg.norm(mapped, axis=1, keepdims=True)) > 0.99
    noise = rng.standard_normal((100, 12)).astype(np.float32)
    assert shortcuts.recall_at_k(y[200:], y[200:], noise / np.linalg.norm(noise, axis=1, keepdims=True)) < 0.5
