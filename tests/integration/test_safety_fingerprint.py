"""The job's fingerprint (engine/app/job.py `fingerprint_parts`, hashed by engine/flow/checkpoint.py `fingerprint`)
changes whenever the vectors a resumed job would write could differ from those already written: any model identity
field (engine/embed/base.py IDENTITY_KEYS), the source, the target, the vector, the text, the plan. A resume under a
changed fingerprint is refused, so a job never mixes two models' vectors in one collection. Fields that change only
speed or provenance (device, dtype, batching) leave it as it is, so a job resumed on other hardware continues.

No Ray is started here: this is the integration tier only because engine/app imports Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.app.job import _diff, fingerprint_parts
from engine.embed import build_embedder
from engine.embed.base import IDENTITY_KEYS
from engine.errors import CheckpointMismatch
from engine.flow.checkpoint import check_resume, fingerprint
from engine.flow.state import Decision, JobState
from tests.integration.pipeline_support import config

BOUNDARIES = [100, 200, "0b4e28ba-2fa1-11d2-883f-0016d3cca427"]


def _decision(**changes) -> Decision:
    base = dict(requested="new_collection", strategy="new_collection", layout="new_collection", collection="dst",
                dense_name="dense", sparse_name=None)
    return Decision(**{**base, **changes})


def _fp(cfg=None, model=None, boundaries=BOUNDARIES, decision=None) -> str:
    cfg = cfg or config(6334, Path("/tmp"))
    model = model if model is not None else build_embedder({"name": "hash:32"}).describe()
    return fingerprint(fingerprint_parts(cfg, model, boundaries, decision or _decision()))


def _other_value(key: str, value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return 7 if key.endswith("dim") or key == "max_length" else "set"
    return f"{value}-other"


@pytest.mark.parametrize("key", IDENTITY_KEYS)
def test_every_model_identity_field_changes_the_fingerprint(key):
    model = build_embedder({"name": "hash:32"}).describe()
    changed = {**model, key: _other_value(key, model.get(key))}
    assert _fp(model=changed) != _fp(model=model), f"a model differing only in {key!r} would resume the job"


def test_another_model_of_the_same_dimension_changes_it():
    same_dim = [build_embedder({"name": name}).describe() for name in ("hash:32", "hashed-bow:32")]
    assert same_dim[0]["dim"] == same_dim[1]["dim"]
    assert _fp(model=same_dim[0]) != _fp(model=same_dim[1])


@pytest.mark.parametrize("key,value", [("device", "cuda:1"), ("dtype", "bfloat16"), ("batch_size", 512),
                                       ("name", "a local copy of the same files"), ("revision", "main")])
def test_speed_and_provenance_fields_leave_it_alone(key, value):
    model = build_embedder({"name": "hash:32"}).describe()
    assert _fp(model={**model, key: value}) == _fp(model=model)


def test_the_same_job_gets_the_same_fingerprint():
    assert _fp() == _fp() and len(_fp()) == 24


@pytest.mark.parametrize("change", [
    {"source": "src2"}, {"target": "dst2"}, {"model": "hash:32"}, {"text_field": "body"}, {"vector_name": "new"}])
def test_source_target_vector_and_text_change_it(change, tmp_path):
    base = dict(source="src", target="dst")
    cfg = config(6334, tmp_path, **{k: v for k, v in {**base, **change}.items() if k in ("source", "target",
                                                                                          "model")},
                 **({"source__text_field": change["text_field"]} if "text_field" in change else {}),
                 **({"target__vector_name": change["vector_name"]} if "vector_name" in change else {}))
    decision = _decision(collection=change.get("target", "dst"))
    same = change == {"model": "hash:32"}  # the config's model name is not part of it: the model's identity is
    assert (_fp(cfg=cfg, decision=decision) == _fp()) is same


def test_the_shard_plan_changes_it():
    assert _fp(boundaries=[100, 200]) != _fp()
    assert _fp(boundaries=[100, 201, BOUNDARIES[2]]) != _fp()


def test_the_layout_of_another_strategy_and_a_sparse_model_change_it():
    hybrid = _decision(strategy="hybrid", layout="in_place", collection="src", dense_name=None, sparse_name="bm25")
    assert _fp(decision=hybrid) != _fp(decision=_decision(strategy="hybrid", layout="in_place", collection="src",
                                                          dense_name=None, sparse_name="splade"))
    model = build_embedder({"name": "hash:32"}).describe()
    sparse = _fp(model={**model, "sparse": {"kind": "bm25"}}, decision=_decision(sparse_name="bm25"))
    assert sparse != _fp(model={**model, "sparse": {"kind": "splade"}}, decision=_decision(sparse_name="bm25"))


def test_a_resume_with_another_model_is_refused_naming_what_changed():
    cfg = config(6334, Path("/tmp"))
    old = build_embedder({"name": "hash:32"}).describe()
    new = build_embedder({"name": "hashed-bow:32"}).describe()
    parts = fingerprint_parts(cfg, old, BOUNDARIES, _decision())
    state = JobState(job_id="j", fingerprint=fingerprint(parts), boundaries=BOUNDARIES, shards=[], parts=parts)
    now = fingerprint_parts(cfg, new, BOUNDARIES, _decision())
    with pytest.raises(CheckpointMismatch, match=r"different source, target, model.*\(model changed\); restore"):
        check_resume(state, fingerprint(now), differences=_diff(state.parts, now))
    check_resume(state, fingerprint(fingerprint_parts(cfg, old, BOUNDARIES, _decision())))  # the same job resumes
    assert _diff(parts, now) == "model changed"


# A model description fixed here (not an embedder's, whose algorithm tag may rightly change) and the fingerprints
# this version computes from it.
FIXED_MODEL = {"kind": "hash", "fingerprint": "algo/v2", "model_dim": 32, "dim": 32, "pooling": None,
               "normalize": True, "max_length": None, "matryoshka_dim": None, "prefix": "", "device": "cpu"}


def test_the_fingerprint_of_a_saved_job_stays_what_it_was():
    """A checkpoint saved by this version must resume under the next one: renaming a part, or spelling the decision
    another way, would refuse every unfinished job after an upgrade. Change these values only together with a way
    for old checkpoints to resume (as `_v1_decision` keeps version-1 fingerprints)."""
    cfg = config(6334, Path("/tmp"))
    assert fingerprint(fingerprint_parts(cfg, FIXED_MODEL, [100, 200], _decision())) == "394aeb047157002ffe8549b0"
    hybrid = _decision(requested="hybrid", strategy="hybrid", layout="in_place", collection="src", dense_name=None,
                       sparse_name="bm25", copy_vectors={"a": "b"}, vector_input="v", reason="r")
    model = {**FIXED_MODEL, "sparse": {"kind": "bm25"}}
    assert fingerprint(fingerprint_parts(cfg, model, [100, 200], hybrid)) == "537c8b0225437b964aec6d2f"


def test_the_fingerprint_of_a_saved_job_writing_the_unnamed_vector_stays_what_it_was():
    cfg = config(6334, Path("/tmp"), target__vector_name="")
    parts = fingerprint_parts(cfg, FIXED_MODEL, [100, 200], _decision(dense_name=""))
    assert parts["vector"] == "" and fingerprint(parts) == "35dc68793bdf9889ec8ba36f"


def test_a_refused_resume_without_a_list_of_differences_says_none():
    state = JobState(job_id="j", fingerprint="old", boundaries=BOUNDARIES, shards=[], parts={})
    with pytest.raises(CheckpointMismatch) as refused:
        check_resume(state, "new")
    assert "text spec or shard plan; restore the original config" in str(refused.value)
