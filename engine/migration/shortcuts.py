"""New vectors without running the model over the whole collection (the guide's "Can I avoid re-embedding?"):

- Matryoshka truncation: keep the first `dim` dimensions of the stored vectors and renormalise;
- a linear map old -> new, learned from a sample embedded with the new model (least squares with a bias, or
  orthogonal Procrustes), then applied to every stored vector on the CPU workers.

Both lose some recall; `measure` reports recall@10 on a held-out part of the sample so the user can decide whether
that loss is acceptable before spending the GPU days a full re-embed costs at 100M+ points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

from engine.embed.base import truncate_and_normalize
from engine.errors import PreconditionError
from engine.flow.text import TextSource
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.points import dense_row, stored_vectors
from engine.qdrant.scan import sample_distinct
from engine.qdrant.strict import StrictMode
from engine.tunables import SAMPLE_CHUNK

log = logging.getLogger(__name__)

RECALL_K = 10
SEED = 0  # the held-out split is deterministic, so a re-run reports the same figure


def recall_at_k(truth_q: np.ndarray, truth_c: np.ndarray, test_c: np.ndarray, k: int = RECALL_K) -> float:
    """Mean overlap of the top-k neighbours of each query (itself excluded) among the truth corpus and among the
    test corpus. Queries and corpora are row-aligned (query i is corpus point i); cosine on unit rows."""
    n = truth_c.shape[0]
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    hits = 0
    for i in range(truth_q.shape[0]):
        s_true = truth_c @ truth_q[i]
        s_test = test_c @ truth_q[i]
        s_true[i] = s_test[i] = -np.inf
        top_true = np.argpartition(-s_true, k - 1)[:k]
        top_test = np.argpartition(-s_test, k - 1)[:k]
        hits += len(set(top_true.tolist()) & set(top_test.tolist()))
    return hits / (k * truth_q.shape[0])


def _unit(x: np.ndarray) -> np.ndarray:
    return truncate_and_normalize(x, None, True)


def fit_map(x: np.ndarray, y: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray | None]:
    """W (d_old x d_new) and bias such that x @ W + bias ~ y."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if method == "procrustes":
        # Orthogonal Procrustes: W = U V^T from the SVD of x^T y (a partial isometry when dimensions differ).
        u, _, vt = np.linalg.svd(x64.T @ y64, full_matrices=False)
        return (u @ vt).astype(np.float32), None
    aug = np.hstack([x64, np.ones((x64.shape[0], 1))])
    sol, *_ = np.linalg.lstsq(aug, y64, rcond=None)
    return sol[:-1].astype(np.float32), sol[-1].astype(np.float32)


