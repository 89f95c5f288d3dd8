"""The pages a lane reads (engine/flow/source.py) cut exactly at the lease's bounds: a chain of pages covers [start,
stop) once, with no point missed at a cut and none read past `stop`; a redone page (`to_stop`) covers exactly the
range its first read covered, however many points are in it now; a reply over the gRPC message limit is asked for
again with fewer points, and a point too large alone becomes a dead letter while the page goes on past it.

Against an in-memory Qdrant that scrolls like Qdrant (ids in order, `offset` inclusive, `next_page_offset` the first
id of the next page, all integer ids before all UUIDs) and answers Get in any order."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.errors import ReplyTooLarge
from engine.flow.source import UNREADABLE, QdrantSource
from engine.flow.text import PayloadText
from engine.qdrant import retry, values, wire


class MemoryPoints:
    """The read calls of QdrantGrpc over a dict; `too_large` ids make any reply holding them over the limit."""

    def __init__(self, points: dict, too_large=(), vectors: dict | None = None) -> None:
        self.points = dict(points)
        self.vectors = vectors or {}  # id -> {name: list of floats}
        self.too_large = set(too_large)
        self.stats = retry.RetryStats()
        self.calls: list[tuple] = []
        self.asked: list[tuple] = []  # (collection, with_payload, with_vectors) of every call, as passed

    def _ordered(self) -> list:
        return sorted(self.points, key=wire.id_key)

    def _point(self, pid, with_payload, with_vectors) -> pb.RetrievedPoint:
        p = pb.RetrievedPoint(id=wire.point_id(pid))
        if with_payload:
            for k, v in values.payload_from_python(self.points[pid]).items():
                p.payload[k].CopyFrom(v)
        if with_vectors is not False:
            for name, data in self.vectors.get(pid, {}).items():
                vec = p.vectors.vector if name == "" else p.vectors.vectors.vectors[name]
                vec.dense.data.extend(data)
        return p

    def _check_size(self, ids: list, with_payload) -> None:
        if with_payload and any(pid in self.too_large for pid in ids):
            raise ReplyTooLarge("Received message larger than max (70000000 vs. 67108864)")

    def scroll(self, collection, offset, limit, *, with_payload=True, with_vectors=False, flt=None, shard_key=None):
        self.calls.append(("scroll", offset, limit, bool(with_payload), shard_key))
        self.asked.append((collection, with_payload, with_vectors))
        ordered = self._ordered()
        start = 0 if offset is None else next((i for i, pid in enumerate(ordered)
                                               if wire.id_key(pid) >= wire.id_key(offset)), len(ordered))
        page = ordered[start:start + limit]
        self._check_size(page, with_payload)
        nxt = ordered[start + limit] if start + limit < len(ordered) else None
        return [self._point(pid, with_payload, with_vectors) for pid in page], nxt

    def get(self, collection, ids, *, with_payload=True, with_vectors=False, shard_key=None):
        self.calls.append(("get", tuple(ids), bool(with_payload), shard_key))
        self.asked.append((collection, with_payload, with_vectors))
        found = [pid for pid in ids if pid in self.points]
        self._check_size(found, with_payload)
        return [self._point(pid, with_payload, with_vectors) for pid in reversed(found)]  # any order


def make_points(n: int = 60, seed: int = 0) -> dict:
    """Integer ids and UUIDs mixed; every seventh point without usable text."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        pid = i * 5 if i % 3 else str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i))
        out[pid] = {"n": i} if i % 7 == 0 else {"text": f"text {i}", "n": i}
    return out


def source(client, **options) -> QdrantSource:
    return QdrantSource(client, "src", PayloadText(field="text"), **options)


def ids_of(body) -> list:
    return list(body.ids)


def in_range(points: dict, start, stop) -> list:
    return [pid for pid in sorted(points, key=wire.id_key)
            if (start is None or wire.id_key(pid) >= wire.id_key(start))
            and (stop is None or wire.id_key(pid) < wire.id_key(stop))]


@pytest.mark.parametrize("fetch_by_id", [False, True])
@pytest.mark.parametrize("limit", [1, 4, 7, 100])
def test_a_chain_of_pages_covers_the_range_once_and_stops_at_its_end(fetch_by_id, limit):
    points = make_points()
    ordered = sorted(points, key=wire.id_key)
    start, stop = ordered[5], ordered[47]  # a UUID range end inside the id space
    src = source(MemoryPoints(points), fetch_by_id=fetch_by_id, get_batch=3)
    seen, offset, pages = [], start, 0
    while True:
        meta, texts, body = src.read_page(2, pages, offset, stop, limit)
        assert meta.shard == 2 and meta.seq == pages and meta.start == offset
        assert len(body.ids) <= limit and meta.n_points == len(body.ids)
        seen += ids_of(body)
        pages += 1
        if meta.exhausted:
            break
        assert meta.next_offset == ordered[ordered.index(body.ids[-1]) + 1]  # the next page starts right after
        offset = meta.next_offset
    assert seen == in_range(points, start, stop)  # nothing missed at a cut, nothing past stop, in id order


