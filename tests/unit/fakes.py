"""In-memory implementations of the flow's seams (Source, Sink) and a trivial embedder, for the unit tier."""

from __future__ import annotations

import bisect
import threading

import numpy as np

from engine.flow.page import PageBody, PageMeta, WriteAck
from engine.qdrant import wire


class MemorySource:
    """The Source contract over a dict: Qdrant's id order, [start, stop) ranges, `limit` points or all to `stop`."""

    def __init__(self, points: dict, text_field: str = "text") -> None:
        self.items = sorted(points.items(), key=lambda kv: wire.id_key(kv[0]))
        self.keys = [wire.id_key(k) for k, _ in self.items]
        self.text_field = text_field
        self.reads = 0

    def read_page(self, shard, seq, start, stop, limit, to_stop=False, shard_key=None):
        self.reads += 1
        i = 0 if start is None else bisect.bisect_left(self.keys, wire.id_key(start))
        end = len(self.items) if stop is None else bisect.bisect_left(self.keys, wire.id_key(stop))
        j = end if to_stop else min(end, i + limit)
        page = self.items[i:j]
        nxt = self.items[j][0] if j < end else None
        ids, blobs, inputs, text_index, dead = [], [], [], [], []
        for pos, (pid, payload) in enumerate(page):
            ids.append(pid)
            blobs.append(b"")
            text = payload.get(self.text_field)
            if isinstance(text, str) and text:
                text_index.append(pos)
                inputs.append(text)
            else:
                dead.append((pid, "no text"))
        meta = PageMeta(shard=shard, seq=seq, start=start, next_offset=nxt, n_points=len(ids), n_texts=len(inputs),
                        dead=dead)
        return meta, inputs, PageBody(ids=ids, blobs=blobs, text_index=text_index, shard_key=shard_key)


class MemorySink:
    """The Sink contract into a dict: every write of every point is kept, to count duplicates."""

    def __init__(self) -> None:
        self.target: dict = {}
        self.writes = 0
        self._lock = threading.Lock()

    async def write(self, shard, seq, body, vectors, check_present=False):
        with self._lock:
            already = sum(1 for pos in body.text_index if body.ids[pos] in self.target) if check_present else 0
            for row, pos in enumerate(body.text_index):
                self.target.setdefault(body.ids[pos], []).append(float(vectors[row][0]))
                self.writes += 1
        return WriteAck(shard=shard, seq=seq, written=len(body.text_index),
                        skipped=len(body.ids) - len(body.text_index), requests=1, already_present=already)

    async def close(self):
        pass


class LenEmbedder:
    dim = 2

    def embed(self, texts):
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


class Clock:
    """A clock the test moves by hand (`clock.t += 5`), where the code under test takes time.monotonic."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
