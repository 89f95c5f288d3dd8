"""End to end with the real model: reembed (Ray, all-MiniLM-L6-v2) against the naive loop from Qdrant's guide, and
against the model alone, on the same corpus in the embedded endpoint, in one run.

  reembed     engine.app.job.run_job: scroll actors → one embedding actor (all cores) → upload actors, into a new
              collection; measured end to end (Ray start, actors, model load, checks included) and pipeline only
  naive       qdrant-client scroll 256 (with_vectors=False) → sentence-transformers encode(batch_size=64) →
              upsert(wait=True) of models.PointStruct, one process, into another new collection
  model only  the engine's embedder `embed` on the same texts, in pages of the same size, same threads: the
              ceiling for both on this machine; run first and last by default, the better run counts (on a shared
              machine the less disturbed one), which makes the efficiency figures conservative

    .venv/bin/python bench/e2e.py --n 3000
    .venv/bin/python bench/e2e.py                  # 20k points: minutes per contender on 2 CPU cores

efficiency = reembed end-to-end points/s ÷ model-only points/s (pipeline_efficiency: pipeline only ÷ model only);
model_busy_fraction = the share of the pipeline's time the embedding actor spent inside embed(), clocked in the
actor during the same run (how well I/O hides behind the model, immune to other load on a shared machine);
ratio = reembed ÷ naive, both end to end (model loading included); pipeline_ratio = pipeline only ÷ naive loop
only. The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402  (sets HF_HUB_OFFLINE / RAY_AUTH_MODE before Ray or models load)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NAIVE_BATCH = 64  # sentence-transformers encode batch in the naive loop (measured here: ≈ its best on this CPU)


def model_only(model: str, texts: list[str], page: int, threads: int) -> dict:
    """The engine's embedder alone, page by page as an embedding actor gets them (after a warm-up)."""
    from engine.embed import build_embedder

    t0 = time.perf_counter()
    embedder = build_embedder({"name": model, "threads": threads})
    load_s = time.perf_counter() - t0
    embedder.embed(texts[:64])  # first-call allocations and kernel selection, as an actor's first page pays
    t0 = time.perf_counter()
    for i in range(0, len(texts), page):
        embedder.embed(texts[i:i + page])
    seconds = time.perf_counter() - t0
    ids = embedder.tokenizer(texts[:2000], truncation=True, max_length=embedder.max_length)["input_ids"]
    lengths = [len(row) for row in ids]  # token statistics of the corpus, as the model sees it (truncated)
    info = embedder.describe()
    return {"points_per_s": len(texts) / seconds, "seconds": seconds, "load_s": load_s,
            "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths),
            "threads": info.get("threads"), "token_budget": info.get("token_budget")}


def naive(port: int, model: str) -> dict:
    """The guide's loop with sentence-transformers; model loading timed apart from the loop."""
    from sentence_transformers import SentenceTransformer

    from engine.embed import resolve_model_path

    t0 = time.perf_counter()
    st = SentenceTransformer(resolve_model_path(model), device="cpu")
    load_s = time.perf_counter() - t0

    def encode(texts: list[str]):
        return st.encode(texts, batch_size=NAIVE_BATCH, convert_to_numpy=True, show_progress_bar=False)

    dim = getattr(st, "get_embedding_dimension", st.get_sentence_embedding_dimension)()
    res = common.naive_loop(port, "src", "dst_naive", encode, dim)
    res["load_s"] = load_s
    return res


