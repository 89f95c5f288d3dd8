"""Every kind of vector in the strategy decisions and the requests they make: a late-interaction model's new vector
as a MaxSim multivector (new collection and CreateVectorName), copied multivectors with their params, large vectors
on disk while both models live (side_by_side) with the user's placement recorded in the decision, put back by
swap / cleanup / drop_vector, and that record kept by the job state (v2 JSON and v1 loading)."""

from __future__ import annotations

import pytest
from qdrant_client import grpc as pb

from engine import tunables
from engine.embedded import schema as endpoint_schema
from engine.errors import PreconditionError
from engine.flow.state import Decision, JobState, OnDiskOverride
from engine.migration import cutover, strategies
from engine.qdrant.client import ServerInfo
from tests.config_support import job_config

V16, V18 = ServerInfo("qdrant", "1.16.0"), ServerInfo("qdrant", "1.18.0")
MAXSIM = pb.MultiVectorConfig(comparator=pb.MultiVectorComparator.MaxSim)


def cfg(strategy: str, target: str | None = None, **extra):
    data: dict = {"source": {"collection": "docs", "text_field": "text"}, "strategy": strategy,
                  "target": {"vector_name": "colbert"}, "model": {"name": "/models/colbert", "kind": "late_interaction"}}
    return job_config(data, target, extra)


def source_info() -> pb.CollectionInfo:
    """dense (16-d, small), colbert (a multivector asked to be in RAM, HNSW off), big (1024-d, placement left to the
    server), pinned (1536-d with Qdrant 1.19's `memory` placement) and a sparse vector."""
    info = pb.CollectionInfo(points_count=1000)
    vmap = info.config.params.vectors_config.params_map.map
    vmap["dense"].CopyFrom(pb.VectorParams(size=16, distance=pb.Distance.Cosine))
    vmap["colbert"].CopyFrom(pb.VectorParams(size=8, distance=pb.Distance.Dot, multivector_config=MAXSIM,
                                             on_disk=False, hnsw_config=pb.HnswConfigDiff(m=0)))
    vmap["big"].CopyFrom(pb.VectorParams(size=1024, distance=pb.Distance.Cosine))
    vmap["pinned"].CopyFrom(pb.VectorParams(size=1536, distance=pb.Distance.Cosine, memory=pb.Memory.Pinned))
    info.config.params.sparse_vectors_config.map["kw"].CopyFrom(pb.SparseVectorParams())
    return info


def schema() -> strategies.SourceSchema:
    return strategies.SourceSchema.from_info("docs", source_info(), 1000)


def test_late_interaction_decides_a_multivector_named_target_vector_name():
    d = strategies.decide(cfg("new_collection", "docs_v2"), V18, schema())
    assert d.dense_name == d.multi_name == "colbert" and "multivector" in d.reason
    assert d.new_vectors[0] == "colbert" and not d.on_disk  # new_collection: both models do not share it
    req = strategies.new_collection_request(cfg("new_collection", "docs_v2"), d, schema(), 128)
    params = req.vectors_config.params_map.map["colbert"]
    assert params.size == 128 and params.multivector_config == MAXSIM and params.distance == pb.Distance.Cosine
    unnamed_cfg = cfg("new_collection", "docs_v2", target__vector_name=None, target__distance="Dot")
    d = strategies.decide(unnamed_cfg, V18, schema())
    assert d.dense_name == d.multi_name == ""
    req = strategies.new_collection_request(unnamed_cfg, d, schema(), 128)
    assert req.vectors_config.params.multivector_config == MAXSIM
    assert req.vectors_config.params.distance == pb.Distance.Dot
    # a dense model: no multivector anywhere
    dense = cfg("new_collection", "docs_v2", model__kind="dense", model__name="hash:32")
    d = strategies.decide(dense, V18, schema())
    assert d.multi_name is None
    assert not strategies.new_collection_request(dense, d, schema(), 32).vectors_config.params_map.map[
        "colbert"].HasField("multivector_config")