@pytest.mark.parametrize("fetch_by_id", [False, True])
def test_the_last_page_of_the_collection_and_of_a_range_ending_exactly_at_a_page_cut(fetch_by_id):
    points = {i: {"text": f"t{i}"} for i in range(10)}
    src = source(MemoryPoints(points), fetch_by_id=fetch_by_id)
    meta, _, body = src.read_page(0, 0, 5, None, 5)
    assert ids_of(body) == [5, 6, 7, 8, 9] and meta.next_offset is None  # the collection's end
    meta, _, body = src.read_page(0, 0, 0, 5, 5)
    assert ids_of(body) == [0, 1, 2, 3, 4] and meta.next_offset is None  # the next id is the range's end
    meta, _, body = src.read_page(0, 0, 0, 6, 5)
    assert ids_of(body) == [0, 1, 2, 3, 4] and meta.next_offset == 5
    meta, _, body = src.read_page(0, 0, 9, 20, 5)
    assert ids_of(body) == [9] and meta.next_offset is None


@pytest.mark.parametrize("fetch_by_id", [False, True])
def test_a_redone_page_reads_exactly_its_first_range_however_many_points_it_holds_now(fetch_by_id):
    points = {i * 10: {"text": f"t{i}"} for i in range(30)}
    client = MemoryPoints(points)
    src = source(client, fetch_by_id=fetch_by_id)
    meta, _, first = src.read_page(0, 3, 40, None, 5)
    assert ids_of(first) == [40, 50, 60, 70, 80] and meta.next_offset == 90
    for pid in (41, 55, 56, 85, 89):  # the application inserts points inside that range meanwhile
        client.points[pid] = {"text": "new"}
    client.points[90] = {"text": "changed"}
    meta, _, again = src.read_page(0, 3, 40, 90, 5, to_stop=True)
    assert ids_of(again) == [40, 41, 50, 55, 56, 60, 70, 80, 85, 89]  # the whole range, no more, no less
    assert meta.next_offset is None and meta.start == 40


def test_texts_dead_letters_and_blobs():
    points = {1: {"text": "one", "k": [1, 2]}, 2: {"text": ""}, 3: {"other": 1}, 4: {"text": 5}, 5: {"text": "five"}}
    meta, texts, body = source(MemoryPoints(points)).read_page(0, 0, None, None, 10)
    assert texts == ["one", "five"] and body.text_index == [0, 4]
    assert [pid for pid, _ in meta.dead] == [2, 3, 4] and all(why for _, why in meta.dead)
    assert meta.n_texts == 2 and meta.n_points == 5 and meta.unread == 0
    # Each blob is the point's id and payload as PointStruct bytes, ready for the writer.
    for pid, blob in zip(body.ids, body.blobs):
        point = pb.PointStruct.FromString(blob)
        assert wire.id_value(point.id) == pid and values.payload_to_python(point.payload) == points[pid]


def test_without_copying_payloads_the_blobs_are_empty():
    meta, texts, body = source(MemoryPoints({1: {"text": "a"}}), copy_payload=False).read_page(0, 0, None, None, 5)
    assert body.blobs == [b""] and texts == ["a"]


def test_a_reply_over_the_message_limit_is_asked_again_with_fewer_points():
    points = {i: {"text": f"t{i}"} for i in range(40)}
    client = MemoryPoints(points, too_large={13})
    src = source(client)
    seen, offset, dead = [], None, {}
    while True:
        meta, _, body = src.read_page(0, 0, offset, None, 16)
        seen += ids_of(body)
        dead.update(meta.dead)
        assert meta.unread == len(meta.dead)
        if meta.exhausted:
            break
        offset = meta.next_offset
    assert seen == [i for i in range(40) if i != 13]  # the lone oversize point is skipped, nothing else
    assert dead == {13: UNREADABLE}
    sizes = [(c[1], c[2]) for c in client.calls if c[0] == "scroll" and c[3]]
    # Halved per refusal down to one point; after that, each page may ask for twice what last fitted, up to 16.
    assert sizes == [(None, 16), (None, 8), (8, 16), (8, 8), (8, 4), (12, 8), (12, 4), (12, 2), (12, 1), (13, 2),
                     (13, 1), (14, 1), (15, 2), (17, 4), (21, 8), (29, 16)]
    assert [c for c in client.calls if c[0] == "scroll" and not c[3]] == [("scroll", 13, 2, False, None)]


