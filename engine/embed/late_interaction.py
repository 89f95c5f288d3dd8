"""Late-interaction (ColBERT-style) embeddings: one unit vector per token instead of one per text.

A late-interaction model scores a query against a document by MaxSim over their token vectors, so a document's
stored value is a matrix. Computing it is the encoder's last hidden state, a linear projection to a small dimension
(128 for most checkpoints), and an L2 normalisation per token, around the checkpoint's own tokenisation rules:

- documents: the document marker is inserted after the first token ([CLS]); the text is truncated so that marker
  included it has at most doc_maxlen tokens; padding rows are dropped, and so are punctuation rows (ColBERT's
  skiplist) when the checkpoint asks for it. Rows kept: [CLS], marker, tokens, [SEP], in order.
- queries (`embed_queries`): the query marker likewise, then [MASK] tokens up to query_maxlen (query augmentation).
  The [MASK] rows are kept; they attend to the query but the query does not attend to them unless the checkpoint
  sets attend_to_mask_tokens.
Getting either rule wrong gives vectors that still look plausible and score badly, hence the reference tests.

Two checkpoint formats, told apart by the directory (a PyLate layout wins when both are present, as PyLate itself
loads its modules first):

(a) "colbert": Stanford ColBERT (HF_ColBERT), detected by `artifact.metadata` or by "HF_ColBERT" in config.json's
    `architectures`. Read: config.json, the tokenizer files and the encoder weights through transformers
    (the `bert.`/`roberta.`… prefix of HF_ColBERT's keys is stripped by transformers); `linear.weight` (and
    `linear.bias` if there is one; ColBERT saves none) from model.safetensors, pytorch_model.bin, or the shard their
    *.index.json names; artifact.metadata (JSON, under a top-level "config" key when present) keys query_token_id,
    doc_token_id, query_maxlen, doc_maxlen, dim, mask_punctuation, attend_to_mask_tokens, similarity. Keys it leaves
    out take ColBERT's defaults ([unused0], [unused1], 32, 220, 128, true, false, cosine). The skiplist is the first
    token id of each character of string.punctuation, and any [PAD] id is dropped from documents, as ColBERT's
    mask() does.
(b) "pylate": PyLate / sentence-transformers ColBERT, detected by a modules.json that lists a Transformer and at
    least one Dense module and no Pooling. Read: modules.json; in the Transformer directory config.json, weights,
    tokenizer files (which hold the added marker tokens) and sentence_bert_config.json's do_lower_case; in each
    Dense directory config.json (in_features, out_features, bias, activation_function, use_residual) and
    model.safetensors or pytorch_model.bin; config_sentence_transformers.json keys query_prefix, document_prefix
    (marker *tokens*, e.g. "[Q] ", looked up in the vocabulary, never text), query_length, document_length,
    do_query_expansion, attend_to_expansion_tokens, skiplist_words (looked up as vocabulary tokens), and the
    default prompt (prompts[default_prompt_name], prepended as text). Keys it leaves out take PyLate's defaults
    ("[Q] ", "[D] ", 32, 180, true, false, string.punctuation). Texts are stripped of surrounding whitespace, as
    sentence-transformers' Transformer module does.

The model runs under a lock; tokenisation and batch planning run outside it, so two threads overlap the next page's
tokenising with this page's forward passes (as TransformerEmbedder does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F

from engine import tunables
from engine.embed.batching import Batch, pad_batch, plan_batches
from engine.embed.devices import dtype_name, resolve_device, resolve_dtype
from engine.embed.resolve import model_fingerprint, model_revision, resolve_model_path
from engine.embed.st_config import DenseLayer, _activation_name, _read_json, _read_json_object
from engine.embed.transformer import (
    _OOM,
    _check_options,
    _checked_texts,
    _DenseModule,
    _dtype_kwarg,
    _load_tokenizer,
    _pad_token_id,
    _position_offset,
    _runtime_description,
    _set_threads,
    _truncating_backend,
)
from engine.embed.vectorset import MultiVectors
from engine.errors import ModelError

log = logging.getLogger(__name__)

FORMAT_COLBERT = "colbert"
FORMAT_PYLATE = "pylate"
KIND = "late_interaction"

_METADATA_FILE = "artifact.metadata"
# Stanford ColBERT's defaults (colbert/infra/config/settings.py) for keys an artifact.metadata leaves out.
_COLBERT_DEFAULTS: dict[str, Any] = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_maxlen": 32,
    "doc_maxlen": 220,
    "dim": 128,
    "mask_punctuation": True,
    "attend_to_mask_tokens": False,
    "similarity": "cosine",
}
# PyLate's defaults (pylate/models/colbert.py) for keys config_sentence_transformers.json leaves out.
_PYLATE_DEFAULTS: dict[str, Any] = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "do_query_expansion": True,
    "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation),
}
_PYLATE_DENSE_ACTIVATION = "torch.nn.modules.linear.Identity"  # PyLate's Dense default, unlike ST's Tanh
_GPU_PAD_MULTIPLE = 8  # tensor cores run bf16/fp16 matmuls at full rate on multiples of 8.
_IGNORED_MISSING = ("pooler.",)  # HF_ColBERT never uses the pooler, so a checkpoint may lack it


@dataclass(frozen=True)
class LateInteractionLayout:
    """What a checkpoint directory says about encoding, read before any weights are loaded."""

    format: str  # FORMAT_COLBERT or FORMAT_PYLATE
    encoder_path: str  # the directory holding config.json, the encoder weights and the tokenizer
    query_marker: str | None  # token inserted after a query's first token; None: no marker
    doc_marker: str | None
    query_maxlen: int
    doc_maxlen: int
    query_expansion: bool  # pad queries with [MASK] to query_maxlen and keep those rows
    attend_to_mask: bool
    skip_words: tuple[str, ...]  # document tokens dropped from the output
    skip_by_encoding: bool  # ColBERT: first id of encode(symbol); PyLate: vocabulary lookup of the word
    drop_pad_ids: bool  # ColBERT's mask drops every [PAD] id, not only the batch padding
    strip: bool
    prompt: str
    lower_case: bool
    similarity: str
    declared_dim: int | None
    dense: tuple[DenseLayer, ...] = ()
    metadata: bytes = b""  # artifact.metadata as read; the content fingerprint skips non-JSON names


def read_layout(path: str, name: str | None = None, revision: str | None = None) -> LateInteractionLayout:
    """Detect the checkpoint format of a local directory and read its encoding rules (no weights)."""
    name = name or path
    modules_file = os.path.join(path, "modules.json")
    if os.path.isfile(modules_file):
        layout = _pylate_layout(path, modules_file, name)
        if layout is not None:
            return layout
    config_file = os.path.join(path, "config.json")
    architectures: list[str] = []
    if os.path.isfile(config_file):
        config = _read_json(config_file)
        architectures = (config.get("architectures") or []) if isinstance(config, dict) else []
    metadata_file = os.path.join(path, _METADATA_FILE)
    if not os.path.isfile(metadata_file) and "HF_ColBERT" in architectures:
        metadata_file = _hub_metadata(name, revision) or metadata_file
    if os.path.isfile(metadata_file) or "HF_ColBERT" in architectures:
        return _colbert_layout(path, metadata_file if os.path.isfile(metadata_file) else None)
    raise ModelError(
        f"model {name!r} ({path}) is not a late-interaction checkpoint: it has no artifact.metadata or HF_ColBERT "
        "config (Stanford ColBERT) and no modules.json with a Dense module and no Pooling (PyLate); point "
        "model.name at a ColBERT checkpoint or set model.kind: dense"
    )


def _colbert_layout(path: str, metadata_file: str | None) -> LateInteractionLayout:
    raw = b""
    settings = dict(_COLBERT_DEFAULTS)
    if metadata_file is not None:
        try:
            with open(metadata_file, "rb") as fh:
                raw = fh.read()
            metadata = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {metadata_file}: {exc}; repair or re-download the checkpoint") from exc
        if isinstance(metadata, dict) and isinstance(metadata.get("config"), dict):
            metadata = metadata["config"]  # older ColBERT versions nest the settings
        if not isinstance(metadata, dict):
            raise ModelError(f"{metadata_file} is not a JSON object; repair or re-download the checkpoint")
        settings.update({k: metadata[k] for k in _COLBERT_DEFAULTS if metadata.get(k) is not None})
    return LateInteractionLayout(
        format=FORMAT_COLBERT,
        encoder_path=path,
        query_marker=str(settings["query_token_id"]),
        doc_marker=str(settings["doc_token_id"]),
        query_maxlen=_positive(settings["query_maxlen"], "query_maxlen", metadata_file or path),
        doc_maxlen=_positive(settings["doc_maxlen"], "doc_maxlen", metadata_file or path),
        query_expansion=True,
        attend_to_mask=bool(settings["attend_to_mask_tokens"]),
        skip_words=tuple(string.punctuation) if settings["mask_punctuation"] else (),
        skip_by_encoding=True,
        drop_pad_ids=True,
        strip=False,
        prompt="",
        lower_case=False,
        similarity=str(settings["similarity"]),
        declared_dim=_positive(settings["dim"], "dim", metadata_file or path),
        metadata=raw,
    )


def _pylate_layout(path: str, modules_file: str, name: str) -> LateInteractionLayout | None:
    """The PyLate layout, or None when modules.json lists no Dense module (then it may still be ColBERT)."""
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ModelError(f"{modules_file} is not a list of modules; repair or re-download the checkpoint")
    transformer_path: str | None = None
    dense: list[DenseLayer] = []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = os.path.join(path, module.get("path", "") or "")
        if kind == "Pooling":
            raise ModelError(f"model {name!r} is a single-vector sentence-transformers model (modules.json has a "
                             "Pooling module); set model.kind: dense, or point model.name at a ColBERT checkpoint")
        if kind == "Transformer" and transformer_path is None:
            transformer_path = sub
        elif kind == "Dense" and transformer_path is not None:
            config = _read_json_object(os.path.join(sub, "config.json"))
            try:
                dense.append(DenseLayer(
                    path=sub,
                    in_features=int(config["in_features"]),
                    out_features=int(config["out_features"]),
                    bias=bool(config.get("bias", True)),
                    activation=_activation_name(config.get("activation_function") or _PYLATE_DENSE_ACTIVATION),
                    use_residual=bool(config.get("use_residual", False)),
                ))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ModelError(f"{os.path.join(sub, 'config.json')} is not a Dense config ({exc!r}); repair or "
                                 "re-download the checkpoint") from exc
        else:
            raise ModelError(f"modules.json of {name!r} has a {module.get('type')!r} module at position "
                             f"{module.get('idx')}, which a late-interaction checkpoint does not have (reembed "
                             "runs Transformer → Dense*); use a PyLate or Stanford ColBERT checkpoint")
    if transformer_path is None or not dense:
        return None
    settings = dict(_PYLATE_DEFAULTS)
    st_config_file = os.path.join(path, "config_sentence_transformers.json")
    prompt = ""
    if os.path.isfile(st_config_file):
        st_config = _read_json(st_config_file)
        if isinstance(st_config, dict):
            settings.update({k: st_config[k] for k in _PYLATE_DEFAULTS if st_config.get(k) is not None})
            prompt = (st_config.get("prompts") or {}).get(st_config.get("default_prompt_name")) or ""
    lower_case = False
    sbert_file = os.path.join(transformer_path, "sentence_bert_config.json")
    if os.path.isfile(sbert_file):
        sbert = _read_json(sbert_file)
        lower_case = isinstance(sbert, dict) and bool(sbert.get("do_lower_case", False))
    expansion = bool(settings["do_query_expansion"])
    return LateInteractionLayout(
        format=FORMAT_PYLATE,
        encoder_path=transformer_path,
        query_marker=settings["query_prefix"] or None,  # "" means no marker in PyLate
        doc_marker=settings["document_prefix"] or None,
        query_maxlen=_positive(settings["query_length"], "query_length", st_config_file),
        doc_maxlen=_positive(settings["document_length"], "document_length", st_config_file),
        query_expansion=expansion,
        attend_to_mask=expansion and bool(settings["attend_to_expansion_tokens"]),
        skip_words=tuple(str(w) for w in settings["skiplist_words"]),
        skip_by_encoding=False,
        drop_pad_ids=False,
        strip=True,
        prompt=str(prompt),
        lower_case=lower_case,
        similarity="MaxSim",
        declared_dim=None,
        dense=tuple(dense),
    )


def _positive(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{key}={value!r} in {source} is not a positive integer; repair the checkpoint's config")
    return value


def _hub_metadata(name: str, revision: str | None) -> str | None:
    """artifact.metadata of a hub checkpoint: resolve_model_path fetches only the files every model has."""
    if os.path.isdir(os.path.expanduser(name)):
        return None
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError:
        return None
    offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        return huggingface_hub.hf_hub_download(name, _METADATA_FILE, revision=revision, local_files_only=offline,
                                               cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except getattr(hub_errors, "LocalEntryNotFoundError", ()) as exc:  # offline and not cached: unknown, not absent
        raise ModelError(f"artifact.metadata of ColBERT model {name!r} is not in the local cache and the hub is off; "
                         f"pre-download the whole repository (`huggingface-cli download {name}`)") from exc
    except getattr(hub_errors, "EntryNotFoundError", ()):  # the repo has none: ColBERT's defaults apply
        return None
    except Exception as exc:
        raise ModelError(f"cannot fetch artifact.metadata of ColBERT model {name!r} ({type(exc).__name__}); "
                         f"pre-download the whole repository (`huggingface-cli download {name}`) and point "
                         "model.name at that directory") from exc


# --- the embedder -------------------------------------------------------------------------------------------------


class _Encoded:
    """One call's texts as unpadded token ids (markers and query [MASK]s in place) and their batches."""

    __slots__ = ("rows", "real", "lengths", "batches", "query")

    def __init__(self, rows: list[list[int]], real: np.ndarray, query: bool) -> None:
        self.rows = rows
        self.real = real  # tokens before the [MASK] expansion: the ones a query attends to
        self.lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        self.batches: list[Batch] = []
        self.query = query


