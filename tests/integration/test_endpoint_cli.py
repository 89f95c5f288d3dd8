"""`reembed serve-embedded`: one ready line on stdout, clean stop on SIGINT/SIGTERM, one-line errors with exit 2."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from qdrant_client import grpc as pb

from engine.embedded.server import EmbeddedServer
from engine.errors import ConfigError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"^listening on 127\.0\.0\.1:(\d+)\n$")


def _serve(data: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "serve-embedded", "--data", str(data), "--port", "0", *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ready_line_then_clean_stop_on_sigint(tmp_path: Path) -> None:
    # SIGTERM takes the same path; EmbeddedProcess.stop() uses it (checked in test_endpoint_restart).
    stop_signal = signal.SIGINT
    proc = _serve(tmp_path, "--emulate-version", "1.17.2")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = READY.match(line)
        assert match, line
        channel = grpc.insecure_channel(f"127.0.0.1:{match.group(1)}")
        assert pb.QdrantStub(channel).HealthCheck(pb.HealthCheckRequest()).version == "1.17.2"
        pb.CollectionsStub(channel).Create(
            pb.CreateCollection(collection_name="c", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=2, distance=pb.Distance.Dot)))
        )
        channel.close()
        proc.send_signal(stop_signal)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout == ""  # the ready line was the only one
    assert f"received {stop_signal.name}; stopping" in stderr
    assert (tmp_path / "collections" / "c" / "config.json").exists()


def test_data_dir_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    first = _serve(tmp_path)
    try:
        assert first.stdout is not None and READY.match(first.stdout.readline())
        second = subprocess.run(
            [sys.executable, "-m", "engine", "serve-embedded", "--data", str(tmp_path), "--port", "0"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("reembed: error:")]
    assert len(errors) == 1 and "is in use by another embedded endpoint" in errors[0]
    assert second.stdout == ""


def test_bad_version_is_a_config_error(tmp_path: Path) -> None:
    # The CLI turns ConfigError into one line + exit 2 (see test_endpoint_faults for a bad --faults spec).
    with pytest.raises(ConfigError, match=r"^emulated Qdrant version 'latest' is not MAJOR.MINOR\[.PATCH\]"):
        EmbeddedServer(tmp_path, emulate_version="latest")
