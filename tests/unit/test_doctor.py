"""reembed doctor without Ray: the report's lines, summary, JSON and exit code, each check a node runs (with a fake
Qdrant client, fake GPU probes and model builders, real files under tmp_path), the driver's preflight, and the
CLI's refusal of a command module that does not import."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from qdrant_client import grpc as pb

from actors.sizing import LaneOptions
from engine.app import cli
from engine.app import doctor as dr
from engine.config import config_from_dict
from engine.errors import ConfigError, ModelError, PreconditionError, QdrantUnavailable
from engine.flow.state import Decision
from engine.qdrant import wire
from engine.qdrant.client import ServerInfo
from engine.qdrant.connection import Endpoint

NODE = "10.0.0.7 (ab12cd34)"
VERSIONS = dr.Versions(python="3.11.9", ray="2.60.0", torch="2.13.0", cuda="12.8", reembed="0.1.0")
REFUSED = ("the Qdrant server at h:6334 refused the API key during check collection 'src'; "
           "set the right key in QDRANT_API_KEY or qdrant.api_key")
GIB = 2**30


class FakeQdrant:
    """The calls the checks make, over in-memory collections; `refuse` answers like a wrong key."""

    def __init__(self, collections=("src",), version="1.19.0", refuse=False, down=False):
        self.collections = {name: {} for name in collections}
        self.version, self.refuse, self.down = version, refuse, down
        self.created: list[str] = []
        self.closed = False

    def _auth(self):
        if self.refuse:
            raise PreconditionError(REFUSED)

    def health(self):
        if self.down:
            raise QdrantUnavailable("health check on h:6334 kept failing (UNAVAILABLE: connection refused); check the "
                                    "server is up and reachable, or raise retry.max_attempts / retry.deadline_s")
        return ServerInfo("qdrant", self.version)

    def collection_info(self, name):
        self._auth()
        return pb.CollectionInfo() if name in self.collections else None

    def collection_exists(self, name):
        self._auth()
        return name in self.collections

    def create_collection(self, request):
        self._auth()
        self.collections[request.collection_name] = {}
        self.created.append(request.collection_name)

    def delete_collection(self, name):
        self.collections.pop(name)

    def upsert_raw(self, request, what):
        self._auth()
        req = pb.UpsertPoints.FromString(request)
        for p in req.points:
            self.collections[req.collection_name][wire.id_value(p.id)] = p

    def get(self, collection, ids, *, with_payload=True):
        return [self.collections[collection][i] for i in ids if i in self.collections[collection]]

    def delete_points(self, collection, ids):
        for i in ids:
            self.collections[collection].pop(i, None)

    def close(self):
        self.closed = True


def _gpus(*free_total):
    return dr.GpuProbe(tuple(dr.GpuInfo(i, "NVIDIA L4", int(f * GIB), int(t * GIB))
                             for i, (f, t) in enumerate(free_total)), "2.13.0", "12.8")


def _spec(tmp_path: Path, **over) -> dr.NodeSpec:
    spec = dr.NodeSpec(endpoint=Endpoint("h", 6334, api_key="k"), source="src",
                       vectorizer={"dense": {"name": "hash:8"}, "sparse": None, "shortcut": None},
                       store=dr.StoreSpec("qdrant", "_reembed"), runs_root=str(tmp_path / "runs"), driver=VERSIONS,
                       lanes=LaneOptions(), server_version="1.19.0")
    return replace(spec, **over)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


# --- the report -----------------------------------------------------------------------------------------------------

def test_report_lines_summary_json_and_exit_code():
    ok = dr.DoctorReport([dr.DoctorResult("driver", "qdrant", dr.PASS, "h:6334: qdrant 1.19.0"),
                          dr.DoctorResult(NODE, "gpu", dr.WARN, "GPU 0 mostly in use", "stop the other process")],
                         nodes=["driver", NODE])
    assert ok.passed and ok.exit_code == 0
    lines = ok.lines()
    assert lines[0].startswith("PASS  driver") and "| fix:" not in lines[0]
    assert lines[1].startswith(f"WARN  {NODE}  gpu") and lines[1].endswith("| fix: stop the other process")
    # the columns line up: the check names start at the same place
    assert lines[0].index("qdrant") == lines[1].index("gpu")
    assert ok.summary() == "doctor PASSED: 2 checks on 2 node(s): 1 PASS, 1 WARN, 0 FAIL"

    bad = dr.DoctorReport(ok.results + [dr.DoctorResult(NODE, "model", dr.FAIL, "no such model", "fix model.name")],
                          nodes=["driver", NODE])
    assert not bad.passed and bad.exit_code == 1
    assert bad.lines()[-1].startswith(f"FAIL  {NODE}  model") and bad.lines()[-1].endswith("| fix: fix model.name")
    assert bad.summary().startswith("doctor FAILED: 3 checks on 2 node(s)")
    data = json.loads(bad.to_json())
    assert data["passed"] is False and data["fail"] == 1 and data["nodes"] == ["driver", NODE]
    assert data["results"][-1] == {"node": NODE, "check": "model", "status": "FAIL", "detail": "no such model",
                                   "fix": "fix model.name"}


def test_split_fix_and_failed_keep_our_errors_own_fix():
    assert dr.split_fix("refused (code; detail); set the key") == ("refused (code; detail)", "set the key")
    assert dr.split_fix("no fix here") == ("no fix here", "")
    result = dr.failed(NODE, "qdrant", PreconditionError(REFUSED), "default fix")
    assert result.status == dr.FAIL and result.fix == "set the right key in QDRANT_API_KEY or qdrant.api_key"
    other = dr.failed(NODE, "run-dir", PermissionError(13, "Permission denied"), "the default")
    assert other.detail.startswith("PermissionError:") and other.fix == "the default"


def test_require_raises_the_first_fail_with_its_fix():
    dr.require([dr.DoctorResult("driver", "strategy", dr.WARN, "old server", "upgrade")])
    with pytest.raises(PreconditionError) as err:
        dr.require([dr.DoctorResult("driver", "qdrant", dr.PASS, "ok"),
                    dr.DoctorResult("driver", "run-dir", dr.FAIL, "/x is not writable", "set dead_letter.dir"),
                    dr.DoctorResult("driver", "checkpoint", dr.FAIL, "refused", "use a key that may write")])
    text = str(err.value)
    assert "run-dir" in text and "/x is not writable" in text and text.endswith("; set dead_letter.dir")
    assert "1 more" in text and "\n" not in text


# --- versions and GPUs ----------------------------------------------------------------------------------------------

def test_versions_must_match_the_driver():
    assert dr.check_versions(NODE, VERSIONS, VERSIONS).status == dr.PASS
    other = dr.Versions(python="3.11.9", ray="2.60.0", torch="2.12.0", cuda="12.1", reembed="0.1.0")
    result = dr.check_versions(NODE, other, VERSIONS)
    assert result.status == dr.FAIL
    assert "torch 2.12.0 here, 2.13.0 on the driver" in result.detail and "CUDA 12.1 here, 12.8" in result.detail
    assert "same versions on every node" in result.fix
    missing = dr.check_versions(NODE, dr.Versions("3.11.9", "2.60.0", None, None, "0.1.0"), VERSIONS)
    assert missing.status == dr.FAIL and "torch is not installed" in missing.detail
    assert missing.fix.startswith("install torch 2.13.0 on this node")


def test_versions_here_reads_this_process():
    here = dr.Versions.here()
    assert here.python.count(".") == 2 and here.torch is not None and here.reembed is not None


@pytest.mark.parametrize("ray_gpus, probe, status, words", [
    (1, dr.GpuProbe((), "2.13.0+cpu", None), dr.FAIL, ["sees none", "no NVIDIA driver", "CPU build of torch"]),
    (2, _gpus((20, 22)), dr.FAIL, ["Ray counts 2 GPU(s) here but torch sees 1"]),
    (1, _gpus((21.5, 22)), dr.PASS, ["1 GPU(s)", "NVIDIA L4", "21.5 of 22.0 GiB free"]),
    (2, _gpus((21.5, 22), (3, 22)), dr.WARN, ["GPU 1 mostly in use"]),
    (0, _gpus((21.5, 22)), dr.WARN, ["Ray counts none", "on the CPU"]),
    (0, dr.GpuProbe((), "2.13.0+cpu", None), dr.PASS, ["no GPU"]),
    (1, dr.GpuProbe((), "2.13.0", "12.8", "RuntimeError: CUDA driver version is insufficient"), dr.FAIL,
     ["insufficient"]),
])
def test_gpu_check(ray_gpus, probe, status, words):
    result = dr.check_gpus(NODE, ray_gpus, probe)
    assert result.status == status, result
    for word in words:
        assert word in result.detail
    if status == dr.FAIL:
        assert result.fix


def test_torch_gpus_on_this_machine_answers():
    probe = dr.torch_gpus()
    assert probe.torch is not None and probe.error is None


# --- the model ------------------------------------------------------------------------------------------------------

CPU_NODE = {"CPU": 4.0}


def test_model_loads_and_embeds_one_text():
    from engine.embed.vectorize import build_vectorizer

    result, model = dr.check_model(NODE, {"dense": {"name": "hash:8"}}, 1, CPU_NODE, build_vectorizer)
    assert result.status == dr.PASS and "hash:8 on cpu (float32): one text -> 8-d float32" in result.detail
    assert model is not None and model["dim"] == 8


def test_model_failures_and_skips():
    def missing(spec):
        raise ModelError("model directory '/models/x' does not exist; fix model.name (a local directory or a hub id "
                         "like 'org/model')")

    result, model = dr.check_model(NODE, {"dense": {"name": "/models/x"}}, 1, CPU_NODE, missing)
    assert result.status == dr.FAIL and "/models/x" in result.detail and result.fix.startswith("fix model.name")
    assert model is None

    def crash(spec):
        raise RuntimeError("CUDA out of memory")

    result, _ = dr.check_model(NODE, {"dense": {"name": "m"}}, 1, CPU_NODE, crash)
    assert result.detail == "RuntimeError: CUDA out of memory" and result.fix == dr.FIX_MODEL

    class Zero:
        def embed(self, texts):
            return np.zeros((len(texts), 4), dtype=np.float32)

        def describe(self):
            return {"name": "zero", "device": "cpu", "dtype": "float32"}

    result, _ = dr.check_model(NODE, {"dense": {"name": "zero"}}, 1, CPU_NODE, lambda spec: Zero())
    assert result.status == dr.FAIL and "zero or NaN" in result.detail

    not_here, model = dr.check_model(NODE, {"dense": {"name": "m"}}, 0, {"CPU": 0.0}, crash)
    assert not_here.status == dr.PASS and "hosts no lane" in not_here.detail and model is None
    shortcut, _ = dr.check_model(NODE, None, 1, CPU_NODE, crash)
    assert shortcut.status == dr.PASS and "shortcut" in shortcut.detail


def test_model_on_the_cpu_of_a_gpu_node_is_a_warning():
    from engine.embed.vectorize import build_vectorizer

    result, _ = dr.check_model(NODE, {"dense": {"name": "hash:8"}}, 1, {"CPU": 4.0, "GPU": 1.0}, build_vectorizer)
    assert result.status == dr.WARN and "ran on the CPU although Ray counts 1 GPU" in result.detail


def test_models_must_agree_across_nodes():
    same = {"kind": "dense", "fingerprint": "aa", "dim": 8}
    assert dr.model_agreement([dr.NodeReport("a", [], same), dr.NodeReport("b", [], dict(same)),
                               dr.NodeReport("c", [], None)]) == []
    [result] = dr.model_agreement([dr.NodeReport("a", [], same),
                                   dr.NodeReport("b", [], {**same, "fingerprint": "bb"})])
    assert result.status == dr.FAIL and "aa on a" in result.detail and "bb on b" in result.detail


# --- Qdrant and the checkpoint store --------------------------------------------------------------------------------

ENDPOINT = Endpoint("h", 6334, tls=True, api_key="k")


def test_qdrant_check():
    ok = dr.check_qdrant(NODE, FakeQdrant(), ENDPOINT, "src", "1.19.0")
    assert ok.status == dr.PASS and "h:6334 over gRPC with TLS, API key set: Qdrant 1.19.0" in ok.detail
    missing = dr.check_qdrant(NODE, FakeQdrant(collections=()), ENDPOINT, "src", None)
    assert missing.status == dr.FAIL and "'src' does not exist" in missing.detail and "source.collection" in missing.fix
    refused = dr.check_qdrant(NODE, FakeQdrant(refuse=True), ENDPOINT, "src", None)
    assert refused.status == dr.FAIL and "refused the API key" in refused.detail and "QDRANT_API_KEY" in refused.fix
    down = dr.check_qdrant(NODE, FakeQdrant(down=True), ENDPOINT, "src", None)
    assert down.status == dr.FAIL and "UNAVAILABLE" in down.detail and down.fix == dr.FIX_REACH
    other = dr.check_qdrant(NODE, FakeQdrant(version="1.18.0"), ENDPOINT, "src", "1.19.0")
    assert other.status == dr.WARN and "1.18.0 here, 1.19.0 from the driver" in other.detail


def test_qdrant_store_probe_leaves_nothing():
    client = FakeQdrant(collections=("src", "_reembed"))
    result = dr.check_store(NODE, dr.StoreSpec("qdrant", "_reembed"), client, "t" * 32, create_if_absent=False)
    assert result.status == dr.PASS and "probe point" in result.detail
    assert client.collections["_reembed"] == {} and client.created == []

    absent = FakeQdrant()
    result = dr.check_store("driver", dr.StoreSpec("qdrant", "_reembed"), absent, "t" * 32, create_if_absent=True)
    assert result.status == dr.PASS and absent.created == ["_reembed_doctor_tttttttt"]
    assert set(absent.collections) == {"src"}  # the scratch collection is gone, the real one not made

    on_node = FakeQdrant()
    result = dr.check_store(NODE, dr.StoreSpec("qdrant", "_reembed"), on_node, "t" * 32, create_if_absent=False)
    assert result.status == dr.PASS and "does not exist yet" in result.detail and on_node.created == []

    refused = FakeQdrant(collections=("src", "_reembed"))
    refused.refuse = True
    result = dr.check_store(NODE, dr.StoreSpec("qdrant", "_reembed"), refused, "t" * 32, create_if_absent=False)
    assert result.status == dr.FAIL and "QDRANT_API_KEY" in result.fix


def test_uri_store_probe(tmp_path):
    uri = str(tmp_path / "ckpt")
    result = dr.check_store(NODE, dr.StoreSpec("uri", "_reembed", uri), None, "t" * 32, create_if_absent=False)
    assert result.status == dr.PASS and _files(tmp_path / "ckpt") == []
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = dr.check_store(NODE, dr.StoreSpec("uri", "_reembed", str(blocker / "ckpt")), None, "t" * 32,
                            create_if_absent=False)
    assert result.status == dr.FAIL and result.fix == dr.FIX_STORE_URI


# --- the run directory ----------------------------------------------------------------------------------------------

def test_run_dir_probe_leaves_nothing(tmp_path):
    root = tmp_path / "runs"
    result = dr.check_run_dir(NODE, str(root), "t" * 32, None)
    assert result.status == dr.PASS and _files(root) == []


def test_run_dir_shared_with_the_driver(tmp_path):
    root = str(tmp_path / "runs")
    folder = dr.write_marker(root, "d" * 32)
    result = dr.check_run_dir(NODE, root, "t" * 32, folder)
    assert result.status == dr.PASS and "driver's probe visible" in result.detail
    assert [p.name for p in _files(tmp_path / "runs" / folder)] == [dr.DRIVER_MARKER]  # the node's own file is gone
    dr.remove_folder(root, folder)
    assert _files(tmp_path / "runs") == []


def test_run_dir_that_is_not_the_drivers_fails(tmp_path):
    # The driver wrote its marker on its own disk; this node's path of the same name is another directory.
    driver_root, node_root = tmp_path / "driver" / "runs", tmp_path / "node" / "runs"
    folder = dr.write_marker(str(driver_root), "d" * 32)
    result = dr.check_run_dir(NODE, str(node_root), "t" * 32, folder)
    assert result.status == dr.FAIL and "not the driver's" in result.detail and result.fix == dr.FIX_RUN_DIR
    assert _files(node_root) == []  # the node removed the folder it made on its own disk


def test_unwritable_run_dir_fails(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = dr.check_run_dir(NODE, str(blocker / "runs"), "t" * 32, None)
    assert result.status == dr.FAIL and result.fix == dr.FIX_RUN_DIR


# --- one node, all checks -------------------------------------------------------------------------------------------

def test_node_checks_in_order(tmp_path):
    client = FakeQdrant(collections=("src", "_reembed"))
    report = dr.node_checks(NODE, {"CPU": 4.0, "GPU": 1.0}, _spec(tmp_path), connect=lambda e: client,
                            gpu_probe=lambda: _gpus((21, 22)), versions=lambda: VERSIONS,
                            build=lambda spec: _Unit("cuda:0"))
    assert [(r.check, r.status) for r in report.results] == [
        ("versions", dr.PASS), ("gpu", dr.PASS), ("qdrant", dr.PASS), ("checkpoint", dr.PASS), ("run-dir", dr.PASS),
        ("model", dr.PASS)]
    assert all(r.node == NODE for r in report.results) and client.closed
    assert report.model is not None and report.model["fingerprint"] == "unit"


def test_node_checks_with_a_refused_key_and_a_cpu_build(tmp_path):
    report = dr.node_checks(NODE, {"CPU": 4.0, "GPU": 1.0}, _spec(tmp_path), connect=lambda e: FakeQdrant(refuse=True),
                            gpu_probe=lambda: dr.GpuProbe((), "2.13.0+cpu", None), versions=lambda: VERSIONS,
                            build=lambda spec: _Unit("cpu"))
    by_check = {r.check: r for r in report.results}
    assert by_check["gpu"].status == dr.FAIL and by_check["qdrant"].status == dr.FAIL
    assert "checkpoint" not in by_check  # a qdrant store is not probed through a refused key
    assert by_check["run-dir"].status == dr.PASS


def test_node_checks_with_an_unreadable_ca_certificate(tmp_path):
    def connect(endpoint):
        raise ConfigError("qdrant.tls_ca_cert='/etc/ca.pem' cannot be read (No such file or directory); point it at "
                          "a PEM file")

    report = dr.node_checks(NODE, {"CPU": 4.0}, _spec(tmp_path, store=dr.StoreSpec("uri", "_r", str(tmp_path / "c"))),
                            connect=connect, gpu_probe=lambda: dr.GpuProbe((), "2.13.0+cpu", None),
                            versions=lambda: VERSIONS, build=lambda spec: _Unit("cpu"))
    by_check = {r.check: r for r in report.results}
    assert by_check["qdrant"].status == dr.FAIL and "PEM file" in by_check["qdrant"].fix
    assert by_check["checkpoint"].status == dr.PASS  # a uri store does not need Qdrant


class _Unit:
    def __init__(self, device):
        self.device = device

    def embed(self, texts):
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    def describe(self):
        return {"kind": "dense", "name": "unit", "fingerprint": "unit", "dim": 4, "device": self.device,
                "dtype": "float32"}


# --- the driver -----------------------------------------------------------------------------------------------------

def _config(tmp_path, **over):
    data = {"qdrant": {"url": "http://127.0.0.1", "grpc_port": 6334}, "source": {"collection": "src",
                                                                                  "text_field": "text"},
            "target": {"collection": "dst", "vector_name": "dense"}, "model": {"name": "hash:8"},
            "dead_letter": {"dir": str(tmp_path / "runs")}}
    data.update(over)
    return config_from_dict(data, env={})


def _found(total=100):
    return SimpleNamespace(total=total, decision=Decision(requested="new_collection", strategy="new_collection",
                                                          layout="new_collection", collection="dst",
                                                          dense_name="dense", sparse_name=None, reason="unnamed"))


def test_preflight_checks_the_driver_side(tmp_path):
    client = FakeQdrant()
    results = dr.preflight(_config(tmp_path), client, ServerInfo("qdrant", "1.19.0"), found=_found())
    assert [(r.node, r.check, r.status) for r in results] == [
        ("driver", "qdrant", dr.PASS), ("driver", "source", dr.PASS), ("driver", "strategy", dr.PASS),
        ("driver", "checkpoint", dr.PASS), ("driver", "run-dir", dr.PASS)]
    assert "100 points" in results[1].detail
    assert _files(tmp_path / "runs") == []
    old = dr.preflight(_config(tmp_path), FakeQdrant(), ServerInfo("qdrant", "1.16.0"), found=_found())
    assert [r.status for r in old if r.check == "strategy"] == [dr.WARN]


def test_preflight_with_a_refused_key_stops_at_qdrant(tmp_path):
    results = dr.preflight(_config(tmp_path), FakeQdrant(refuse=True), ServerInfo("qdrant", "1.19.0"),
                           found=_found())
    assert [(r.check, r.status) for r in results] == [("qdrant", dr.FAIL), ("run-dir", dr.PASS)]
    with pytest.raises(PreconditionError, match="refused the API key"):
        dr.require(results)


def test_cluster_result():
    lanes = LaneOptions()
    head, gpu = SimpleNamespace(resources={"CPU": 0.0}), SimpleNamespace(resources={"CPU": 4.0, "GPU": 1.0})
    assert dr.cluster_result([head], lanes, 0).status == dr.FAIL
    ok = dr.cluster_result([head, gpu], lanes, 0)
    assert ok.status == dr.PASS and "2 alive node(s), 1 GPU(s), room for 1 lane(s)" in ok.detail
    assert dr.cluster_result([head, gpu], lanes, 4).status == dr.WARN


# --- the CLI --------------------------------------------------------------------------------------------------------

def test_cli_refuses_a_command_module_that_does_not_import(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("engine.app.no_such_command",))
    assert cli.main(["--help"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "engine.app.no_such_command cannot be imported" in err and "reinstall" in err


def test_the_doctor_is_a_registered_command():
    assert "engine.app.doctor" in cli.COMMAND_MODULES
