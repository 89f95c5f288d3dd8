"""The transformers-based embedder: sentence-transformers' vectors, produced faster.

Per call: tokenize every text once without padding (HF fast tokenizer, Rust, parallel, GIL released), sort by
token length, cut batches under a token budget, and run them while a worker thread pads (and on GPU pins) the next
batch. Pooling, Dense layers and normalisation follow the model directory's sentence-transformers metadata, so
all-MiniLM-L6-v2 gives the vectors `SentenceTransformer.encode` gives (cosine ≥ 0.9999; tests/unit).

Thread safety: `embed` may be called from several threads; tokenisation runs outside the model lock, so a caller
with two threads (e.g. a Ray actor with max_concurrency=2) tokenizes page k+1 while page k is on the model.
`embed_stream` gives the same overlap to a single caller.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Protocol, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F

from engine import tunables
from engine.embed.batching import Batch, pad_batch, plan_batches
from engine.embed.devices import dtype_name, resolve_device, resolve_dtype
from engine.embed.pooling import pool
from engine.embed.resolve import model_fingerprint, model_revision, resolve_model_path
from engine.embed.st_config import POOLING_MODES, DenseLayer, STMeta, read_st_meta
from engine.errors import ModelError

log = logging.getLogger(__name__)

POOLING_CHOICES = ("auto",) + POOLING_MODES
_GPU_PAD_MULTIPLE = 8  # tensor cores run bf16/fp16 matmuls at full rate on multiples of 8.
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError is torch ≥ 2.5
_UNBOUNDED_TOKENIZER_LIMIT = 1_000_000  # tokenizers without a limit report int(1e30) as model_max_length.


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56


class _Encoded:
    """One call's texts as unpadded token ids, and the batches they will run in."""

    __slots__ = ("ids", "type_ids", "lengths", "batches")

    def __init__(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> None:
        self.ids = ids
        self.type_ids = type_ids
        self.lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
        self.batches: list[Batch] = []


class TransformerEmbedder:
    """A transformers AutoModel + fast tokenizer behind the Embedder protocol."""

    def __init__(
        self,
        name: str,
        *,
        revision: str | None = None,
        max_length: int | None = None,
        pooling: str = "auto",
        normalize: bool | None = None,
        dtype: str = "auto",
        device: str = "auto",
        matryoshka_dim: int | None = None,
        token_budget: int | None = None,
        max_batch: int | None = None,
        compile: bool = False,
        prefix: str = "",
        threads: int | None = None,
        batch_overhead_tokens: int | None = None,
    ) -> None:
        started = time.perf_counter()
        _check_options(pooling, matryoshka_dim, max_length, token_budget, max_batch, threads, batch_overhead_tokens)
        path = resolve_model_path(name, revision)
        meta = read_st_meta(path)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        _set_threads(threads, torch_device)
        tokenizer = _load_tokenizer(meta.transformer_path, name)
        model = _load_model(meta.transformer_path, name, torch_dtype, torch_device)
        self._provenance = {
            "kind": "transformer",
            "name": name,
            "path": path,
            "revision": model_revision(path) or revision,
            "fingerprint": model_fingerprint(path),
            "random_init": False,
        }
        self._setup(model, tokenizer, meta, torch_device, torch_dtype, max_length, pooling, normalize,
                    matryoshka_dim, token_budget, max_batch, compile, prefix, threads, batch_overhead_tokens)
        log.info("loaded %s (%s, %s, dim %d, max_length %d, pooling %s, normalize %s) in %.1fs",
                 name, self.device, dtype_name(torch_dtype), self.dim, self.max_length, "+".join(self.pooling_modes),
                 self.normalize, time.perf_counter() - started)

    @classmethod
    def from_random_config(
        cls,
        config: Any,
        tokenizer_path: str,
        *,
        seed: int = 0,
        pooling: str = "mean",
        normalize: bool | None = True,
        **kwargs: Any,
    ) -> "TransformerEmbedder":
        """A randomly initialised model of the given transformers config (e.g. BertConfig() for a BERT-base shape)
        with the tokenizer found at `tokenizer_path`: the throughput of a model we have no weights for. The vectors
        are meaningless; describe() says random_init."""
        from transformers import AutoModel

        self = cls.__new__(cls)
        _check_options(pooling, kwargs.get("matryoshka_dim"), kwargs.get("max_length"), kwargs.get("token_budget"),
                       kwargs.get("max_batch"), kwargs.get("threads"), kwargs.get("batch_overhead_tokens"))
        device = kwargs.pop("device", "auto")
        dtype = kwargs.pop("dtype", "auto")
        threads = kwargs.pop("threads", None)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        _set_threads(threads, torch_device)
        tokenizer = _load_tokenizer(resolve_model_path(tokenizer_path), tokenizer_path)
        if getattr(config, "vocab_size", None) is not None and len(tokenizer) > config.vocab_size:
            raise ModelError(f"tokenizer at {tokenizer_path!r} has {len(tokenizer)} tokens but the config's vocab_size "
                             f"is {config.vocab_size}; use a matching tokenizer")
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, attn_implementation="sdpa", **{_dtype_kwarg(): torch_dtype})
        model.to(torch_device)
        config_digest = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()
        self._provenance = {
            "kind": "transformer",
            "name": f"random:{config.model_type}",
            "path": None,
            "revision": f"seed={seed}",
            "fingerprint": hashlib.sha256(f"{config_digest}:{seed}".encode()).hexdigest()[:16],
            "random_init": True,
        }
        meta = STMeta(transformer_path="")
        self._setup(model, tokenizer, meta, torch_device, torch_dtype, kwargs.pop("max_length", None), pooling,
                    normalize, kwargs.pop("matryoshka_dim", None), kwargs.pop("token_budget", None),
                    kwargs.pop("max_batch", None), kwargs.pop("compile", False), kwargs.pop("prefix", ""), threads,
                    kwargs.pop("batch_overhead_tokens", None))
        if kwargs:
            raise TypeError(f"unknown arguments {sorted(kwargs)}")
        return self

    # --- setup ----------------------------------------------------------------------------------------------------

    def _setup(self, model, tokenizer, meta: STMeta, device: torch.device, torch_dtype: torch.dtype,
               max_length, pooling, normalize, matryoshka_dim, token_budget, max_batch, compile, prefix,
               threads, batch_overhead_tokens) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.torch_dtype = torch_dtype
        self.prefix = prefix or ""
        self.threads = threads
        self.compiled = bool(compile)

        if pooling == "auto":
            self.pooling_modes = meta.pooling or ("mean",)
        else:
            self.pooling_modes = (pooling,)
        if not meta.include_prompt and self.prefix:
            raise ModelError("this model's pooling excludes prompt tokens (include_prompt=false), which reembed does "
                             "not implement; remove model.prefix or use another model")
        # As sentence-transformers: normalise when modules.json lists a Normalize module; a plain transformers
        # directory gets mean pooling and no normalisation (set model.normalize for a Dot collection).
        self.normalize = meta.normalize if normalize is None else bool(normalize)

        config = model.config
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0))
        pooled_dim = hidden * len(self.pooling_modes)
        self._dense = _load_dense(meta.dense, pooled_dim, device)
        self.model_dim = meta.dense[-1].out_features if meta.dense else pooled_dim
        if matryoshka_dim is not None:
            if matryoshka_dim > self.model_dim:
                raise ModelError(f"model.matryoshka_dim {matryoshka_dim} is larger than the model's dimension "
                                 f"{self.model_dim}; set it ≤ {self.model_dim} or remove it")
        self.matryoshka_dim = matryoshka_dim
        self.dim = matryoshka_dim or self.model_dim

        self.max_length = _resolve_max_length(max_length, meta, tokenizer, model)
        on_gpu = device.type == "cuda"
        default_budget = tunables.TOKEN_BUDGET_GPU if on_gpu else tunables.TOKEN_BUDGET_CPU
        self.token_budget = int(default_budget if token_budget is None else token_budget)
        self.max_batch = int(tunables.MAX_BATCH_TEXTS if max_batch is None else max_batch)
        self._pad_multiple = _GPU_PAD_MULTIPLE if on_gpu else 1
        default_overhead = tunables.BATCH_OVERHEAD_TOKENS_GPU if on_gpu else tunables.BATCH_OVERHEAD_TOKENS_CPU
        self.batch_overhead_tokens = int(default_overhead if batch_overhead_tokens is None else batch_overhead_tokens)

        self._pad_id = _pad_token_id(tokenizer, config)
        self._pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self._wants_type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self._backend = _truncating_backend(tokenizer, self.max_length, meta.do_lower_case)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self._lock = threading.Lock()
        self._pad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-pad")

    # --- the Embedder protocol ------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self._encode(texts)
        with self._lock:
            return self._run(encoded)

    def embed_stream(self, pages: Iterable[Sequence[str]]) -> Iterator[np.ndarray]:
        """embed() over consecutive pages, tokenizing page k+1 on a worker thread while page k runs."""
        pages = iter(pages)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-tok") as tok_pool:
            pending: Future | None = None
            first = next(pages, None)
            if first is not None:
                pending = tok_pool.submit(self._encode, first)
            while pending is not None:
                encoded = pending.result()
                following = next(pages, None)
                pending = tok_pool.submit(self._encode, following) if following is not None else None
                with self._lock:
                    yield self._run(encoded)

    def describe(self) -> dict:
        return {
            **self._provenance,
            "dim": self.dim,
            "model_dim": self.model_dim,
            "pooling": "+".join(self.pooling_modes),
            "normalize": self.normalize,
            "max_length": self.max_length,
            "matryoshka_dim": self.matryoshka_dim,
            "prefix": self.prefix,
            "dense_layers": len(self._dense),
            **_runtime_description(self),
        }

    def close(self) -> None:
        self._pad_pool.shutdown(wait=True)

    # --- internals ------------------------------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> _Encoded:
        texts = _checked_texts(texts)
        if self.prefix:
            texts = [self.prefix + t for t in texts]
        if self._backend is not None:
            encodings = self._backend.encode_batch(texts) if texts else []
            ids = [e.ids for e in encodings]
            type_ids = [e.type_ids for e in encodings] if self._wants_type_ids else None
        else:  # a slow (Python) tokenizer: same ids, more time
            out = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=self._wants_type_ids)
            ids = list(out["input_ids"])
            type_ids = list(out["token_type_ids"]) if self._wants_type_ids else None
        encoded = _Encoded(ids, type_ids)
        # Planned here, outside the model lock, so it overlaps the previous call's forward passes.
        encoded.batches = plan_batches(encoded.lengths, self.token_budget, self.max_batch,
                                       overhead_tokens=self.batch_overhead_tokens, pad_multiple=self._pad_multiple,
                                       max_width=self.max_length)
        return encoded

    def _pad(self, encoded: _Encoded, batch: Batch) -> dict[str, torch.Tensor]:
        rows = [encoded.ids[i] for i in batch.indices]
        ids, mask = pad_batch(rows, batch.width, self._pad_id, self._pad_left)
        arrays = {"input_ids": ids, "attention_mask": mask}
        if encoded.type_ids is not None:
            arrays["token_type_ids"], _ = pad_batch([encoded.type_ids[i] for i in batch.indices], batch.width, 0,
                                                    self._pad_left, with_mask=False)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        if self.device.type == "cuda":
            # Page-locked memory lets the host→device copy run asynchronously, behind the previous forward.
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        return tensors

    def _run(self, encoded: _Encoded) -> np.ndarray:
        n = len(encoded.ids)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = encoded.batches
        outputs: list[torch.Tensor] = []
        keep_alive: list[dict[str, torch.Tensor]] = []  # pinned inputs must outlive their async copies
        non_blocking = self.device.type == "cuda"
        next_inputs = self._pad_pool.submit(self._pad, encoded, batches[0])
        with torch.inference_mode():
            for k in range(len(batches)):
                host = next_inputs.result()
                if k + 1 < len(batches):
                    next_inputs = self._pad_pool.submit(self._pad, encoded, batches[k + 1])
                inputs = {key: t.to(self.device, non_blocking=non_blocking) for key, t in host.items()}
                if non_blocking:
                    keep_alive.append(host)
                try:
                    outputs.append(self._vectors(inputs))
                except _OOM as exc:
                    batch = batches[k]
                    raise ModelError(f"out of {self.device} memory on a batch of {len(batch.indices)} texts × "
                                     f"{batch.width} tokens; lower model.token_budget (now {self.token_budget})"
                                     ) from exc
            stacked = torch.cat(outputs).cpu().numpy()
        order = np.concatenate([b.indices for b in batches])
        result = np.empty((n, self.dim), dtype=np.float32)
        result[order] = stacked
        return result

    def _vectors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self._forward(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        vectors = pool(hidden, inputs["attention_mask"], self.pooling_modes)
        for layer in self._dense:
            vectors = layer(vectors)
        if self.matryoshka_dim is not None:
            vectors = vectors[:, : self.matryoshka_dim]
        if self.normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return vectors.float()


# --- loading helpers --------------------------------------------------------------------------------------------


class _RunsOnTorch(Protocol):
    """What _runtime_description reads of an embedder."""

    torch_dtype: torch.dtype
    device: torch.device
    token_budget: int
    max_batch: int
    batch_overhead_tokens: int
    compiled: bool
    threads: int | None


def _runtime_description(embedder: _RunsOnTorch) -> dict:
    """The describe() keys of where and how an embedder runs: dtype, device, batching, compile, threads, torch."""
    return {
        "dtype": dtype_name(embedder.torch_dtype),
        "device": str(embedder.device),
        "token_budget": embedder.token_budget,
        "max_batch": embedder.max_batch,
        "batch_overhead_tokens": embedder.batch_overhead_tokens,
        "compile": embedder.compiled,
        "threads": embedder.threads if embedder.device.type == "cpu" else None,
        "torch": torch.__version__,
    }


def _checked_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, every one a str (a TypeError names the first that is not)."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str; every point's text must be a string")
    return texts