def test_the_last_point_of_the_collection_too_large_alone_ends_the_range():
    client = MemoryPoints({i: {"text": f"t{i}"} for i in range(5)}, too_large={4})
    meta, _, body = source(client).read_page(0, 0, 4, None, 5)
    assert ids_of(body) == [] and meta.dead == [(4, UNREADABLE)] and meta.next_offset is None


def test_by_id_a_get_over_the_limit_is_split_and_a_lone_oversize_point_is_a_dead_letter():
    points = {i: {"text": f"t{i}"} for i in range(12)}
    client = MemoryPoints(points, too_large={5})
    meta, texts, body = source(client, fetch_by_id=True, get_batch=8).read_page(0, 0, None, None, 12)
    assert ids_of(body) == [i for i in range(12) if i != 5] and body.ids == sorted(body.ids)
    assert meta.dead == [(5, UNREADABLE)] and meta.unread == 1 and meta.next_offset is None
    gets = [c for c in client.calls if c[0] == "get"]
    assert all(len(c[1]) <= 8 for c in gets)


def test_dead_letters_past_the_ranges_end_are_not_the_pages():
    points = {i: ({"text": f"t{i}"} if i != 7 else {}) for i in range(10)}
    meta, _, body = source(MemoryPoints(points)).read_page(0, 0, 0, 7, 10)
    assert ids_of(body) == list(range(7)) and meta.dead == [] and meta.next_offset is None


def test_reads_carry_the_shard_key():
    client = MemoryPoints({1: {"text": "a"}, 2: {"text": "b"}})
    meta, _, body = source(client).read_page(0, 0, None, None, 5, shard_key="tenant")
    assert body.shard_key == "tenant" and all(c[-1] == "tenant" for c in client.calls)
    client.calls.clear()
    source(client, fetch_by_id=True).read_page(0, 0, None, None, 5, shard_key=3)
    assert all(c[-1] == 3 for c in client.calls)


def test_by_id_the_ids_are_read_without_payloads():
    client = MemoryPoints({i: {"text": f"t{i}"} for i in range(6)})
    source(client, fetch_by_id=True, get_batch=4).read_page(0, 0, None, None, 6)
    assert [c[3] for c in client.calls if c[0] == "scroll"] == [False]
    assert [c[1] for c in client.calls if c[0] == "get"] == [(0, 1, 2, 3), (4, 5)]


def test_a_shortcut_reads_stored_vectors_as_its_input():
    client = MemoryPoints({1: {"text": "a"}, 2: {"text": "b"}}, vectors={1: {"old": [1.0, 2.0]}})
    src = QdrantSource(client, "src", None, vector_input="old", copy_payload=True)
    meta, inputs, body = src.read_page(0, 0, None, None, 5)
    assert len(inputs) == 1 and inputs[0].tolist() == [1.0, 2.0] and body.text_index == [0]
    assert meta.dead == [(2, "no dense vector 'old' stored")]


def test_copied_vectors_travel_in_the_blob_under_their_new_name():
    client = MemoryPoints({1: {"text": "a"}}, vectors={1: {"old": [0.5, 0.25]}})
    _, _, body = source(client, copy_vectors={"old": "kept"}).read_page(0, 0, None, None, 5)
    point = pb.PointStruct.FromString(body.blobs[0])
    assert list(point.vectors.vectors.vectors["kept"].dense.data) == [0.5, 0.25]


def test_retries_while_reading_are_the_pages():
    client = MemoryPoints({1: {"text": "a"}})
    client.stats.record("unavailable")
    client.stats.record("resource_exhausted")  # before this page, and not again during it
    original = client.scroll

    def scroll(*args, **kwargs):
        client.stats.record("unavailable")
        client.stats.record("aborted")
        return original(*args, **kwargs)

    client.scroll = scroll
    meta, _, _ = source(client).read_page(0, 0, None, None, 5)
    assert meta.retries == {"unavailable": 1, "aborted": 1}  # this page's retries only


@pytest.mark.parametrize("fetch_by_id", [False, True])
def test_every_call_names_the_collection_and_the_redos_shard_key_and_reads_no_more_than_its_range(fetch_by_id):
    points = {i: {"text": f"t{i}"} for i in range(40)}
    client = MemoryPoints(points)
    meta, _, body = source(client, fetch_by_id=fetch_by_id).read_page(0, 0, 3, 20, 4, to_stop=True,
                                                                       shard_key="k")
    assert ids_of(body) == list(range(3, 20)) and meta.next_offset is None
    assert all(c[0] == "src" for c in client.asked) and all(c[-1] == "k" for c in client.calls)
    scrolls = [c for c in client.calls if c[0] == "scroll"]
    assert [c[1] for c in scrolls] == [3, 7, 11, 15, 19]  # stops at the first page reaching 20
    if fetch_by_id:
        assert all(a[1] is False and a[2] is False for a, c in zip(client.asked, client.calls) if c[0] == "scroll")


