"""Source: reads one shard's id range page by page with `with_vectors=False` (the guide's bulk-read rule)."""

from __future__ import annotations

from qdrant_client import grpc as pb

from engine.page import PageBody, PageMeta
from engine.qdrant import wire
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.values import TextSpec


class QdrantSource:
    def __init__(self, client: QdrantGrpc, collection: str, text: TextSpec,
                 copy_vectors: list[str] | None = None) -> None:
        self.client = client
        self.collection = collection
        self.text = text
        # Vectors copied verbatim into the target (side-by-side on old servers); none for a plain re-embed.
        self.copy_vectors = copy_vectors or []

    def read_page(
        self,
        shard: int,
        seq: int,
        start: wire.PointIdValue | None,
        stop: wire.PointIdValue | None,
        limit: int,
        to_stop: bool = False,
    ) -> tuple[PageMeta, list[str], PageBody]:
        """Points with ids in [start, stop) — at most `limit` of them — and where the next page begins.

        Scroll has no range filter, so the page is cut where ids reach `stop`; reaching it (or the end of the
        collection) exhausts the shard. `to_stop` re-reads a whole earlier page, [start, stop), however many
        points it holds now, so a page redone after a lost worker covers exactly the range it covered before.
        """
        with_vectors: bool | pb.WithVectorsSelector = False
        if self.copy_vectors:
            with_vectors = pb.WithVectorsSelector(include=pb.VectorsSelector(names=self.copy_vectors))
        points, nxt = self.client.scroll(self.collection, start, limit, with_payload=True, with_vectors=with_vectors)
        if to_stop:
            points = list(points)
            stop_key0 = wire.id_key(stop) if stop is not None else None
            while nxt is not None and (stop_key0 is None or wire.id_key(nxt) < stop_key0):
                more, nxt = self.client.scroll(self.collection, nxt, limit, with_payload=True,
                                               with_vectors=with_vectors)
                points.extend(more)
        stop_key = wire.id_key(stop) if stop is not None else None
        ids: list[wire.PointIdValue] = []
        blobs: list[bytes] = []
        texts: list[str] = []
        text_index: list[int] = []
        dead: list[tuple[wire.PointIdValue, str]] = []
        for p in points:
            pid = wire.id_value(p.id)
            if stop_key is not None and wire.id_key(pid) >= stop_key:
                nxt = None
                break
            text, reason = self.text.extract(p.payload)
            position = len(ids)
            ids.append(pid)
            blobs.append(self._point_blob(p))
            if reason is None:
                text_index.append(position)
                texts.append(text)  # type: ignore[arg-type]
            else:
                dead.append((pid, reason))
        if nxt is not None and stop_key is not None and wire.id_key(nxt) >= stop_key:
            nxt = None
        meta = PageMeta(shard=shard, seq=seq, start=start, next_offset=nxt, n_points=len(ids),
                        n_texts=len(texts), dead=dead)
        return meta, texts, PageBody(ids=ids, blobs=blobs, text_index=text_index)

    def _point_blob(self, p: pb.RetrievedPoint) -> bytes:
        point = pb.PointStruct(id=p.id, payload=p.payload)
        if self.copy_vectors and p.HasField("vectors"):
            for name, vec in p.vectors.vectors.vectors.items():
                point.vectors.vectors.vectors[name].dense.data.extend(vec.dense.data or vec.data)
        return point.SerializeToString()
