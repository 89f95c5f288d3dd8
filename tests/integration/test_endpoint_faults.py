"""Fault injection: the spec grammar, and each fault as a client sees it (status, trailers, applied or not)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb

from engine.embedded.faults import FaultSpec
from engine.embedded.server import EmbeddedServer
from engine.errors import ConfigError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# -- the grammar ---------------------------------------------------------------------------------------------------


def test_spec_parses_the_documented_example() -> None:
    spec = FaultSpec.parse("unavailable=0.05,exhausted=0.02,latency_ms=0-30,apply_then_fail=0.02")
    assert spec == FaultSpec(unavailable=0.05, exhausted=0.02, apply_then_fail=0.02, latency_ms=(0.0, 30.0))
    assert spec.active
    assert spec.describe() == "unavailable=0.05,exhausted=0.02,apply_then_fail=0.02,latency_ms=0-30,retry_after_s=0.1-1"


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, FaultSpec()),
        ("", FaultSpec()),
        ("  ", FaultSpec()),
        ("latency_ms=5", FaultSpec(latency_ms=(5.0, 5.0))),
        (" exhausted = 1 , retry_after_s=0.2-0.4", FaultSpec(exhausted=1.0, retry_after_s=(0.2, 0.4))),
        ("unavailable=0.5,apply_then_fail=0.5", FaultSpec(unavailable=0.5, apply_then_fail=0.5)),
        ("ack_before_apply=0.2,ack_delay_ms=5-50", FaultSpec(ack_before_apply=0.2, ack_delay_ms=(5.0, 50.0))),
        ("rate_limit=2500", FaultSpec(rate_limit=2500.0)),
    ],
)
def test_spec_accepts(text: str | None, expected: FaultSpec) -> None:
    assert FaultSpec.parse(text) == expected


def test_inactive_spec_describes_itself_as_none() -> None:
    assert not FaultSpec.parse("unavailable=0,latency_ms=0").active
    assert FaultSpec().describe() == "none"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("bogus=0.1", "unknown"),
        ("unavailable", "not key=value"),
        ("unavailable=", "not key=value"),
        ("unavailable=lots", "not a number"),
        ("unavailable=1.5", "between 0 and 1"),
        ("unavailable=-0.1", "between 0 and 1"),
        ("unavailable=0.6,exhausted=0.6", "exceeds 1"),
        ("unavailable=0.1,unavailable=0.2", "twice"),
        ("latency_ms=30-5", "low <= high"),
        ("latency_ms=a-b", "range"),
        ("retry_after_s=0", "above 0"),
        ("unavailable=0.1,,exhausted=0.1", "empty item"),
        ("unavailable=0.5,ack_before_apply=0.6", "exceeds 1"),
        ("rate_limit=0", "above 0"),
        ("rate_limit=fast", "not a number"),
    ],
)
def test_spec_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as err:
        FaultSpec.parse(text)
    assert "\n" not in str(err.value)


def test_cli_rejects_a_bad_spec_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "serve-embedded", "--data", str(tmp_path), "--port", "0", "--faults", "bogus=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reembed: error: fault spec key 'bogus' is unknown")


# -- faults as clients see them ------------------------------------------------------------------------------------


@pytest.fixture()
def endpoint_faulty(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[EmbeddedServer, QdrantClient]]:
    """A server with the fault spec the test passes as its (indirect) parameter, and a client with one collection."""
    with EmbeddedServer(tmp_path, faults=request.param, seed=0) as server:
        client = QdrantClient(host="127.0.0.1", grpc_port=server.port, prefer_grpc=True, check_compatibility=False)
        client.create_collection("c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))  # admin: never faulted
        yield server, client
        client.close()


def _point(i: int) -> models.PointStruct:
    return models.PointStruct(id=i, vector=[1.0, float(i)], payload={"i": i})


def _raw_count(server: EmbeddedServer) -> int:
    """Count straight from the shard, past the fault injector, to see what was really applied."""
    assert server.catalog is not None
    with server.catalog.reading("c") as coll:
        return coll.points_count()


@pytest.mark.parametrize("endpoint_faulty", ["unavailable=1"], indirect=True)
def test_unavailable_rejects_before_applying(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    server, client = endpoint_faulty
    with pytest.raises(grpc.RpcError) as err:
        client.upsert("c", [_point(1)])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        client.scroll("c")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _raw_count(server) == 0
    assert client.info().version == "1.18.0"  # health check is never faulted
    assert client.get_collection("c").status == models.CollectionStatus.GREEN  # nor is administration


@pytest.mark.parametrize("endpoint_faulty", ["exhausted=1,retry_after_s=0.25-0.25"], indirect=True)
def test_exhausted_carries_retry_after(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    server, client = endpoint_faulty
    with pytest.raises(grpc.RpcError) as err:
        client.upsert("c", [_point(1)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.trailing_metadata())["retry-after"] == "0.250"
    assert _raw_count(server) == 0


@pytest.mark.parametrize("endpoint_faulty", ["apply_then_fail=1"], indirect=True)
def test_apply_then_fail_applies_the_write_then_times_out(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    server, client = endpoint_faulty
    with pytest.raises(grpc.RpcError) as err:
        client.upsert("c", [_point(1), _point(2)])
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _raw_count(server) == 2  # the outcome the client could not know
    assert client.count("c").count == 2  # reads are never hit by apply_then_fail
    with pytest.raises(grpc.RpcError):  # and retrying the same write is harmless
        client.upsert("c", [_point(1), _point(2)])
    assert client.count("c").count == 2


@pytest.mark.parametrize("endpoint_faulty", ["latency_ms=80-80"], indirect=True)
def test_latency_delays_data_calls(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    server, client = endpoint_faulty
    started = time.monotonic()
    client.upsert("c", [_point(1)])
    assert time.monotonic() - started >= 0.08  # a lower bound set by a sleep, not a performance figure
    assert server.injector is not None and server.injector.counts["pass"] == 1


def _fates(tmp_path: Path, seed: int) -> list[str]:
    with EmbeddedServer(tmp_path / f"seed{seed}", faults="unavailable=0.3,exhausted=0.2", seed=seed) as server:
        channel = grpc.insecure_channel(server.address)
        pb.CollectionsStub(channel).Create(
            pb.CreateCollection(
                collection_name="c", vectors_config=pb.VectorsConfig(params=pb.VectorParams(size=2, distance=pb.Distance.Dot))
            )
        )
        points = pb.PointsStub(channel)
        fates = []
        for _ in range(30):
            try:
                points.Count(pb.CountPoints(collection_name="c"))
                fates.append("ok")
            except grpc.RpcError as err:
                fates.append(err.code().name)
        channel.close()
    return fates


def test_faults_are_seeded(tmp_path: Path) -> None:
    first, again, other = _fates(tmp_path / "a", 7), _fates(tmp_path / "b", 7), _fates(tmp_path / "c", 8)
    assert first == again
    assert first != other
    assert {"ok", "UNAVAILABLE", "RESOURCE_EXHAUSTED"} == set(first)


@pytest.mark.parametrize("endpoint_faulty", ["rate_limit=100"], indirect=True)
def test_rate_limit_refuses_writes_over_n_points_per_second(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    """Refused as Qdrant's strict-mode write rate limiter refuses (rate_limiting.rs, content_manager/conversions.rs):
    RESOURCE_EXHAUSTED, retry-after in whole seconds, none when the write alone exceeds the limit."""
    server, client = endpoint_faulty
    channel = grpc.insecure_channel(server.address)
    points = pb.PointsStub(channel)

    def upsert(ids: range) -> None:
        request = pb.UpsertPoints(collection_name="c", wait=True)
        for i in ids:
            point = request.points.add()
            point.id.num = i
            point.vectors.vector.dense.data.extend([1.0, float(i)])
        points.Upsert(request)

    upsert(range(80))
    with pytest.raises(grpc.RpcError) as err:
        upsert(range(100, 180))  # 60 points short at 100/s
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details().startswith("Rate limiting exceeded: Write rate limit exceeded: Operation requires 80 tokens")
    assert dict(err.value.trailing_metadata())["retry-after"] == "1"
    with pytest.raises(grpc.RpcError) as err:
        upsert(range(200, 301))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "request larger than rate limiter capacity" in err.value.details()
    assert "retry-after" not in dict(err.value.trailing_metadata())
    assert client.count("c").count == 80  # reads are not limited
    channel.close()


@pytest.mark.parametrize("endpoint_faulty", ["ack_before_apply=1,ack_delay_ms=60000"], indirect=True)
def test_ack_before_apply_acknowledges_then_applies_in_order(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    """A wait=true write answered Acknowledged (in Qdrant's WAL, not applied yet) is applied later, in arrival order."""
    server, client = endpoint_faulty
    first = client.upsert("c", [models.PointStruct(id=1, vector=[1.0, 0.0], payload={"v": "first"})], wait=True)
    second = client.upsert("c", [models.PointStruct(id=1, vector=[1.0, 0.0], payload={"v": "second"})], wait=True)
    assert first.status == second.status == models.UpdateStatus.ACKNOWLEDGED
    assert client.count("c").count == 0 and _raw_count(server) == 0  # acknowledged, not applied
    assert server.injector is not None and server.injector.deferred.pending == 2
    assert server.apply_deferred_writes() == 2
    assert client.retrieve("c", [1])[0].payload == {"v": "second"}


@pytest.mark.parametrize("endpoint_faulty", ["ack_before_apply=0.5,ack_delay_ms=60000"], indirect=True)
def test_a_write_applied_at_once_lands_after_the_held_back_ones(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    server, client = endpoint_faulty
    statuses = []
    for n in range(12):
        reply = client.upsert("c", [models.PointStruct(id=1, vector=[1.0, 0.0], payload={"n": n})], wait=True)
        statuses.append(reply.status)
        if reply.status == models.UpdateStatus.COMPLETED:  # held-back writes were applied first (WAL order)
            assert client.retrieve("c", [1])[0].payload == {"n": n}
    assert {models.UpdateStatus.COMPLETED, models.UpdateStatus.ACKNOWLEDGED} == set(statuses)
    server.apply_deferred_writes()
    assert client.retrieve("c", [1])[0].payload == {"n": 11}


@pytest.mark.parametrize("endpoint_faulty", ["ack_before_apply=1,ack_delay_ms=0"], indirect=True)
def test_held_back_writes_apply_on_their_own(endpoint_faulty: tuple[EmbeddedServer, QdrantClient]) -> None:
    """The timer path (no hook): with no delay the held-back write is applied as soon as the loop turns over."""
    server, client = endpoint_faulty
    assert client.upsert("c", [_point(1)], wait=True).status == models.UpdateStatus.ACKNOWLEDGED
    deadline = time.monotonic() + 5.0  # a bound on a wait for the event loop, not a timing assertion
    while _raw_count(server) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _raw_count(server) == 1 and server.injector is not None and server.injector.deferred.pending == 0
