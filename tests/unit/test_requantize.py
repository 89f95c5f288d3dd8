"""Changes that need no model run: a quantization change answered with the UpdateCollection that does it (applied
here as the embedded endpoint merges it, engine/embedded/schema.py), only when the model is the one that made the
source vectors; and the guide's small-collection advice."""

from __future__ import annotations

import pytest
from qdrant_client import grpc as pb

from engine import tunables
from engine.embedded import schema as endpoint_schema
from engine.errors import PreconditionError
from engine.migration import strategies

SCALAR = pb.QuantizationConfig(scalar=pb.ScalarQuantization(type=pb.QuantizationType.Int8, quantile=0.99,
                                                            always_ram=True))
BINARY = pb.QuantizationConfig(binary=pb.BinaryQuantization(always_ram=True))


def info(collection_q: pb.QuantizationConfig | None = None, own: dict | None = None, unnamed: bool = False,
         size: int = 32, multi: bool = False) -> pb.CollectionInfo:
    out = pb.CollectionInfo(points_count=10)
    if collection_q is not None:
        out.config.quantization_config.CopyFrom(collection_q)
    params = pb.VectorParams(size=size, distance=pb.Distance.Cosine)
    if multi:
        params.multivector_config.comparator = pb.MultiVectorComparator.MaxSim
    if unnamed:
        out.config.params.vectors_config.params.CopyFrom(params)
        if own:
            out.config.params.vectors_config.params.quantization_config.CopyFrom(own[""])
        return out
    vmap = out.config.params.vectors_config.params_map.map
    vmap["dense"].CopyFrom(params)
    for name, q in (own or {}).items():
        vmap[name].CopyFrom(pb.VectorParams(size=8, distance=pb.Distance.Dot, quantization_config=q))
    return out


def apply(src: pb.CollectionInfo, req: pb.UpdateCollection) -> pb.CollectionInfo:
    out = pb.CollectionInfo()
    out.CopyFrom(src)
    endpoint_schema.apply_update(out.config, req, with_metadata=False)
    return out


def test_quantization_of_reads_the_collection_and_each_vectors_own():
    assert strategies.quantization_of(info()) == "none"
    assert strategies.quantization_of(info(SCALAR)) == "scalar"
    assert strategies.quantization_of(info(SCALAR, own={"img": BINARY})) == "mixed"
    assert strategies.quantization_of(info(None, own={"": BINARY}, unnamed=True)) == "binary"


@pytest.mark.parametrize("src", [info(), info(BINARY), info(SCALAR, own={"img": BINARY}),
                                 info(None, own={"": BINARY}, unnamed=True)])
@pytest.mark.parametrize("wanted", ["none", "scalar", "binary"])
def test_requantize_request_gives_every_vector_the_requested_quantization(src, wanted):
    req = strategies.requantize_request("docs", src, wanted)
    assert req.collection_name == "docs"
    assert req.quantization_config.WhichOneof("quantization") == ("disabled" if wanted == "none" else wanted)
    if wanted == "scalar":  # the settings a new collection gets: int8, 0.99 quantile, kept in RAM
        assert req.quantization_config.scalar == SCALAR.scalar
    assert strategies.quantization_of(apply(src, req)) == wanted
    assert not req.HasField("optimizers_config") and not req.HasField("params")  # nothing else changes


def test_requantize_refuses_what_it_cannot_apply():
    with pytest.raises(PreconditionError, match="set target.layout.quantization to none, scalar or binary"):
        strategies.requantize_request("docs", info(), "keep")


def answer(src: pb.CollectionInfo, **kw):
    args = {"requested": "scalar", "strategy": "new_collection", "shortcut": "none", "model_name": "hash:32",
            "model_kind": "dense", "matryoshka_dim": None, "old_model": "hash:32", "recorded_model": None,
            "vector": None}
    args.update(kw)
    return strategies.quantization_only(src, "docs", **args)


def test_quantization_only_when_the_model_is_the_one_that_made_the_source_vectors():
    got = answer(info())
    assert got is not None and (got.current, got.requested) == ("none", "scalar")
    assert "verify.old_model" in got.evidence and got.request.quantization_config.HasField("scalar")
    recorded = answer(info(), old_model=None, recorded_model={"name": "hash:32", "dim": 32})
    assert recorded is not None and "metadata" in recorded.evidence
    assert answer(info(SCALAR)).request is None  # already scalar: nothing to send
    assert answer(info(None, own={"": BINARY}, unnamed=True)).current == "binary"


@pytest.mark.parametrize("change", [
    {"old_model": None},  # nothing says the model made the source vectors
    {"old_model": "hash:64"},  # another model
    {"recorded_model": {"name": "other"}, "old_model": None},
    {"requested": "keep"},  # no quantization change asked
    {"strategy": "hybrid"},  # a sparse vector needs its encoder run
    {"shortcut": "matryoshka"},
    {"model_name": "hash:64", "old_model": "hash:64"},  # the source vectors are 32-d: not the same model output
    {"matryoshka_dim": 16},
    {"model_kind": "late_interaction"},  # the source vector is not a multivector
])
def test_anything_more_than_quantization_needs_the_model(change):
    assert answer(info(), **change) is None


def test_quantization_only_reads_the_named_vector_and_the_multivector_kind():
    src = info(own={"img": BINARY})
    assert answer(src).current == "mixed"  # two vectors, none named: no dimension to compare
    assert answer(src, vector="img", model_name="hash:8", old_model="hash:8") is not None
    assert answer(src, vector="dense", model_name="hash:8", old_model="hash:8") is None  # dense is 32-d
    colbert = info(size=128, multi=True)
    assert answer(colbert, model_name="/ckpt", old_model="/ckpt", model_kind="late_interaction") is not None
    assert answer(colbert, model_name="/ckpt", old_model="/ckpt") is None


def test_small_collection_advice_follows_the_guide():
    limit = tunables.SMALL_COLLECTION_BYTES
    advice = strategies.small_collection_advice(limit - 1)
    assert advice is not None and "re-indexing it from the source data" in advice and "25 MB" in advice
    assert strategies.small_collection_advice(limit) is None
