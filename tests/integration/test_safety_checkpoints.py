"""The checkpoint stores keep what a resumed job trusts: every shard's cursor comes back exactly as saved, from a
store opened anew (a job resubmitted on a new head node); a save writes only what changed, with wait=true upserts
that overwrite the previous record; the shards split off a range are written before the range they came from is
shortened, so no id range is ever in none of the saved shards; jobs sharing a store never see each other's records.

The Qdrant store runs against an in-memory stand-in of the client calls it makes (no server, no Ray), so the tests
run in the fast tier of `make mutation` too."""

from __future__ import annotations

import json

import pytest
from qdrant_client import grpc as pb

from engine.errors import ConfigError
from engine.flow.checkpoint import QdrantCheckpointStore, UriCheckpointStore
from engine.flow.state import JobState, ShardState
from engine.qdrant import values, wire


class Endpoint:
    address = "memory:6334"


class MemoryQdrant:
    """The QdrantGrpc calls of QdrantCheckpointStore over dicts; every upsert request is kept, decoded."""

    def __init__(self) -> None:
        self.collections: dict[str, dict] = {}
        self.indexes: list[tuple[str, str, int]] = []
        self.upserts: list[pb.UpsertPoints] = []
        self.endpoint = Endpoint()
        self.create_fails = False
        self.scrolls: list = []  # the offset of every scroll

    def collection_exists(self, name: str) -> bool:
        return name in self.collections

    def create_collection(self, req: pb.CreateCollection) -> None:
        if self.create_fails:
            self.collections[req.collection_name] = {}  # another driver created it first
            raise RuntimeError("ALREADY_EXISTS")
        self.collections[req.collection_name] = {}

    def create_field_index(self, collection: str, field: str, kind: int) -> None:
        self.indexes.append((collection, field, kind))

    def upsert_raw(self, raw: bytes, what: str) -> None:
        req = pb.UpsertPoints.FromString(raw)
        self.upserts.append(req)
        for p in req.points:
            self.collections[req.collection_name][wire.id_value(p.id)] = values.payload_to_python(p.payload)

    def _point(self, pid, payload, with_payload) -> pb.RetrievedPoint:
        p = pb.RetrievedPoint(id=wire.point_id(pid))
        if with_payload is True:  # like Qdrant: a point comes without its payload unless asked for it
            for k, v in values.payload_from_python(payload).items():
                p.payload[k].CopyFrom(v)
        return p

    def get(self, collection, ids, *, with_payload=False, with_vectors=False, shard_key=None):
        points = self.collections.get(collection, {})
        return [self._point(pid, points[pid], with_payload) for pid in ids if pid in points]

    def scroll(self, collection, offset, limit, *, with_payload=False, with_vectors=False, flt=None, shard_key=None):
        (cond,) = flt.must
        key, keyword = cond.field.key, cond.field.match.keyword
        ordered = sorted((pid for pid, p in self.collections[collection].items() if p.get(key) == keyword),
                         key=wire.id_key)
        start = 0 if offset is None else [wire.id_key(p) >= wire.id_key(offset) for p in ordered].index(True)
        page = ordered[start:start + limit]
        nxt = ordered[start + limit] if start + limit < len(ordered) else None
        self.scrolls.append(offset)
        return [self._point(pid, self.collections[collection][pid], with_payload) for pid in page], nxt

    def delete_points(self, collection, ids) -> None:
        for pid in ids:
            self.collections[collection].pop(pid, None)


def state(job_id: str = "job-a", shards: int = 3) -> JobState:
    cuts = [100 * (i + 1) for i in range(shards - 1)]
    los, his = [None, *cuts], [*cuts, None]
    return JobState(job_id=job_id, fingerprint="fp-1", boundaries=cuts,
                    shards=[ShardState(shard=i, lo=los[i], hi=his[i], cursor=los[i]) for i in range(shards)],
                    parts={"model": {"kind": "hash"}})


def shard_points(req: pb.UpsertPoints) -> list[int]:
    """The shard numbers a checkpoint upsert carries (-1: the header)."""
    out = []
    for p in req.points:
        payload = values.payload_to_python(p.payload)
        out.append(-1 if payload["kind"] == "header" else payload["shard"])
    return out


def test_a_saved_state_comes_back_exactly_from_a_store_opened_anew():
    client = MemoryQdrant()
    st = state()
    st.shards[0].cursor, st.shards[0].written, st.shards[0].skipped, st.shards[0].pages = 57, 50, 7, 3
    st.shards[1].cursor = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    st.shards[2].done = True
    QdrantCheckpointStore(client, "_reembed").save(st)
    loaded = QdrantCheckpointStore(client, "_reembed").load("job-a")
    assert loaded is not None and loaded.to_dict() == st.to_dict()
    assert isinstance(loaded.shards[0].cursor, int) and isinstance(loaded.shards[1].cursor, str)
    assert ("_reembed", "job_id", pb.FieldType.FieldTypeKeyword) in client.indexes
    for req in client.upserts:  # a checkpoint record replaces the previous one, and is applied when saved
        assert req.wait is True and req.update_mode == pb.UpdateMode.Upsert


