"""The Embedder seam: what every embedding backend promises the rest of the engine.

An embedder turns a list of texts into a float32 matrix, one row per text in the same order, and describes itself
so a checkpoint can tell whether a resumed job would produce the same vectors.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

# The describe() fields that determine the vectors themselves; a resumed job must agree on these. The model's
# content fingerprint stands for its name, so a hub id and a local copy of the same files agree. The other
# fields (name, revision, device, dtype, batching) are provenance or change speed, not meaning.
IDENTITY_KEYS = (
    "kind",
    "fingerprint",
    "model_dim",
    "dim",
    "pooling",
    "normalize",
    "max_length",
    "matryoshka_dim",
    "prefix",
)


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape [len(texts), dim], C-contiguous; row i embeds texts[i]."""
        ...

    def describe(self) -> dict:
        """Provenance: name, revision/fingerprint when known, dim, pooling, normalize, max_length, dtype, device,
        matryoshka_dim and batching settings. Plain JSON-serialisable values only."""
        ...


def identity(description: dict) -> dict:
    """The part of a describe() result that decides the vectors (for checkpoint fingerprints)."""
    return {key: description.get(key) for key in IDENTITY_KEYS}


def truncate_and_normalize(vectors: np.ndarray, dim: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation then optional L2 normalisation, returning float32 C-contiguous rows.

    Truncation comes first: a Matryoshka prefix of a unit vector is not a unit vector, and cosine/dot search
    expects the renormalised one.
    """
    if dim is not None and dim < vectors.shape[1]:
        vectors = vectors[:, :dim]
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if normalize and out.shape[0]:
        norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
        out = np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)
    return out