def min_cosine(port: int, a: str, b: str, n: int) -> float:
    """Smallest cosine between the two targets' vectors on a sample of ids: both should hold MiniLM's vectors."""
    import numpy as np

    ids = common.sample_ids(n)
    va, vb = common.fetch_vectors(port, a, ids), common.fetch_vectors(port, b, ids)
    if set(va) != set(ids) or set(vb) != set(ids):
        return float("nan")
    return float(min(va[i] @ vb[i] / (np.linalg.norm(va[i]) * np.linalg.norm(vb[i])) for i in ids))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="points in the source collection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--order", default="model,reembed,naive,model",
                        help="the order the contenders run in (comma-separated: reembed and naive once, model once "
                             "or more: on a shared machine its best run, the least disturbed, is the ceiling)")
    parser.add_argument("--verbose", action="store_true")
    common.pipeline_args(parser)
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose)
    order = [s.strip() for s in args.order.split(",") if s.strip()]
    if order.count("reembed") != 1 or order.count("naive") != 1 or order.count("model") < 1 or \
            set(order) - {"model", "naive", "reembed"}:
        parser.error("--order names reembed and naive once each and model at least once")

    from engine import tunables

    cores = os.cpu_count() or 1
    pipeline = common.pipeline_of(args)
    what_ifs = common.apply_what_ifs(args)
    page = pipeline.get("scroll_page", tunables.SCROLL_PAGE)
    figures: dict = {"n": args.n, "model": args.model, "pipeline": pipeline or "defaults", "what_if": what_ifs,
                     **common.machine()}
    texts = common.corpus(args.n, args.seed)
    figures["mean_chars"] = sum(map(len, texts)) / len(texts)
    workdir = Path(tempfile.mkdtemp(prefix="reembed-e2e-"))
    try:
        with common.endpoint() as ep:
            seconds = common.seed_source(ep.port, "src", args.n, args.seed, texts=texts)
            figures["seed_s"] = seconds
            print(f"corpus: {args.n:,} texts, mean {figures['mean_chars']:.0f} chars; seeded in {seconds:.1f} s")
            for contender in order:
                if contender == "reembed":
                    sampler = common.TreeSampler().start()

                    def on_pipeline(running: bool, sampler: common.TreeSampler = sampler) -> None:
                        sampler.rebase() if running else sampler.freeze()

                    cfg = common.reembed_config(ep.port, workdir, "src", "dst_reembed", args.model, **pipeline)
                    with common.DriverTimers() as timers:
                        run = common.run_reembed(cfg, sampler.set_roles, on_pipeline, time_embed=True)
                    sampler.stop()
                    common.shutdown_ray()  # the other contenders get a machine without Ray's processes
                    s = run.summary
                    pipeline_s = s["points_this_run"] / s["pipeline_points_per_s"]
                    figures.update(
                        reembed_points_per_s=s["points_per_s"],
                        reembed_pipeline_points_per_s=s["pipeline_points_per_s"],
                        reembed_elapsed_s=s["elapsed_s"], reembed_startup_s=s["elapsed_s"] - pipeline_s,
                        reembed_points=s["points_written"], reembed_cpu_s=sampler.cpu_by_role(),
                        reembed_driver_calls=timers.report(),
                    )
                    busy_s = sum(b["busy_s"] for b in run.embed_busy)
                    embedded = sum(b["texts"] for b in run.embed_busy)
                    # Measured inside the run, under the same conditions: robust to a shared machine's noise.
                    figures["model_busy_fraction"] = busy_s / max(pipeline_s, 1e-9) / max(len(run.embed_busy), 1)
                    figures["in_pipeline_model_points_per_s"] = embedded / busy_s if busy_s else 0.0
                    print(f"reembed:    {s['points_written']:,} points in {s['elapsed_s']:.1f} s: "
                          f"{s['points_per_s']:,.1f} points/s end to end ({figures['reembed_startup_s']:.1f} s of "
                          f"Ray start, actors and model load), {s['pipeline_points_per_s']:,.1f} points/s "
                          "pipeline only")
                    common.print_breakdown(figures["reembed_cpu_s"], pipeline_s, args.n, cores)
                    common.print_driver_timers(figures["reembed_driver_calls"], pipeline_s)
                    print(f"  the embedding actor's model was busy {figures['model_busy_fraction']:.1%} of the "
                          f"pipeline's {pipeline_s:.1f} s, at {figures['in_pipeline_model_points_per_s']:,.1f} texts/s "
                          "while busy")
                elif contender == "naive":
                    res = naive(ep.port, args.model)
                    figures.update(naive_points_per_s=res["points"] / (res["seconds"] + res["load_s"]),
                                   naive_loop_points_per_s=res["points_per_s"], naive_s=res["seconds"],
                                   naive_load_s=res["load_s"], naive_points=res["points"])
                    print(f"naive:      {res['points']:,} points in {res['seconds'] + res['load_s']:.1f} s: "
                          f"{figures['naive_points_per_s']:,.1f} points/s end to end (model load "
                          f"{res['load_s']:.1f} s), {res['points_per_s']:,.1f} points/s loop only")
                else:
                    res = model_only(args.model, texts, page, cores)
                    runs = figures.setdefault("model_only_runs_points_per_s", [])
                    runs.append(res["points_per_s"])
                    figures.update(model_only_points_per_s=max(runs), mean_tokens=res["mean_tokens"],
                                   max_tokens=res["max_tokens"], model_threads=res["threads"],
                                   token_budget=res["token_budget"])
                    print(f"model only: {args.n:,} texts in {res['seconds']:.1f} s: {res['points_per_s']:,.1f} "
                          f"texts/s (engine embedder, pages of {page}, {res['threads']} threads; mean "
                          f"{res['mean_tokens']:.0f} tokens/text)")
            figures["min_cosine_reembed_vs_naive"] = min_cosine(ep.port, "dst_reembed", "dst_naive", args.n)
            figures["target_counts"] = {name: common.count_points(ep.port, name)
                                        for name in ("dst_reembed", "dst_naive")}
    finally:
        common.shutdown_ray()
        shutil.rmtree(workdir, ignore_errors=True)

    figures["ratio"] = figures["reembed_points_per_s"] / figures["naive_points_per_s"]
    figures["pipeline_ratio"] = figures["reembed_pipeline_points_per_s"] / figures["naive_loop_points_per_s"]
    figures["efficiency"] = figures["reembed_points_per_s"] / figures["model_only_points_per_s"]
    figures["pipeline_efficiency"] = figures["reembed_pipeline_points_per_s"] / figures["model_only_points_per_s"]
    print(f"ratio reembed/naive: {figures['ratio']:.2f}x end to end, {figures['pipeline_ratio']:.2f}x pipeline vs "
          f"loop; efficiency vs model only: {figures['efficiency']:.2f} end to end, "
          f"{figures['pipeline_efficiency']:.2f} pipeline only (target ≥ 0.95); vectors agree: min cosine "
          f"{figures['min_cosine_reembed_vs_naive']:.6f}")
    common.emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
