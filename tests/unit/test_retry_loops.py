"""The blocking `call` and the asyncio `call_async` run one retry logic: the same tries, waits, stats and errors."""

import asyncio
import random

import grpc
import pytest

from engine.errors import QdrantRequestError, QdrantUnavailable
from engine.qdrant import retry
from tests.unit.test_retry import FakeRpcError

POLICY = retry.RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=2.0, deadline_s=60)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _run(mode, outcomes, monkeypatch):
    """Drive `call` or `call_async` over `outcomes` (an exception to raise or a value to return, one per try) with
    the sleeps recorded instead of slept; returns (result or raised exception, tries, sleeps, stats)."""
    sleeps, tries, stats = [], [], retry.RetryStats()

    def step():
        tries.append(1)
        out = outcomes[len(tries) - 1]
        if isinstance(out, BaseException):
            raise out
        return out

    async def step_async():
        return step()

    async def fake_async_sleep(s):
        sleeps.append(s)

    monkeypatch.setattr(retry.time, "sleep", sleeps.append)
    monkeypatch.setattr(retry.asyncio, "sleep", fake_async_sleep)
    kw = {"what": "upsert", "address": "h:1", "policy": POLICY, "stats": stats, "rng": random.Random(11)}
    try:
        if mode == "sync":
            result = retry.call(step, **kw)
        else:
            result = asyncio.run(retry.call_async(step_async, **kw))
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        result = exc
    return result, len(tries), sleeps, stats.snapshot()


CASES = {
    "recovers": [FakeRpcError(UNAVAILABLE), FakeRpcError(grpc.StatusCode.ABORTED), "ok"],
    "gives up": [FakeRpcError(grpc.StatusCode.ABORTED)] * 4,  # outages wait out a budget instead
    "definite": [FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad vector")],
    "retry-after": [FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, trailers=(("retry-after", "7"),)), "ok"],
    "not an rpc": [FakeRpcError(UNAVAILABLE), KeyError("k")],
}


@pytest.mark.parametrize("case", CASES)
def test_sync_and_async_loops_behave_the_same(case, monkeypatch):
    sync = _run("sync", CASES[case], monkeypatch)
    aio = _run("async", CASES[case], monkeypatch)
    assert sync[1:] == aio[1:]  # tries, sleeps, stats
    if isinstance(sync[0], Exception):
        assert type(sync[0]) is type(aio[0]) and str(sync[0]) == str(aio[0])
        assert sync[0].__suppress_context__ == aio[0].__suppress_context__
    else:
        assert sync[0] == aio[0]


def test_what_the_shared_logic_decides(monkeypatch):
    result, tries, sleeps, stats = _run("sync", CASES["recovers"], monkeypatch)
    assert result == "ok" and tries == 3 and len(sleeps) == 2 and stats == {"unavailable": 1, "aborted": 1}
    assert all(0 <= s <= POLICY.max_delay_s for s in sleeps)
    result, tries, sleeps, _ = _run("sync", CASES["gives up"], monkeypatch)
    assert isinstance(result, QdrantUnavailable) and tries == 4 and len(sleeps) == 3
    assert result.__suppress_context__  # one line for the operator, not the gRPC traceback
    result, tries, sleeps, stats = _run("sync", CASES["definite"], monkeypatch)
    assert isinstance(result, QdrantRequestError) and "bad vector" in str(result)
    assert tries == 1 and sleeps == [] and stats == {}
    result, _, sleeps, _ = _run("sync", CASES["retry-after"], monkeypatch)
    assert result == "ok" and sleeps == [7.0]
    result, tries, _, _ = _run("async", CASES["not an rpc"], monkeypatch)
    assert isinstance(result, KeyError) and tries == 2  # any other exception passes through untouched
