import uuid

import pytest

from engine.errors import CheckpointMismatch
from engine.flow.checkpoint import UriCheckpointStore, check_resume, fingerprint
from engine.flow.lease import Lease, LeaseCursor
from engine.flow.shards import boundaries_from_sample, shard_states
from engine.flow.state import JobState
from engine.qdrant import wire


def U(n):
    return str(uuid.UUID(int=n))


@pytest.mark.parametrize(
    "sample",
    [list(range(0, 1000, 3)), [U(i * 7919) for i in range(1, 300)], list(range(100)) + [U(i) for i in range(1, 100)]],
    ids=["int", "uuid", "mixed"],
)
def test_boundaries_are_sorted_distinct_and_cover(sample):
    cuts = boundaries_from_sample(sample, 8)
    keys = [wire.id_key(c) for c in cuts]
    assert keys == sorted(set(keys)) and 1 <= len(cuts) <= 7
    shards = shard_states(cuts)
    assert shards[0].lo is None and shards[-1].hi is None
    # every sampled id falls in exactly one shard
    for pid in sample:
        k = wire.id_key(pid)
        owners = [s for s in shards if (s.lo is None or wire.id_key(s.lo) <= k) and (s.hi is None or k < wire.id_key(s.hi))]
        assert len(owners) == 1


def test_mixed_boundaries_put_ints_first():
    cuts = boundaries_from_sample(list(range(50)) + [U(i) for i in range(1, 51)], 4)
    assert any(isinstance(c, str) for c in cuts) and any(isinstance(c, int) for c in cuts)


def test_degenerate_samples():
    assert boundaries_from_sample([], 8) == []
    assert boundaries_from_sample([5, 5, 5], 8) == []
    assert boundaries_from_sample(list(range(100)), 1) == []


def test_ordered_commit_moves_only_over_gap_free_prefix():
    c = LeaseCursor(Lease(shard=0, cursor=None, hi=None))
    for _ in range(3):
        c.first_read()
        c.first_read_done(1)  # three first reads issued (their offsets do not matter here)
    c.exhausted = True
    assert not c.ack(1, 200, 10, 1)  # seq 0 still missing
    assert c.committed is None and c.take_ack() is None
    assert c.ack(0, 100, 10, 0)
    delta = c.take_ack()
    assert c.committed == 200 and delta.written == 20 and delta.skipped == 1 and not delta.done
    assert not c.ack(0, 100, 10, 0)  # a redone page already committed changes nothing
    assert c.ack(2, None, 5, 0)
    delta = c.take_ack()
    assert c.done and delta.done and delta.written == 5


def test_split_never_goes_behind_a_page_already_read():
    c = LeaseCursor(Lease(shard=0, cursor=0, hi=1000))
    c.first_read()
    assert c.split(500) is None  # the first read in flight decides where the frontier lands
    c.first_read_done(300)
    assert c.split(100) == 300  # behind the frontier: the lease ends at the frontier instead
    assert c.hi == 300 and c.exhausted


def test_state_json_roundtrip_keeps_id_types(tmp_path):
    state = JobState(job_id="j1", fingerprint="f", boundaries=[10, U(3)],
                     shards=shard_states([10, U(3)]))
    state.shards[1].cursor = 42
    store = UriCheckpointStore(str(tmp_path / "ck"))
    assert store.load("j1") is None
    store.save(state)
    back = store.load("j1")
    assert back.boundaries == [10, U(3)] and back.shards[1].cursor == 42 and back.shards[2].lo == U(3)
    store.delete("j1")
    assert store.load("j1") is None


def test_fingerprint_mismatch_fails_loudly():
    parts = {"model": "a", "boundaries": [1, 2]}
    state = JobState(job_id="j", fingerprint=fingerprint(parts), boundaries=[1, 2], shards=[])
    check_resume(state, fingerprint(dict(parts)))
    with pytest.raises(CheckpointMismatch, match="--restart"):
        check_resume(state, fingerprint({**parts, "model": "b"}), "model changed")


class SlowStore:
    def __init__(self, fail_on=None):
        import threading

        self.saved, self.fail_on, self.gate = [], fail_on, threading.Event()

    def save_snapshot(self, job_id, data):
        import json

        text = json.dumps(data)
        self.gate.wait(5)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError("server down")
        self.saved.append(text)


def _state(cursor):
    st = JobState(job_id="b", fingerprint="f", boundaries=[], shards=shard_states([]))
    st.shards[0].cursor = cursor
    return st


def test_background_saver_writes_the_latest_snapshot_and_flushes():
    from engine.flow.checkpoint import BackgroundSaver

    store = SlowStore()
    saver = BackgroundSaver(store, "b")
    for cursor in range(1, 50):
        saver.submit(_state(cursor))  # the writer is blocked: snapshots pile up, only the newest survives
    store.gate.set()
    saver.flush()
    saver.close()
    assert 1 <= len(store.saved) <= 2
    assert JobState.from_json(store.saved[-1]).shards[0].cursor == 49


def test_background_saver_hands_errors_to_the_coordinator():
    from engine.flow.checkpoint import BackgroundSaver

    store = SlowStore(fail_on='"cursor": 7')
    store.gate.set()
    saver = BackgroundSaver(store, "b")
    saver.submit(_state(7))
    with pytest.raises(RuntimeError, match="server down"):
        saver.flush()
    saver.close()
