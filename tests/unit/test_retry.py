import asyncio
import random

import grpc
import pytest

from engine.errors import NotFound, PreconditionError, QdrantRequestError, QdrantUnavailable
from engine.qdrant import retry


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details="boom", trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


FAST = retry.RetryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=0.002, deadline_s=5)


def flaky(errors, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def test_retries_transient_codes_then_succeeds():
    errs = [FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
            FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, trailers=(("retry-after", "0.01"),))]
    fn, calls = flaky(errs)
    stats = retry.RetryStats()
    assert retry.call(fn, what="x", address="a", policy=FAST, stats=stats, sleep=lambda s: None) == "ok"
    assert len(calls) == 4
    assert stats.snapshot() == {"unavailable": 1, "deadline_exceeded": 1, "resource_exhausted": 1}


def test_retry_after_is_honoured(monkeypatch):
    slept = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    fn, _ = flaky([FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, trailers=(("retry-after", "1.5"),))])
    retry.call(fn, what="x", address="a", policy=FAST, rng=random.Random(0))
    assert slept == [1.5]


def test_gives_up_after_max_attempts():
    # ABORTED: an outage (UNAVAILABLE) is bounded by the outage budget instead (test_retry_outage.py)
    fn, calls = flaky([FakeRpcError(grpc.StatusCode.ABORTED)] * 10)
    with pytest.raises(QdrantUnavailable, match="kept failing"):
        retry.call(fn, what="write", address="a", policy=FAST, sleep=lambda s: None)
    assert len(calls) == FAST.max_attempts


def test_deadline_bounds_retries(monkeypatch):
    policy = retry.RetryPolicy(max_attempts=100, base_delay_s=10, max_delay_s=10, deadline_s=0.5)
    monkeypatch.setattr(retry.time, "sleep", lambda s: None)
    fn, calls = flaky([FakeRpcError(grpc.StatusCode.ABORTED)] * 100)
    with pytest.raises(QdrantUnavailable):
        retry.call(fn, what="w", address="a", policy=policy, rng=random.Random(1))
    assert len(calls) < 100


@pytest.mark.parametrize(
    "code,exc,text",
    [
        (grpc.StatusCode.UNAUTHENTICATED, PreconditionError, "API key"),
        (grpc.StatusCode.NOT_FOUND, NotFound, "check the collection"),
        (grpc.StatusCode.INVALID_ARGUMENT, QdrantRequestError, "INVALID_ARGUMENT"),
    ],
)
def test_definite_errors_are_not_retried(code, exc, text):
    fn, calls = flaky([FakeRpcError(code, "Wrong input")] * 3)
    with pytest.raises(exc, match=text):
        retry.call(fn, what="op", address="a", policy=FAST)
    assert len(calls) == 1


def test_api_key_never_in_message():
    err = retry.translate(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad key s3cr3t"), "op", "h:1")
    assert "s3cr3t" not in str(err)


def test_async_twin():
    fn_calls = []

    async def fn():
        fn_calls.append(1)
        if len(fn_calls) < 3:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        return 42

    assert asyncio.run(retry.call_async(fn, what="x", address="a", policy=FAST)) == 42
    assert len(fn_calls) == 3


def test_backoff_is_bounded_full_jitter():
    rng = random.Random(3)
    p = retry.RetryPolicy(base_delay_s=0.2, max_delay_s=1.0)
    assert all(0 <= p.backoff(a, rng) <= min(1.0, 0.2 * 2**a) for a in range(1, 20))
