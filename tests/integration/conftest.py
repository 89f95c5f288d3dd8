"""Fixtures of the integration tier."""

from __future__ import annotations

from typing import Iterator

import pytest
from qdrant_client import QdrantClient

from engine.embedded.server import EmbeddedServer
from tests.integration.endpoint_support import ClientPair, grpc_client
from tests.ray_fixture import ray_local  # noqa: F401  (a fixture, used by name)


@pytest.fixture(scope="module")
def endpoint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One embedded endpoint per test module (a module overrides this fixture for a server with other options)."""
    with EmbeddedServer(tmp_path_factory.mktemp("endpoint")) as server:
        yield server


@pytest.fixture()
def endpoint_client(endpoint_server: EmbeddedServer) -> Iterator[QdrantClient]:
    client = grpc_client(endpoint_server.port)
    yield client
    client.close()


@pytest.fixture()
def endpoint_pair(endpoint_server: EmbeddedServer, request: pytest.FixtureRequest) -> Iterator[ClientPair]:
    """The endpoint and qdrant-client's local mode, with a collection name made from the test's name."""
    remote, local = grpc_client(endpoint_server.port), QdrantClient(":memory:")
    yield remote, local, f"c_{request.node.name}".replace("[", "_").replace("]", "").replace("-", "_")[:60]
    remote.close()
    local.close()