def test_late_interaction_refusals_name_the_fix():
    with pytest.raises(PreconditionError, match="set target.distance to Cosine or Dot"):
        strategies.decide(cfg("new_collection", "docs_v2", target__distance="Euclid"), V18, schema())
    with pytest.raises(PreconditionError, match="remove the shortcut section or set model.kind: dense"):
        strategies.decide(cfg("in_place", source__vector_name="big", shortcut__kind="matryoshka", shortcut__dim=8),
                          V18, schema())
    # hybrid without a named vector makes the sparse vector only: the model is never run, nothing to refuse
    d = strategies.decide(cfg("hybrid", target__distance="Euclid", target__vector_name=None), V18, schema())
    assert d.multi_name is None and d.sparse_name == "bm25"


def test_side_by_side_new_collection_copies_multivectors_with_their_params_and_keeps_large_ones_on_disk():
    c = cfg("side_by_side", "docs_ab", target__vector_name="colbert_v2")
    d = strategies.decide(c, V16, schema())
    req = strategies.new_collection_request(c, d, schema(), 128)
    vmap = req.vectors_config.params_map.map
    colbert = vmap["colbert"]
    assert colbert.multivector_config == MAXSIM and colbert.hnsw_config.m == 0 and colbert.distance == pb.Distance.Dot
    assert colbert.on_disk  # the source asked for RAM; on disk while both models live
    assert vmap["big"].on_disk and vmap["pinned"].on_disk and vmap["pinned"].memory == pb.Memory.Cold
    assert not vmap["dense"].HasField("on_disk")  # 64 bytes: stays as the source has it
    assert vmap["colbert_v2"].on_disk and vmap["colbert_v2"].multivector_config == MAXSIM
    assert set(req.sparse_vectors_config.map) == {"kw"}
    records = {r.vector: r for r in d.on_disk}
    assert set(records) == {"colbert", "big", "pinned", "colbert_v2"}
    assert records["colbert"].restore_on_disk is False and records["colbert"].restore_memory is None
    assert records["big"].restore_on_disk is None  # nothing asked: it stays on disk after the migration
    assert records["pinned"].restore_memory == "Pinned"
    assert records["colbert_v2"].restore_on_disk is None and "multivector" in records["colbert_v2"].reason
    assert all(r.collection == "docs_ab" for r in d.on_disk)
    assert "1024-d" in records["big"].reason and f"{tunables.SIDE_BY_SIDE_ON_DISK_BYTES:,}" in records["big"].reason
    # target.on_disk: false said out loud is the user's setting for the new vector, put back at swap/cleanup
    d = strategies.decide(cfg("side_by_side", "docs_ab", target__vector_name="v2", target__on_disk=False), V16,
                          schema())
    assert {r.vector: r.restore_on_disk for r in d.on_disk}["v2"] is False


def test_only_side_by_side_moves_vectors_on_disk():
    c = cfg("new_collection", "docs_v2")
    d = strategies.decide(c, V18, schema())
    req = strategies.new_collection_request(c, d, schema(), 128)
    assert not req.vectors_config.params_map.map["colbert"].on_disk and not d.on_disk
    hybrid = cfg("hybrid", "docs_h", target__vector_name=None)
    d = strategies.decide(hybrid, V16, schema())
    req = strategies.new_collection_request(hybrid, d, schema(), None)
    assert not req.vectors_config.params_map.map["big"].HasField("on_disk") and not d.on_disk


@pytest.mark.parametrize("size,datatype,large", [
    (1023, None, False), (1024, None, True), (2047, pb.Datatype.Float16, False), (2048, pb.Datatype.Float16, True),
    (4096, pb.Datatype.Uint8, True), (384, None, False),
])
def test_on_disk_threshold_counts_bytes_per_vector(size, datatype, large):
    params = pb.VectorParams(size=size, distance=pb.Distance.Cosine)
    if datatype is not None:
        params.datatype = datatype
    assert (strategies.on_disk_reason(params) is not None) == large
    params.multivector_config.CopyFrom(MAXSIM)
    assert "multivector" in strategies.on_disk_reason(params)


