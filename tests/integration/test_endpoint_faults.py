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
        return coll.shard.info().points_count


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
