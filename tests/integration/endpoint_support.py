"""Shared helpers for the embedded endpoint tests: a qdrant-client over gRPC, the gRPC error a call raises, and one
operation run against the endpoint and qdrant-client's local mode side by side (fixtures in conftest.py)."""

from __future__ import annotations

from typing import Any, Callable

import grpc
import pytest
from qdrant_client import QdrantClient

ClientPair = tuple[QdrantClient, QdrantClient, str]  # the endpoint, local mode, and the test's collection name


def grpc_client(port: int) -> QdrantClient:
    """qdrant-client speaking gRPC to an endpoint on this host."""
    return QdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True, check_compatibility=False)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The gRPC error `call` raises (the test fails if it raises none)."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def both(pair: ClientPair, ops: Callable[[QdrantClient, str], Any]) -> tuple[Any, Any]:
    """`ops` against the endpoint and against local mode, on the same collection name."""
    remote, local, name = pair
    return ops(remote, name), ops(local, name)
