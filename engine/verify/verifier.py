"""Verification before cutover: is the target complete and right, is its index healthy, and how do the new vectors
search compared with the old ones.

Integrity (pass/fail):
- count parity per shard: each shard's id range [lo, hi) of the job's plan is read id-only (no payload, no vectors)
  from source and target and merged like two sorted sets, shards in parallel, so memory stays flat and every missing
  or extra id is counted (and the first few named) whatever the collection size;
- on a random sample of source points (a sample at least as large as the collection reads every point): the id is
  in the target, the payload is identical (canonical-JSON SHA-256), the new vector exists, is finite, not zero and
  of the model's dimension, and equals the model's embedding of the point's text again (cosine >= verify.min_cosine);
  points without usable text must carry no new vector and be listed in the job's dead letters.
Index health (pass/fail): recall@k of the default (HNSW) search against `exact=true` search on the new vector, for
sampled points as queries.
Quality (information): label-free top-k neighbour overlap old vs new (stored old vectors against the source, new
vectors against the target) and self-retrieval@1 of a query made from each sampled text; with labelled queries
(`--eval`), recall@k, nDCG@10 and MRR of the new vectors and, with `verify.old_model`, of the old ones. Only
`verify.max_ndcg_drop`, when set, turns the labelled comparison into a gate.

The latest result is stored in the job's checkpoint (`state.info["verify"]`), which `swap` and `cleanup` read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from qdrant_client import grpc as pb

from engine.qdrant.points import stored_vector
from engine.qdrant.scan import range_ids
from engine.flow.state import JobState
from engine.flow.text import TextSource
from engine.migration.target import metadata_tag
from engine.errors import ConfigError, PreconditionError
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.values import payload_digest, payload_to_python

log = logging.getLogger(__name__)

POINT_BATCH = 256  # sampled points fetched (and re-embedded) per request
COUNT_STREAMS = 4  # shards counted in parallel; 2-4 streams saturate a server (Qdrant bulk guidance)
SAMPLE_CHUNK = 100_000  # ids per random-sample request: ~2 MB replies, far below the 64 MiB channel limit
SHOW_IDS = 20  # ids named per problem in messages and reports
HISTORY = 20  # verify results kept in the checkpoint's history
NDCG_AT = 10
SPAN_WORDS = 32  # self-retrieval query: the first half of a text's words, at most this many
QUERY_SEED = 20240601  # the reservoir of query points is reproducible for the same sample

PASS, FAIL, INFO, SKIPPED = "pass", "fail", "info", "skipped"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | info | skipped
    detail: str
    ids: list = field(default_factory=list)  # the first offending ids, for the report

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class ShardCount:
    shard: int
    lo: Any
    hi: Any
    source: int = 0
    target: int = 0
    expected_absent: int = 0  # source points without usable text that an unnamed-vector target cannot hold
    committed: int | None = None  # written + skipped as the run's checkpoint recorded it
    missing: int = 0
    extra: int = 0
    missing_ids: list = field(default_factory=list)
    extra_ids: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0

    def describe_range(self) -> str:
        lo = "start" if self.lo is None else repr(self.lo)
        hi = "end" if self.hi is None else repr(self.hi)
        return f"[{lo}, {hi})"


@dataclass
class VerifyResult:
    job_id: str
    passed: bool
    at: float
    source: str
    target: str
    checked_points: int
    full: bool  # every source point was checked, not a sample
    checks: list[Check]
    shards: list[ShardCount]
    index: dict[str, Any]
    quality: dict[str, Any]
    dead_letters: dict[str, Any]
    provenance: dict[str, Any]
    elapsed_s: float
    report: str | None = None

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    def summary(self) -> dict[str, Any]:
        """What the checkpoint keeps: enough for the gate, `status` and a report written elsewhere."""
        return {
            "passed": self.passed, "at": self.at, "checked_points": self.checked_points, "full": self.full,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
            "failed": [c.name for c in self.failures()], "report": self.report,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def lines(self) -> list[str]:
        """One line per check, for the terminal."""
        mark = {PASS: "PASS", FAIL: "FAIL", INFO: "info", SKIPPED: "skip"}
        return [f"[{mark.get(c.status, c.status)}] {c.name}: {c.detail}" for c in self.checks]


# --- small pure helpers ---------------------------------------------------------------------------------------------

def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k] != b[k])


def vector_problem(vec: np.ndarray | None, dim: int) -> str | None:
    if vec is None:
        return "no new vector"
    if len(vec) != dim:
        return f"{len(vec)}-d, the model makes {dim}-d"
    if not np.all(np.isfinite(vec)):
        return "NaN or infinite values"
    if not np.any(vec):
        return "zero vector"
    return None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30))


def span_query(text: str) -> str:
    """A query made from a text: its first half (at most SPAN_WORDS words)."""
    words = text.split()
    return " ".join(words[: max(1, min(SPAN_WORDS, len(words) // 2))])


def recall_at(ranked: Sequence, relevant: set, k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def ndcg_at(ranked: Sequence, relevant: set, k: int = NDCG_AT) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(ranked[:k]) if pid in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def reciprocal_rank(ranked: Sequence, relevant: set) -> float:
    for i, pid in enumerate(ranked):
        if pid in relevant:
            return 1.0 / (i + 1)
    return 0.0


def _show(ids: Sequence) -> str:
    shown = ", ".join(repr(i) for i in ids[:5])
    return shown + (", ..." if len(ids) > 5 else "")


def parse_point_id(value: Any, where: str) -> wire.PointIdValue:
    """An id from an eval file: an unsigned integer, a string of digits, or a UUID in any usual spelling."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: id {value!r} is a boolean; ids are unsigned integers or UUIDs")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: id {value} is negative; Qdrant ids are unsigned integers or UUIDs")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
    raise ConfigError(f"{where}: id {value!r} is neither an unsigned integer nor a UUID; fix the eval file")


