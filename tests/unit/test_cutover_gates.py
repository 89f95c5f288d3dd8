"""The cutover guards, each with a test that fails when the guard is removed: `swap` and `cleanup` refuse without a
passing verify (unless forced, and then the event says so), and `cleanup` never deletes a collection an alias still
points at, nor deletes anything without --confirm."""

from __future__ import annotations

import time

import pytest
from qdrant_client import grpc as pb

from engine.errors import PreconditionError
from engine.flow.state import CheckSummary, Decision, JobState, VerifySummary
from engine.migration.cutover import cleanup, drop_vector, rollback, swap


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


# --- added: each guard of swap, rollback, cleanup and drop_vector, and what their events record ---------------------

def test_swap_and_cleanup_refuse_a_job_that_has_not_finished_a_run():
    unfinished = _state(True)
    unfinished.finished = False
    for act in (lambda c, s: swap(c, s, "j1", "live", "src", "dst"),
                lambda c, s: cleanup(c, s, "j1", "src", "dst", confirm=True)):
        client, store = Aliases(aliases={"live": "dst"}), Store(unfinished)
        with pytest.raises(PreconditionError, match="refused: job j1 has not finished a run \\(memory\\)"):
            act(client, store)
        assert client.deleted == [] and store.saves == 0
    with pytest.raises(PreconditionError, match="swap refused: job other has not finished"):
        swap(Aliases(), Store(_state(True)), "other", "live", "src", "dst")


def test_swap_needs_an_alias_and_refuses_to_switch_a_collection():
    with pytest.raises(PreconditionError, match="swap needs target.alias"):
        swap(Aliases(), Store(_state(True)), "j1", None, "src", "dst")
    client, store = Aliases(collections=("src", "dst", "live")), Store(_state(True))
    with pytest.raises(PreconditionError, match="'live' is a collection, not an alias"):
        swap(client, store, "j1", "live", "src", "dst")
    assert client.aliases == {} and store.saves == 0


def test_swap_refuses_a_target_that_does_not_exist_and_leaves_the_alias():
    client, store = Aliases(collections=("src",), aliases={"live": "src"}), Store(_state(True))
    with pytest.raises(PreconditionError, match="collection 'dst' does not exist; the alias 'live' was left"):
        swap(client, store, "j1", "live", "src", "dst")
    assert client.aliases == {"live": "src"}


def test_swap_reports_an_alias_that_does_not_point_where_it_was_sent():
    class Stuck(Aliases):
        def update_aliases(self, actions):
            pass  # the server took the request but the alias did not move

    client, store = Stuck(aliases={"live": "src"}), Store(_state(True))
    with pytest.raises(PreconditionError, match="alias 'live' points at 'src' after the switch, not 'dst'"):
        swap(client, store, "j1", "live", "src", "dst")
    assert store.saves == 0


def test_the_swap_event_says_where_the_alias_pointed_and_is_saved():
    client, store = Aliases(aliases={"live": "src"}), Store(_state(True))
    event = swap(client, store, "j1", "live", "src", "dst")
    assert store.saves == 1 and store.state.events[-1].action == "swap" and event["action"] == "swap"
    details = store.state.events[-1].details
    assert details["alias"] == "live" and details["from"] == "src" and details["to"] == "dst"
    assert details["forced"] is False and details["verify"]["passed"] is True and "on_disk_restored" not in details
    client, store = Aliases(), Store(_state(True))  # a new alias: "from" is the source it replaces
    swap(client, store, "j1", "live", "src", "dst")
    assert store.state.events[-1].details["from"] == "src"


def test_a_refused_verify_names_when_it_ran_and_its_report():
    st = _state(False)
    with pytest.raises(PreconditionError) as err:
        swap(Aliases(), Store(st), "j1", "live", "src", "dst")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1.7e9))
    assert f"the latest verify of job j1 ({when}) failed: count parity" in str(err.value)
    assert "/r/report.html" in str(err.value)
    st.verify.at = 0
    with pytest.raises(PreconditionError, match=r"\(\?\) failed"):
        swap(Aliases(), Store(st), "j1", "live", "src", "dst")


def test_cleanup_forced_past_a_failed_verify_deletes_and_records_it():
    client, store = Aliases(aliases={"live": "dst"}), Store(_state(False))
    event = cleanup(client, store, "j1", "src", "dst", confirm=True, force=True)
    assert client.deleted == ["src"] and store.saves == 1
    details = store.state.events[-1].details
    assert store.state.events[-1].action == "cleanup" and details["deleted"] == "src" and details["forced"] is True
    assert details["verify"] == {"passed": False, "at": 1.7e9, "failed": ["count parity"]}
    assert event["action"] == "cleanup"


def test_cleanup_of_a_job_that_wrote_into_its_source_is_refused():
    client, store = Aliases(), Store(_state(True))
    with pytest.raises(PreconditionError, match="wrote its new vectors into 'src' itself"):
        cleanup(client, store, "j1", "src", "src", confirm=True, force=True)
    assert client.deleted == []