class LateInteractionEmbedder:
    """A ColBERT-style checkpoint behind embed(texts) -> MultiVectors (documents) and embed_queries(texts)."""

    def __init__(
        self,
        name: str,
        *,
        revision: str | None = None,
        max_length: int | None = None,
        dtype: str = "auto",
        device: str = "auto",
        token_budget: int | None = None,
        max_batch: int | None = None,
        compile: bool = False,
        threads: int | None = None,
        batch_overhead_tokens: int | None = None,
    ) -> None:
        started = time.perf_counter()
        _check_options("auto", None, max_length, token_budget, max_batch, threads, batch_overhead_tokens)
        path = resolve_model_path(name, revision)
        layout = read_layout(path, name, revision)
        self.layout = layout
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype, self.device)
        _set_threads(threads, self.device)
        self.threads = threads
        self.tokenizer = _load_tokenizer(layout.encoder_path, name)
        model = _load_encoder(layout.encoder_path, name, self.torch_dtype, self.device)
        hidden = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
        self._projection = _load_projection(layout, path, hidden, self.device)
        self.dim = _output_dim(self._projection)
        if layout.declared_dim is not None and layout.declared_dim != self.dim:
            raise ModelError(f"artifact.metadata of {name!r} says dim {layout.declared_dim} but linear.weight projects "
                             f"to {self.dim}; repair or re-download the checkpoint")

        limit = _position_limit(model)
        self.doc_maxlen = _checked_length(max_length or layout.doc_maxlen, limit, "model.max_length (doc_maxlen)")
        self.query_maxlen = _checked_length(layout.query_maxlen, limit, "the checkpoint's query_maxlen")
        self.max_length = self.doc_maxlen

        tok = self.tokenizer
        self._query_marker_id = _marker_id(tok, layout.query_marker, "query marker", name)
        self._doc_marker_id = _marker_id(tok, layout.doc_marker, "document marker", name)
        self._pad_id = _pad_token_id(tok, model.config)
        self._mask_id = _expansion_id(tok, layout, name)
        skip = _skip_ids(tok, layout)
        if layout.drop_pad_ids and tok.pad_token_id is not None:
            skip.add(int(tok.pad_token_id))
        self._skip_ids = np.array(sorted(skip), dtype=np.int64)
        specials = int(tok.num_special_tokens_to_add(pair=False))
        doc_cut = self.doc_maxlen - (self._doc_marker_id is not None)
        query_cut = self.query_maxlen - (self._query_marker_id is not None)
        if min(doc_cut, query_cut) <= specials:
            raise ModelError(f"doc_maxlen {self.doc_maxlen} / query_maxlen {self.query_maxlen} leave no room for text "
                             f"after {specials} special tokens and the marker; raise model.max_length")
        # Private copies of the Rust tokenizer, each truncating so that the marker still fits.
        self._doc_backend = _truncating_backend(tok, doc_cut, layout.lower_case)
        self._query_backend = _truncating_backend(tok, query_cut, layout.lower_case)
        self._cuts = {False: doc_cut, True: query_cut}

        on_gpu = self.device.type == "cuda"
        self.token_budget = int(token_budget or (tunables.TOKEN_BUDGET_GPU if on_gpu else tunables.TOKEN_BUDGET_CPU))
        self.max_batch = int(max_batch or tunables.MAX_BATCH_TEXTS)
        default_overhead = tunables.BATCH_OVERHEAD_TOKENS_GPU if on_gpu else tunables.BATCH_OVERHEAD_TOKENS_CPU
        self.batch_overhead_tokens = int(default_overhead if batch_overhead_tokens is None else batch_overhead_tokens)
        self._pad_multiple = _GPU_PAD_MULTIPLE if on_gpu else 1
        self.model = model.eval()
        self.compiled = bool(compile)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self._lock = threading.Lock()

        weights = model_fingerprint(path)
        self._provenance = {
            "kind": KIND,
            "format": layout.format,
            "name": name,
            "path": path,
            "revision": model_revision(path) or revision,
            "weights_fingerprint": weights,
            # artifact.metadata decides the vectors too but model_fingerprint hashes only known suffixes.
            "fingerprint": hashlib.sha256(weights.encode() + b"\0" + layout.metadata).hexdigest()[:16],
            "random_init": False,
        }
        log.info("loaded late-interaction %s (%s, %s, %s, dim %d, doc_maxlen %d, query_maxlen %d) in %.1fs", name,
                 layout.format, self.device, dtype_name(self.torch_dtype), self.dim, self.doc_maxlen,
                 self.query_maxlen, time.perf_counter() - started)

    # --- public ---------------------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> MultiVectors:
        """Document token vectors: text i's rows are [CLS], marker, its tokens (punctuation dropped when the
        checkpoint says so), [SEP]."""
        encoded = self._encode(texts, query=False)
        with self._lock:
            return self._run(encoded)

    def embed_queries(self, texts: Sequence[str]) -> MultiVectors:
        """Query token vectors: query_maxlen rows per text ([MASK]-augmented) unless the checkpoint turns the
        expansion off."""
        encoded = self._encode(texts, query=True)
        with self._lock:
            return self._run(encoded)

    def describe(self) -> dict:
        layout = self.layout
        return {
            **self._provenance,
            "dim": self.dim,
            "model_dim": self.dim,
            "pooling": "none",  # one vector per token
            "normalize": True,
            "max_length": self.doc_maxlen,
            "matryoshka_dim": None,
            "prefix": layout.prompt + (layout.doc_marker or ""),
            "query_prefix": layout.prompt + (layout.query_marker or ""),
            "query_maxlen": self.query_maxlen,
            "query_expansion": layout.query_expansion,
            "attend_to_mask_tokens": layout.attend_to_mask,
            "skiplist_size": len(self._skip_ids),
            "similarity": layout.similarity,
            **_runtime_description(self),
        }

    def close(self) -> None:
        """Nothing to release; present so callers treat every embedder alike."""

    # --- internals ------------------------------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str], query: bool) -> _Encoded:
        texts = _checked_texts(texts)
        layout = self.layout
        if layout.prompt:
            texts = [layout.prompt + t for t in texts]
        if layout.strip:
            texts = [t.strip() for t in texts]
        backend = self._query_backend if query else self._doc_backend
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch(texts)] if texts else []
        else:  # a slow (Python) tokenizer: same ids, more time
            if layout.lower_case:
                texts = [t.lower() for t in texts]
            ids = list(self.tokenizer(texts, truncation=True, max_length=self._cuts[query], padding=False,
                                      return_attention_mask=False)["input_ids"])
        marker = self._query_marker_id if query else self._doc_marker_id
        rows = [list(r[:1]) + [marker] + list(r[1:]) for r in ids] if marker is not None else [list(r) for r in ids]
        real = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        if query:
            if layout.drop_pad_ids and self.tokenizer.pad_token_id is not None:
                # ColBERT turns every [PAD] of a query into [MASK], a literal one in the text included.
                pad = self.tokenizer.pad_token_id
                rows = [[self._mask_id if t == pad else t for t in r] for r in rows]
            if layout.query_expansion:
                rows = [r + [self._mask_id] * (self.query_maxlen - len(r)) for r in rows]
        encoded = _Encoded(rows, real, query)
        # Planned here, outside the model lock, so it overlaps the previous call's forward passes.
        encoded.batches = plan_batches(encoded.lengths, self.token_budget, self.max_batch,
                                       overhead_tokens=self.batch_overhead_tokens, pad_multiple=self._pad_multiple,
                                       max_width=self.query_maxlen if query else self.doc_maxlen)
        return encoded

    def _masks(self, encoded: _Encoded, batch: Batch, ids: np.ndarray, present: np.ndarray):
        """(attention, keep): what the encoder may attend to, and which output rows are returned."""
        if not encoded.query:
            keep = present.astype(bool)
            if len(self._skip_ids):
                keep &= ~np.isin(ids, self._skip_ids)
            return present, keep
        keep = present.astype(bool)
        if self.layout.attend_to_mask:
            return present, keep
        attention = (np.arange(ids.shape[1])[None, :] < encoded.real[batch.indices][:, None]).astype(np.int64)
        return attention, keep

    def _run(self, encoded: _Encoded) -> MultiVectors:
        # Always right-padded, whatever the tokenizer's padding_side: the marker sits after the first token and
        # ColBERT/PyLate build their batches that way; with the attention mask the padding side changes nothing.
        n = len(encoded.rows)
        if n == 0:
            return MultiVectors.empty(self.dim)
        on_gpu = self.device.type == "cuda"
        chunks: list[torch.Tensor] = []
        counts: list[np.ndarray] = []
        keep_alive: list[torch.Tensor] = []  # pinned inputs must outlive their async copies
        with torch.inference_mode():
            for batch in encoded.batches:
                ids, present = pad_batch([encoded.rows[i] for i in batch.indices], batch.width, self._pad_id)
                assert present is not None  # pad_batch returns the mask unless with_mask=False
                attention, keep = self._masks(encoded, batch, ids, present)
                host = [torch.from_numpy(a) for a in (ids, attention, keep)]
                if on_gpu:
                    # Page-locked memory lets the host→device copy run asynchronously, behind the previous forward.
                    host = [t.pin_memory() for t in host]
                    keep_alive.extend(host)
                input_ids, attention_mask, keep_mask = (t.to(self.device, non_blocking=on_gpu) for t in host)
                try:
                    out = self._forward(input_ids=input_ids, attention_mask=attention_mask)
                except _OOM as exc:
                    raise ModelError(f"out of {self.device} memory on a batch of {len(batch.indices)} texts × "
                                     f"{batch.width} tokens; lower model.token_budget (now {self.token_budget})"
                                     ) from exc
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                # Rows are selected before projecting: dropped rows cost no projection, and each kept row is
                # projected and normalised exactly as when the whole matrix is.
                vectors = hidden[keep_mask].float()
                for layer in self._projection:
                    vectors = layer(vectors)
                chunks.append(F.normalize(vectors, p=2, dim=-1))
                counts.append(keep.sum(axis=1))
            stacked = torch.cat(chunks).cpu().numpy()
        return _reorder(stacked, np.concatenate(counts), np.concatenate([b.indices for b in encoded.batches]))