def apply_map(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x.astype(np.float32) @ w
    return y + b if b is not None else y


def _sample(cfg, client: QdrantGrpc, n: int, text: TextSource | None) -> tuple[list, np.ndarray, list[str]]:
    """Up to n random points with a stored old vector (and, with a text source, usable text): ids, old vectors,
    texts."""
    src, name = cfg.source.collection, cfg.source.vector_name or ""
    # In chunks inside the source's query limit: a strict-mode source refuses one request for the whole sample.
    chunk = StrictMode.from_info(client.collection_info(src)).sample_limit(SAMPLE_CHUNK)
    ids = sample_distinct(client, src, n, chunk)
    ids = sorted(set(ids), key=wire.id_key)[:n]
    points = []
    for i in range(0, len(ids), 256):
        points.extend(client.get(src, ids[i:i + 256], with_payload=text is not None and text.needs_payload,
                                 with_vectors=True if name == "" else [name]))
    texts_by_id: dict = {}
    if text is not None:
        texts_by_id = {wire.id_value(p.id): t for p, (t, _) in zip(points, text.texts(points))}
    with_text = text is not None
    out_ids, rows, texts = [], [], []
    for p in points:
        pid = wire.id_value(p.id)
        vec = stored_vectors(p).get(name)
        row = dense_row(vec) if vec is not None else None
        found = texts_by_id.get(pid) if with_text else ""
        if row is None or found is None:
            continue
        out_ids.append(pid)
        rows.append(row)
        texts.append(found)
    if not rows:
        raise PreconditionError(
            f"no sampled point of {src!r} has both a stored {name or '(unnamed)'!r} vector"
            f"{' and usable text' if with_text else ''}; a shortcut needs them"
        )
    return out_ids, np.stack(rows), texts


def learn_linear_map(cfg, client: QdrantGrpc, text: TextSource,
                     embedder=None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Sample, embed with the new model, fit on the training part, measure on the held-out part."""
    sc = cfg.shortcut
    _, old, texts = _sample(cfg, client, sc.sample, text)
    if embedder is None:
        from engine.embed import build_embedder

        embedder = build_embedder(cfg.model_spec())
    new = embedder.embed(texts)
    n = old.shape[0]
    n_hold = max(2, int(round(n * sc.holdout)))
    if n - n_hold < 2:
        raise PreconditionError(f"only {n} usable sampled points; raise shortcut.sample (or lower shortcut.holdout)")
    order = np.random.default_rng(SEED).permutation(n)
    train, hold = order[n_hold:], order[:n_hold]
    w, b = fit_map(old[train], new[train], sc.method)
    mapped = _unit(apply_map(old[hold], w, b)) if sc.normalize else apply_map(old[hold], w, b)
    truth = _unit(new[hold])
    report = {
        "kind": "linear_map", "method": sc.method, "sample": int(n), "train": int(len(train)),
        "holdout": int(n_hold), "old_dim": int(old.shape[1]), "new_dim": int(new.shape[1]),
        # new-model queries against mapped stored vectors vs against true new vectors: what search will see
        "recall_at_10": round(recall_at_k(truth, truth, _unit(mapped)), 4),
        "mean_cosine": round(float(np.mean(np.sum(_unit(mapped) * truth, axis=1))), 4),
        "train_underdetermined": bool(len(train) <= old.shape[1]),
    }
    if report["train_underdetermined"]:
        log.warning("linear map fitted on %d points for %d dimensions: underdetermined, raise shortcut.sample",
                    len(train), old.shape[1])
    log.info("linear map %s: recall@10 %.3f, mean cosine %.3f on %d held-out points", sc.method,
             report["recall_at_10"], report["mean_cosine"], n_hold)
    return w, b, report


def measure_matryoshka(cfg, client: QdrantGrpc) -> dict:
    """recall@10 of truncated stored vectors against the full stored vectors, on a sample (no model needed)."""
    _, old, _ = _sample(cfg, client, min(cfg.shortcut.sample, 2000), None)
    full = _unit(old)
    cut = truncate_and_normalize(old, cfg.shortcut.dim, True)
    # Queries truncated the same way: a Matryoshka model asked for `dim` dimensions gives the prefix.
    n = full.shape[0]
    k = min(RECALL_K, n - 1)
    overlap = 0
    for i in range(n):
        a, c = full @ full[i], cut @ cut[i]
        a[i] = c[i] = -np.inf
        overlap += len(set(np.argpartition(-a, k - 1)[:k].tolist()) & set(np.argpartition(-c, k - 1)[:k].tolist()))
    return {"kind": "matryoshka", "dim": cfg.shortcut.dim, "old_dim": int(old.shape[1]), "sample": int(n),
            "recall_at_10": round(overlap / (k * n), 4) if n > 1 else None}




def _map_key(cfg) -> dict:
    sc = cfg.shortcut
    return {"source": cfg.source.collection, "vector": cfg.source.vector_name or "", "model": cfg.model.name,
            "revision": cfg.model.revision, "matryoshka_dim": cfg.model.matryoshka_dim, "method": sc.method,
            "sample": sc.sample, "holdout": sc.holdout, "normalize": sc.normalize}


def save_map(path: str, w: np.ndarray, b: np.ndarray | None, report: dict, key: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = json.dumps({"key": key, "report": report}, sort_keys=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, matrix=w, bias=b if b is not None else np.zeros(0, np.float32), meta=np.array(meta))
    os.replace(tmp, path)
    return path


def load_map(path: str) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as f:
        w, b, meta = f["matrix"], f["bias"], json.loads(str(f["meta"]))
    return w, (b if b.size else None), meta


def digest(w: np.ndarray, b: np.ndarray | None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(w, dtype="<f4").tobytes())
    if b is not None:
        h.update(np.ascontiguousarray(b, dtype="<f4").tobytes())
    return h.hexdigest()[:16]


def fit_and_save(cfg, client: QdrantGrpc, text: TextSource, map_file: str) -> tuple[str, dict]:
    w, b, report = learn_linear_map(cfg, client, text)
    path = save_map(map_file, w, b, report, _map_key(cfg))
    return path, report


def runtime_spec(cfg, client: QdrantGrpc, schema, text: TextSource, map_file: str) -> dict[str, Any]:
    """The vectorizer's shortcut spec; a linear map is loaded from shortcut.map_file when it was learned for this
    source, vector, model and method, else learned now (and saved, so a resumed job applies the same map)."""
    sc = cfg.shortcut
    if sc.kind == "matryoshka":
        return {"kind": "matryoshka", "dim": sc.dim, "normalize": sc.normalize}
    path = map_file
    loaded = load_map(path)
    if loaded is not None and loaded[2].get("key") != _map_key(cfg):
        if cfg.shortcut.map_file is not None:
            raise PreconditionError(
                f"shortcut.map_file {path} was learned for another source, model or method "
                f"({loaded[2].get('key')}); delete it or point map_file elsewhere to learn a new map"
            )
        loaded = None
    if loaded is None:
        path, report = fit_and_save(cfg, client, text, map_file)
        loaded = load_map(path)
        assert loaded is not None
        log.info("learned the linear map on %d points (recall@10 %.3f held out); saved to %s", report["sample"],
                 report["recall_at_10"], path)
    w, b, meta = loaded
    old_dim = int(schema.dense[cfg.source.vector_name or ""].size)
    if w.shape[0] != old_dim:
        raise PreconditionError(f"the linear map in {path} takes {w.shape[0]}-d vectors but the source's are "
                                f"{old_dim}-d; delete it to learn a new one")
    return {"kind": "linear_map", "matrix": w, "bias": b, "normalize": sc.normalize, "digest": digest(w, b),
            "report": meta.get("report")}
