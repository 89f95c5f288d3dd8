"""`reembed doctor` on the local Ray node against the embedded endpoint over TLS with an API key: everything PASSes
with the real model; a wrong key, an unreachable port, a missing model directory and an unwritable run directory
each FAIL on the line of the node and the check concerned, with its fix, and exit 1."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from engine.app.cli import main
from engine.embedded.process import EmbeddedProcess
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from tests.integration.pipeline_support import make_payloads, seed_collection

pytestmark = pytest.mark.integration
KEY = "sk-doctor-5e4d3c2b1a"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("doctor")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    with EmbeddedProcess(str(tmp / "q"), api_key=KEY, tls_cert=cert, tls_key=key) as proc:
        admin = QdrantGrpc(Endpoint("localhost", proc.port, tls=True, api_key=KEY, ca_cert=str(cert)))
        seed_collection(admin, "src", make_payloads(60, seed=3))
        admin.close()
        yield proc.port, cert


def _doctor(tmp_path: Path, capsys, port: int, cert: Path, **over) -> tuple[int, list[str], dict]:
    cfg = {
        "qdrant": {"url": "https://localhost", "grpc_port": port, "api_key": KEY, "tls_ca_cert": str(cert)},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": "dst", "alias": "live", "vector_name": "dense"},
        "model": {"name": MINILM},
        "retry": {"max_attempts": 3, "base_delay_s": 0.05, "max_delay_s": 0.5, "deadline_s": 10},
        "dead_letter": {"dir": str(tmp_path / "runs")},
    }
    for section, values in over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main(["doctor", "--config", str(path), "--json", "--timeout", "180"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, out, json.loads(out[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_healthy_cluster_passes_every_check(tmp_path, capsys, server):
    port, cert = server
    code, out, report = _doctor(tmp_path, capsys, port, cert)
    assert code == 0, "\n".join(out)
    assert report["passed"] and report["fail"] == 0 and report["warn"] == 0, "\n".join(out)
    node = report["nodes"][1]
    checks = {(r["node"], r["check"]) for r in report["results"]}
    for check in ("qdrant", "source", "strategy", "checkpoint", "run-dir", "cluster"):
        assert ("driver", check) in checks
    for check in ("versions", "gpu", "qdrant", "checkpoint", "run-dir", "model"):
        assert (node, check) in checks
    model = next(r for r in report["results"] if r["check"] == "model")
    assert "384-d float32" in model["detail"]
    assert "with TLS, API key set" in next(r for r in report["results"] if r["check"] == "qdrant")["detail"]
    assert out[-2].startswith("doctor PASSED") and all(line.startswith("PASS") for line in out[:-2])
    assert KEY not in "\n".join(out)
    assert not list((tmp_path / "runs").rglob("*"))  # every probe cleaned up


def _fails(out: list[str], report: dict) -> dict[tuple[str, str], dict]:
    return {(r["node"], r["check"]): r for r in report["results"] if r["status"] == "FAIL"}


@pytest.mark.parametrize("case", ["wrong-key", "unreachable-port", "missing-model", "unwritable-run-dir"])
def test_each_problem_fails_on_its_node_and_check(tmp_path, capsys, server, case):
    port, cert = server
    over: dict = {}
    if case == "wrong-key":
        over = {"qdrant": {"api_key": "not-the-key"}}
    elif case == "unreachable-port":
        # a short retry deadline: the finding is the refused connection, not how long the retries wait for it
        over = {"qdrant": {"grpc_port": _free_port()}, "retry": {"deadline_s": 2}}
    elif case == "missing-model":
        over = {"model": {"name": str(tmp_path / "models" / "gone")}}
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        over = {"dead_letter": {"dir": str(blocker / "runs")}}
    code, out, report = _doctor(tmp_path, capsys, port, cert, **over)
    assert code == 1 and not report["passed"]
    assert out[-2].startswith("doctor FAILED")
    node = report["nodes"][1]
    fails = _fails(out, report)
    expected = {
        "wrong-key": {("driver", "qdrant"), (node, "qdrant")},
        "unreachable-port": {("driver", "qdrant"), (node, "qdrant")},
        "missing-model": {(node, "model")},
        "unwritable-run-dir": {("driver", "run-dir"), (node, "run-dir")},
    }[case]
    assert set(fails) == expected, "\n".join(out)
    for (who, check), result in fails.items():
        assert result["fix"], result
        line = next(line for line in out if line.startswith("FAIL") and who in line and f" {check} " in line)
        assert "| fix: " in line
    words = {"wrong-key": "QDRANT_API_KEY", "unreachable-port": "grpc_port", "missing-model": "model.name",
             "unwritable-run-dir": "dead_letter.dir"}[case]
    assert all(words in r["detail"] + r["fix"] for r in fails.values()), "\n".join(out)
    assert "not-the-key" not in "\n".join(out)


def test_a_node_that_does_not_answer_or_fails_is_reported(ray_local):
    import time

    from actors.doctor import alive_nodes, on_every_node

    def slow(node, seconds):  # nested: shipped by value, so the worker needs no test module
        time.sleep(seconds)
        return "late"

    def broken(node, arg):
        raise ValueError(f"no {arg} here")

    nodes = alive_nodes()
    t0 = time.monotonic()
    [late] = on_every_node(slow, 60, nodes[:1], timeout_s=2)
    assert time.monotonic() - t0 < 30  # not waited for
    assert late.value is None and late.error.startswith("node did not answer within 2 s")
    [failed] = on_every_node(broken, "model", nodes[:1], timeout_s=60)
    assert failed.error == "the check failed on the node: ValueError: no model here"
    [ok] = on_every_node(lambda node, arg: (node.node_id, arg), 7, nodes[:1], timeout_s=60)
    assert ok.error is None and ok.value == (nodes[0].node_id, 7)
