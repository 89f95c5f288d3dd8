"""Sparse encoders for hybrid search: BM25 with Qdrant's own tokenisation (qdrant-edge's `Bm25`), or a SPLADE
masked-LM model run with transformers.

Both are imported lazily, so engine.embed stays importable on machines without qdrant-edge (the GPU workers) or
without torch. A sparse vector travels as (indices uint32, values float32); the collection applies the IDF modifier,
so BM25 documents carry term-frequency weights only (Qdrant's own split of BM25 between write and query time).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol, Sequence

import numpy as np

from engine.errors import ModelError

log = logging.getLogger(__name__)

SparseRow = tuple[np.ndarray, np.ndarray]  # (indices uint32, values float32)


class SparseEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> list[SparseRow]: ...

    def describe(self) -> dict: ...


class Bm25Encoder:
    """Document-side BM25 (k, b, avg_len; stemming and stopwords of `language`) from qdrant-edge."""

    def __init__(self, language: str = "english", k: float = 1.2, b: float = 0.75, avg_len: float = 256.0) -> None:
        try:
            import qdrant_edge
        except ImportError:
            raise ModelError(
                "sparse.model bm25 needs the qdrant-edge-py package on the embedding workers; install it "
                "(pip install qdrant-edge-py) or use a SPLADE model directory"
            ) from None
        try:
            self._model = qdrant_edge.Bm25(qdrant_edge.Bm25Config(k=k, b=b, avg_len=avg_len, language=language))
        except ValueError as exc:
            raise ModelError(f"sparse BM25 settings refused ({exc}); fix sparse.language / k / b / avg_len") from None
        self._desc = {"kind": "bm25", "language": language, "k": k, "b": b, "avg_len": avg_len,
                      "qdrant_edge": getattr(qdrant_edge, "__version__", None)}

    def encode(self, texts: Sequence[str]) -> list[SparseRow]:
        out: list[SparseRow] = []
        for text in texts:
            vec = self._model.embed_document(text)
            out.append((np.asarray(vec.indices, dtype=np.uint32), np.asarray(vec.values, dtype=np.float32)))
        return out

    def describe(self) -> dict:
        return dict(self._desc)


class SpladeEncoder:
    """SPLADE: max over tokens of log(1 + relu(MLM logits)), one weight per vocabulary id."""

    def __init__(self, path: str, max_length: int = 256, device: str = "auto", batch: int = 32) -> None:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from engine.embed.resolve import resolve_model_path

        local = resolve_model_path(path, None)
        try:
            self._tok = AutoTokenizer.from_pretrained(local)
            self._model = AutoModelForMaskedLM.from_pretrained(local)
        except (OSError, ValueError) as exc:
            raise ModelError(f"sparse.model {path!r} is not a masked-LM model directory ({exc}); "
                             "set sparse.model to bm25 or to a SPLADE model") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = device
        self._model.to(device).eval()
        self._torch = torch
        self._max_length = max_length
        self._batch = batch
        # The embedding actor takes two calls at once so one tokenizes while the other runs the model; the model
        # itself runs one batch at a time (two concurrent forwards would only double the activation memory).
        self._lock = threading.Lock()
        self._desc = {"kind": "splade", "name": path, "max_length": max_length,
                      "vocab": int(self._model.config.vocab_size)}

    def encode(self, texts: Sequence[str]) -> list[SparseRow]:
        torch = self._torch
        out: list[SparseRow] = []
        for i in range(0, len(texts), self._batch):
            enc = self._tok(list(texts[i:i + self._batch]), padding=True, truncation=True,
                            max_length=self._max_length, return_tensors="pt").to(self._device)
            with self._lock, torch.inference_mode():
                logits = self._model(**enc).logits
                weights = torch.log1p(torch.relu(logits)) * enc["attention_mask"].unsqueeze(-1)
                pooled = weights.max(dim=1).values.float().cpu().numpy()
            for row in pooled:
                idx = np.flatnonzero(row > 0).astype(np.uint32)
                out.append((idx, row[idx].astype(np.float32)))
        return out

    def describe(self) -> dict:
        return dict(self._desc)


def build_sparse(spec: dict) -> SparseEncoder:
    """spec: {"model": "bm25" | path, "language", "k", "b", "avg_len", "max_length", "device"}."""
    model = spec.get("model", "bm25")
    if model == "bm25":
        return Bm25Encoder(spec.get("language", "english"), spec.get("k", 1.2), spec.get("b", 0.75),
                           spec.get("avg_len", 256.0))
    return SpladeEncoder(model, spec.get("max_length", 256), spec.get("device", "auto"))
