"""Model-only embedding throughput: the engine's TransformerEmbedder against two baselines measured in this run.

  engine     TransformerEmbedder.embed, page by page (what an embed actor does): length-sorted, token-budget batches
  unsorted   the same model object, fixed batches of 32 in input order, padded to each batch's longest text
  st         sentence-transformers encode(batch_size=64), same model files, threads and dtype (skipped when
             sentence-transformers is not installed, e.g. on the GPU machine)

The corpus is synthetic but realistic and deterministic: word windows of log-uniform length (≈10–400 tokens) cut
from the Python standard library's docstrings with a seeded RNG. Its token statistics are printed.

    .venv/bin/python bench/embed.py --n 1500
    python bench/embed.py --device cuda --random-bert-base --n 20000     # on a GPU box: MFU included
    python bench/embed.py --device cuda --random-minilm --tokenizer DIR  # no packaged MiniLM there: pass its tokenizer

The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import tunables  # noqa: E402
from engine.embed import TransformerEmbedder, resolve_model_path  # noqa: E402
from engine.embed.pooling import pool  # noqa: E402

CORPUS_MODULES = (
    "json", "os", "collections", "functools", "itertools", "re", "string", "textwrap", "random", "statistics",
    "pathlib", "subprocess", "threading", "logging", "argparse", "datetime", "decimal", "fractions", "heapq",
    "bisect", "csv", "urllib.parse", "typing", "dataclasses", "enum", "inspect", "unittest", "shutil", "tempfile",
    "zipfile", "tarfile", "sqlite3", "socket", "selectors", "contextlib", "abc", "io", "codecs", "difflib", "pprint",
)
MIN_WORDS, MAX_WORDS, MAX_CHARS = 7, 250, 1200  # measured with the BERT tokenizer: ≈ 9-400 tokens, mean ≈ 110
H100_BF16_DENSE_TFLOPS = 990.0  # NVIDIA H100 SXM dense bf16 peak (NVIDIA datasheet)


def corpus(n: int, seed: int) -> list[str]:
    """n texts: windows of log-uniform 7–250 words (≈10–400 BERT tokens) over stdlib docstring prose."""
    words: list[str] = []
    for name in CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            words.extend(re.sub(r"\s+", " ", doc).split())
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        count = int(math.exp(rng.uniform(math.log(MIN_WORDS), math.log(MAX_WORDS))))
        start = rng.randrange(0, max(1, len(words) - count))
        text = " ".join(words[start:start + count])
        if len(text) > MAX_CHARS:  # code-heavy windows tokenize densely; keep them under ~400 tokens
            text = text[:MAX_CHARS].rsplit(" ", 1)[0]
        texts.append(text)
    return texts


def time_once(fn) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds, and the result of one run."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interleaved(methods: dict, rounds: int) -> tuple[dict, dict, dict]:
    """Best wall time and best CPU time per method over `rounds` rounds, each round running every method once,
    starting one method later each round: on a shared machine, load that comes and goes then falls on every
    method alike instead of on whichever always runs first. CPU time (work done by this process) is the figure
    to compare when the machine is busy: other processes stretch wall time far more than they stretch it."""
    best_wall = {name: float("inf") for name in methods}
    best_cpu = dict(best_wall)
    results: dict = {}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu, results[name] = time_once(methods[name])
            best_wall[name] = min(best_wall[name], wall)
            best_cpu[name] = min(best_cpu[name], cpu)
    return best_wall, best_cpu, results


def engine_run(embedder: TransformerEmbedder, texts: list[str], page: int) -> np.ndarray:
    return np.concatenate([embedder.embed(texts[i:i + page]) for i in range(0, len(texts), page)])


def engine_stream(embedder: TransformerEmbedder, texts: list[str], page: int) -> np.ndarray:
    return np.concatenate(list(embedder.embed_stream(texts[i:i + page] for i in range(0, len(texts), page))))


def unsorted_run(embedder: TransformerEmbedder, texts: list[str], batch: int) -> np.ndarray:
    """The obvious transformers loop: fixed batches in input order, each padded to its longest text."""
    tok, model, device = embedder.tokenizer, embedder.model, embedder.device
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=embedder.max_length,
                      return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            vec = pool(hidden, enc["attention_mask"], embedder.pooling_modes)
            out.append(torch.nn.functional.normalize(vec, dim=-1).float().cpu().numpy())
    return np.concatenate(out)


def padding_stats(embedder: TransformerEmbedder, texts: list[str], page: int, batch: int) -> dict:
    real = engine_padded = unsorted_padded = 0
    for i in range(0, len(texts), page):
        encoded = embedder._encode(texts[i:i + page])
        real += int(encoded.lengths.sum())
        engine_padded += sum(len(b.indices) * b.width for b in encoded.batches)
        lengths = encoded.lengths
        for j in range(0, len(lengths), batch):
            chunk = lengths[j:j + batch]
            unsorted_padded += int(chunk.max()) * len(chunk)
    return {"real_tokens": real, "engine_padding_overhead": engine_padded / real - 1,
            "unsorted_padding_overhead": unsorted_padded / real - 1}


def model_flops(embedder: TransformerEmbedder, lengths: np.ndarray) -> float:
    """Useful forward FLOPs: 2 × non-embedding parameters per real token, plus attention scores and values
    (4 × length² × hidden per layer per text)."""
    model = embedder.model
    embeddings = getattr(model, "embeddings", None) or model.get_input_embeddings()
    per_text = getattr(model, "pooler", None)  # BERT's pooler runs once per text, not per token
    excluded = sum(p.numel() for m in (embeddings, per_text) if m is not None for p in m.parameters())
    dense_params = sum(p.numel() for p in model.parameters()) - excluded
    config = model.config
    layers, hidden = config.num_hidden_layers, config.hidden_size
    lengths = lengths.astype(np.float64)
    return float(2 * dense_params * lengths.sum() + 4 * layers * hidden * (lengths ** 2).sum())


def st_encoder(embedder: TransformerEmbedder, model_path: str | None, texts: list[str], device: str, tmp: str):
    """A zero-argument callable running sentence-transformers' encode on the same model, or a reason why not."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, "sentence-transformers not installed: baseline skipped"
    if model_path is None:  # random weights: save them so sentence-transformers loads the very same model
        embedder.model.save_pretrained(tmp)
        embedder.tokenizer.save_pretrained(tmp)
        model_path = tmp
    st = SentenceTransformer(model_path, device=device)
    st.max_seq_length = embedder.max_length
    st.to(embedder.torch_dtype)

    def encode() -> np.ndarray:
        vectors = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    encode_warm = texts[: min(64, len(texts))]
    st.encode(encode_warm, batch_size=64, show_progress_bar=False)
    return encode, "sentence-transformers encode(batch_size=64)"


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--n", type=int, default=1500, help="texts in the corpus")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--random-bert-base", action="store_true",
                        help="randomly initialised BERT-base-shaped model (MiniLM's tokenizer, same vocab)")
    parser.add_argument("--random-minilm", action="store_true",
                        help="randomly initialised all-MiniLM-L6-v2-shaped model (for machines without its weights)")
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="tokenizer directory for the random models (any BERT uncased WordPiece vocab)")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--budgets", default="", help="also sweep these token budgets, e.g. 1024,2048,4096,8192")
    parser.add_argument("--overhead-tokens", type=int, default=None, help="batch overhead in token equivalents")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--page", type=int, default=tunables.SCROLL_PAGE, help="texts per embed() call")
    parser.add_argument("--unsorted-batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds; each runs every method once, and each method's best round is kept")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="accelerator peak for MFU (default: H100 dense bf16)")
    parser.add_argument("--skip-st", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    common = dict(device=args.device, dtype=args.dtype, max_length=args.max_length, token_budget=args.token_budget,
                  compile=args.compile, threads=args.threads, batch_overhead_tokens=args.overhead_tokens)
    if args.random_bert_base or args.random_minilm:
        from transformers import BertConfig

        if args.random_bert_base:
            config, label = BertConfig(), "random-init BERT-base (12 layers, 768 hidden; vectors meaningless)"
        else:
            config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
            label = "random-init MiniLM-L6 shape (6 layers, 384 hidden; vectors meaningless)"
        embedder = TransformerEmbedder.from_random_config(config, resolve_model_path(args.tokenizer), **common)
        model_label, model_path = label, None
    else:
        embedder = TransformerEmbedder(args.model, **common)
        model_label, model_path = args.model, embedder.describe()["path"]
    device = str(embedder.device)
    texts = corpus(args.n, args.seed)
    lengths = embedder._encode(texts).lengths
    corpus_id = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
    print(f"model: {model_label}  device: {device}  dtype: {embedder.describe()['dtype']}  "
          f"threads: {torch.get_num_threads()}  max_length: {embedder.max_length}  "
          f"token_budget: {embedder.token_budget}  overhead_tokens: {embedder.batch_overhead_tokens}")
    print(f"corpus: {len(texts)} texts (sha {corpus_id}), tokens/text mean {lengths.mean():.0f}, "
          f"p10 {np.percentile(lengths, 10):.0f}, p50 {np.percentile(lengths, 50):.0f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}")

    warm = texts[: min(64, len(texts))]
    embedder.embed(warm)
    unsorted_run(embedder, warm, args.unsorted_batch)

    methods = {
        "engine": lambda: engine_run(embedder, texts, args.page),
        "stream": lambda: engine_stream(embedder, texts, args.page),
        "unsorted": lambda: unsorted_run(embedder, texts, args.unsorted_batch),
    }
    st_note = "skipped (--skip-st)"
    tmp = tempfile.TemporaryDirectory()
    if not args.skip_st:
        encode, st_note = st_encoder(embedder, model_path, texts, device, tmp.name)
        if encode is not None:
            methods["st"] = encode
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]

    def with_budget(budget: int):
        def run() -> np.ndarray:
            original, embedder.token_budget = embedder.token_budget, budget
            try:
                return engine_run(embedder, texts, args.page)
            finally:
                embedder.token_budget = original
        return run

    for budget in budgets:
        methods[f"budget:{budget}"] = with_budget(budget)
    seconds, cpu_seconds, results = interleaved(methods, args.repeat)
    tmp.cleanup()
    n = len(texts)
    cpu_ms = {name: 1000 * value / n for name, value in cpu_seconds.items()}

    def line(label: str, name: str) -> str:
        return f"{label:44s} {n / seconds[name]:9.1f} texts/s   {cpu_ms[name]:7.2f} CPU-ms/text"

    figures: dict = {
        "texts_per_s": n / seconds["engine"],
        "stream_texts_per_s": n / seconds["stream"],
        "unsorted_texts_per_s": n / seconds["unsorted"],
        "min_cos_engine_vs_unsorted": min_cosine(results["engine"], results["unsorted"]),
        "cpu_ms_per_text": cpu_ms,
    }
    print(line(f"engine   embed() per page of {args.page}", "engine"))
    print(line("engine   embed_stream (tokenize ahead)", "stream"))
    print(line(f"baseline unsorted batches of {args.unsorted_batch}", "unsorted"))
    st_texts_per_s = n / seconds["st"] if "st" in seconds else None
    if st_texts_per_s:
        figures["min_cos_engine_vs_st"] = min_cosine(results["engine"], results["st"])
        print(line(f"baseline {st_note}", "st"))
    else:
        print(f"baseline sentence-transformers: {st_note}")
    figures["st_texts_per_s"] = st_texts_per_s
    figures["ratio_vs_unsorted"] = figures["texts_per_s"] / figures["unsorted_texts_per_s"]
    figures["ratio_vs_st"] = figures["texts_per_s"] / st_texts_per_s if st_texts_per_s else None
    figures["cpu_ratio_vs_unsorted"] = cpu_ms["unsorted"] / cpu_ms["engine"]
    figures["cpu_ratio_vs_st"] = cpu_ms["st"] / cpu_ms["engine"] if "st" in cpu_ms else None
    ratio_st = f"{figures['ratio_vs_st']:.2f}x" if st_texts_per_s else "n/a"
    cpu_ratio_st = f"{figures['cpu_ratio_vs_st']:.2f}x" if st_texts_per_s else "n/a"
    print(f"ratios (wall): engine/unsorted {figures['ratio_vs_unsorted']:.2f}x, "
          f"engine/sentence-transformers {ratio_st}")
    print(f"ratios (CPU per text): engine/unsorted {figures['cpu_ratio_vs_unsorted']:.2f}x, "
          f"engine/sentence-transformers {cpu_ratio_st}")
    if budgets:
        sweep = {budget: n / seconds[f"budget:{budget}"] for budget in budgets}
        for budget in budgets:
            print(line(f"token_budget {budget}", f"budget:{budget}"))
        figures["budget_sweep_texts_per_s"] = sweep
        figures["budget_sweep_cpu_ms_per_text"] = {budget: cpu_ms[f"budget:{budget}"] for budget in budgets}
    engine_s = seconds["engine"]

    padding = padding_stats(embedder, texts, args.page, args.unsorted_batch)
    figures.update(padding)
    print(f"padding overhead (padded/real - 1): engine {padding['engine_padding_overhead']:.1%}, "
          f"unsorted {padding['unsorted_padding_overhead']:.1%}")

    if embedder.device.type == "cuda":
        flops = model_flops(embedder, lengths)
        achieved = flops / engine_s / 1e12
        figures["tflops"] = achieved
        figures["mfu"] = achieved / args.peak_tflops
        figures["stream_mfu"] = flops / seconds["stream"] / 1e12 / args.peak_tflops
        figures["gpu"] = torch.cuda.get_device_name(embedder.device)
        print(f"useful model FLOPs {flops / 1e12:.2f} TFLOP → {achieved:.1f} TFLOP/s = MFU {figures['mfu']:.1%} "
              f"(embed_stream {figures['stream_mfu']:.1%}) of {args.peak_tflops:.0f} TFLOP/s")

    figures.update({
        "device": device,
        "dtype": embedder.describe()["dtype"],
        "model": model_label,
        "random_init": bool(args.random_bert_base or args.random_minilm),
        "n": len(texts),
        "corpus_sha": corpus_id,
        "mean_tokens": float(lengths.mean()),
        "max_length": embedder.max_length,
        "token_budget": embedder.token_budget,
        "overhead_tokens": embedder.batch_overhead_tokens,
        "threads": torch.get_num_threads(),
        "page": args.page,
        "rounds": args.repeat,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "compile": args.compile,
        "torch": torch.__version__,
        "python": platform.python_version(),
    })
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
