"""`ray job submit --working-dir . -- python -m engine run --config ...` against a local `ray start --head` cluster,
exactly as on a cloud cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.embedded.process import EmbeddedProcess
from tests.integration.pipeline_support import assert_exact, client_for, make_payloads, seed_collection

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The working dir is uploaded to the cluster: leave out the virtualenv and build/run artefacts.
EXCLUDES = [".venv", ".git", "demo-data", "reembed-runs", "**/__pycache__", "bench/results"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_the_migration(tmp_path):
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Unix socket paths must stay under 107 bytes
    # `python` in the entrypoint must be the cluster nodes' Python: here, this virtualenv.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    with EmbeddedProcess(str(tmp_path / "q")) as server:
        client = client_for(server.port)
        seed_collection(client, "src", make_payloads(600, seed=5))
        client.close()
        config = tmp_path / "job.yaml"
        config.write_text(yaml.safe_dump({
            "qdrant": {"url": "http://127.0.0.1", "grpc_port": server.port},
            "source": {"collection": "src", "text_field": "text"},
            "target": {"collection": "dst", "alias": "live", "vector_name": "dense"},
            "model": {"name": "hash:32"},
            "pipeline": {"shards": 2, "scroll_page": 128, "upload_batch": 64},
            "dead_letter": {"dir": str(tmp_path / "runs")},
        }))
        start = subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--node-ip-address=127.0.0.1",
             "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
            env=env, capture_output=True, text=True, timeout=120)
        assert start.returncode == 0, start.stderr[-2000:]
        try:
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                 "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                 "python", "-m", "engine", "run", "--config", str(config), "--quiet"],
                env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
            assert submit.returncode == 0, submit.stdout[-6000:]
            lines = [ln for ln in submit.stdout.splitlines() if ln.startswith("{") and '"job_id"' in ln]
            assert lines, submit.stdout[-3000:]
            summary = json.loads(lines[-1])
            assert summary["points_total"] == 600
            assert summary["points_written"] + summary["points_skipped"] == 600
            assert_exact(server.port, "src", "dst")
        finally:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
            import shutil

            shutil.rmtree(ray_tmp, ignore_errors=True)