def test_a_save_writes_only_what_changed():
    client = MemoryQdrant()
    store = QdrantCheckpointStore(client, "_reembed")
    st = state(shards=4)
    store.save(st)
    assert sorted(shard_points(client.upserts[0])) == [0, 1, 2, 3]  # new shards first
    assert shard_points(client.upserts[-1]) == [-1]
    client.upserts.clear()
    store.save_snapshot("job-a", st.to_dict())
    assert client.upserts == []  # nothing changed: nothing written
    st.shards[2].cursor, st.shards[2].written = 250, 50
    store.save_snapshot("job-a", st.to_dict())
    assert [shard_points(r) for r in client.upserts] == [[2]]
    st.shards[2].written = 60
    st.finished = True
    client.upserts.clear()
    store.save_snapshot("job-a", st.to_dict())
    assert [sorted(shard_points(r)) for r in client.upserts] == [[-1, 2]]
    assert QdrantCheckpointStore(client, "_reembed").load("job-a").to_dict() == st.to_dict()


def test_a_split_writes_the_new_shard_before_shortening_the_old_one():
    client = MemoryQdrant()
    store = QdrantCheckpointStore(client, "_reembed")
    st = state(shards=2)
    store.save(st)
    client.upserts.clear()
    st.shards[0].hi = 50
    st.shards.append(ShardState(shard=2, lo=50, hi=100, cursor=50, split_from=0))
    store.save(st)
    groups = [shard_points(r) for r in client.upserts]
    assert groups[0] == [2]  # a crash between the two requests leaves [50, 100) in the old shard still
    assert sorted(groups[1]) == [-1, 0]


def test_a_store_that_loaded_a_job_writes_all_of_it_at_its_next_save():
    client = MemoryQdrant()
    QdrantCheckpointStore(client, "_reembed").save(state())
    store = QdrantCheckpointStore(client, "_reembed")
    st = store.load("job-a")
    client.upserts.clear()
    store.save(st)  # another driver may have written since: nothing is taken as already saved
    assert sorted(p for r in client.upserts for p in shard_points(r)) == [-1, 0, 1, 2]


def test_jobs_sharing_a_store_never_see_each_others_records_and_delete_removes_one_job():
    client = MemoryQdrant()
    store = QdrantCheckpointStore(client, "_reembed")
    a, b = state("job-a", 3), state("job-b", 2)
    b.fingerprint = "fp-2"
    store.save(a)
    store.save(b)
    assert store.load("job-a").to_dict() == a.to_dict() and store.load("job-b").to_dict() == b.to_dict()
    store.delete("job-a")
    assert store.load("job-a") is None and store.load("job-b").to_dict() == b.to_dict()
    assert all(p["job_id"] == "job-b" for p in client.collections["_reembed"].values())


def test_many_shards_are_saved_in_requests_of_at_most_256_points():
    client = MemoryQdrant()
    st = state(shards=600)
    QdrantCheckpointStore(client, "_reembed").save(st)
    assert all(len(r.points) <= 256 for r in client.upserts) and len(client.upserts) >= 4
    assert QdrantCheckpointStore(client, "_reembed").load("job-a").to_dict() == st.to_dict()


def test_a_version_1_checkpoint_still_loads():
    client = MemoryQdrant()
    st = state()
    st.shards[1].cursor = 150
    client.collections["_reembed"] = {QdrantCheckpointStore.point_id("job-a"): {"state": st.to_json()}}
    loaded = QdrantCheckpointStore(client, "_reembed").load("job-a")
    assert loaded is not None and loaded.shards[1].cursor == 150 and loaded.fingerprint == "fp-1"
    assert QdrantCheckpointStore(client, "_reembed").load("job-b") is None


def test_no_store_collection_means_no_checkpoint_and_a_race_to_create_it_is_fine():
    client = MemoryQdrant()
    store = QdrantCheckpointStore(client, "_reembed")
    assert store.load("job-a") is None and "_reembed" not in client.collections
    store.delete("job-a")  # nothing to delete, no error
    client.create_fails = True  # another driver creates it between the check and the create
    store.save(state())
    assert store.load("job-a") is not None


def test_point_ids_are_stable_per_job_and_shard():
    assert QdrantCheckpointStore.point_id("j") == QdrantCheckpointStore.point_id("j")
    ids = {QdrantCheckpointStore.point_id("j"), QdrantCheckpointStore.point_id("k"),
           QdrantCheckpointStore.shard_point_id("j", 0), QdrantCheckpointStore.shard_point_id("j", 1),
           QdrantCheckpointStore.shard_point_id("k", 0)}
    assert len(ids) == 5