def _reorder(stacked: np.ndarray, counts_sorted: np.ndarray, order: np.ndarray) -> MultiVectors:
    """Batch order (texts `order`, rows concatenated) → input order, with offsets."""
    n = len(order)
    counts = np.empty(n, dtype=np.int64)
    counts[order] = counts_sorted
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if np.array_equal(order, np.arange(n)):
        return MultiVectors(np.ascontiguousarray(stacked, dtype=np.float32), offsets)
    starts_sorted = np.cumsum(counts_sorted) - counts_sorted
    starts = np.empty(n, dtype=np.int64)
    starts[order] = starts_sorted
    gather = np.repeat(starts - offsets[:-1], counts) + np.arange(int(offsets[-1]), dtype=np.int64)
    return MultiVectors(np.ascontiguousarray(stacked[gather], dtype=np.float32), offsets)


# --- loading helpers ----------------------------------------------------------------------------------------------


def _load_encoder(path: str, name: str, torch_dtype: torch.dtype, device: torch.device):
    """The encoder alone; a checkpoint that leaves encoder weights out is refused, since transformers would fill
    them with random values and every vector would be noise."""
    from transformers import AutoModel

    kwargs = {_dtype_kwarg(): torch_dtype, "output_loading_info": True}
    try:
        try:
            model, info = AutoModel.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except ValueError as exc:
            if "sdpa" not in str(exc).lower():
                raise
            log.info("%s has no SDPA attention in this transformers version; using eager attention", name)
            model, info = AutoModel.from_pretrained(path, attn_implementation="eager", **kwargs)
    except Exception as exc:
        hint = ("it needs custom code (trust_remote_code), which reembed does not run; use a model whose "
                "architecture is built into transformers") if "trust_remote_code" in str(exc) else \
               "check that the directory holds a complete checkpoint (config.json and weights)"
        raise ModelError(f"cannot load model {name!r} from {path!r}: {str(exc).splitlines()[0]}; {hint}") from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(_IGNORED_MISSING))
    if missing:
        raise ModelError(f"model {name!r} at {path!r} lacks {len(missing)} encoder weights (e.g. {missing[0]!r}), "
                         "which would run randomly initialised; re-download or re-save the checkpoint")
    return model.to(device)