def test_cleanup_of_a_source_already_gone_records_the_event_without_deleting():
    client, store = Aliases(collections=("dst",), aliases={"live": "dst"}), Store(_state(True))
    cleanup(client, store, "j1", "src", "dst", confirm=True)
    assert client.deleted == [] and store.state.events[-1].details["deleted"] == "src"


def test_rollback_points_the_alias_back_and_records_it():
    client, store = Aliases(aliases={"live": "dst"}), Store(_state(True))
    event = rollback(client, store, "j1", "live", "src")
    assert client.aliases == {"live": "src"} and store.saves == 1
    assert store.state.events[-1].action == "rollback" and event["action"] == "rollback"
    assert store.state.events[-1].details == {"alias": "live", "from": "dst", "to": "src"}


def test_rollback_refuses_without_an_alias_a_checkpoint_or_a_source():
    with pytest.raises(PreconditionError, match="rollback needs target.alias"):
        rollback(Aliases(), Store(_state(True)), "j1", "", "src")
    with pytest.raises(PreconditionError, match="no checkpoint for job other"):
        rollback(Aliases(), Store(_state(True)), "other", "live", "src")
    client = Aliases(collections=("dst",), aliases={"live": "dst"})
    with pytest.raises(PreconditionError, match="source collection 'src' no longer exists"):
        rollback(client, Store(_state(True)), "j1", "live", "src")
    assert client.aliases == {"live": "dst"}


class Vectors(Aliases):
    """A collection with named vectors, for dropping one."""

    def __init__(self, names=("old", "dense"), version="1.19.0", **kwargs) -> None:
        super().__init__(**kwargs)
        self.names = list(names)
        self.version = version
        self.dropped: list[tuple[str, str]] = []

    def collection_info(self, name):
        if name not in self.collections:
            return None
        info = pb.CollectionInfo()
        for n in self.names:
            info.config.params.vectors_config.params_map.map[n].CopyFrom(
                pb.VectorParams(size=4, distance=pb.Distance.Cosine))
        return info

    def health(self):
        from engine.qdrant.client import ServerInfo

        return ServerInfo(title="qdrant", version=self.version)

    def delete_vector_name(self, collection, vector):
        self.dropped.append((collection, vector))
        self.names.remove(vector)


def _in_place(passed=True) -> JobState:
    st = _state(passed)
    st.decision = Decision(requested="in_place", strategy="in_place", layout="in_place", collection="src",
                           dense_name="dense", sparse_name=None)
    return st


def test_drop_vector_drops_the_old_vector_after_a_passing_verify():
    client, store = Vectors(version="1.18.0"), Store(_in_place())  # the first version that can
    event = drop_vector(client, store, "j1", "src", "old", confirm=True)
    assert client.dropped == [("src", "old")] and store.state.dropped_vectors == ["old"] and store.saves == 1
    assert event["action"] == "drop_vector"
    assert store.state.events[-1].details == {"collection": "src", "vector": "old", "forced": False,
                                              "verify": {"passed": True, "at": 1.7e9, "failed": []}}
    again = drop_vector(client, store, "j1", "src", "old", confirm=True)  # already dropped: says so, drops nothing
    assert again["already"] is True and client.dropped == [("src", "old")]


@pytest.mark.parametrize("case,match", [
    ("no confirm", "add --confirm"), ("the new vector", "is the one this job wrote"),
    ("no such vector", "has no vector named 'nope'"), ("unverified", "cleanup refused"),
    ("old server", "needs Qdrant 1.18"), ("gone", "does not exist; nothing to drop"),
    ("unfinished", "has not finished a run")])
def test_drop_vector_guards(case, match):
    client, st = Vectors(), _in_place(passed=case != "unverified")
    vector, confirm = {"the new vector": "dense", "no such vector": "nope"}.get(case, "old"), case != "no confirm"
    if case == "old server":
        client.version = "1.17.2"
    if case == "gone":
        client.collections.discard("src")
    if case == "unfinished":
        st.finished = False
    with pytest.raises(PreconditionError, match=match):
        drop_vector(client, Store(st), "j1", "src", vector, confirm=confirm)
    assert client.dropped == []


def test_drop_vector_refuses_an_unnamed_vector():
    class Unnamed(Vectors):
        def collection_info(self, name):
            info = pb.CollectionInfo()
            info.config.params.vectors_config.params.CopyFrom(pb.VectorParams(size=4, distance=pb.Distance.Cosine))
            return info

    client = Unnamed()
    with pytest.raises(PreconditionError, match="has an unnamed vector"):
        drop_vector(client, Store(_in_place()), "j1", "src", "", confirm=True)
    assert client.dropped == []


def test_drop_vector_forced_past_a_failed_verify_records_it():
    client, store = Vectors(), Store(_in_place(passed=False))
    drop_vector(client, store, "j1", "src", "old", confirm=True, force=True)
    details = store.state.events[-1].details
    assert client.dropped == [("src", "old")] and details["forced"] is True and details["verify"]["passed"] is False
