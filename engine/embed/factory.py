"""build_embedder(spec): one plain dict → an Embedder, the same on the driver, in a Ray actor or on a GPU box."""

from __future__ import annotations

from engine.embed.base import Embedder
from engine.embed.hashing import HashedBowEmbedder, HashEmbedder
from engine.errors import ModelError

# Every key a spec may carry, with its default. The config layer validates types; this layer owns the meaning.
SPEC_DEFAULTS: dict = {
    "kind": "dense",
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

_HASH_KINDS: dict[str, type[HashEmbedder | HashedBowEmbedder]] = {"hash": HashEmbedder, "hashed-bow": HashedBowEmbedder}
MODEL_KINDS = ("dense", "late_interaction")


def build_embedder(spec: dict) -> Embedder:
    """Keys as in SPEC_DEFAULTS; `name` is a local directory, a hub id, `hash:<dim>` or `hashed-bow:<dim>`.

    `kind: late_interaction` builds a LateInteractionEmbedder (one vector per token, embed → MultiVectors) from a
    ColBERT or PyLate checkpoint; the keys that shape a single pooled vector do not apply to it and are refused.
    """
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown embedder spec keys {unknown}; known keys: {sorted(SPEC_DEFAULTS)}")
    full = {**SPEC_DEFAULTS, **spec}
    name = full.pop("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("embedder spec needs a non-empty 'name'")
    model_kind = full.pop("kind") or "dense"
    if model_kind not in MODEL_KINDS:
        raise ModelError(f"model.kind {model_kind!r} is not one of {', '.join(MODEL_KINDS)}; fix model.kind")
    if model_kind == "late_interaction":
        return _late_interaction(name, full)

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


def _late_interaction(name: str, full: dict):
    kind, sep, _ = name.partition(":")
    if sep and kind in _HASH_KINDS:
        raise ModelError(f"model.name {name!r} is a test embedder with one vector per text; model.kind "
                         "late_interaction needs a ColBERT checkpoint directory or hub id")
    # Each refusal names the fix: these keys shape one pooled vector, which a late-interaction model never makes.
    if full["pooling"] not in (None, "auto"):
        raise ModelError(f"model.pooling {full['pooling']!r} does not apply to model.kind late_interaction (one vector "
                         "per token, no pooling); remove model.pooling")
    if full["matryoshka_dim"] is not None:
        raise ModelError("model.matryoshka_dim does not apply to model.kind late_interaction (the projection sets "
                         "the dimension); remove model.matryoshka_dim")
    if full["normalize"] is False:
        raise ModelError("model.normalize false does not apply to model.kind late_interaction (MaxSim scores unit "
                         "token vectors); remove model.normalize")
    if full["prefix"]:
        raise ModelError("model.prefix does not apply to model.kind late_interaction (the checkpoint's query and "
                         "document markers are used); remove model.prefix")
    from engine.embed.late_interaction import LateInteractionEmbedder  # torch/transformers load only when used

    return LateInteractionEmbedder(name, revision=full["revision"], max_length=full["max_length"],
                                   dtype=full["dtype"], device=full["device"], token_budget=full["token_budget"],
                                   max_batch=full["max_batch"], compile=full["compile"], threads=full["threads"])
