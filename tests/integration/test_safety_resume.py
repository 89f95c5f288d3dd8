"""Resuming an unfinished job with another model of the same dimension is refused, end to end: a `run` stops
abruptly once its checkpoint shows progress (an exception out of the progress hook, as a crash of the driver), then
`reembed run` is given another model whose vectors fit the target just as well (hash:32 then hashed-bow:32). It must
exit 2 with the checkpoint mismatch, before writing anything: resuming would mix two models' vectors in one
collection, which no later check could tell apart by shape. (Both runs in this process: two CLI start-ups of Ray
cost ~45 s of the suite; tests/chaos/test_driver_and_server_kills.py already SIGKILLs real driver processes.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from engine.app import job as jobs
from engine.app.cli import main
from engine.app.wiring import job_id_of
from engine.config import load_config
from engine.embedded.process import EmbeddedProcess
from engine.verify.checker import collection_checksum
from tests.integration.pipeline_support import client_for, committed_points, make_payloads, seed_collection

pytestmark = pytest.mark.integration
N = 1500


def _config(tmp: Path, port: int, model: str) -> Path:
    cfg = {
        "qdrant": {"url": "http://127.0.0.1", "grpc_port": port},
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": "dst", "vector_name": "dense"},
        "model": {"name": model},
        "pipeline": {"shards": 3, "scroll_page": 64, "upload_batch": 64, "checkpoint_interval_s": 0},
        "dead_letter": {"dir": str(tmp / "runs")},
    }
    path = tmp / f"{model.replace(':', '_')}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _settled(client) -> tuple[int, str]:
    """The target's checksum once the writes the killed run had in flight (requests already at the server) landed."""
    last = collection_checksum(client, "dst")
    for _ in range(60):
        time.sleep(0.5)
        now = collection_checksum(client, "dst")
        if now == last:
            return now
        last = now
    raise AssertionError("the target kept changing for 30 s after the run was killed")


class _DriverCrash(Exception):
    """The first run's abrupt end."""


def test_resuming_with_another_model_of_the_same_dimension_exits_2(tmp_path, capsys, monkeypatch, ray_local):
    # Slow writes, so the first run is surely unfinished when it stops.
    with EmbeddedProcess(str(tmp_path / "q"), faults="latency_ms=10-20", seed=3) as server:
        client = client_for(server.port)
        seed_collection(client, "src", make_payloads(N, seed=21))
        first = load_config(_config(tmp_path, server.port, "hash:32"), env={})
        job_id = job_id_of(first)
        real_progress = jobs.Progress.__call__

        def crash_once_saved(self, state, stats):
            real_progress(self, state, stats)
            if committed_points(server.port, job_id) > 0:
                raise _DriverCrash

        monkeypatch.setattr(jobs.Progress, "__call__", crash_once_saved)
        with pytest.raises(_DriverCrash):
            jobs.run_job(first, progress=False)
        monkeypatch.undo()
        committed = committed_points(server.port, job_id)
        assert 0 < committed < N
        before = _settled(client)

        capsys.readouterr()
        code = main(["run", "--config", str(_config(tmp_path, server.port, "hashed-bow:32")), "--quiet"])
        assert code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("reembed: error: a checkpoint for job ") and "model changed" in error, error
        assert collection_checksum(client, "dst") == before  # refused before writing anything
        assert committed_points(server.port, job_id) == committed
        client.close()
