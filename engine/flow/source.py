"""Source: reads one shard's id range page by page with `with_vectors=False` (the guide's bulk-read rule), unless
the job needs stored vectors: side-by-side/hybrid into a new collection copies them, and a shortcut transforms them.

The text of a point comes from its payload (a field or a template) or, for collections that store no text, from
an external Parquet dataset looked up by id (engine/flow/text.py).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from qdrant_client import grpc as pb

from engine.errors import ReplyTooLarge
from engine.flow.page import PageBody, PageMeta
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.values import TextSpec
from engine.flow.text import ExternalTexts

log = logging.getLogger(__name__)


def stored_vectors(point: pb.RetrievedPoint) -> dict[str, pb.VectorOutput]:
    """name -> stored vector of a scrolled point; "" is the unnamed default vector."""
    if not point.HasField("vectors"):
        return {}
    if point.vectors.HasField("vector"):
        return {"": point.vectors.vector}
    return dict(point.vectors.vectors.vectors.items())


def dense_row(vec: pb.VectorOutput) -> np.ndarray | None:
    data = vec.dense.data if vec.HasField("dense") else vec.data
    if not len(data) or vec.HasField("sparse") or vec.HasField("multi_dense"):
        return None
    return np.asarray(data, dtype=np.float32)


class QdrantSource:
    def __init__(self, client: QdrantGrpc, collection: str, text: TextSpec | None,
                 copy_vectors: Mapping[str, str] | Sequence[str] | None = None,
                 vector_input: str | None = None, external: ExternalTexts | None = None) -> None:
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
        self.external = external
        # Points per scroll call after a reply came back over the gRPC message limit (pages of very large payloads);
        # None until then. It doubles back after every reply that fits, so one region of huge points does not slow
        # the rest of the job.
        self._cap: int | None = None
        if text is None and external is None and vector_input is None:
            raise ValueError("a source needs a text spec, an external text dataset or a vector input")
        names = set(self.copy_vectors) | ({vector_input} if vector_input is not None else set())
        if not names:
            self.with_vectors: bool | pb.WithVectorsSelector = False
        elif "" in names:
            self.with_vectors = True  # a collection with an unnamed vector has that one vector only
        else:
            self.with_vectors = pb.WithVectorsSelector(include=pb.VectorsSelector(names=sorted(names)))

    def read_page(
        self,
        shard: int,
        seq: int,
        start: wire.PointIdValue | None,
        stop: wire.PointIdValue | None,
        limit: int,
        to_stop: bool = False,
    ) -> tuple[PageMeta, list, PageBody]:
        """Points with ids in [start, stop) — at most `limit` of them — and where the next page begins.

        Scroll has no range filter, so the page is cut where ids reach `stop`; reaching it (or the end of the
        collection) exhausts the shard. `to_stop` re-reads a whole earlier page, [start, stop), however many
        points it holds now, so a page redone after a lost worker covers exactly the range it covered before.
        The inputs are texts, or stored vectors (float32 rows) for a shortcut.
        """
        with_vectors = self.with_vectors
        retries_before = self.client.stats.snapshot() if hasattr(self.client, "stats") else {}
        points, nxt = self._scroll(start, limit, with_vectors)
        if to_stop:
            points = list(points)
            stop_key0 = wire.id_key(stop) if stop is not None else None
            while nxt is not None and (stop_key0 is None or wire.id_key(nxt) < stop_key0):
                more, nxt = self._scroll(nxt, limit, with_vectors)
                points.extend(more)
        stop_key = wire.id_key(stop) if stop is not None else None
        kept = list(points)
        if stop_key is not None and kept and wire.id_key(wire.id_value(kept[-1].id)) >= stop_key:
            # Scroll returns ids in order: only a page that runs past `stop` needs cutting, at its first such id.
            cut = next(k for k, p in enumerate(kept) if wire.id_key(wire.id_value(p.id)) >= stop_key)
            kept, nxt = kept[:cut], None
        if nxt is not None and stop_key is not None and wire.id_key(nxt) >= stop_key:
            nxt = None
        ids = [wire.id_value(p.id) for p in kept]
        external = self.external.lookup(ids) if self.external is not None and self.vector_input is None else None
        blobs: list[bytes] = []
        inputs: list = []
        text_index: list[int] = []
        dead: list[tuple[wire.PointIdValue, str]] = []
        for position, (pid, p) in enumerate(zip(ids, kept)):
            value, reason = self._input(p, pid, external)
            blobs.append(self._point_blob(p))
            if reason is None:
                text_index.append(position)
                inputs.append(value)
            else:
                dead.append((pid, reason))
        retries = self.client.stats.snapshot() if hasattr(self.client, "stats") else {}
        retries = {k: n - retries_before.get(k, 0) for k, n in retries.items() if n > retries_before.get(k, 0)}
        meta = PageMeta(shard=shard, seq=seq, start=start, next_offset=nxt, n_points=len(ids),
                        n_texts=len(inputs), dead=dead, retries=retries)
        return meta, inputs, PageBody(ids=ids, blobs=blobs, text_index=text_index)

    def _scroll(self, offset: wire.PointIdValue | None, limit: int,
                with_vectors: bool | pb.WithVectorsSelector) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
        """One scroll call; a reply over the message limit is asked for again with half the points, down to one.

        A shorter page is still a whole page: it ends where the next offset begins, so nothing is skipped."""
        asked = min(limit, self._cap) if self._cap is not None else limit
        while True:
            try:
                result = self.client.scroll(self.collection, offset, asked, with_payload=True,
                                            with_vectors=with_vectors)
            except ReplyTooLarge as exc:
                if asked == 1:
                    raise ReplyTooLarge(
                        f"the point after offset {offset!r} in {self.collection!r} alone is over the gRPC message "
                        "limit (64 MiB); it cannot be read over gRPC: shrink its payload"
                    ) from exc
                asked = max(1, asked // 2)
                self._cap = asked
                log.warning("scroll of %r from %r: reply over the message limit, asking for %d points per call",
                            self.collection, offset, asked)
                continue
            if self._cap is not None:
                self._cap = None if 2 * self._cap >= limit else 2 * self._cap
            return result

    def _input(self, p: pb.RetrievedPoint, pid: wire.PointIdValue, external) -> tuple[object, str | None]:
        if self.vector_input is not None:
            vec = stored_vectors(p).get(self.vector_input)
            row = dense_row(vec) if vec is not None else None
            if row is None:
                return None, f"no dense vector {self.vector_input or '(unnamed)'!r} stored"
            return row, None
        if external is not None:
            return external[pid]
        assert self.text is not None
        return self.text.extract(p.payload)

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
