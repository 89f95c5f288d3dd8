"""build_embedder(spec): one plain dict → an Embedder, the same on the driver, in a Ray actor or on a GPU box."""

from __future__ import annotations

from engine.embed.base import Embedder
from engine.embed.hashing import HashedBowEmbedder, HashEmbedder
from engine.errors import ModelError

# Every key a spec may carry, with its default. The config layer validates types; this layer owns the meaning.
SPEC_DEFAULTS: dict = {
    "name": None,
    "revision": None,
    "max_length": None,
    "pooling": "auto",
    "normalize": None,
    "dtype": "auto",
    "device": "auto",
    "matryoshka_dim": None,
    "token_budget": None,
    "max_batch": None,
    "compile": False,
    "prefix": "",
    "threads": None,
}

_HASH_KINDS = {"hash": HashEmbedder, "hashed-bow": HashedBowEmbedder}


def build_embedder(spec: dict) -> Embedder:
    """Keys as in SPEC_DEFAULTS; `name` is a local directory, a hub id, `hash:<dim>` or `hashed-bow:<dim>`."""
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown embedder spec keys {unknown}; known keys: {sorted(SPEC_DEFAULTS)}")
    full = {**SPEC_DEFAULTS, **spec}
    name = full.pop("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("embedder spec needs a non-empty 'name'")

    kind, sep, dim_text = name.partition(":")
    if sep and kind in _HASH_KINDS:
        if not dim_text.isdigit() or int(dim_text) < 1:
            raise ModelError(f"model.name {name!r} needs a positive dimension, e.g. {kind}:384")
        dim = int(dim_text)
        matryoshka_dim = full["matryoshka_dim"]
        if matryoshka_dim is not None and not 1 <= matryoshka_dim <= dim:
            raise ModelError(f"model.matryoshka_dim {matryoshka_dim} must be between 1 and {dim} for {name}; "
                             "fix or remove it")
        return _HASH_KINDS[kind](dim, prefix=full["prefix"] or "", matryoshka_dim=matryoshka_dim)

    from engine.embed.transformer import TransformerEmbedder  # torch/transformers load only when a model is used

    return TransformerEmbedder(name, **full)