@dataclass
class EvalQuery:
    query: str
    relevant: set


def load_eval(path: str | os.PathLike) -> list[EvalQuery]:
    """Labelled queries: JSONL (one {"query": ..., "relevant_ids": [...]} per line) or Parquet with those columns."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"eval file {str(p)!r} does not exist; pass a JSONL or Parquet file of "
                          "{query, relevant_ids} rows")
    rows: list[tuple[str, Any]] = []
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
            raise ConfigError(f"eval file {str(p)!r} is not readable Parquet ({exc}); write it with pyarrow") from None
        missing = {"query", "relevant_ids"} - set(table.column_names)
        if missing:
            raise ConfigError(f"eval file {str(p)!r} lacks column(s) {', '.join(sorted(missing))}; it needs "
                              "query (string) and relevant_ids (list of ids)")
        rows = [(f"{p.name} row {i + 1}", r) for i, r in enumerate(table.select(["query", "relevant_ids"]).to_pylist())]
    else:
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{p.name} line {n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p.name} line {n} is not JSON ({exc.msg}); write one JSON object per "
                                      "line (JSONL), or use a .parquet file") from None
    out: list[EvalQuery] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{where} is not an object; write {{\"query\": ..., \"relevant_ids\": [...]}}")
        query, ids = row.get("query"), row.get("relevant_ids")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"{where}: query is missing or empty; give the query text")
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ConfigError(f"{where}: relevant_ids must be a non-empty list of point ids")
        out.append(EvalQuery(query, {parse_point_id(i, where) for i in ids}))
    if not out:
        raise ConfigError(f"eval file {str(p)!r} holds no queries")
    return out


def dead_letter_summary(path: str | None) -> tuple[dict[str, Any], set[str] | None]:
    """(count, reasons, first rows) of a job's dead letters (a Parquet dataset: a folder of per-shard files, or
    one file), and its ids (None when they are not reachable from here)."""
    out: dict[str, Any] = {"path": path, "count": 0, "reasons": {}, "sample": [], "available": True}
    if not path:
        return out, set()
    import pyarrow.dataset as ds
    from pyarrow import fs

    try:
        filesystem, where = fs.FileSystem.from_uri(path) if "://" in path else (fs.LocalFileSystem(), path)
        if filesystem.get_file_info(where).type == fs.FileType.NotFound:
            raise FileNotFoundError(path)
        table = ds.dataset(where, filesystem=filesystem, format="parquet").to_table(columns=["id", "shard", "reason"])
    except (OSError, ValueError):
        out["available"] = False
        return out, None
    reasons: dict[str, int] = {}
    for reason in table.column("reason").to_pylist():
        for part in str(reason).split("; "):
            reasons[part] = reasons.get(part, 0) + 1
    out.update(count=table.num_rows, reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
               sample=table.slice(0, SHOW_IDS).to_pylist())
    return out, set(table.column("id").to_pylist())


# --- count parity -------------------------------------------------------------------------------------------------

def count_shard(client: QdrantGrpc, source: str, target: str, sc: ShardCount,
                absent_ok: Callable[[list], set] | None = None) -> ShardCount:
    """Merge the source and target ids of one shard; `absent_ok(ids)` returns the missing ids that are allowed to be
    missing (points without text, which an unnamed-vector target cannot hold)."""
    src_it = range_ids(client, source, sc.lo, sc.hi)
    tgt_it = range_ids(client, target, sc.lo, sc.hi)
    pending: list = []

    def settle() -> None:
        allowed = absent_ok(pending) if absent_ok is not None and pending else set()
        for pid in pending:
            if pid in allowed:
                sc.expected_absent += 1
            else:
                sc.missing += 1
                if len(sc.missing_ids) < SHOW_IDS:
                    sc.missing_ids.append(pid)
        pending.clear()

    s, t = next(src_it, None), next(tgt_it, None)
    while s is not None or t is not None:
        sk = wire.id_key(s) if s is not None else None
        tk = wire.id_key(t) if t is not None else None
        if t is None or (s is not None and sk < tk):
            sc.source += 1
            pending.append(s)
            if len(pending) >= POINT_BATCH:
                settle()
            s = next(src_it, None)
        elif s is None or tk < sk:
            sc.target += 1
            sc.extra += 1
            if len(sc.extra_ids) < SHOW_IDS:
                sc.extra_ids.append(t)
            t = next(tgt_it, None)
        else:
            sc.source += 1
            sc.target += 1
            s, t = next(src_it, None), next(tgt_it, None)
    settle()
    return sc


# --- the verifier -------------------------------------------------------------------------------------------------

@dataclass
class _QueryPoint:
    pid: Any
    text: str | None
    new: np.ndarray
    old: np.ndarray | None


class Verifier:
    """All checks of one verify against one client; `run()` returns the result without storing it."""

    def __init__(self, client: QdrantGrpc, *, source: str, target: str, source_vector: str,
                 target_vector: str | None, text: TextSource, embedder, state: JobState, sample: int,
                 min_cosine: float, min_hnsw_recall: float, k: int, queries: int, old_embedder=None,
                 eval_queries: list[EvalQuery] | None = None, max_ndcg_drop: float | None = None,
                 dead_letter_path: str | None = None, dim: int | None = None,
                 not_from_text: str | None = None) -> None:
        """`target_vector` None: the job wrote no dense vector (sparse only), so the vector checks are skipped.
        `embedder` None: the new vectors are not an embedding of the text (shortcuts), `not_from_text` says why;
        they are checked for validity (`dim`) but not recomputed. `text`: the job's text source."""
        self.client = client
        self.source, self.target = source, target
        self.source_vector, self.target_vector = source_vector, target_vector
        self.text = text
        self.embedder = embedder
        self.dim = embedder.dim if embedder is not None else dim
        self.not_from_text = not_from_text
        self.old_embedder = old_embedder
        self.state = state
        self.sample = sample
        self.min_cosine, self.min_hnsw_recall = min_cosine, min_hnsw_recall
        self.k, self.queries = k, queries
        self.eval_queries = eval_queries
        self.max_ndcg_drop = max_ndcg_drop
        self.dead_letter_path = dead_letter_path
        self.target_info: pb.CollectionInfo | None = None
        self.unnamed_target = False
        self._dead_ids: set[str] | None = None

    # -- setup
    def _load_dead_letters(self) -> dict[str, Any]:
        out, self._dead_ids = dead_letter_summary(self.dead_letter_path)
        return out

    def _absent_ok(self, ids: list) -> set:
        """Missing ids whose source point has no usable text: an unnamed-vector target cannot hold them."""
        points = self.client.get(self.source, ids, with_payload=True)
        texts = self._texts(points)
        return {pid for pid, text in texts.items() if text is None}

    def _texts(self, points: Sequence[pb.RetrievedPoint]) -> dict[Any, str | None]:
        """Each point's text (None when it has no usable text), from the job's text source."""
        return {wire.id_value(p.id): text for p, (text, _reason) in zip(points, self.text.texts(points))}

    # -- integrity
    def count_parity(self) -> tuple[Check, list[ShardCount]]:
        shards = [ShardCount(shard=s.shard, lo=s.lo, hi=s.hi, committed=s.written + s.skipped)
                  for s in self.state.shards] or [ShardCount(shard=0, lo=None, hi=None)]
        absent_ok = self._absent_ok if self.unnamed_target else None
        endpoint, policy = self.client.endpoint, self.client.policy

        def one(sc: ShardCount) -> ShardCount:
            t0 = time.monotonic()
            with QdrantGrpc(endpoint, policy) as own:  # a channel per stream: shards are read in parallel
                count_shard(own, self.source, self.target, sc, absent_ok)
            took = time.monotonic() - t0
            log.info("counted shard %d %s: source %d, target %d, missing %d, extra %d (%.0f ids/s)", sc.shard,
                     sc.describe_range(), sc.source, sc.target, sc.missing, sc.extra,
                     (sc.source + sc.target) / max(took, 1e-6))
            return sc

        with ThreadPoolExecutor(max_workers=max(1, min(COUNT_STREAMS, len(shards)))) as pool:
            shards = list(pool.map(one, shards))
        bad = [s for s in shards if not s.ok]
        src = sum(s.source for s in shards)
        tgt = sum(s.target for s in shards)
        absent = sum(s.expected_absent for s in shards)
        if not bad:
            if absent:
                detail = (f"{len(shards)} shards, source {src:,} = target {tgt:,} + {absent:,} dead letters without "
                          "text (an unnamed-vector target cannot hold a point without a vector)")
            else:
                detail = f"{len(shards)} shards, source {src:,} = target {tgt:,} points"
            return Check("count parity", PASS, detail), shards
        parts = []
        ids: list = []
        for s in bad[:5]:
            what = []
            if s.missing:
                what.append(f"{s.missing} missing from the target ({_show(s.missing_ids)})")
            if s.extra:
                what.append(f"{s.extra} in the target only ({_show(s.extra_ids)})")
            parts.append(f"shard {s.shard} {s.describe_range()}: source {s.source}, target {s.target}, "
                         + " and ".join(what))
            ids.extend(s.missing_ids + s.extra_ids)
        more = f"; and {len(bad) - 5} more shards" if len(bad) > 5 else ""
        return Check("count parity", FAIL, "; ".join(parts) + more, ids[:SHOW_IDS]), shards

    def _sample_ids(self, n: int) -> list:
        """n distinct random source ids, asked for in chunks so no reply outgrows a gRPC message."""
        rng = random.Random(QUERY_SEED)
        ids: dict = {}
        stale = 0
        while len(ids) < n and stale < 3:
            want = min(SAMPLE_CHUNK, n - len(ids))
            got = self.client.sample_ids(self.source, want)
            if len(got) > want:  # an old server without random sampling returned every id, in id order
                got = rng.sample(got, want)
            before = len(ids)
            ids.update(dict.fromkeys(got))
            stale = stale + 1 if len(ids) == before else 0
        return list(ids)[:n]

    def _source_batches(self, total: int) -> tuple[Iterator[list[pb.RetrievedPoint]], bool]:
        sel: bool | pb.WithVectorsSelector = True
        if self.source_vector:
            sel = pb.WithVectorsSelector(include=pb.VectorsSelector(names=[self.source_vector]))
        if self.sample >= total:
            def scroll_all() -> Iterator[list[pb.RetrievedPoint]]:
                offset = None
                while True:
                    points, offset = self.client.scroll(self.source, offset, POINT_BATCH, with_payload=True,
                                                        with_vectors=sel)
                    if points:
                        yield points
                    if offset is None:
                        return
            return scroll_all(), True
        ids = self._sample_ids(self.sample)
        vectors = [self.source_vector] if self.source_vector else True

        def by_ids() -> Iterator[list[pb.RetrievedPoint]]:
            for i in range(0, len(ids), POINT_BATCH):
                yield self.client.get(self.source, ids[i:i + POINT_BATCH], with_payload=True, with_vectors=vectors)
        return by_ids(), False

    def sampled_checks(self, total: int) -> tuple[list[Check], int, bool, list[_QueryPoint]]:
        batches, full = self._source_batches(total)
        target_vectors: bool | list[str] = [self.target_vector] if self.target_vector else True
        if self.target_vector is None:
            target_vectors = False
        rng = random.Random(QUERY_SEED)
        reservoir: list[_QueryPoint] = []
        seen_valid = 0
        checked = 0
        missing: list = []
        payload_bad: list[tuple[Any, list[str]]] = []
        vec_bad: list[tuple[Any, str]] = []
        unexpected: list = []
        recompute_bad: list[tuple[Any, float]] = []
        not_listed: list = []
        no_text = 0
        min_cos = 1.0
        recomputed = 0
        without_vector = 0

        def keep(q: _QueryPoint) -> None:
            # Reservoir sampling: the query points are a uniform sample of the valid ones.
            nonlocal seen_valid
            seen_valid += 1
            if len(reservoir) < self.queries:
                reservoir.append(q)
            else:
                j = rng.randrange(seen_valid)
                if j < self.queries:
                    reservoir[j] = q

        for batch in batches:
            ids = [wire.id_value(p.id) for p in batch]
            got = {wire.id_value(p.id): p for p in self.client.get(self.target, ids, with_payload=True,
                                                                   with_vectors=target_vectors)}
            to_embed: list[tuple[Any, str, np.ndarray, np.ndarray | None]] = []
            texts = self._texts(batch)
            for sp in batch:
                pid = wire.id_value(sp.id)
                checked += 1
                text = texts.get(pid)
                if text is None:
                    no_text += 1
                    if self.embedder is not None and self._dead_ids is not None and str(pid) not in self._dead_ids:
                        not_listed.append(pid)
                tp = got.get(pid)
                if tp is None:
                    if not (text is None and self.unnamed_target):
                        missing.append(pid)
                    continue
                src_payload, tgt_payload = payload_to_python(sp.payload), payload_to_python(tp.payload)
                if payload_digest(src_payload) != payload_digest(tgt_payload):
                    payload_bad.append((pid, differing_keys(src_payload, tgt_payload)))
                if self.target_vector is None:
                    continue
                vec = stored_vector(tp, self.target_vector)
                if self.embedder is None:  # vectors not made from the text: validity only
                    if vec is None:
                        without_vector += 1
                        continue
                    problem = vector_problem(vec, self.dim) if self.dim else None
                    if problem is not None:
                        vec_bad.append((pid, problem))
                    else:
                        keep(_QueryPoint(pid, text, vec, stored_vector(sp, self.source_vector)))
                    continue
                if text is None:
                    if vec is not None:
                        unexpected.append(pid)
                    continue
                problem = vector_problem(vec, self.dim)
                if problem is not None:
                    vec_bad.append((pid, problem))
                    continue
                to_embed.append((pid, text, vec, stored_vector(sp, self.source_vector)))
            if to_embed:
                want = self.embedder.embed([t for _, t, _, _ in to_embed])
                for (pid, text, vec, old), w in zip(to_embed, want):
                    cos = cosine(vec, w)
                    recomputed += 1
                    min_cos = min(min_cos, cos)
                    if cos < self.min_cosine:
                        recompute_bad.append((pid, cos))
                        continue
                    keep(_QueryPoint(pid, text, vec, old))
        what = "every point" if full else f"a random sample of {checked:,} points"
        checks = [
            Check("sampled ids present", FAIL if missing else PASS,
                  f"{len(missing)} of {checked:,} sampled ids are missing from the target: {_show(missing)}"
                  if missing else f"{what}: all present in the target", missing[:SHOW_IDS]),
            Check("payload equality", FAIL if payload_bad else PASS,
                  f"{len(payload_bad)} of {checked:,} payloads differ: "
                  + "; ".join(f"id {pid!r} (keys {', '.join(keys) or '?'})" for pid, keys in payload_bad[:5])
                  if payload_bad else f"{what}: payload SHA-256 equal", [pid for pid, _ in payload_bad[:SHOW_IDS]]),
        ]
        vec_fail = vec_bad + [(pid, "has a new vector but no usable text") for pid in unexpected]
        if self.target_vector is None:
            checks.append(Check("vectors valid", SKIPPED, "this job wrote no dense vector"))
        else:
            carry = (f"{no_text} without text carry none" if self.embedder is not None
                     else f"{without_vector} carry no new vector")
            checks.append(Check(
                "vectors valid", FAIL if vec_fail else PASS,
                f"{len(vec_fail)} bad vectors: " + "; ".join(f"id {pid!r} {why}" for pid, why in vec_fail[:5])
                if vec_fail else f"{what}: finite, non-zero, {self.dim}-d ({carry})",
                [pid for pid, _ in vec_fail[:SHOW_IDS]]))
        if self.embedder is None or self.target_vector is None:
            checks.append(Check("vectors recomputed", SKIPPED,
                                self.not_from_text or "this job wrote no dense vector to recompute"))
        elif recomputed == 0:
            checks.append(Check("vectors recomputed", SKIPPED, "no sampled point had text and a valid vector"))
        else:
            checks.append(Check(
                "vectors recomputed", FAIL if recompute_bad else PASS,
                f"{len(recompute_bad)} of {recomputed:,} vectors differ from the model's embedding of their text "
                f"(cosine < {self.min_cosine}): "
                + "; ".join(f"id {pid!r} cosine {c:.4f}" for pid, c in recompute_bad[:5])
                if recompute_bad else f"{recomputed:,} re-embedded, min cosine {min_cos:.6f} >= {self.min_cosine}",
                [pid for pid, _ in recompute_bad[:SHOW_IDS]]))
        if self.embedder is None:
            checks.append(Check("dead letters listed", SKIPPED, "the new vectors are not made from the text"))
        elif self._dead_ids is None:
            checks.append(Check("dead letters listed", SKIPPED,
                                f"dead-letter file {self.dead_letter_path} is not on this machine; "
                                f"{no_text} sampled points had no usable text"))
        else:
            checks.append(Check(
                "dead letters listed", FAIL if not_listed else PASS,
                f"{len(not_listed)} sampled points without usable text are not in the dead letters: "
                f"{_show(not_listed)}" if not_listed
                else (f"all {no_text} sampled points without usable text are listed" if no_text
                      else "no sampled point lacked usable text"), not_listed[:SHOW_IDS]))
        return checks, checked, full, reservoir

    # -- index health
    def hnsw_recall(self, points: list[_QueryPoint]) -> tuple[Check, dict[str, Any]]:
        info = self.target_info
        indexed = int(info.indexed_vectors_count) if info is not None else None
        count = int(info.points_count) if info is not None else None
        out: dict[str, Any] = {"k": self.k, "queries": len(points), "indexed_vectors": indexed, "points": count}
        if not points:
            return Check("HNSW recall", SKIPPED, "no valid sampled vector to query with"), out
        using = self.target_vector or None
        recalls = []
        for q in points:
            approx = [wire.id_value(h.id) for h in self.client.search(self.target, q.new, using=using, limit=self.k,
                                                                       with_payload=False)]
            exact = [wire.id_value(h.id) for h in self.client.search(self.target, q.new, using=using, limit=self.k,
                                                                      exact=True, with_payload=False)]
            recalls.append(len(set(approx) & set(exact)) / max(1, len(exact)))
        recall = float(np.mean(recalls))
        out.update(recall=recall, min_query_recall=float(np.min(recalls)))
        note = ""
        if indexed == 0:
            note = (" (the target has no HNSW index yet, indexed_vectors_count = 0, as on the embedded endpoint or "
                    "below the indexing threshold: every search is exact, so this is 1.0 by construction)")
            out["note"] = note.strip(" ()")
        status = PASS if recall >= self.min_hnsw_recall else FAIL
        return Check("HNSW recall", status, f"recall@{self.k} of HNSW vs exact search over {len(points)} queries "
                     f"{recall:.3f} ({'>=' if status == PASS else '<'} {self.min_hnsw_recall}){note}"), out

    # -- quality
    def _ranked(self, collection: str, vector: np.ndarray, using: str, limit: int) -> list[tuple[Any, float]]:
        hits = self.client.search(collection, vector, using=using or None, limit=limit, exact=True,
                                  with_payload=False)
        return [(wire.id_value(h.id), float(h.score)) for h in hits]

    def label_free(self, points: list[_QueryPoint]) -> dict[str, Any]:
        k = self.k
        out: dict[str, Any] = {"k": k, "queries": len(points)}
        with_old = [q for q in points if q.old is not None]
        if with_old:
            overlaps, top1, old_scores, new_scores = [], [], [], []
            for q in with_old:
                old = [(i, s) for i, s in self._ranked(self.source, q.old, self.source_vector, k + 1) if i != q.pid][:k]
                new = [(i, s) for i, s in self._ranked(self.target, q.new, self.target_vector, k + 1)
                       if i != q.pid][:k]
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
            out["note"] = (f"no old vectors under {self.source_vector or '(unnamed)'!r} in {self.source!r}: set "
                           "source.vector_name to compare neighbours old vs new")
        texted = [q for q in points if q.text]
        spans = [span_query(q.text) for q in texted]  # type: ignore[arg-type]
        if spans and self.embedder is not None:
            new_q = self.embedder.embed(spans)
            hits = [self._ranked(self.target, v, self.target_vector or "", 1) for v in new_q]
            out["self_retrieval_new"] = float(np.mean([bool(h) and h[0][0] == q.pid for h, q in zip(hits, texted)]))
        if spans and self.old_embedder is not None:
            old_q = self.old_embedder.embed(spans)
            hits = [self._ranked(self.source, v, self.source_vector, 1) for v in old_q]
            out["self_retrieval_old"] = float(np.mean([bool(h) and h[0][0] == q.pid for h, q in zip(hits, texted)]))
        return out

    def labelled(self) -> dict[str, Any] | None:
        new_side = self.embedder is not None and self.target_vector is not None
        if not self.eval_queries or not (new_side or self.old_embedder is not None):
            return None
        top = max(self.k, NDCG_AT)
        texts = [q.query for q in self.eval_queries]
        out: dict[str, Any] = {"queries": len(texts), "k": self.k, "ndcg_at": NDCG_AT}

        def score(vectors: np.ndarray, collection: str, using: str) -> dict[str, float]:
            r, n, m = [], [], []
            for q, v in zip(self.eval_queries, vectors):
                ranked = [i for i, _ in self._ranked(collection, v, using, top)]
                r.append(recall_at(ranked, q.relevant, self.k))
                n.append(ndcg_at(ranked, q.relevant, NDCG_AT))
                m.append(reciprocal_rank(ranked, q.relevant))
            return {"recall": float(np.mean(r)), "ndcg": float(np.mean(n)), "mrr": float(np.mean(m))}

        if new_side:
            out["new"] = score(self.embedder.embed(texts), self.target, self.target_vector or "")
        else:
            out["note"] = "the new vectors are not made from text, so queries cannot be embedded for them"
        if self.old_embedder is not None:
            out["old"] = score(self.old_embedder.embed(texts), self.source, self.source_vector)
        return out

    def labelled_check(self, lab: dict[str, Any] | None) -> Check | None:
        if lab is None:
            return None
        new, old = lab.get("new"), lab.get("old")
        sides = [(name, m) for name, m in (("new", new), ("old", old)) if m is not None]
        text = f"{lab['queries']} labelled queries: " + "; ".join(
            f"{name} recall@{self.k} {m['recall']:.3f}, nDCG@{NDCG_AT} {m['ndcg']:.3f}, MRR {m['mrr']:.3f}"
            for name, m in sides)
        if self.max_ndcg_drop is None or old is None or new is None:
            return Check("labelled quality", INFO, text)
        floor = old["ndcg"] - self.max_ndcg_drop
        ok = new["ndcg"] >= floor
        return Check("labelled quality", PASS if ok else FAIL,
                     text + f"; new nDCG {'>=' if ok else '<'} old - {self.max_ndcg_drop} = {floor:.3f}")

    def provenance(self) -> tuple[Check, dict[str, Any]]:
        tag = metadata_tag(self.target_info)
        model = self.state.model
        keys = ("name", "revision", "dim", "pooling", "normalize", "fingerprint")
        if isinstance(tag, dict):
            m = tag.get("model") or {}
            prov = {"where": "target collection metadata", "job_id": tag.get("job_id"),
                    **{k: m.get(k) for k in keys}}
        else:
            prov = {"where": "checkpoint (the server keeps no collection metadata before 1.16)",
                    "job_id": self.state.job_id, **{k: model.get(k) for k in keys}}
        detail = (f"{prov['name']} rev {prov['revision'] or '-'}, {prov['dim']}-d, pooling {prov['pooling']}, "
                  f"job {prov['job_id']} (in the {prov['where']})")
        return Check("provenance", INFO, detail), prov

    def run(self) -> tuple[list[Check], dict[str, Any]]:
        t0 = time.monotonic()
        self.target_info = self.client.collection_info(self.target)
        if self.target_info is None:
            raise PreconditionError(f"target collection {self.target!r} does not exist; run the job first")
        vc = self.target_info.config.params.vectors_config
        self.unnamed_target = vc.HasField("params") and self.target_vector == ""
        dead = self._load_dead_letters()
        total = self.client.count(self.source, exact=True)
        count_check, shards = self.count_parity()
        sample_checks, checked, full, qpoints = self.sampled_checks(total)
        hnsw_check, index = self.hnsw_recall(qpoints)
        quality = {"label_free": self.label_free(qpoints)}
        lab = self.labelled()
        if lab is not None:
            quality["labelled"] = lab
        prov_check, prov = self.provenance()
        checks = [count_check, *sample_checks, hnsw_check]
        lab_check = self.labelled_check(lab)
        if lab_check is not None:
            checks.append(lab_check)
        lf = quality["label_free"]
        if "topk_overlap" in lf:
            checks.append(Check(
                "old vs new neighbours", INFO,
                f"top-{self.k} overlap {lf['topk_overlap']:.2f}, top-1 match {lf['top1_match']:.2f} over "
                f"{lf['compared']} queries (information: a new model is expected to differ; Qdrant's spot-check "
                "figures of 0.7 / 0.8 apply to the same model)"))
        if "self_retrieval_new" in lf:
            old_part = f", old {lf['self_retrieval_old']:.2f}" if "self_retrieval_old" in lf else ""
            checks.append(Check("self-retrieval@1", INFO,
                                f"a query made of the first half of a sampled text finds its point first: new "
                                f"{lf['self_retrieval_new']:.2f}{old_part} over {lf['queries']} queries"))
        checks.append(Check("dead letters", INFO,
                            f"{dead['count']:,} points listed in {dead['path']}" if dead["path"] and dead["available"]
                            else ("none" if not dead["path"] else f"{dead['path']} is not on this machine")))
        checks.append(prov_check)
        extra = {"shards": shards, "index": index, "quality": quality, "dead_letters": dead, "provenance": prov,
                 "checked": checked, "full": full, "elapsed_s": time.monotonic() - t0}
        return checks, extra