def _load_projection(layout: LateInteractionLayout, path: str, hidden: int,
                     device: torch.device) -> list[torch.nn.Module]:
    """The projection modules, run in float32 whatever the encoder's dtype (as sentence-transformers' Dense)."""
    if layout.format == FORMAT_PYLATE:
        modules: list[torch.nn.Module] = []
        expected = hidden
        for layer in layout.dense:
            if layer.in_features != expected:
                raise ModelError(f"Dense layer {layer.path!r} expects {layer.in_features} inputs but gets "
                                 f"{expected}; repair or re-download the checkpoint")
            modules.append(_DenseModule(layer).to(device).eval())
            expected = layer.out_features
        return modules
    tensors = _linear_tensors(path)
    weight = tensors.get("linear.weight")
    if weight is None:
        raise ModelError(f"ColBERT checkpoint {path!r} has no linear.weight (the projection) in its weights; "
                         "re-download it, or save it with ColBERT's Checkpoint.save / HF_ColBERT.save_pretrained")
    if weight.ndim != 2 or weight.shape[1] != hidden:
        raise ModelError(f"linear.weight in {path!r} has shape {tuple(weight.shape)} but the encoder's hidden size "
                         f"is {hidden}; repair or re-download the checkpoint")
    bias = tensors.get("linear.bias")
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.float())
        if bias is not None:
            linear.bias.copy_(bias.float())
    return [linear.to(device).eval()]


