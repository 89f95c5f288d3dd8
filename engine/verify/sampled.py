"""The checks over sampled points, in one pass over a random sample of source points (a sample at least as large as
the collection reads every point, in id order):

- sampled ids present: each sampled id is in the target (a point without usable text may be absent from an
  unnamed-vector target, which cannot hold a point without a vector);
- payload equality: canonical-JSON SHA-256 of source and target payloads;
- vectors valid: the new vector exists, is finite, not zero and of the model's dimension; a multivector has token
  rows of the model's dimension, finite, none of them zero;
- vectors recomputed: the model's embedding of the point's text again equals the stored vector (cosine >=
  verify.min_cosine; a multivector token by token: the same number of tokens, every row's cosine >= min_cosine);
- dead letters listed: a sampled point without usable text carries no new vector and is in the job's dead letters;
- copied vectors equal (when the job copies vectors): each copied vector equals the source's, to float32 rounding.

Points are read in batches (Get batches inside strict mode's read limit) and re-embedded with the embedder the
context gives (a remote GPU embedder on a cluster), so memory holds one batch, a bounded reservoir of query points
for the next steps, and a bounded list of offenders per check.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client import grpc as pb

from engine.qdrant import wire
from engine.qdrant.values import payload_digest, payload_to_python
from engine.tunables import POINT_BATCH, QUERY_SEED, SHOW_IN_DETAIL
from engine.verify.check import FAIL, PASS, SKIPPED, Check, Offenders, show
from engine.verify.context import VerifyContext
from engine.verify.findings import Findings, QueryPoint
from engine.verify.reads import Reads, vectors_selector
from engine.verify.vectors import (
    copy_difference,
    cosine,
    multi_problem,
    stored_value,
    token_cosines,
    value_rows,
    vector_problem,
)


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k] != b[k])


@dataclass
class SampleTally:
    """Everything the pass over the sample counts."""

    checked: int = 0
    full: bool = False
    no_text: int = 0  # sampled points without usable text
    recomputed: int = 0
    min_cosine: float = 1.0  # least cosine (least token cosine for multivectors) seen in recomputation
    without_vector: int = 0  # shortcut targets: points that carry no new vector
    copies_compared: int = 0
    missing: Offenders = field(default_factory=Offenders)
    payload: Offenders = field(default_factory=Offenders)  # why: the differing keys
    vectors: Offenders = field(default_factory=Offenders)  # why: the problem
    recompute: Offenders = field(default_factory=Offenders)  # why: how it differs
    not_listed: Offenders = field(default_factory=Offenders)
    copies: Offenders = field(default_factory=Offenders)  # why: which copy and how

    def what(self) -> str:
        return "every point" if self.full else f"a random sample of {self.checked:,} points"


class _Reservoir:
    """A uniform sample of the valid points seen, as queries for index health and quality."""

    def __init__(self, size: int) -> None:
        self.points: list[QueryPoint]
        self.size, self.seen, self.points = size, 0, []
        self._rng = random.Random(QUERY_SEED)

    def keep(self, q: QueryPoint) -> None:
        self.seen += 1
        if len(self.points) < self.size:
            self.points.append(q)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.points[j] = q


def _problem(value: Any, dim: int | None, multi: bool) -> str | None:
    if multi:
        return multi_problem(value, dim)
    return vector_problem(value, dim) if dim else (None if value is not None else "no new vector")


def _recompute_difference(stored: np.ndarray, wanted: np.ndarray, min_cos: float) -> tuple[float, str | None]:
    """(least cosine, why it fails or None): a dense row by its cosine, a multivector row by row."""
    if stored.ndim == 2:
        if stored.shape != wanted.shape:
            return 0.0, (f"{stored.shape[0]} tokens of {stored.shape[1]}-d, the model makes {wanted.shape[0]} "
                         f"of {wanted.shape[1]}-d")
        cos = token_cosines(stored, wanted)
        worst = int(np.argmin(cos))
        least = float(cos[worst])
        return least, (f"token {worst} cosine {least:.4f}" if least < min_cos else None)
    c = cosine(stored, wanted)
    return c, (f"cosine {c:.4f}" if c < min_cos else None)


class SampledPoints:
    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        tally = SampleTally()
        reservoir = _Reservoir(ctx.options.queries)
        batches, tally.full = self._source_batches(ctx, reads, found)
        new = ctx.vectors.new
        target_sel = vectors_selector(([new] if new is not None else []) + list(ctx.vectors.copied.values()))
        for batch in batches:
            ids = [wire.id_value(p.id) for p in batch]
            got = {wire.id_value(p.id): p for p in reads.get(ctx.target, ids, with_payload=True,
                                                             with_vectors=target_sel)}
            self._batch(ctx, found, batch, got, tally, reservoir)
        found.checked, found.full, found.query_points = tally.checked, tally.full, reservoir.points
        checks = [ids_present(tally), payload_equality(tally), vectors_valid(ctx, tally),
                  vectors_recomputed(ctx, tally), dead_letters_listed(ctx, found, tally)]
        if ctx.vectors.copied:
            checks.append(copies_equal(ctx, tally))
        return checks

    @staticmethod
    def _source_batches(ctx: VerifyContext, reads: Reads, found: Findings
                        ) -> tuple[Iterator[list[pb.RetrievedPoint]], bool]:
        sel = vectors_selector([ctx.vectors.source, *ctx.vectors.copied])
        total = found.source_total
        if total is None:
            total = reads.client.count(ctx.source, exact=reads.exact_allowed(ctx.source))
        if ctx.options.sample >= total:
            return reads.pages(ctx.source, sel), True
        ids = reads.sample_ids(ctx.source, ctx.options.sample)

        def by_ids() -> Iterator[list[pb.RetrievedPoint]]:
            for i in range(0, len(ids), POINT_BATCH):
                yield reads.get(ctx.source, ids[i:i + POINT_BATCH], with_payload=True, with_vectors=sel)
        return by_ids(), False

    @staticmethod
    def _batch(ctx: VerifyContext, found: Findings, batch: list[pb.RetrievedPoint], got: dict[Any, pb.RetrievedPoint],
               t: SampleTally, reservoir: _Reservoir) -> None:
        names, multi = ctx.vectors, ctx.vectors.new_is_multi
        texts = {wire.id_value(p.id): text for p, (text, _why) in zip(batch, ctx.text.texts(batch))}
        to_embed: list[tuple[Any, str, np.ndarray, Any]] = []
        for sp in batch:
            pid = wire.id_value(sp.id)
            t.checked += 1
            text = texts.get(pid)
            if text is None:
                t.no_text += 1
                if ctx.embedder is not None and found.dead_ids is not None and str(pid) not in found.dead_ids:
                    t.not_listed.add(pid)
            tp = got.get(pid)
            if tp is None:
                if not (text is None and found.unnamed_target):
                    t.missing.add(pid)
                continue
            src_payload, tgt_payload = payload_to_python(sp.payload), payload_to_python(tp.payload)
            if payload_digest(src_payload) != payload_digest(tgt_payload):
                t.payload.add(pid, differing_keys(src_payload, tgt_payload))
            for src_name, tgt_name in names.copied.items():
                t.copies_compared += 1
                diff = copy_difference(stored_value(sp, src_name), stored_value(tp, tgt_name))
                if diff is not None:
                    t.copies.add(pid, f"{tgt_name or '(unnamed)'!r} {diff}")
            if names.new is None:
                continue
            vec = stored_value(tp, names.new)
            old = stored_value(sp, names.source)
            if ctx.embedder is None:  # vectors not made from the text: validity only
                if vec is None:
                    t.without_vector += 1
                    continue
                problem = _problem(vec, ctx.dim, multi)
                if problem is not None:
                    t.vectors.add(pid, problem)
                else:
                    reservoir.keep(QueryPoint(pid, text, vec, old))
                continue
            if text is None:
                if vec is not None:
                    t.vectors.add(pid, "has a new vector but no usable text")
                continue
            problem = _problem(vec, ctx.dim, multi)
            if problem is not None:
                t.vectors.add(pid, problem)
                continue
            assert isinstance(vec, np.ndarray)  # _problem passed it, and ctx.dim is set with an embedder
            to_embed.append((pid, text, vec, old))
        if not to_embed:
            return
        assert ctx.embedder is not None  # to_embed is filled only when there is one
        wanted = value_rows(ctx.embedder.embed([text for _, text, _, _ in to_embed]))
        for (pid, text, vec, old), want in zip(to_embed, wanted):
            least, why = _recompute_difference(vec, want, ctx.options.min_cosine)
            t.recomputed += 1
            t.min_cosine = min(t.min_cosine, least)
            if why is not None:
                t.recompute.add(pid, why)
                continue
            reservoir.keep(QueryPoint(pid, text, vec, old))


# --- the checks, one function each ----------------------------------------------------------------------------------

def ids_present(t: SampleTally) -> Check:
    if t.missing:
        return Check("sampled ids present", FAIL, f"{t.missing.count} of {t.checked:,} sampled ids are missing from "
                     f"the target: {show(t.missing.ids)}", t.missing.ids)
    return Check("sampled ids present", PASS, f"{t.what()}: all present in the target")


def payload_equality(t: SampleTally) -> Check:
    if t.payload:
        shown = "; ".join(f"id {pid!r} (keys {', '.join(keys) or '?'})" for pid, keys in
                          t.payload.first[:SHOW_IN_DETAIL])
        return Check("payload equality", FAIL, f"{t.payload.count} of {t.checked:,} payloads differ: {shown}",
                     t.payload.ids)
    return Check("payload equality", PASS, f"{t.what()}: payload SHA-256 equal")


def vectors_valid(ctx: VerifyContext, t: SampleTally) -> Check:
    if ctx.vectors.new is None:
        return Check("vectors valid", SKIPPED, "this job wrote no dense vector")
    if t.vectors:
        shown = "; ".join(f"id {pid!r} {why}" for pid, why in t.vectors.first[:SHOW_IN_DETAIL])
        return Check("vectors valid", FAIL, f"{t.vectors.count} bad vectors: {shown}", t.vectors.ids)
    carry = f"{t.no_text} without text carry none" if ctx.embedder is not None else \
        f"{t.without_vector} carry no new vector"
    shape = f"no zero token row, {ctx.dim}-d tokens" if ctx.vectors.new_is_multi else f"non-zero, {ctx.dim}-d"
    return Check("vectors valid", PASS, f"{t.what()}: finite, {shape} ({carry})")


def vectors_recomputed(ctx: VerifyContext, t: SampleTally) -> Check:
    if ctx.embedder is None or ctx.vectors.new is None:
        return Check("vectors recomputed", SKIPPED,
                     ctx.not_from_text or "this job wrote no dense vector to recompute")
    if t.recomputed == 0:
        return Check("vectors recomputed", SKIPPED, "no sampled point had text and a valid vector")
    min_cos = ctx.options.min_cosine
    unit = "multivectors" if ctx.vectors.new_is_multi else "vectors"
    if t.recompute:
        shown = "; ".join(f"id {pid!r} {why}" for pid, why in t.recompute.first[:SHOW_IN_DETAIL])
        return Check("vectors recomputed", FAIL,
                     f"{t.recompute.count} of {t.recomputed:,} {unit} differ from the model's embedding of their text "
                     f"(cosine < {min_cos}): {shown}", t.recompute.ids)
    how = "token by token, min token cosine" if ctx.vectors.new_is_multi else "min cosine"
    return Check("vectors recomputed", PASS, f"{t.recomputed:,} re-embedded, {how} {t.min_cosine:.6f} >= {min_cos}")


def dead_letters_listed(ctx: VerifyContext, found: Findings, t: SampleTally) -> Check:
    if ctx.embedder is None:
        return Check("dead letters listed", SKIPPED, "the new vectors are not made from the text")
    if found.dead_ids is None:
        return Check("dead letters listed", SKIPPED, f"dead-letter file {ctx.dead_letter_path} is not on this "
                     f"machine; {t.no_text} sampled points had no usable text")
    if t.not_listed:
        return Check("dead letters listed", FAIL, f"{t.not_listed.count} sampled points without usable text are not "
                     f"in the dead letters: {show(t.not_listed.ids)}", t.not_listed.ids)
    return Check("dead letters listed", PASS, f"all {t.no_text} sampled points without usable text are listed"
                 if t.no_text else "no sampled point lacked usable text")


def copies_equal(ctx: VerifyContext, t: SampleTally) -> Check:
    names = ", ".join(f"{s or '(unnamed)'!r} -> {d or '(unnamed)'!r}" for s, d in ctx.vectors.copied.items())
    if t.copies:
        shown = "; ".join(f"id {pid!r} {why}" for pid, why in t.copies.first[:SHOW_IN_DETAIL])
        return Check("copied vectors equal", FAIL, f"{t.copies.count} of {t.copies_compared:,} copied vectors differ "
                     f"from the source's: {shown}", t.copies.ids)
    return Check("copied vectors equal", PASS, f"{t.what()}: {t.copies_compared:,} copied vectors ({names}) equal "
                 "to the source's")