def _check_options(pooling, matryoshka_dim, max_length, token_budget, max_batch, threads, overhead) -> None:
    """The checks that need no model, done before spending seconds loading one."""
    if pooling not in POOLING_CHOICES:
        raise ModelError(f"model.pooling {pooling!r} is not one of {', '.join(POOLING_CHOICES)}; fix model.pooling")
    for key, value in (("matryoshka_dim", matryoshka_dim), ("max_length", max_length),
                       ("token_budget", token_budget), ("max_batch", max_batch), ("threads", threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ModelError(f"model.{key} must be a positive integer, got {value!r}; fix or remove it")
    if overhead is not None and (not isinstance(overhead, int) or overhead < 0):
        raise ModelError(f"batch_overhead_tokens must be a non-negative integer, got {overhead!r}")


def _set_threads(threads: int | None, device: torch.device) -> None:
    if threads is None:
        return
    if device.type == "cpu":
        torch.set_num_threads(threads)


def _load_tokenizer(path: str, name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of model {name!r} from {path!r}: {exc}; "
                         "check that the directory has tokenizer.json / tokenizer_config.json") from exc


def _load_model(path: str, name: str, torch_dtype: torch.dtype, device: torch.device):
    from transformers import AutoModel

    kwargs = {_dtype_kwarg(): torch_dtype}
    try:
        try:
            model = AutoModel.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except ValueError as exc:
            if "sdpa" not in str(exc).lower():
                raise
            log.info("%s has no SDPA attention in this transformers version; using eager attention", name)
            model = AutoModel.from_pretrained(path, attn_implementation="eager", **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        hint = ("it needs custom code (trust_remote_code), which reembed does not run; use a model whose "
                "architecture is built into transformers") if "trust_remote_code" in str(exc) else \
               "check that the directory holds a complete transformers model (config.json and weights)"
        raise ModelError(f"cannot load model {name!r} from {path!r}: {str(exc).splitlines()[0]}; {hint}") from exc
    return model.to(device)


def _resolve_max_length(requested: int | None, meta: STMeta, tokenizer, model) -> int:
    """sentence-transformers' rule: sentence_bert_config's max_seq_length, else the tokenizer's limit capped at
    the model's positions. A longer request than the model has positions for is refused, not silently cut."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    limit = None
    if isinstance(positions, int) and positions > 0:
        limit = positions - _position_offset(model)
    if requested is not None:
        if limit is not None and requested > limit:
            raise ModelError(f"model.max_length {requested} exceeds the model's {limit} positions; "
                             f"set model.max_length ≤ {limit}")
        return requested
    if meta.max_seq_length:
        return min(meta.max_seq_length, limit) if limit else meta.max_seq_length
    tok_limit = getattr(tokenizer, "model_max_length", None)
    candidates = [v for v in (tok_limit if tok_limit and tok_limit < _UNBOUNDED_TOKENIZER_LIMIT else None, limit) if v]
    if not candidates:
        raise ModelError("the model declares no maximum sequence length; set model.max_length")
    return int(min(candidates))


def _position_offset(model) -> int:
    # RoBERTa-style embeddings reserve padding_idx + 1 leading positions (514 positions → 512 tokens).
    for module in model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(padding_idx, int) and isinstance(getattr(module, "position_embeddings", None),
                                                       torch.nn.Embedding):
            return padding_idx + 1
    return 0


def _pad_token_id(tokenizer, config) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0  # masked out either way; any valid id will do


def _truncating_backend(tokenizer, max_length: int, do_lower_case: bool):
    """A private copy of the fast tokenizer's Rust backend, set to truncate at max_length and never pad; None
    for slow tokenizers. A copy, so the transformers tokenizer (which reconfigures its backend per call) and
    this embedder never disturb each other."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side", "right") or "right")
    if do_lower_case:
        # sentence_bert_config do_lower_case: sentence-transformers prepends a Lowercase normaliser.
        normalizer = backend.normalizer
        # A normalizers.Sequence iterates through __getitem__; its stub has no __iter__, which mypy looks for.
        has_lowercase = isinstance(normalizer, Lowercase) or (
            isinstance(normalizer, NormalizerSequence)
            and any(isinstance(n, Lowercase) for n in cast(Iterable[Any], normalizer)))
        if not has_lowercase:
            parts = [Lowercase()]
            if isinstance(normalizer, NormalizerSequence):
                parts += list(cast(Iterable[Any], normalizer))
            elif normalizer is not None:
                parts.append(normalizer)
            backend.normalizer = NormalizerSequence(parts)
    return backend


def _load_dense(layers: tuple[DenseLayer, ...], pooled_dim: int, device: torch.device) -> list[torch.nn.Module]:
    modules: list[torch.nn.Module] = []
    expected = pooled_dim
    for layer in layers:
        if layer.in_features != expected:
            raise ModelError(f"Dense layer {layer.path!r} expects {layer.in_features} inputs but gets {expected} "
                             "(pooling changed?); use the model's own pooling (model.pooling: auto)")
        modules.append(_DenseModule(layer).to(device).eval())
        expected = layer.out_features
    return modules


class _DenseModule(torch.nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ residual), weights from its folder, run in fp32."""

    def __init__(self, layer: DenseLayer) -> None:
        super().__init__()
        activation = getattr(torch.nn, layer.activation, None)
        if not (isinstance(activation, type) and issubclass(activation, torch.nn.Module)):
            raise ModelError(f"Dense activation {layer.activation!r} is not a torch.nn module; "
                             "use a model whose Dense layers use standard activations")
        self.activation_function = activation()  # named as in sentence-transformers so state-dict keys match
        self.linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        self.residual = None
        if layer.use_residual and layer.in_features != layer.out_features:
            self.residual = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        self.use_residual = layer.use_residual
        state = _read_state_dict(layer.path)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"Dense weights in {layer.path!r} do not match its config: "
                             f"{str(exc).splitlines()[0]}; re-download the model") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        out = self.activation_function(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out


def _read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    safetensors_file = os.path.join(folder, "model.safetensors")
    bin_file = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(safetensors_file):
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(safetensors_file).items()}
    if os.path.isfile(bin_file):
        return {k: v.float() for k, v in torch.load(bin_file, map_location="cpu", weights_only=True).items()}
    raise ModelError(f"Dense layer folder {folder!r} has no model.safetensors or pytorch_model.bin; "
                     "re-download the model")