def _linear_tensors(path: str) -> dict[str, torch.Tensor]:
    """linear.* tensors of a HF_ColBERT checkpoint, from a single weights file or the shards an index names."""
    files: list[str] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = os.path.join(path, index_name)
        if os.path.isfile(index_file):
            weight_map = _read_json_object(index_file).get("weight_map", {})
            files = sorted({os.path.join(path, f) for k, f in weight_map.items() if k.startswith("linear.")})
            break
    else:
        files = [os.path.join(path, f) for f in ("model.safetensors", "pytorch_model.bin")
                 if os.path.isfile(os.path.join(path, f))][:1]
    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(file, framework="pt", device="cpu") as fh:
                    out.update({k: fh.get_tensor(k) for k in fh.keys() if k.startswith("linear.")})
            else:
                try:  # mmap reads only the projection's pages of a multi-GB file
                    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
                    state = torch.load(file, map_location="cpu", weights_only=True)
                out.update({k: v for k, v in state.items() if k.startswith("linear.")})
        except Exception as exc:
            raise ModelError(f"cannot read the projection from {file}: {str(exc).splitlines()[0]}; "
                             "repair or re-download the checkpoint") from exc
    return out


def _output_dim(projection: list[torch.nn.Module]) -> int:
    last = projection[-1]
    # _load_projection builds only Linear and _DenseModule layers
    linear = last if isinstance(last, torch.nn.Linear) else cast(_DenseModule, last).linear
    return int(linear.out_features)


