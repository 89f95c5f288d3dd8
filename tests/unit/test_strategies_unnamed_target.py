"""`target.vector_name: null` means one unnamed vector: a new collection holding just the model's vector, written as
the unnamed `Vectors{vector=...}`; for hybrid it still means no new dense vector (sparse only)."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.config import config_from_dict
from engine.errors import PreconditionError
from engine.flow.page import PageBody
from engine.flow.sink import QdrantSink, SinkSpec
from engine.migration import strategies
from tests.unit.test_strategy_rules import V16, V18, schema


def unnamed_cfg(strategy, target="docs_v2", **target_keys):
    data = {"source": {"collection": "docs"}, "strategy": strategy,
            "target": {"vector_name": None, **({"collection": target} if target else {}), **target_keys}}
    return config_from_dict(data, env={})


def _info_of(req: pb.CreateCollection) -> pb.CollectionInfo:
    info = pb.CollectionInfo()
    info.config.params.vectors_config.CopyFrom(req.vectors_config)
    info.config.params.sparse_vectors_config.CopyFrom(req.sparse_vectors_config)
    return info


@pytest.mark.parametrize("strategy", ["new_collection", "auto"])
@pytest.mark.parametrize("server", [V16, V18])
@pytest.mark.parametrize("named", [True, False])
def test_null_vector_name_makes_one_unnamed_vector(strategy, server, named):
    cfg = unnamed_cfg(strategy)
    src = schema(named)
    d = strategies.decide(cfg, server, src)
    assert (d.strategy, d.layout, d.collection) == ("new_collection", "new_collection", "docs_v2")
    assert d.dense_name == "" and d.sparse_name is None and not d.copy_vectors
    req = strategies.new_collection_request(cfg, d, src, 384)
    assert req.vectors_config.HasField("params") and not req.vectors_config.HasField("params_map")
    assert req.vectors_config.params.size == 384 and req.vectors_config.params.distance == pb.Distance.Cosine
    assert not req.sparse_vectors_config.map
    # a resumed job finds its own target fit, and a target of another size refused
    strategies.check_new_collection_target(_info_of(req), d, 384)
    with pytest.raises(PreconditionError, match="384-d vectors but target 'docs_v2' vector '\\(unnamed\\)' is 16-d"):
        strategies.check_new_collection_target(_info_of(strategies.new_collection_request(cfg, d, src, 16)), d, 384)
    with pytest.raises(PreconditionError, match="no output dimension"):
        strategies.new_collection_request(cfg, d, src, None)


def test_null_vector_name_where_a_name_is_needed():
    # auto choosing in-place on a 1.18 server with named vectors: an added vector must have a name
    with pytest.raises(PreconditionError, match="adds a named vector; set target.vector_name"):
        strategies.decide(unnamed_cfg("auto", target=None), V18, schema(named=True))
    # side_by_side copies the old vectors beside the new one: every vector of that collection needs a name
    with pytest.raises(PreconditionError, match="must name each; set target.vector_name") as info:
        strategies.decide(unnamed_cfg("side_by_side", target="docs_ab"), V16, schema(named=False))
    assert "\n" not in str(info.value)


def test_null_vector_name_for_hybrid_stays_sparse_only():
    d = strategies.decide(unnamed_cfg("hybrid", target="docs_h"), V16, schema(named=False))
    assert d.dense_name is None and d.sparse_name == "bm25" and d.copy_vectors == {"": "old"}


def test_sink_writes_the_unnamed_vector():
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    body = PageBody(ids=[5, 6, 7], blobs=[b"", b"", b""], text_index=[0, 2])
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name="", sparse_name="", mode="insert_only"))
    ids, points = sink.encode(body, vecs)
    assert ids == [5, 7]  # an unnamed-vector collection cannot hold the point without text (dead-lettered)
    for row, blob in enumerate(points):
        vectors = pb.PointStruct.FromString(blob).vectors
        assert vectors.WhichOneof("vectors_options") == "vector"
        got = vectors.vector.dense.data if vectors.vector.HasField("dense") else vectors.vector.data
        assert np.array_equal(np.asarray(got, np.float32), vecs[row])
