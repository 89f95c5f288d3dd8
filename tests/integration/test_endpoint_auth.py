"""API key: enforced on every call but the health check, as a Qdrant server does; never on a command line or in logs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.auth import MISSING_KEY, WRONG_KEY
from engine.embedded.process import EmbeddedProcess
from engine.embedded.server import EmbeddedServer

pytestmark = pytest.mark.integration

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def endpoint_secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("secured"), api_key=KEY) as server:
        yield server


def _client(server: EmbeddedServer, api_key: str | None) -> QdrantClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Api key is used with an insecure connection."
        return QdrantClient(
            host="127.0.0.1", grpc_port=server.port, prefer_grpc=True, check_compatibility=False, api_key=api_key, https=False
        )


@pytest.mark.parametrize("api_key, message", [(None, MISSING_KEY), ("wrong", WRONG_KEY)])
def test_missing_or_wrong_key_is_unauthenticated(endpoint_secured: EmbeddedServer, api_key: str | None, message: str) -> None:
    client = _client(endpoint_secured, api_key)
    for call in (client.get_collections, lambda: client.collection_exists("x"), lambda: client.count("x")):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == message
    assert client.info().version == "1.18.0"  # the health check stays open, as on Qdrant
    client.close()


def test_right_key_works_through_qdrant_client(endpoint_secured: EmbeddedServer) -> None:
    client = _client(endpoint_secured, KEY)
    client.create_collection("k", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    client.upsert("k", [models.PointStruct(id=1, vector=[1.0, 2.0])])
    assert client.count("k").count == 1
    client.close()


def test_bearer_token_is_accepted(endpoint_secured: EmbeddedServer) -> None:
    channel = grpc.insecure_channel(endpoint_secured.address)
    reply = pb.CollectionsStub(channel).List(pb.ListCollectionsRequest(), metadata=(("authorization", f"Bearer {KEY}"),))
    assert isinstance(reply, pb.ListCollectionsResponse)
    channel.close()


def test_process_takes_key_from_environment_not_argv(tmp_path: Path) -> None:
    with EmbeddedProcess(tmp_path / "data", api_key=KEY, log_path=tmp_path / "endpoint.log") as proc:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        channel = grpc.insecure_channel(proc.address)
        stub = pb.CollectionsStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.List(pb.ListCollectionsRequest(), metadata=(("api-key", "nope"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.List(pb.ListCollectionsRequest(), metadata=(("api-key", KEY),))
        channel.close()
    assert KEY not in cmdline
    log_text = (tmp_path / "endpoint.log").read_text()
    assert "api key required" in log_text and KEY not in log_text
