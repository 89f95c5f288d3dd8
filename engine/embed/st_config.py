"""Read a sentence-transformers model directory's metadata without importing sentence-transformers.

The files (modules.json, <pooling>/config.json, sentence_bert_config.json, <dense>/config.json) say what
sentence-transformers would do after the transformer: which pooling, whether a Dense projection follows, whether
the result is normalised, and the max sequence length. Reproducing exactly that is what makes our vectors equal
to the ones the model's authors published and evaluated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from engine.errors import ModelError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# sentence-transformers' legacy boolean keys, in its concatenation order.
_LEGACY_POOLING_KEYS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module: linear (+ optional residual) then an activation."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a torch.nn class name, e.g. "Tanh" or "Identity"
    use_residual: bool


@dataclass(frozen=True)
class STMeta:
    """What sentence-transformers would apply around the transformer; empty defaults for plain HF models."""

    transformer_path: str  # the directory holding config.json/weights (old ST models keep it in 0_Transformer/)
    pooling: tuple[str, ...] | None = None  # None: no Pooling module (plain transformers model)
    include_prompt: bool = True
    normalize: bool = False
    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)
    max_seq_length: int | None = None
    do_lower_case: bool = False
    has_modules: bool = False


def _read_json(path: str) -> dict | list:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; repair or re-download the model directory") from exc


def _read_json_object(path: str) -> dict:
    """A JSON config file that must hold an object (a module's config.json, sentence_bert_config.json)."""
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object; repair or re-download the model directory")
    return config


def parse_pooling_config(config: dict) -> tuple[tuple[str, ...], bool]:
    """Pooling modes (in concatenation order) and include_prompt, from either config format."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS if config.get(key, False)) or ("mean",)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ModelError(f"pooling mode {mode!r} in the model's pooling config is not one of {POOLING_MODES}; "
                             "set model.pooling explicitly")
    return modes, bool(config.get("include_prompt", True))


def _activation_name(config_value: str | None) -> str:
    if config_value is None:
        return "Tanh"  # sentence-transformers' Dense default
    name = config_value.rsplit(".", 1)[-1]
    if not config_value.startswith("torch.") or not name.isidentifier():
        raise ModelError(f"Dense activation {config_value!r} is custom code, which reembed does not run; "
                         "use a model whose Dense activation is a torch.nn module")
    return name


def read_st_meta(model_dir: str) -> STMeta:
    modules_file = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(modules_file):
        return STMeta(transformer_path=model_dir, **_sentence_bert_config(model_dir))
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ModelError(f"{modules_file} is not a list of modules; repair or re-download the model directory")

    transformer_path: str | None = None
    pooling: tuple[str, ...] | None = None
    include_prompt = True
    normalize = False
    dense: list[DenseLayer] = []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = os.path.join(model_dir, module.get("path", "") or "")
        if kind == "Transformer" and transformer_path is None:
            transformer_path = sub
        elif kind == "Pooling" and pooling is None and transformer_path is not None:
            pooling, include_prompt = parse_pooling_config(_read_json_object(os.path.join(sub, "config.json")))
        elif kind == "Dense" and pooling is not None and not normalize:
            config = _read_json_object(os.path.join(sub, "config.json"))
            dense.append(DenseLayer(
                path=sub,
                in_features=int(config["in_features"]),
                out_features=int(config["out_features"]),
                bias=bool(config.get("bias", True)),
                activation=_activation_name(config.get("activation_function")),
                use_residual=bool(config.get("use_residual", False)),
            ))
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        else:
            raise ModelError(
                f"modules.json of {model_dir!r} has a {module.get('type')!r} module at position {module.get('idx')}, "
                "which reembed does not implement (it runs Transformer → Pooling → Dense* → Normalize); "
                "use a model with that layout"
            )
    if transformer_path is None:
        raise ModelError(f"modules.json of {model_dir!r} has no Transformer module; use a transformer-based model")
    return STMeta(
        transformer_path=transformer_path,
        pooling=pooling,
        include_prompt=include_prompt,
        normalize=normalize,
        dense=tuple(dense),
        has_modules=True,
        **_sentence_bert_config(transformer_path),
    )


def _sentence_bert_config(transformer_dir: str) -> dict:
    path = os.path.join(transformer_dir, "sentence_bert_config.json")
    if not os.path.isfile(path):
        return {}
    config = _read_json_object(path)
    max_len = config.get("max_seq_length")
    return {
        "max_seq_length": int(max_len) if max_len else None,
        "do_lower_case": bool(config.get("do_lower_case", False)),
    }
