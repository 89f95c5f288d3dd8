"""HashEmbedder and HashedBowEmbedder: determinism, geometry, and the properties the demo relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.embed import HashedBowEmbedder, HashEmbedder, build_embedder

TEXTS = ["hello", "Hello", "", "   ", "日本語のテキスト", "a\ud800b", "x" * 10_000, "qdrant vectors"]


@pytest.mark.parametrize("cls", [HashEmbedder, HashedBowEmbedder])
def test_shape_dtype_unit_norm(cls):
    emb = cls(64)
    out = emb.embed(TEXTS)
    assert out.shape == (len(TEXTS), 64) and emb.dim == 64
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert emb.embed([]).shape == (0, 64)
    assert emb.embed(("hello",)).shape == (1, 64)


@pytest.mark.parametrize("cls", [HashEmbedder, HashedBowEmbedder])
def test_same_text_same_vector_whatever_the_batch(cls):
    emb = cls(32)
    alone = emb.embed(["qdrant vectors"])[0]
    batched = emb.embed(TEXTS)[TEXTS.index("qdrant vectors")]
    assert np.array_equal(alone, batched)
    assert np.array_equal(cls(32).embed(TEXTS), emb.embed(TEXTS))


def test_hash_embedder_deterministic_across_processes():
    code = (
        "import json, sys; from engine.embed import HashEmbedder, HashedBowEmbedder;"
        "t = json.loads(sys.argv[1]);"
        "print(json.dumps([HashEmbedder(48).embed(t).tobytes().hex(), HashedBowEmbedder(48).embed(t).tobytes().hex()]))"
    )
    texts = [t for t in TEXTS if "\ud800" not in t]  # lone surrogates do not survive JSON argv
    # A different PYTHONHASHSEED proves Python's salted hash() plays no part.
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True,
                            env=env, check=True, cwd=_repo_root())
    hash_hex, bow_hex = json.loads(result.stdout)
    assert hash_hex == HashEmbedder(48).embed(texts).tobytes().hex()
    assert bow_hex == HashedBowEmbedder(48).embed(texts).tobytes().hex()


def test_hash_embedder_known_answer():
    # Frozen so a change of algorithm (which would silently change every demo collection) fails loudly.
    vec = HashEmbedder(8).embed(["reembed"])[0]
    expected = np.array(KNOWN_REEMBED_8, dtype=np.float32)
    np.testing.assert_array_equal(vec, expected)


def test_hash_embedder_spreads_like_random_directions():
    out = HashEmbedder(384).embed([f"text {i}" for i in range(300)])
    cos = out @ out.T
    off = cos[~np.eye(len(out), dtype=bool)]
    # Independent random unit vectors in 384-d: cosine ≈ N(0, 1/384) → |cos| well under 0.3, mean ≈ 0.
    assert np.abs(off).max() < 0.3
    assert abs(off.mean()) < 0.01
    assert 0.03 < off.std() < 0.07
    assert len({row.tobytes() for row in out}) == len(out)


def test_hash_embedder_prefix_and_matryoshka():
    emb = HashEmbedder(64, prefix="passage: ")
    assert np.array_equal(emb.embed(["x"]), HashEmbedder(64).embed(["passage: x"]))
    small = HashEmbedder(64, matryoshka_dim=16)
    full = HashEmbedder(64).embed(["x", "y"])
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(small.embed(["x", "y"]), expected, atol=1e-6)
    assert small.dim == 16 and small.describe()["dim"] == 16


def test_bow_word_order_and_case_do_not_matter():
    emb = HashedBowEmbedder(256)
    a, b = emb.embed(["The quick brown fox", "fox BROWN quick the"])
    assert np.array_equal(a, b)


def test_bow_shared_words_score_higher_than_disjoint():
    emb = HashedBowEmbedder(1024)
    query, near, far = emb.embed(["vector database search", "a database for vector search at scale",
                                  "chocolate cake recipe"])
    assert float(query @ near) > 0.5
    assert float(query @ far) < float(query @ near)
    assert np.all(emb.embed(["anything at all"]) >= 0)


def test_bow_sublinear_tf():
    emb = HashedBowEmbedder(4096)
    vec = emb.embed(["alpha alpha alpha alpha beta"])[0]
    nonzero = np.sort(vec[vec > 0])
    assert len(nonzero) == 2  # two words, two buckets (no collision at 4096 buckets for these)
    ratio = nonzero[1] / nonzero[0]
    assert ratio == pytest.approx(1 + np.log(4), rel=1e-5)  # not 4: repetition counts sublinearly


def test_bow_text_without_words_is_a_unit_vector_not_zero():
    out = HashedBowEmbedder(32).embed(["", "...", "!!"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(out[0], out[1])


def test_describe_and_build():
    emb = build_embedder({"name": "hash:384"})
    assert isinstance(emb, HashEmbedder) and emb.dim == 384
    d = emb.describe()
    assert d["kind"] == "hash" and d["name"] == "hash:384" and d["normalize"] is True and d["revision"]
    json.dumps(d)
    bow = build_embedder({"name": "hashed-bow:64", "prefix": "q: ", "matryoshka_dim": 32})
    assert isinstance(bow, HashedBowEmbedder) and bow.dim == 32 and bow.describe()["prefix"] == "q: "


@pytest.mark.parametrize("dim", [0, -3])
def test_bad_dim_rejected(dim):
    with pytest.raises(ValueError):
        HashEmbedder(8, matryoshka_dim=9)
    with pytest.raises(ValueError):
        HashEmbedder(dim)
    with pytest.raises(ValueError):
        HashedBowEmbedder(dim)


def _repo_root() -> str:
    import pathlib

    return str(pathlib.Path(__file__).resolve().parents[2])


KNOWN_REEMBED_8 = [  # HashEmbedder.ALGORITHM v2 (blake2b64 + splitmix64)
    0.07208765298128128, -0.18279369175434113, -0.14417530596256256, 0.21626296639442444,
    0.07208765298128128, -0.780091404914856, 0.19566649198532104, -0.49174079298973083,
]


def _reference_hash_vector(text: str, dim: int) -> list[float]:
    """The documented algorithm in plain integer Python, to pin the vectorised numpy version to it."""
    import hashlib
    import math

    mask = 2**64 - 1
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    coords: list[int] = []
    for k in range(1, (dim + 1) // 2 + 1):
        z = (seed + k * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        word = (z ^ (z >> 31)).to_bytes(8, "little")
        coords += [sum(word[:4]) - 510, sum(word[4:]) - 510]
    coords = coords[:dim]
    norm = math.sqrt(sum(c * c for c in coords))
    return [c / norm for c in coords]


@pytest.mark.parametrize("dim", [1, 7, 8, 384])
def test_hash_embedder_matches_the_reference_algorithm(dim):
    texts = ["reembed", "", "héllo wörld", "x" * 5000]
    got = HashEmbedder(dim).embed(texts)
    want = np.array([_reference_hash_vector(t, dim) for t in texts], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)
