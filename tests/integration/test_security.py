"""Security: TLS with a self-signed certificate, API key enforcement, the key never written anywhere, loopback
binding, and the source provably untouched by a new_collection migration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.embedded.process import EmbeddedProcess
from engine.flow.checkpoint import QdrantCheckpointStore
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from engine.verify.checker import collection_checksum
from tests.integration.pipeline_support import make_payloads, seed_collection

pytestmark = pytest.mark.integration
KEY = "sk-test-0f9e8d7c6b5a4f3e2d1c"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def _run(config: Path, env_extra: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "engine", "run", "--config", str(config), "--quiet"],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _config(tmp: Path, port: int, url: str, ca: Path | None, target: str = "dst") -> Path:
    qdrant = {"url": url, "grpc_port": port}
    if ca is not None:
        qdrant["tls_ca_cert"] = str(ca)
    path = tmp / f"{target}.yaml"
    path.write_text(yaml.safe_dump({
        "qdrant": qdrant,
        "source": {"collection": "src", "text_field": "text"},
        "target": {"collection": target, "alias": "live", "vector_name": "dense"},
        "model": {"name": "hash:32"},
        "pipeline": {"shards": 2, "scroll_page": 128, "upload_batch": 64},
        "dead_letter": {"dir": str(tmp / "runs")},
    }))
    return path


def test_tls_api_key_never_leaks_and_source_untouched(tmp_path):
    cert, key = _self_signed(tmp_path)
    with EmbeddedProcess(str(tmp_path / "q"), api_key=KEY, tls_cert=cert, tls_key=key) as server:
        assert server.address.startswith("127.0.0.1:")  # loopback unless told otherwise
        admin = QdrantGrpc(Endpoint("localhost", server.port, tls=True, api_key=KEY, ca_cert=str(cert)))
        seed_collection(admin, "src", make_payloads(400, seed=8))
        before = collection_checksum(admin, "src")

        config = _config(tmp_path, server.port, "https://localhost", cert)
        ok = _run(config, {"QDRANT_API_KEY": KEY})
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert json.loads(ok.stdout.strip().splitlines()[-1])["points_total"] == 400
        assert collection_checksum(admin, "src") == before  # new_collection never writes the source
        assert admin.count("dst") == 400

        # the key appears in no output, log, checkpoint, dead-letter or report file
        state = QdrantCheckpointStore(admin, "_reembed").load(json.loads(ok.stdout.strip().splitlines()[-1])["job_id"])
        haystacks = [ok.stdout, ok.stderr, state.to_json()]
        for path in list((tmp_path / "runs").rglob("*")) + [server.log_path]:
            if path.is_file():
                haystacks.append(path.read_bytes().decode("utf-8", "replace"))
        assert all(KEY not in h for h in haystacks)

        # wrong key: one clear line, exit 2, the wrong key not echoed
        bad = _run(_config(tmp_path, server.port, "https://localhost", cert, target="dst2"),
                   {"QDRANT_API_KEY": "wrong-key-123"})
        assert bad.returncode == 2 and "refused the API key" in bad.stderr
        assert "wrong-key-123" not in bad.stderr + bad.stdout
        # no key at all
        nokey = _run(_config(tmp_path, server.port, "https://localhost", cert, target="dst3"), {})
        assert nokey.returncode == 2 and "API key" in nokey.stderr
        # plaintext against a TLS server: refused before anything is written
        plain = _run(_config(tmp_path, server.port, "http://localhost", None, target="dst4"),
                     {"QDRANT_API_KEY": KEY}, timeout=120)
        assert plain.returncode == 2 and "cannot reach Qdrant" in plain.stderr
        assert not admin.collection_exists("dst2") and not admin.collection_exists("dst4")
        admin.close()