def test_a_dense_new_vector_of_unknown_size_is_recorded_and_placed_at_creation():
    """A real model's dimension is known only once it is loaded: the decision records the new vector, the creation
    puts it on disk when it turns out large."""
    c = cfg("side_by_side", "docs_ab", target__vector_name="v2", model__kind="dense")
    d = strategies.decide(c, V16, schema())
    assert "if the model's vectors are" in {r.vector: r.reason for r in d.on_disk}["v2"]
    assert strategies.new_collection_request(c, d, schema(), 1536).vectors_config.params_map.map["v2"].on_disk
    assert not strategies.new_collection_request(c, d, schema(), 384).vectors_config.params_map.map["v2"].on_disk
    known_small = strategies.decide(cfg("side_by_side", "docs_ab", target__vector_name="v2", model__kind="dense",
                                        model__name="hash:32"), V16, schema())
    assert "v2" not in {r.vector for r in known_small.on_disk}


class FakeServer:
    """The client calls the schema code and the cutover make, over configs merged as the embedded endpoint merges
    them (engine/embedded/schema.py, itself congruent with Qdrant's)."""

    def __init__(self, **collections: pb.CollectionInfo) -> None:
        self.collections = dict(collections)
        self.aliases: dict[str, str] = {}
        self.requests: list = []

    def collection_info(self, name):
        return self.collections.get(name)

    def collection_exists(self, name):
        return name in self.collections

    def update_collection(self, req):
        self.requests.append(req)
        endpoint_schema.apply_update(self.collections[req.collection_name].config, req, with_metadata=False)

    def create_vector_name(self, collection, name, *, dense=None, sparse=None):
        self.requests.append(("create", name, dense))
        endpoint_schema.add_dense_vector(self.collections[collection].config, name, dense)

    def delete_collection(self, name):
        del self.collections[name]

    def delete_vector_name(self, collection, name):
        del self.collections[collection].config.params.vectors_config.params_map.map[name]

    def list_aliases(self):
        return dict(self.aliases)

    def update_aliases(self, actions):
        for a in actions:
            self.aliases[a.create_alias.alias_name] = a.create_alias.collection_name

    def health(self):
        return V18


def test_in_place_creates_a_multivector_and_moves_it_on_disk_during_side_by_side():
    s = schema()
    c = cfg("side_by_side", target__vector_name="colbert_v2")
    d = strategies.decide(c, V18, s)
    assert d.layout == "in_place" and d.multi_name == "colbert_v2"
    assert [r.vector for r in d.on_disk] == ["colbert_v2"]  # existing vectors of the live collection keep theirs
    server = FakeServer(docs=source_info())
    created = strategies.add_vectors_in_place(server, c, d, s, 128, set())
    assert created == ["colbert_v2"]
    _, name, creation = server.requests[0]
    assert name == "colbert_v2" and creation.multivector_config == MAXSIM and creation.size == 128
    vmap = server.collections["docs"].config.params.vectors_config.params_map.map
    assert vmap["colbert_v2"].on_disk and vmap["colbert_v2"].multivector_config == MAXSIM
    assert not vmap["big"].HasField("on_disk") and vmap["colbert"].on_disk is False
    # a resume after a crash between the two calls: the vector is the job's, it is put on disk all the same
    vmap["colbert_v2"].on_disk = False
    s2 = strategies.SourceSchema.from_info("docs", server.collections["docs"], 1000)
    assert strategies.add_vectors_in_place(server, c, d, s2, 128, {"colbert_v2"}) == []
    assert vmap["colbert_v2"].on_disk
    # a plain in_place job leaves the placement to target.on_disk
    plain = cfg("in_place", target__vector_name="colbert_v3")
    server.requests.clear()
    strategies.add_vectors_in_place(server, plain, strategies.decide(plain, V18, s2), s2, 128, set())
    assert not vmap["colbert_v3"].on_disk and all(isinstance(r, tuple) for r in server.requests)


