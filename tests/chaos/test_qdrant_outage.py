"""Chaos: Qdrant gone for two minutes in the middle of a run, then back on the same port (a node restarted by its
operator, a rolling upgrade). With the default retry section (a 15-minute outage budget) the job waits, says so in
its progress log ("waiting for Qdrant"), and finishes with the exact final state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine import tunables
from engine.embedded.process import EmbeddedProcess
from tests.chaos.test_driver_and_server_kills import _job_id
from tests.integration.pipeline_support import (
    assert_exact,
    client_for,
    committed_points,
    make_payloads,
    seed_collection,
)

pytestmark = pytest.mark.chaos
N = 3000
OUTAGE_S = 120.0
RUN_TIMEOUT_S = 600
POINTS_PER_S = 150.0  # the job's cap: about 20 s of writing in all


def _config(tmp: Path, port: int) -> Path:
    cfg = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": "dst", "alias": "live", "vector_name": "dense"},
        "model": {"name": "hash:32"},
        # capped, so the outage lands mid-run whatever the machine's speed (uncapped, 3,000 points take a second)
        "pipeline": {"shards": 4, "scroll_page": 64, "upload_batch": 64, "embed_actors": 1, "upload_actors": 2,
                     "max_points_per_s": POINTS_PER_S},
        # no retry section: the defaults are what an operator gets, and they must carry a job through this
        "dead_letter": {"dir": str(tmp / "runs")},
    }
    path = tmp / "outage.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_minute_outage_is_waited_out(tmp_path):
    assert tunables.RETRY_OUTAGE_BUDGET_S > 2 * OUTAGE_S  # the defaults this test relies on
    with EmbeddedProcess(str(tmp_path / "q")) as server:
        client = client_for(server.port)
        seed_collection(client, "src", make_payloads(N, seed=13))
        client.close()
        config = _config(tmp_path, server.port)
        job_id = _job_id(config)
        out_path, err_path = tmp_path / "run.out", tmp_path / "run.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            # no --quiet: the progress line goes to the log every 10 s, and that is where the wait must show
            proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--config", str(config)], stdout=out,
                                    stderr=err, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while committed_points(server.port, job_id) < N // 4 and proc.poll() is None:
                assert time.monotonic() < deadline, "no progress before the outage"
                time.sleep(0.2)
            assert proc.poll() is None, f"the run ended before the outage: {err_path.read_text()[-2000:]}"
            before = committed_points(server.port, job_id)
            server.kill()
            down_at = time.monotonic()
            said_waiting = False
            while time.monotonic() - down_at < OUTAGE_S:
                assert proc.poll() is None, f"the job ended during the outage: {err_path.read_text()[-3000:]}"
                said_waiting = said_waiting or "waiting for Qdrant" in err_path.read_text()
                time.sleep(1.0)
            server.restart()
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the local Ray node it started, if anything is left
            except ProcessLookupError:
                pass
        log = err_path.read_text()
        assert proc.returncode == 0, log[-3000:]
        assert said_waiting, "no 'waiting for Qdrant' in the progress log while the endpoint was down"
        summary = json.loads(out_path.read_text().strip().splitlines()[-1])
        assert before < N and summary["points_written"] + summary["points_skipped"] == N
        assert summary["retries"].get("unavailable", 0) > 0
        assert_exact(server.port, "src", "dst")
        waits = [line for line in log.splitlines() if "waiting for Qdrant" in line]
        print(f"outage of {OUTAGE_S:.0f} s at {before}/{N} points; retries {summary['retries']}; "
              f"redone pages {summary['pages_redone']}; last wait line: {waits[-1][-160:]}")
