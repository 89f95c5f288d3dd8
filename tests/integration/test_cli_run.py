"""`reembed run` as users call it: the real model end to end, the JSON summary as the last stdout line, and
one-line errors with exit 2 for bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import yaml

from engine.embedded.process import EmbeddedProcess
from tests.integration.pipeline_support import assert_exact, client_for, make_payloads, seed_collection

pytestmark = pytest.mark.integration
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def _config(tmp_path, port, **over):
    cfg = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": "dst", "alias": "live", "vector_name": "dense"},
        "model": {"name": MINILM},
        "pipeline": {"shards": 2, "scroll_page": 64, "upload_batch": 64},
        "dead_letter": {"dir": str(tmp_path / "runs")},
    }
    cfg.update(over)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_minilm_migration_through_the_cli(tmp_path):
    with EmbeddedProcess(str(tmp_path / "q")) as server:
        client = client_for(server.port)
        payloads = make_payloads(150, seed=9)
        seed_collection(client, "src", payloads)
        client.close()
        result = _run("run", "--config", str(_config(tmp_path, server.port)), "--quiet")
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        for key in ("job_id", "strategy", "points_total", "points_written", "points_skipped", "elapsed_s",
                    "points_per_s"):
            assert key in summary
        assert summary["points_total"] == 150
        # every vector equals the model's embedding of its text
        rep = assert_exact(server.port, "src", "dst", model=MINILM, min_cosine=0.999)
        assert rep.min_cosine >= 0.999
        info = client_for(server.port).collection_info("dst")
        assert info.config.params.vectors_config.params_map.map["dense"].size == 384

        status = _run("status", "--config", str(_config(tmp_path, server.port)))
        assert status.returncode == 0 and '"state": "finished"' in status.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "over,expect",
    [
        ({"pipline": {"shards": 2}}, "unknown key 'pipline'"),
        ({"pipeline": {"upload_batch": 1000}}, "upload_batch"),
        ({"strategy": "sideways"}, "strategy"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, over, expect):
    result = _run("run", "--config", str(_config(tmp_path, 6334, **over)))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("reembed: error:")]
    assert len(lines) == 1 and expect in lines[0], result.stderr


def test_unreachable_server_is_one_line_exit_2(tmp_path):
    result = _run("run", "--config", str(_config(tmp_path, _free_port())), timeout=120)
    assert result.returncode == 2
    assert "cannot reach Qdrant" in result.stderr and "Traceback" not in result.stderr


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("qdrant: {url: [\n")
    result = _run("run", "--config", str(bad))
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    result = _run("run", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
