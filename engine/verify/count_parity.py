"""Count parity per shard: every id of every shard of the job's plan read from source and target and merged like
two sorted sets, so every missing or extra id is counted (and the first few named) whatever the collection size.

Each shard is the plan's id range [lo, hi) — per shard key with custom sharding, and then every read of it carries
`shard_key=` (a keyed read never crosses into another key's shards). Shards run through the context's
`map_shards`: a few threads here, one Ray task per shard on a cluster. A task opens its own client, reads id-only
pages inside the strict-mode query limit, and returns only its `ShardCount` (counts and at most a few ids), so the
driver's memory stays flat in the collection size.

An unnamed-vector target cannot hold a point without a vector, so a source point without usable text is an expected
absence there, not a missing point: the task reads those missing points from the source to tell.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from engine.flow.text import TextSource
from engine.qdrant import wire
from engine.qdrant.scan import ID_PAGE, range_ids
from engine.tunables import POINT_BATCH, SHOW_IDS, SHOW_IN_DETAIL
from engine.verify.check import FAIL, PASS, Check, show
from engine.verify.context import ClientFactory, VerifyContext
from engine.verify.findings import Findings, ShardCount
from engine.verify.reads import Reads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CountJob:
    """What one shard's count needs, picklable so a Ray task can run it: `job(shard_count)` counts that shard."""

    clients: ClientFactory
    source: str
    target: str
    source_page: int = ID_PAGE  # id pages, already inside each collection's strict-mode query limit
    target_page: int = ID_PAGE
    get_batch: int = POINT_BATCH  # source points read to tell expected absences
    text: TextSource | None = None  # set for an unnamed-vector target: points without text may be absent

    def __call__(self, sc: ShardCount) -> ShardCount:
        t0 = time.monotonic()
        with closing(self.clients()) as client:
            count_shard(client, self, sc)
        took = max(time.monotonic() - t0, 1e-6)
        log.info("counted shard %d %s: source %d, target %d, missing %d, extra %d (%.0f ids/s)", sc.shard,
                 sc.describe_range(), sc.source, sc.target, sc.missing, sc.extra, (sc.source + sc.target) / took)
        return sc


def _absent_ok(client: Any, job: CountJob, ids: list, shard_key: Any) -> set:
    """The missing ids whose source point has no usable text."""
    if job.text is None:
        return set()
    out: set = set()
    for i in range(0, len(ids), job.get_batch):
        points = client.get(job.source, ids[i:i + job.get_batch], with_payload=True, shard_key=shard_key)
        for p, (text, _reason) in zip(points, job.text.texts(points)):
            if text is None:
                out.add(wire.id_value(p.id))
    return out


def count_shard(client: Any, job: CountJob, sc: ShardCount) -> ShardCount:
    """Merge the source and target ids of one shard into `sc`."""
    src_it = range_ids(client, job.source, sc.lo, sc.hi, page=job.source_page, shard_key=sc.shard_key)
    tgt_it = range_ids(client, job.target, sc.lo, sc.hi, page=job.target_page, shard_key=sc.shard_key)
    pending: list = []

    def settle() -> None:
        allowed = _absent_ok(client, job, pending, sc.shard_key) if pending else set()
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
        if tk is None or (sk is not None and sk < tk):  # sk / tk are None exactly when s / t are
            sc.source += 1
            pending.append(s)
            if len(pending) >= POINT_BATCH:
                settle()
            s = next(src_it, None)
        elif sk is None or tk < sk:
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


def parity_check(shards: list[ShardCount]) -> Check:
    bad = [s for s in shards if not s.ok]
    src = sum(s.source for s in shards)
    tgt = sum(s.target for s in shards)
    absent = sum(s.expected_absent for s in shards)
    if not bad:
        if absent:
            return Check("count parity", PASS,
                         f"{len(shards)} shards, source {src:,} = target {tgt:,} + {absent:,} dead letters without "
                         "text (an unnamed-vector target cannot hold a point without a vector)")
        return Check("count parity", PASS, f"{len(shards)} shards, source {src:,} = target {tgt:,} points")
    parts = []
    ids: list = []
    for s in bad[:SHOW_IN_DETAIL]:
        what = []
        if s.missing:
            what.append(f"{s.missing} missing from the target ({show(s.missing_ids)})")
        if s.extra:
            what.append(f"{s.extra} in the target only ({show(s.extra_ids)})")
        parts.append(f"shard {s.shard} {s.describe_range()}: source {s.source}, target {s.target}, "
                     + " and ".join(what))
        ids.extend(s.missing_ids + s.extra_ids)
    more = f"; and {len(bad) - SHOW_IN_DETAIL} more shards" if len(bad) > SHOW_IN_DETAIL else ""
    return Check("count parity", FAIL, "; ".join(parts) + more, ids[:SHOW_IDS])


class CountParity:
    """Count parity per shard (and per shard key), through `ctx.map_shards`."""

    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        shards = [ShardCount(shard=s.shard, lo=s.lo, hi=s.hi, shard_key=s.shard_key, committed=s.written + s.skipped)
                  for s in ctx.shards] or [ShardCount(shard=0, lo=None, hi=None)]
        job = CountJob(
            clients=ctx.clients, source=ctx.source, target=ctx.target,
            source_page=reads.strict(ctx.source).page_limit(ID_PAGE),
            target_page=reads.strict(ctx.target).page_limit(ID_PAGE),
            get_batch=reads.strict(ctx.source).get_batch(POINT_BATCH),
            text=ctx.text if found.unnamed_target else None,
        )
        counted = sorted(ctx.map_shards(job, shards), key=lambda s: s.shard)
        if len(counted) != len(shards):
            raise RuntimeError(f"count parity got {len(counted)} shard counts for {len(shards)} shards")
        found.shards = counted
        found.source_total = sum(s.source for s in counted)
        return [parity_check(counted)]