def _position_limit(model) -> int | None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions - _position_offset(model)
    return None


def _checked_length(length: int, limit: int | None, what: str) -> int:
    if limit is not None and length > limit:
        raise ModelError(f"{what} {length} exceeds the encoder's {limit} positions; set model.max_length ≤ {limit}")
    return int(length)


def _marker_id(tokenizer, token: str | None, what: str, name: str) -> int | None:
    if token is None:
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token", None)
    if not isinstance(token_id, int) or (token_id == tokenizer.unk_token_id and token != unk):
        raise ModelError(f"the {what} {token!r} of model {name!r} is not a token of its tokenizer, so it would "
                         "become [UNK]; use the tokenizer saved with the checkpoint")
    return token_id


def _expansion_id(tokenizer, layout: LateInteractionLayout, name: str) -> int:
    """The query-augmentation token: [MASK]; PyLate falls back to EOS for tokenizers without one."""
    candidates = [tokenizer.mask_token_id]
    if layout.format == FORMAT_PYLATE:
        candidates += [tokenizer.eos_token_id, tokenizer.pad_token_id]
    for value in candidates:
        if isinstance(value, int):
            return value
    if not layout.query_expansion:
        return -1  # never used
    raise ModelError(f"the tokenizer of model {name!r} has no [MASK] token for query augmentation; "
                     "use the tokenizer saved with the checkpoint")


def _skip_ids(tokenizer, layout: LateInteractionLayout) -> set[int]:
    ids: set[int] = set()
    for word in layout.skip_words:
        if layout.skip_by_encoding:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if encoded:
                ids.add(int(encoded[0]))
        else:
            token_id = tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int):
                ids.add(token_id)
    return ids
