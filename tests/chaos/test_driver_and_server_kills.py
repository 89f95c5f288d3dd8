"""Chaos: SIGKILL of the `reembed run` driver several times in one migration, and the endpoint killed and restarted
mid-run. Every scenario ends with the checker at zero; the redone work is measured against the in-flight bound."""

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

from engine.embedded.process import EmbeddedProcess
from tests.integration.pipeline_support import (
    assert_exact,
    client_for,
    committed_points,
    make_payloads,
    seed_collection,
)

pytestmark = pytest.mark.chaos
N = 3000
PAGE = 64
WINDOW_PAGES = 4 * (1 + 2)  # pages_in_flight x (embed actors + upload actors), the coordinator's window
# Checkpoints are written by a background saver (latest wins), so at a kill the saved cursor may lag the commits made
# while one checkpoint write was in flight: with this test's 15-30 ms per RPC that is a page or two (one CI run saw
# 21 points over the window alone); 4 pages of slack keep the bound meaningful without making it flaky.
SAVER_SLACK_PAGES = 4


def _write_config(tmp: Path, port: int, target: str) -> Path:
    cfg = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": target, "alias": "live", "vector_name": "dense"},
        "model": {"name": "hash:32"},
        # checkpoint_interval_s 0: a save after every commit, so the redone work is bounded by the window (plus the
        # saver's lag, above); the default, 1 s, adds up to one second of commits to that bound.
        "pipeline": {"shards": 4, "scroll_page": PAGE, "upload_batch": 64, "embed_actors": 1, "upload_actors": 2,
                     "checkpoint_interval_s": 0},
        "retry": {"max_attempts": 60, "base_delay_s": 0.05, "max_delay_s": 1.0, "deadline_s": 120},
        "dead_letter": {"dir": str(tmp / "runs")},
    }
    path = tmp / f"{target}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(config: Path) -> subprocess.Popen:
    # Own session: after killing the driver we also reap the local Ray processes it started, as a dead node would.
    return subprocess.Popen([sys.executable, "-m", "engine", "run", "--config", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_session(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _job_id(config: Path) -> str:
    from engine.app.wiring import job_id_of
    from engine.config import load_config

    return job_id_of(load_config(config, env={}))


def test_driver_sigkilled_three_times_then_resumed(tmp_path):
    with EmbeddedProcess(str(tmp_path / "q"), faults="latency_ms=15-30", seed=1) as server:
        client = client_for(server.port)
        seed_collection(client, "src", make_payloads(N, seed=11))
        config = _write_config(tmp_path, server.port, "dst")
        job_id = _job_id(config)
        redone = []
        stalls = []  # resubmit -> first new commit: Ray, the lanes and their model started again (reported only)
        for kill in range(3):
            before = committed_points(server.port, job_id)
            proc = _start(config)
            t0 = time.monotonic()
            deadline = t0 + 120
            while (now := committed_points(server.port, job_id)) < before + 300 and proc.poll() is None:
                assert time.monotonic() < deadline, "no progress after a restart"
                if now > before and len(stalls) == kill:
                    stalls.append(round(time.monotonic() - t0, 1))
                time.sleep(0.2)
            assert proc.poll() is None, f"run {kill} ended before it could be killed: {proc.stderr.read()[-2000:]}"
            _kill_session(proc)
            committed = committed_points(server.port, job_id)
            in_target = client.count("dst")
            # what the next run will write again: points in the target beyond the committed cursor
            redone.append(in_target - committed)
            assert 0 <= in_target - committed <= (WINDOW_PAGES + SAVER_SLACK_PAGES) * PAGE, (in_target, committed)
        final = subprocess.run([sys.executable, "-m", "engine", "run", "--config", str(config), "--quiet"],
                               capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-3000:]
        summary = json.loads(final.stdout.strip().splitlines()[-1])
        assert summary["points_written"] + summary["points_skipped"] == N
        assert_exact(server.port, "src", "dst")
        print(f"driver kills: redone points per kill {redone} (bound {(WINDOW_PAGES + SAVER_SLACK_PAGES) * PAGE}); "
              f"resubmit to first commit {stalls} s; the last run's summary: {summary['points_redone']} redone")
        client.close()


def test_endpoint_killed_and_restarted_mid_run(tmp_path):
    with EmbeddedProcess(str(tmp_path / "q"), faults="latency_ms=10-20", seed=2) as server:
        client = client_for(server.port)
        seed_collection(client, "src", make_payloads(N, seed=12))
        client.close()
        config = _write_config(tmp_path, server.port, "dst")
        job_id = _job_id(config)
        proc = _start(config)
        restarts = 0
        try:
            for target in (N // 4, N // 2):
                deadline = time.monotonic() + 120
                while committed_points(server.port, job_id) < target and proc.poll() is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                if proc.poll() is not None:
                    break
                server.kill()
                time.sleep(1.0)
                server.restart()
                restarts += 1
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                _kill_session(proc)
        assert proc.returncode == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert restarts == 2
        assert summary["points_written"] + summary["points_skipped"] == N
        assert summary["retries"].get("unavailable", 0) > 0
        assert_exact(server.port, "src", "dst")
        print(f"endpoint restarts: {restarts}, retries {summary['retries']}, redone pages {summary['pages_redone']}")
