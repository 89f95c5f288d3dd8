"""The unit of flow and of retry: one scrolled page of one shard.

A page crosses Ray as plain Python (protobuf messages cannot be pickled): point ids, each point's (id, payload)
as serialised PointStruct bytes, and the texts of the points that have usable text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.qdrant.wire import PointIdValue


@dataclass
class PageMeta:
    """What the coordinator needs to know about a page; the bulky parts travel separately."""

    shard: int
    seq: int
    start: PointIdValue | None  # scroll offset this page was read from (inclusive); None = the shard's start
    next_offset: PointIdValue | None  # first id after this page inside the shard; None = shard exhausted
    n_points: int
    n_texts: int
    dead: list[tuple[PointIdValue, str]] = field(default_factory=list)  # points without usable text, with reason
    retries: dict[str, int] = field(default_factory=dict)  # RPC retries by cause while reading this page
    tally: dict[str, int] = field(default_factory=dict)  # what a reader that does more than read counted (catch-up)
    unread: int = 0  # dead letters the page body does not carry (points too large to read): skipped all the same

    @property
    def exhausted(self) -> bool:
        return self.next_offset is None


@dataclass
class PageBody:
    """The points of a page for the writer: serialised (id, payload) and which of them get a new vector."""

    ids: list[PointIdValue]
    blobs: list[bytes]
    text_index: list[int]  # positions in ids/blobs of points whose text was embedded, in the order of `texts`
    shard_key: str | int | None = None  # custom sharding: the key the page was read from and is written to
    overwrite: list[int] = field(default_factory=list)  # positions written as plain upserts (catch-up: the source
    # changed after the backfill), not insert_only


@dataclass
class WriteAck:
    shard: int
    seq: int
    written: int  # points written with a new vector
    skipped: int  # points written (or left) without a new vector: dead letters
    dead: list[tuple[PointIdValue, str]] = field(default_factory=list)  # points the writer could not write at all
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    already_present: int = 0  # points that carried the new vector before this write (asked for on redos only)
