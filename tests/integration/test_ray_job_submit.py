"""`ray job submit --working-dir . -- python -m engine run --config ...` against a local `ray start --head` cluster,
exactly as on a cloud cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from engine.embedded.process import EmbeddedProcess
from tests.integration.pipeline_support import assert_exact, client_for, make_payloads, seed_collection

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from local_cluster import free_port, kill_processes, processes_of, stop_group  # noqa: E402  (a script, not a package)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The working dir is uploaded to the cluster: leave out the virtualenv and build/run artefacts.
EXCLUDES = [".venv", ".git", "demo-data", "reembed-runs", "**/__pycache__", "bench/results"]
HEAD_START_S = 120
HEAD_STOP_S = 60


def _start_head(ray_tmp: str, gcs: int, dash: int, env: dict, log) -> subprocess.Popen:
    """`ray start --head --block` in a process group of its own, returned once its job API answers.

    Blocking in the foreground makes the head this test's child: stopping it is a signal to that group, never
    `ray stop`, which would end every Ray node on the machine (a benchmark or another test's beside this one).
    """
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={ray_tmp}",
         # Ports Ray would otherwise take at fixed defaults (10001, 52365), which another node here may hold.
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # The address file is written where a non-blocking `ray start` would return; the job API may come up after it.
    address_file = Path(ray_tmp) / "ray_current_cluster"
    deadline = time.monotonic() + HEAD_START_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start --head exited with {head.returncode} before it was up")
        if address_file.exists():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return head
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.5)
    stop_group(head, HEAD_STOP_S)
    raise AssertionError(f"the Ray head's job API did not answer within {HEAD_START_S} s")


def test_ray_job_submit_runs_the_migration(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Unix socket paths must stay under 107 bytes
    # `python` in the entrypoint must be the cluster nodes' Python: here, this virtualenv.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    head_log = tmp_path / "ray-head.log"
    with EmbeddedProcess(str(tmp_path / "q")) as server, head_log.open("wb") as log:
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
        head = None
        try:
            head = _start_head(ray_tmp, gcs, dash, env, log)
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
            if head is not None:
                stop_group(head, HEAD_STOP_S)
            # Only this cluster's own processes are touched; any left is a stop that did not work.
            leftovers = processes_of({head.pid}, (ray_tmp, str(config))) if head is not None else {}
            kill_processes(leftovers)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftovers, f"Ray processes outlived the head's stop: {leftovers}"
