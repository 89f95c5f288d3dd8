"""Catch-up: reconcile the target with a source that kept changing while the backfill ran.

Scroll is not a snapshot: points written behind a shard's cursor are missed, points deleted after they were copied
linger, and texts changed after they were embedded are stale. The rule is simple and safe to repeat: the target
mirrors the source's payload. Each page walks one id span of both collections (payloads only, no vectors) and
compares payload digests:
  - in the source, not in the target        -> embed and insert (`insert_only`: a concurrent application write wins)
  - in both, payload differs                -> the source changed after the backfill: embed and overwrite
  - in the target, not in the source        -> deleted in the source: deleted from the target
  - in both, payload equal                  -> untouched; this is every point the application dual-wrote itself

`CatchUpSource` is a reader like the backfill's: the job runs it per shard on the lanes, so the diff of a 100M-point
collection is spread over the cluster and the changed texts are embedded on the lanes' GPUs. Deleting a point the
source no longer has is idempotent, so a page redone after a loss is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from qdrant_client import grpc as pb

from engine.flow.page import PageBody, PageMeta
from engine.flow.text import TextSource, TextSpec
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.scan import merge_by_id
from engine.qdrant.values import payload_digest, payload_to_python

log = logging.getLogger(__name__)

TALLY_KEYS = ("inserted", "updated", "deleted", "unchanged")


SCAN_PAGE = 1024  # points per scroll while diffing: one reply of ~1 MB of payload, few round trips per page


@dataclass(frozen=True)
class CatchUpSpec:
    """What a catch-up reader compares, as plain data (it crosses into the lanes' reader actors)."""

    source: str
    target: str
    text: TextSpec
    # Points per scroll over each collection: SCAN_PAGE, or less where strict mode's max_query_limit says so.
    source_page: int = SCAN_PAGE
    target_page: int = SCAN_PAGE

    def open(self, client: QdrantGrpc) -> "CatchUpSource":
        return CatchUpSource(client, self.source, self.target, self.text.open(),
                             pages={self.source: self.source_page, self.target: self.target_page})


class CatchUpSource:
    """A Source whose pages hold only the points that must be (re)written, deleting the ones the source lost."""

    def __init__(self, client: QdrantGrpc, source: str, target: str, text: TextSource,
                 pages: dict[str, int] | None = None) -> None:
        self.client, self.source, self.target, self.text = client, source, target, text
        self.pages = pages or {}

    def _span(self, collection: str, start: wire.PointIdValue | None, stop: wire.PointIdValue | None,
              limit: int | None, shard_key: wire.ShardKeyValue | None
              ) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
        """Points of [start, stop) in id order — the first `limit` of them, or all — and where the next begins."""
        stop_key = wire.id_key(stop) if stop is not None else None
        out: list[pb.RetrievedPoint] = []
        offset = start
        page = self.pages.get(collection, SCAN_PAGE)
        while True:
            want = min(page, limit - len(out)) if limit is not None else page
            points, nxt = self.client.scroll(collection, offset, want, with_payload=True, shard_key=shard_key)
            for p in points:
                if stop_key is not None and wire.id_key(wire.id_value(p.id)) >= stop_key:
                    return out, None
                out.append(p)
            if nxt is None or (stop_key is not None and wire.id_key(nxt) >= stop_key):
                return out, None
            if limit is not None and len(out) >= limit:
                return out, nxt
            offset = nxt

    def read_page(self, shard: int, seq: int, start: wire.PointIdValue | None, stop: wire.PointIdValue | None,
                  limit: int, to_stop: bool = False, shard_key: wire.ShardKeyValue | None = None
                  ) -> tuple[PageMeta, list[Any], PageBody]:
        src, nxt = self._span(self.source, start, stop, None if to_stop else limit, shard_key)
        # The target over the same id span: from `start` up to where the source page ends.
        tgt, _ = self._span(self.target, start, nxt if nxt is not None else stop, None, shard_key)
        tally = dict.fromkeys(TALLY_KEYS, 0)
        writes: list[pb.RetrievedPoint] = []
        overwrite: list[int] = []
        doomed: list[wire.PointIdValue] = []
        for s, t in merge_by_id(iter(src), iter(tgt)):
            if t is None:
                assert s is not None
                writes.append(s)
                tally["inserted"] += 1
            elif s is None:
                doomed.append(wire.id_value(t.id))
            elif payload_digest(payload_to_python(s.payload)) != payload_digest(payload_to_python(t.payload)):
                overwrite.append(len(writes))
                writes.append(s)
                tally["updated"] += 1
            else:
                tally["unchanged"] += 1
        if doomed:
            self.client.delete_points(self.target, doomed, shard_key=shard_key)
            tally["deleted"] = len(doomed)
        texts = self.text.texts(writes)
        inputs: list[Any] = []
        text_index: list[int] = []
        dead: list[tuple[wire.PointIdValue, str]] = []
        for pos, (p, (text, reason)) in enumerate(zip(writes, texts)):
            if reason is None:
                text_index.append(pos)
                inputs.append(text)
            else:
                dead.append((wire.id_value(p.id), reason or "no text"))
        ids = [wire.id_value(p.id) for p in writes]
        blobs = [wire.point_struct_from_retrieved(p.SerializeToString()) for p in writes]
        meta = PageMeta(shard=shard, seq=seq, start=start, next_offset=nxt, n_points=len(writes),
                        n_texts=len(inputs), dead=dead, tally=tally)
        return meta, inputs, PageBody(ids=ids, blobs=blobs, text_index=text_index, shard_key=shard_key,
                                      overwrite=overwrite)