def test_a_redo_of_a_range_to_the_collections_end_reads_to_the_end():
    client = MemoryPoints({i: {"text": f"t{i}"} for i in range(9)})
    meta, _, body = source(client).read_page(0, 0, 2, None, 3, to_stop=True)
    assert ids_of(body) == list(range(2, 9)) and meta.next_offset is None


def test_what_a_read_asks_for_follows_what_the_job_needs():
    client = MemoryPoints({1: {"text": "a"}})
    source(client).read_page(0, 0, None, None, 5)
    assert client.asked[-1] == ("src", True, False)  # a plain re-embed reads no vectors
    source(client, copy_vectors={"": "old"}).read_page(0, 0, None, None, 5)
    assert client.asked[-1][2] is True  # the unnamed vector: a collection that has it has only that one
    source(client, copy_vectors=["a", "b"]).read_page(0, 0, None, None, 5)
    assert list(client.asked[-1][2].include.names) == ["a", "b"]
    QdrantSource(client, "src", PayloadText(field="text"), vector_input="v", copy_payload=False).read_page(
        0, 0, None, None, 5)
    assert client.asked[-1][1] is False  # a shortcut into an in-place vector needs neither text nor payload
    src = source(client, copy_payload=False)
    src.read_page(0, 0, None, None, 5)
    assert client.asked[-1][1] is True  # the text is in the payload


def test_a_source_needs_a_text_or_a_vector_input():
    with pytest.raises(ValueError, match="needs a text source or a vector input"):
        QdrantSource(MemoryPoints({}), "src", None)


def test_a_get_batch_of_one_reads_one_id_per_get():
    client = MemoryPoints({i: {"text": f"t{i}"} for i in range(3)})
    source(client, fetch_by_id=True, get_batch=1).read_page(0, 0, None, None, 3)
    assert [c[1] for c in client.calls if c[0] == "get"] == [(0,), (1,), (2,)]


def test_a_source_spec_opens_the_source_it_describes():
    from engine.flow.source import SourceSpec
    from engine.flow.text import TextSpec

    spec = SourceSpec(collection="src", text=TextSpec(field="text"), copy_vectors=(("old", "kept"),),
                      copy_payload=False, fetch_by_id=True, get_batch=7)
    client = MemoryPoints({1: {"text": "a"}})
    src = spec.open(client)
    assert (src.client, src.collection, src.copy_vectors, src.copy_payload, src.fetch_by_id, src.get_batch) == (
        client, "src", {"old": "kept"}, False, True, 7)
    assert src.vector_input is None and src.text is not None
    shortcut = SourceSpec(collection="src", text=None, vector_input="old").open(client)
    assert shortcut.text is None and shortcut.vector_input == "old" and shortcut.copy_vectors == {}


def test_a_page_whose_last_point_is_the_ranges_end_is_cut_before_it():
    points = {i: {"text": f"t{i}"} for i in range(20)}
    meta, _, body = source(MemoryPoints(points)).read_page(0, 0, 0, 10, 11)  # the reply holds 0 .. 10
    assert ids_of(body) == list(range(10)) and meta.next_offset is None


@pytest.mark.parametrize("fetch_by_id", [False, True])
def test_a_redo_ending_exactly_at_a_page_cut_reads_nothing_from_its_end(fetch_by_id):
    client = MemoryPoints({i: {"text": f"t{i}"} for i in range(40)})
    meta, _, body = source(client, fetch_by_id=fetch_by_id).read_page(0, 0, 3, 19, 4, to_stop=True)
    assert ids_of(body) == list(range(3, 19)) and meta.next_offset is None
    assert [c[1] for c in client.calls if c[0] == "scroll"] == [3, 7, 11, 15]  # no scroll from 19 on


def test_a_redo_records_a_point_too_large_to_read_on_any_of_its_pages():
    client = MemoryPoints({i: {"text": f"t{i}"} for i in range(20)}, too_large={9})
    meta, _, body = source(client).read_page(0, 0, 0, 15, 4, to_stop=True)
    assert ids_of(body) == [i for i in range(15) if i != 9]
    assert meta.dead == [(9, UNREADABLE)] and meta.unread == 1 and meta.next_offset is None


def test_a_point_too_large_to_read_past_the_ranges_end_is_not_the_pages():
    client = MemoryPoints({i: {"text": f"t{i}"} for i in [*range(5), *range(10, 15)]}, too_large={10})
    meta, _, body = source(client).read_page(0, 0, 5, 10, 4)  # nothing in [5, 10); 10 is the next range's
    assert ids_of(body) == [] and meta.dead == [] and meta.unread == 0 and meta.next_offset is None
