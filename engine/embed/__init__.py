"""Embedding: model loading, pooling, batching and devices behind one small seam (Embedder).

Importable without Ray or qdrant-client (the GPU machines have neither): only numpy, torch and transformers.
`TransformerEmbedder` and `LateInteractionEmbedder` are imported lazily so `hash:`/`hashed-bow:` embedders cost
no torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.embed.base import IDENTITY_KEYS, Embedder, identity
from engine.embed.factory import SPEC_DEFAULTS, build_embedder
from engine.embed.hashing import HashedBowEmbedder, HashEmbedder
from engine.embed.resolve import resolve_model_path
from engine.embed.vectorset import MultiVectors, VectorSet

if TYPE_CHECKING:
    from engine.embed.late_interaction import LateInteractionEmbedder
    from engine.embed.transformer import TransformerEmbedder

__all__ = [
    "Embedder",
    "TransformerEmbedder",
    "LateInteractionEmbedder",
    "MultiVectors",
    "VectorSet",
    "HashEmbedder",
    "HashedBowEmbedder",
    "resolve_model_path",
    "build_embedder",
    "identity",
    "IDENTITY_KEYS",
    "SPEC_DEFAULTS",
]


def __getattr__(name: str) -> Any:
    if name == "TransformerEmbedder":
        from engine.embed.transformer import TransformerEmbedder

        return TransformerEmbedder
    if name == "LateInteractionEmbedder":
        from engine.embed.late_interaction import LateInteractionEmbedder

        return LateInteractionEmbedder
    raise AttributeError(f"module 'engine.embed' has no attribute {name!r}")