def test_a_uri_store_roundtrips_replaces_atomically_and_deletes(tmp_path):
    store = UriCheckpointStore(str(tmp_path / "ck"))
    assert store.load("job-a") is None
    st = state()
    store.save(st)
    st.shards[0].cursor = 42
    store.save_snapshot("job-a", st.to_dict())
    assert store.load("job-a").shards[0].cursor == 42
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["job-a.json"]  # no temporary file left
    assert json.loads((tmp_path / "ck" / "job-a.json").read_text())["fingerprint"] == "fp-1"
    store.delete("job-a")
    assert store.load("job-a") is None
    store.delete("job-a")


def test_a_bad_checkpoint_uri_is_a_one_line_error():
    with pytest.raises(ConfigError, match="checkpoint.uri='nosuch://x' cannot be opened"):
        UriCheckpointStore("nosuch://x")


def test_a_job_of_more_shards_than_one_scroll_page_loads_every_shard():
    client = MemoryQdrant()
    st = state(shards=1100)  # the store reads a job's records 1024 per scroll
    st.shards[1099].cursor = 109_950
    QdrantCheckpointStore(client, "_reembed").save(st)
    loaded = QdrantCheckpointStore(client, "_reembed").load("job-a")
    assert loaded is not None and loaded.to_dict() == st.to_dict()
    assert client.scrolls[0] is None and len(client.scrolls) == 2 and client.scrolls[1] is not None


def test_a_save_after_a_load_writes_what_it_is_given_even_where_its_own_last_save_said_the_same():
    client = MemoryQdrant()
    mine, other = QdrantCheckpointStore(client, "_reembed"), QdrantCheckpointStore(client, "_reembed")
    st = state()
    mine.save_snapshot("job-a", st.to_dict())
    moved = state()
    moved.shards[1].cursor = 170
    other.save_snapshot("job-a", moved.to_dict())  # another driver wrote since
    assert mine.load("job-a").shards[1].cursor == 170
    mine.save_snapshot("job-a", st.to_dict())  # what this store wrote before: after a load, not taken as saved
    assert QdrantCheckpointStore(client, "_reembed").load("job-a").shards[1].cursor == 100


def test_a_version_1_point_without_a_state_is_no_checkpoint():
    client = MemoryQdrant()
    client.collections["_reembed"] = {QdrantCheckpointStore.point_id("job-a"): {"job_id": "job-a"}}
    assert QdrantCheckpointStore(client, "_reembed").load("job-a") is None


def test_a_text_saved_whole_as_the_doctor_does_loads_back():
    client = MemoryQdrant()
    st = state()
    st.shards[2].cursor = 250
    QdrantCheckpointStore(client, "_reembed").save_text("job-a", st.to_json())
    assert QdrantCheckpointStore(client, "_reembed").load("job-a").to_dict() == st.to_dict()


def test_the_background_saver_saves_under_its_jobs_id(tmp_path):
    from engine.flow.checkpoint import BackgroundSaver

    store = UriCheckpointStore(str(tmp_path))
    saver = BackgroundSaver(store, "job-a")
    st = state()
    st.shards[0].cursor = 33
    saver.submit(st)
    saver.flush()
    saver.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-a.json"]
    assert store.load("job-a").shards[0].cursor == 33


def test_jobs_sharing_a_checkpoint_directory_each_write_through_a_temporary_file_of_their_own(tmp_path):
    store = UriCheckpointStore(str(tmp_path))
    opened: list[str] = []
    real = store.fs

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def open_output_stream(self, path, *args, **kwargs):
            opened.append(path)
            return real.open_output_stream(path, *args, **kwargs)

    store.fs = Recording()
    store.save(state("job-a"))
    store.save(state("job-b"))
    assert len(set(opened)) == 2 and all(p.startswith(f"{store.root}/job-") for p in opened)
    assert store.load("job-a").job_id == "job-a" and store.load("job-b").job_id == "job-b"


def test_the_background_saver_is_busy_while_it_writes_so_a_flush_waits_for_the_write():
    from engine.flow.checkpoint import BackgroundSaver

    class Store:
        def __init__(self) -> None:
            self.busy_while_saving: list = []

        def save_snapshot(self, job_id, data) -> None:
            self.busy_while_saving.append(saver._busy)  # what flush() waits on, seen from inside the write

    store = Store()
    saver = BackgroundSaver(store, "job-a")  # type: ignore[arg-type]
    saver.submit(state())
    saver.flush()
    saver.close()
    assert store.busy_while_saving == [True]
