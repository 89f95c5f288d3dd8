"""Source: reads one shard's id range page by page with `with_vectors=False` (the guide's bulk-read rule), unless
the job needs stored vectors: side-by-side/hybrid into a new collection copies them, and a shortcut transforms them.

Two ways to read a page, chosen by the composition root from the collection's shard count:
- one scroll with payloads (a single-shard collection);
- ids only by scroll, then the points by id with Get (a collection of S shards): Qdrant answers a scroll by asking
  every shard for `limit` points with their payloads and keeping `limit` after the merge
  (lib/collection/src/collection/point_ops.rs in the qdrant repository), so payloads would be read S times over;
  a Get is routed to the shard that owns each id, so each payload is read once.

The text of a point comes from its payload (a field or a template) or, for collections that store no text, from
an external Parquet dataset looked up by id (engine/flow/text.py). Payloads are not read at all when neither the text
nor the writer needs them (an in-place job with external text).

A point too large for one gRPC reply cannot be read: it is recorded as a dead letter with the reason, and the page
goes on past it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar

from qdrant_client import grpc as pb

from engine import tunables
from engine.errors import ReplyTooLarge
from engine.flow.page import PageBody, PageMeta
from engine.flow.text import TextSource, TextSpec
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.points import dense_row, stored_vectors

log = logging.getLogger(__name__)
T = TypeVar("T")
UNREADABLE = "point is over the gRPC message limit on its own; it cannot be read (shrink its payload)"


@dataclass(frozen=True)
class SourceSpec:
    """What a reader reads, as plain data (it crosses into Ray actors, which open their own channels)."""

    collection: str
    text: TextSpec | None  # None: a shortcut reads stored vectors instead of text
    copy_vectors: tuple[tuple[str, str], ...] = ()  # (source name, target name) copied verbatim
    vector_input: str | None = None
    copy_payload: bool = True  # the writer copies each point's payload (a new collection)
    fetch_by_id: bool = False  # ids by scroll, points by Get: for a source of several shards
    get_batch: int = tunables.GET_BATCH  # ids per Get (strict mode may lower it)

    def open(self, client: QdrantGrpc) -> "QdrantSource":
        return QdrantSource(client, self.collection, self.text.open() if self.text is not None else None,
                            dict(self.copy_vectors) or None, vector_input=self.vector_input,
                            copy_payload=self.copy_payload, fetch_by_id=self.fetch_by_id, get_batch=self.get_batch)


class QdrantSource:
    def __init__(self, client: QdrantGrpc, collection: str, text: TextSource | None,
                 copy_vectors: Mapping[str, str] | Sequence[str] | None = None,
                 vector_input: str | None = None, *, copy_payload: bool = True, fetch_by_id: bool = False,
                 get_batch: int = tunables.GET_BATCH) -> None:
        self.client = client
        self.collection = collection
        self.text = text
        # Vectors copied verbatim into the target (side-by-side/hybrid into a new collection): source name ->
        # target name, "" being the source's unnamed vector. None for a plain re-embed.
        if copy_vectors is None:
            copy_vectors = {}
        self.copy_vectors = dict(copy_vectors) if isinstance(copy_vectors, Mapping) else {n: n for n in copy_vectors}
        # Shortcuts: the stored vector of this name is the input instead of the text.
        self.vector_input = vector_input
        self.copy_payload = copy_payload
        self.fetch_by_id = fetch_by_id
        self.get_batch = max(1, get_batch)
        # Points per call after a reply came back over the gRPC message limit (pages of very large payloads); None
        # until then. It doubles back after every reply that fits, so one region of huge points does not slow the
        # rest of the job.
        self._cap: int | None = None
        if text is None and vector_input is None:
            raise ValueError("a source needs a text source or a vector input")
        names = set(self.copy_vectors) | ({vector_input} if vector_input is not None else set())
        if not names:
            self.with_vectors: bool | pb.WithVectorsSelector = False
        elif "" in names:
            self.with_vectors = True  # a collection with an unnamed vector has that one vector only
        else:
            self.with_vectors = pb.WithVectorsSelector(include=pb.VectorsSelector(names=sorted(names)))
        self.with_payload = copy_payload or (text is not None and text.needs_payload and vector_input is None)

    def read_page(
        self,
        shard: int,
        seq: int,
        start: wire.PointIdValue | None,
        stop: wire.PointIdValue | None,
        limit: int,
        to_stop: bool = False,
        shard_key: wire.ShardKeyValue | None = None,
    ) -> tuple[PageMeta, list, PageBody]:
        """Points with ids in [start, stop) — at most `limit` of them — and where the next page begins.

        Scroll has no range filter, so the page is cut where ids reach `stop`; reaching it (or the end of the
        collection) exhausts the shard. `to_stop` re-reads a whole earlier page, [start, stop), however many
        points it holds now, so a page redone after a lost worker covers exactly the range it covered before.
        The inputs are texts, or stored vectors (float32 rows) for a shortcut.
        """
        retries_before = self.client.stats.snapshot()
        dead: list[tuple[wire.PointIdValue, str]] = []
        if self.fetch_by_id:
            ids, nxt = self._ids(start, stop, limit, to_stop, shard_key)
            kept = self._get(ids, shard_key, dead)
        else:
            kept, nxt = self._scroll_range(start, stop, limit, to_stop, shard_key, dead)
        unread = len(dead)  # so far only points that could not be read at all
        ids = [wire.id_value(p.id) for p in kept]
        found = self._inputs(kept)
        blobs: list[bytes] = []
        inputs: list = []
        text_index: list[int] = []
        for position, (pid, p) in enumerate(zip(ids, kept)):
            value, reason = found[position]
            blobs.append(self._point_blob(p) if self.copy_payload else b"")
            if reason is None:
                text_index.append(position)
                inputs.append(value)
            else:
                dead.append((pid, reason))
        retries = self.client.stats.snapshot()
        retries = {k: n - retries_before.get(k, 0) for k, n in retries.items() if n > retries_before.get(k, 0)}
        meta = PageMeta(shard=shard, seq=seq, start=start, next_offset=nxt, n_points=len(ids),
                        n_texts=len(inputs), dead=dead, retries=retries, unread=unread)
        return meta, inputs, PageBody(ids=ids, blobs=blobs, text_index=text_index, shard_key=shard_key)

    # --- one scroll with payloads --------------------------------------------------------------------------------
    def _scroll_range(self, start: wire.PointIdValue | None, stop: wire.PointIdValue | None, limit: int,
                      to_stop: bool, shard_key: wire.ShardKeyValue | None,
                      dead: list[tuple[wire.PointIdValue, str]]
                      ) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
        stop_key = wire.id_key(stop) if stop is not None else None
        points, nxt = self._scroll(start, limit, shard_key, dead)
        if to_stop:
            points = list(points)
            while nxt is not None and (stop_key is None or wire.id_key(nxt) < stop_key):
                more, nxt = self._scroll(nxt, limit, shard_key, dead)
                points.extend(more)
        return _cut(points, nxt, stop_key, dead)

    def _scroll(self, offset: wire.PointIdValue | None, limit: int, shard_key: wire.ShardKeyValue | None,
                dead: list[tuple[wire.PointIdValue, str]]) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
        """One scroll call; a reply over the message limit is asked for again with half the points, down to one.

        A shorter page is still a whole page: it ends where the next offset begins, so nothing is skipped. A point
        too large alone is recorded as dead and skipped (its id and the next one come from an id-only scroll)."""
        def call(asked: int) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
            return self.client.scroll(self.collection, offset, asked, with_payload=self.with_payload,
                                      with_vectors=self.with_vectors, shard_key=shard_key)

        result = self._shrinking(call, limit)
        if result is not None:
            return result
        ids, _ = self.client.scroll(self.collection, offset, 2, with_payload=False, with_vectors=False,
                                    shard_key=shard_key)
        dead.append((wire.id_value(ids[0].id), UNREADABLE))
        log.warning("point %r of %r is too large to read over gRPC; recorded as a dead letter",
                    wire.id_value(ids[0].id), self.collection)
        return [], wire.id_value(ids[1].id) if len(ids) > 1 else None

    def _shrinking(self, call: Callable[[int], T], limit: int) -> T | None:
        """`call(n)` with n halved after every reply over the message limit; None when one item alone is over."""
        asked = min(limit, self._cap) if self._cap is not None else limit
        while True:
            try:
                result = call(asked)
            except ReplyTooLarge:
                if asked == 1:
                    return None
                asked = max(1, asked // 2)
                self._cap = asked
                log.warning("reading %r: a reply was over the message limit, asking for %d points per call",
                            self.collection, asked)
                continue
            if self._cap is not None:
                self._cap = None if 2 * self._cap >= limit else 2 * self._cap
            return result

    # --- ids by scroll, points by Get ----------------------------------------------------------------------------
    def _ids(self, start: wire.PointIdValue | None, stop: wire.PointIdValue | None, limit: int, to_stop: bool,
             shard_key: wire.ShardKeyValue | None) -> tuple[list[wire.PointIdValue], wire.PointIdValue | None]:
        stop_key = wire.id_key(stop) if stop is not None else None
        points, nxt = self.client.scroll(self.collection, start, limit, with_payload=False, with_vectors=False,
                                         shard_key=shard_key)
        points = list(points)
        while to_stop and nxt is not None and (stop_key is None or wire.id_key(nxt) < stop_key):
            more, nxt = self.client.scroll(self.collection, nxt, limit, with_payload=False, with_vectors=False,
                                           shard_key=shard_key)
            points.extend(more)
        kept, nxt = _cut(points, nxt, stop_key, [])
        return [wire.id_value(p.id) for p in kept], nxt

    def _get(self, ids: list[wire.PointIdValue], shard_key: wire.ShardKeyValue | None,
             dead: list[tuple[wire.PointIdValue, str]]) -> list[pb.RetrievedPoint]:
        """The points of `ids` (those still there: one deleted since its id was read is simply gone), in id order."""
        with_vectors: bool | list[str]
        if self.with_vectors is True or self.with_vectors is False:
            with_vectors = self.with_vectors
        else:
            with_vectors = list(self.with_vectors.include.names)
        out: list[pb.RetrievedPoint] = []
        i = 0
        while i < len(ids):
            batch = ids[i:i + self.get_batch]

            def call(asked: int, batch: list = batch) -> tuple[int, list[pb.RetrievedPoint]]:
                return asked, self.client.get(self.collection, batch[:asked], with_payload=self.with_payload,
                                              with_vectors=with_vectors, shard_key=shard_key)

            got = self._shrinking(call, len(batch))
            if got is None:
                dead.append((batch[0], UNREADABLE))
                i += 1
                continue
            asked, points = got
            out.extend(points)
            i += asked
        out.sort(key=lambda p: wire.id_key(wire.id_value(p.id)))
        return out

    # --- per point -----------------------------------------------------------------------------------------------
    def _inputs(self, points: list[pb.RetrievedPoint]) -> list[tuple[object, str | None]]:
        """Per point: (input, None) or (None, why it has none). The input is the text, or for a shortcut the
        stored vector as a float32 row."""
        if self.vector_input is None:
            assert self.text is not None
            return list(self.text.texts(points))
        out: list[tuple[object, str | None]] = []
        for p in points:
            vec = stored_vectors(p).get(self.vector_input)
            row = dense_row(vec) if vec is not None else None
            out.append((row, None) if row is not None
                       else (None, f"no dense vector {self.vector_input or '(unnamed)'!r} stored"))
        return out

    def _point_blob(self, p: pb.RetrievedPoint) -> bytes:
        blob = wire.point_struct_from_retrieved(p.SerializeToString())
        if self.copy_vectors:
            # VectorOutput and Vector share their field numbers, so a stored vector's bytes are a valid Vector.
            stored = stored_vectors(p)
            named = {target: stored[src].SerializeToString() for src, target in self.copy_vectors.items()
                     if src in stored}
            if named:
                blob += wire.vectors_field(named)
        return blob


def _cut(points: list[pb.RetrievedPoint], nxt: wire.PointIdValue | None, stop_key: tuple[int, int] | None,
         dead: list[tuple[wire.PointIdValue, str]]) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
    """The points before `stop` and where the next page starts (None: the range is done). Scroll returns ids in
    order, so only a page that runs past `stop` needs cutting, at its first such id."""
    kept = list(points)
    if stop_key is not None and kept and wire.id_key(wire.id_value(kept[-1].id)) >= stop_key:
        cut = next(k for k, p in enumerate(kept) if wire.id_key(wire.id_value(p.id)) >= stop_key)
        kept, nxt = kept[:cut], None
    if nxt is not None and stop_key is not None and wire.id_key(nxt) >= stop_key:
        nxt = None
    if stop_key is not None:
        dead[:] = [(pid, why) for pid, why in dead if wire.id_key(pid) < stop_key]
    return kept, nxt
