"""The endpoint answers clients' keepalive pings as Qdrant does, instead of hanging up on them.

Qdrant serves gRPC with tonic (src/tonic/mod.rs in the qdrant repository: `Server::builder()` with no ping policy),
which answers every HTTP/2 ping. gRPC core's server default counts pings on an idle connection as strikes and sends
GOAWAY "too_many_pings"; our clients ping every 30 s (engine/qdrant/connection.py), so against the endpoint a
long job's connections were torn down and its calls retried, which real servers never do.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from qdrant_client import grpc as pb

from engine.embedded.process import EmbeddedProcess

pytestmark = pytest.mark.integration

IDLE_S = 8  # with 200 ms pings gRPC core's default policy hung up within ~6 s when this was written


def test_idle_connection_with_frequent_pings_stays_up(tmp_path):
    with EmbeddedProcess(str(tmp_path / "q")) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[
            ("grpc.keepalive_time_ms", 200), ("grpc.keepalive_timeout_ms", 2_000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
        states: list[grpc.ChannelConnectivity] = []
        lock = threading.Lock()

        def seen(state: grpc.ChannelConnectivity) -> None:
            with lock:
                states.append(state)

        channel.subscribe(seen, try_to_connect=True)
        try:
            stub = pb.QdrantStub(channel)
            stub.HealthCheck(pb.HealthCheckRequest(), timeout=10)
            time.sleep(IDLE_S)  # the connection idles while the client keeps pinging
            stub.HealthCheck(pb.HealthCheckRequest(), timeout=10)
        finally:
            channel.unsubscribe(seen)
            channel.close()
    with lock:
        after_ready = states[states.index(grpc.ChannelConnectivity.READY) + 1:]
    # A GOAWAY shows as the channel leaving READY (IDLE, then CONNECTING again) while nothing else happened.
    assert after_ready == [], f"the connection was dropped while idle: {states}"
