"""Quality, for information unless verify.max_ndcg_drop makes the labelled comparison a gate.

- label-free: for sampled points, the top-k neighbours by the old vectors (stored, against the source) and by the
  new vectors (against the target) overlap how much; and self-retrieval@1: a query made of the first half of a
  sampled text finds its point first (new model; and the old model with verify.old_model);
- labelled (`--eval`): recall@k, nDCG@10 and MRR of the new vectors and, with verify.old_model, of the old ones.

Rankings use exact search where the collection's strict mode allows it (the model's quality, not the index's), and
the default search where it does not (the result says which). Multivector targets are queried by MaxSim with the
model's query encoding.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.tunables import NDCG_AT
from engine.verify.check import FAIL, INFO, PASS, Check
from engine.verify.context import VerifyContext
from engine.verify.findings import Findings
from engine.verify.ranking import mean_metrics, span_query
from engine.verify.reads import Ranked, Reads
from engine.verify.vectors import Value, embed_queries


def ranked(reads: Reads, collection: str, value: Value, using: str | None, limit: int) -> Ranked:
    return reads.nearest(collection, value, using or None, limit, exact=True)


def _search_kind(reads: Reads, *collections: str) -> str:
    return "exact" if all(reads.exact_allowed(c) for c in collections) else "hnsw (strict mode forbids exact search)"


class LabelFree:
    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        k, points = ctx.options.k, found.query_points
        out: dict[str, Any] = {"k": k, "queries": len(points), "search": _search_kind(reads, ctx.source, ctx.target)}
        found.quality["label_free"] = out
        with_old = [q for q in points if q.old is not None]
        if with_old:
            overlaps, top1 = [], []
            old_scores: list[float] = []
            new_scores: list[float] = []
            for q in with_old:
                assert q.old is not None  # with_old holds only points with an old vector
                old = [(i, s) for i, s in ranked(reads, ctx.source, q.old, ctx.vectors.source, k + 1) if i != q.pid][:k]
                new = [(i, s) for i, s in ranked(reads, ctx.target, q.new, ctx.vectors.new, k + 1) if i != q.pid][:k]
                if not old or not new:
                    continue
                old_ids, new_ids = [i for i, _ in old], [i for i, _ in new]
                overlaps.append(len(set(old_ids) & set(new_ids)) / min(k, len(old_ids), len(new_ids)))
                top1.append(1.0 if old_ids[0] == new_ids[0] else 0.0)
                old_scores.extend(round(s, 5) for _, s in old)
                new_scores.extend(round(s, 5) for _, s in new)
            if overlaps:
                out.update(topk_overlap=float(np.mean(overlaps)), top1_match=float(np.mean(top1)),
                           compared=len(overlaps), old_scores=old_scores, new_scores=new_scores)
        else:
            out["note"] = (f"no old vectors under {ctx.vectors.source or '(unnamed)'!r} in {ctx.source!r}: set "
                           "source.vector_name to compare neighbours old vs new")
        texted = [q for q in points if q.text]
        spans = [span_query(q.text) for q in texted]  # type: ignore[arg-type]
        if spans and ctx.embedder is not None and ctx.vectors.new is not None:
            hits = [ranked(reads, ctx.target, v, ctx.vectors.new, 1) for v in embed_queries(ctx.queries_by, spans)]
            out["self_retrieval_new"] = float(np.mean([bool(h) and h[0][0] == q.pid for h, q in zip(hits, texted)]))
        if spans and ctx.old_embedder is not None:
            hits = [ranked(reads, ctx.source, v, ctx.vectors.source, 1) for v in embed_queries(ctx.old_embedder, spans)]
            out["self_retrieval_old"] = float(np.mean([bool(h) and h[0][0] == q.pid for h, q in zip(hits, texted)]))
        checks = []
        if "topk_overlap" in out:
            checks.append(Check(
                "old vs new neighbours", INFO,
                f"top-{k} overlap {out['topk_overlap']:.2f}, top-1 match {out['top1_match']:.2f} over "
                f"{out['compared']} queries (information: a new model is expected to differ; Qdrant's spot-check "
                "figures of 0.7 / 0.8 apply to the same model)"))
        if "self_retrieval_new" in out:
            old_part = f", old {out['self_retrieval_old']:.2f}" if "self_retrieval_old" in out else ""
            checks.append(Check("self-retrieval@1", INFO,
                                f"a query made of the first half of a sampled text finds its point first: new "
                                f"{out['self_retrieval_new']:.2f}{old_part} over {out['queries']} queries"))
        return checks


def labelled_check(lab: dict[str, Any] | None, k: int, max_ndcg_drop: float | None) -> Check | None:
    """The labelled line: information, or a gate when max_ndcg_drop is set and both sides were measured."""
    if lab is None:
        return None
    new, old = lab.get("new"), lab.get("old")
    sides = [(name, m) for name, m in (("new", new), ("old", old)) if m is not None]
    text = f"{lab['queries']} labelled queries: " + "; ".join(
        f"{name} recall@{k} {m['recall']:.3f}, nDCG@{NDCG_AT} {m['ndcg']:.3f}, MRR {m['mrr']:.3f}"
        for name, m in sides)
    if max_ndcg_drop is None or old is None or new is None:
        return Check("labelled quality", INFO, text)
    floor = old["ndcg"] - max_ndcg_drop
    ok = new["ndcg"] >= floor
    return Check("labelled quality", PASS if ok else FAIL,
                 text + f"; new nDCG {'>=' if ok else '<'} old - {max_ndcg_drop} = {floor:.3f}")


class Labelled:
    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        new_side = ctx.embedder is not None and ctx.vectors.new is not None
        if not ctx.eval_queries or not (new_side or ctx.old_embedder is not None):
            return []
        k = ctx.options.k
        top = max(k, NDCG_AT)
        texts = [q.query for q in ctx.eval_queries]
        relevant = [q.relevant for q in ctx.eval_queries]
        out: dict[str, Any] = {"queries": len(texts), "k": k, "ndcg_at": NDCG_AT}

        def score(values: Sequence[Value], collection: str, using: str) -> dict[str, float]:
            rankings = [[i for i, _ in ranked(reads, collection, v, using, top)] for v in values]
            return mean_metrics(rankings, relevant, k)

        if new_side:
            out["new"] = score(embed_queries(ctx.queries_by, texts), ctx.target, ctx.vectors.new or "")
        else:
            out["note"] = "the new vectors are not made from text, so queries cannot be embedded for them"
        if ctx.old_embedder is not None:
            out["old"] = score(embed_queries(ctx.old_embedder, texts), ctx.source, ctx.vectors.source)
        found.quality["labelled"] = out
        check = labelled_check(out, k, ctx.options.max_ndcg_drop)
        return [check] if check is not None else []