def test_an_existing_vector_of_the_other_kind_is_refused():
    c = cfg("in_place", target__vector_name="big")
    d = strategies.decide(c, V18, schema())
    info = source_info()
    info.config.params.vectors_config.params_map.map["big"].size = 128
    with pytest.raises(PreconditionError, match="plain dense vector; choose a new target.collection"):
        strategies.add_vectors_in_place(FakeServer(docs=info), c, d, strategies.SourceSchema.from_info(
            "docs", info, 1), 128, {"big"})
    target = pb.CollectionInfo()
    target.config.params.vectors_config.params_map.map["colbert"].CopyFrom(pb.VectorParams(size=128))
    nc = strategies.decide(cfg("new_collection", "docs_v2"), V18, schema())
    with pytest.raises(PreconditionError, match="token vectors"):
        strategies.check_new_collection_target(target, nc, 128)
    target.config.params.vectors_config.params_map.map["colbert"].multivector_config.CopyFrom(MAXSIM)
    strategies.check_new_collection_target(target, nc, 128)


def _finished(decision: Decision) -> JobState:
    state = JobState(job_id="j", fingerprint="f", boundaries=[], shards=[], decision=decision, finished=True)
    state.verify = None
    return state


class Store:
    def __init__(self, state: JobState) -> None:
        self.state = state

    def load(self, job_id):
        return JobState.from_json(self.state.to_json())  # what a checkpoint store hands back

    def save(self, state):
        self.state = state

    def describe(self):
        return "memory"


def test_swap_and_cleanup_put_back_what_the_user_asked_for():
    c = cfg("side_by_side", "docs_ab", target__vector_name="colbert_v2", target__on_disk=False)
    d = strategies.decide(c, V16, schema())
    target = pb.CollectionInfo()
    target.config.CopyFrom(endpoint_schema.config_from_create(strategies.new_collection_request(c, d, schema(), 128),
                                                              with_metadata=False))
    server = FakeServer(docs=source_info(), docs_ab=target)
    store = Store(_finished(d))
    event = cutover.swap(server, store, "j", "docs_live", "docs", "docs_ab", force=True)
    vmap = server.collections["docs_ab"].config.params.vectors_config.params_map.map
    assert vmap["colbert"].on_disk is False and vmap["colbert_v2"].on_disk is False  # as asked
    assert vmap["pinned"].memory == pb.Memory.Pinned  # Qdrant 1.19's placement, as the source had it
    assert vmap["big"].on_disk  # nobody asked: stays on disk
    assert {r["vector"] for r in event["on_disk_restored"]} == {"colbert", "colbert_v2", "pinned"}
    # idempotent: nothing left to put back, so the cleanup sends nothing
    sent = len(server.requests)
    cutover.cleanup(server, store, "j", "docs", "docs_ab", confirm=True, force=True)
    assert len(server.requests) == sent and "docs" not in server.collections


def test_drop_vector_puts_back_the_new_vectors_placement_in_place():
    c = cfg("side_by_side", target__vector_name="colbert_v2", target__on_disk=False)
    s = schema()
    d = strategies.decide(c, V18, s)
    server = FakeServer(docs=source_info())
    strategies.add_vectors_in_place(server, c, d, s, 128, set())
    vmap = server.collections["docs"].config.params.vectors_config.params_map.map
    assert vmap["colbert_v2"].on_disk
    store = Store(_finished(d))
    event = cutover.drop_vector(server, store, "j", "docs", "colbert", confirm=True, force=True)
    assert vmap["colbert_v2"].on_disk is False and "colbert" not in vmap
    assert event["on_disk_restored"] == [{"collection": "docs", "vector": "colbert_v2", "on_disk": False,
                                          "memory": None}]


def test_the_on_disk_record_survives_the_checkpoint_and_old_checkpoints_load():
    d = strategies.decide(cfg("side_by_side", "docs_ab", target__vector_name="v2"), V16, schema())
    assert d.on_disk
    state = _finished(d)
    again = JobState.from_json(state.to_json())
    assert again.decision == d and isinstance(again.decision.on_disk[0], OnDiskOverride)
    assert again.to_dict() == state.to_dict()
    v1 = {"version": 1, "job_id": "old", "fingerprint": "f", "shards": [],
          "info": {"decision": {"requested": "auto", "strategy": "in_place", "layout": "in_place", "collection": "c",
                                "dense_vector": "dense", "sparse_vector": None}}}
    old = JobState.from_dict(v1)
    assert old.decision.dense_name == "dense" and old.decision.on_disk == () and old.decision.multi_name is None
    assert JobState.from_json(old.to_json()).decision == old.decision
