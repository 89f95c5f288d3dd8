"""The cutover guards, each with a test that fails when the guard is removed: `swap` and `cleanup` refuse without a
passing verify (unless forced, and then the event says so), and `cleanup` never deletes a collection an alias still
points at, nor deletes anything without --confirm."""

from __future__ import annotations

import pytest
from qdrant_client import grpc as pb

from engine.errors import PreconditionError
from engine.flow.state import CheckSummary, JobState, VerifySummary
from engine.migration.cutover import cleanup, swap


class Store:
    """A CheckpointStore in memory."""

    def __init__(self, state: JobState) -> None:
        self.state = state
        self.saves = 0

    def load(self, job_id):
        return self.state if job_id == self.state.job_id else None

    def save(self, state):
        self.state = state
        self.saves += 1

    def describe(self):
        return "memory"


class Aliases:
    """The alias and collection calls of the cutover, over a dict; every deletion is recorded."""

    def __init__(self, collections=("src", "dst"), aliases=None) -> None:
        self.collections = set(collections)
        self.aliases = dict(aliases or {})
        self.deleted: list[str] = []

    def collection_exists(self, name):
        return name in self.collections or name in self.aliases

    def list_aliases(self):
        return dict(self.aliases)

    def update_aliases(self, actions):
        for a in actions:
            if a.HasField("create_alias"):
                self.aliases[a.create_alias.alias_name] = a.create_alias.collection_name

    def delete_collection(self, name):
        self.collections.discard(name)
        self.deleted.append(name)

    def collection_info(self, name):
        return None


def _state(passed: bool | None) -> JobState:
    st = JobState(job_id="j1", fingerprint="f", boundaries=[], shards=[], finished=True)
    if passed is not None:
        st.verify = VerifySummary(passed=passed, at=1.7e9, checked_points=10, full=True,
                                  checks=[CheckSummary("count parity", "pass" if passed else "fail", "d")],
                                  failed=[] if passed else ["count parity"], report="/r/report.html")
    return st


@pytest.mark.parametrize("passed,expect", [(None, "has not been verified"), (False, "failed: count parity")])
def test_swap_refuses_without_a_passing_verify(passed, expect):
    client, store = Aliases(), Store(_state(passed))
    with pytest.raises(PreconditionError, match=f"swap refused: .*{expect}"):
        swap(client, store, "j1", "live", "src", "dst")
    assert "live" not in client.aliases and store.saves == 0


def test_swap_with_a_passing_verify_or_forced():
    client, store = Aliases(), Store(_state(True))
    event = swap(client, store, "j1", "live", "src", "dst")
    assert client.aliases["live"] == "dst" and event["forced"] is False and event["verify"]["passed"] is True
    client, store = Aliases(), Store(_state(False))
    event = swap(client, store, "j1", "live", "src", "dst", force=True)
    assert client.aliases["live"] == "dst" and event["forced"] is True and event["verify"]["failed"] == ["count parity"]
    assert store.state.events[-1].details["forced"] is True


@pytest.mark.parametrize("passed", [None, False])
def test_cleanup_refuses_without_a_passing_verify(passed):
    client, store = Aliases(aliases={"live": "dst"}), Store(_state(passed))
    with pytest.raises(PreconditionError, match="cleanup refused"):
        cleanup(client, store, "j1", "src", "dst", confirm=True)
    assert client.deleted == [] and "src" in client.collections


def test_cleanup_never_deletes_a_collection_an_alias_points_at():
    client, store = Aliases(aliases={"live": "src", "also": "src"}), Store(_state(True))
    with pytest.raises(PreconditionError, match="still the target of alias\\(es\\) also, live"):
        cleanup(client, store, "j1", "src", "dst", confirm=True)
    with pytest.raises(PreconditionError, match="still the target of alias"):
        cleanup(client, store, "j1", "src", "dst", confirm=True, force=True)  # force skips the verify gate only
    assert client.deleted == []


def test_cleanup_needs_confirm_and_then_deletes_the_source():
    client, store = Aliases(aliases={"live": "dst"}), Store(_state(True))
    with pytest.raises(PreconditionError, match="add --confirm"):
        cleanup(client, store, "j1", "src", "dst", confirm=False)
    assert client.deleted == []
    event = cleanup(client, store, "j1", "src", "dst", confirm=True)
    assert client.deleted == ["src"] and event["deleted"] == "src" and event["verify"]["passed"] is True


def test_cleanup_refuses_when_the_target_is_gone():
    client, store = Aliases(collections=("src",)), Store(_state(True))
    with pytest.raises(PreconditionError, match="target collection 'dst' does not exist"):
        cleanup(client, store, "j1", "src", "dst", confirm=True)
    assert client.deleted == []


def test_alias_action_is_one_create():
    sent = []

    class Recording(Aliases):
        def update_aliases(self, actions):
            sent.extend(actions)
            super().update_aliases(actions)

    client = Recording(aliases={"live": "src"})
    swap(client, Store(_state(True)), "j1", "live", "src", "dst")
    assert len(sent) == 1 and sent[0].WhichOneof("action") == "create_alias"
    assert isinstance(sent[0], pb.AliasOperations)
