"""The outage budget of engine/qdrant/retry.py: an unreachable or restarting server (UNAVAILABLE, DEADLINE_EXCEEDED)
and a rate limit (RESOURCE_EXHAUSTED, Qdrant's strict-mode token bucket: lib/common/common/src/rate_limiting.rs) are
waited out within `outage_budget_s`, whatever max_attempts says; definite errors stay immediate. All on an injected
clock: the fake sleep moves it."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from engine import tunables
from engine.config import config_from_dict
from engine.errors import ConfigError, QdrantRequestError, QdrantUnavailable
from engine.qdrant import retry
from tests.unit.fakes import Clock
from tests.unit.test_retry import FakeRpcError

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# The cluster config's numbers: with these, max_attempts alone ended the job after about a minute of outage.
POLICY = retry.RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=30.0, deadline_s=900.0,
                           outage_budget_s=900.0)


class Server:
    """Answers each try from `outcomes` (an error to raise or a value), after `rpc_s` of simulated time; repeats the
    last outcome forever."""

    def __init__(self, clock: Clock, outcomes: list, rpc_s: float = 0.0) -> None:
        self.clock, self.outcomes, self.rpc_s = clock, outcomes, rpc_s
        self.tries = 0

    def __call__(self):
        out = self.outcomes[min(self.tries, len(self.outcomes) - 1)]
        self.tries += 1
        self.clock.t += self.rpc_s
        if isinstance(out, BaseException):
            raise out
        return out


def run(outcomes, policy=POLICY, rpc_s=0.0, stats=None, on_retry=None, watch=None, announce=None):
    """call() over a simulated server; returns (result or raised error, server, sleeps, clock)."""
    clock = Clock(1000.0)
    server = Server(clock, outcomes, rpc_s)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        if watch is not None:
            watch(clock)
        sleeps.append(seconds)
        clock.t += seconds

    try:
        result = retry.call(server, what="write 256 points", address="qdrant:6334", policy=policy, stats=stats,
                            rng=random.Random(5), sleep=sleep, clock=clock, on_retry=on_retry,
                            announce=announce)
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        result = exc
    return result, server, sleeps, clock


def test_a_long_outage_is_waited_out_past_max_attempts():
    # 80 refused connections under a 30 min budget: far past max_attempts=10 and past deadline_s, and the call
    # succeeds once the server is back.
    policy = retry.RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=30.0, deadline_s=300.0,
                               outage_budget_s=1800.0)
    outcomes = [FakeRpcError(UNAVAILABLE, "connection refused")] * 80 + ["ok"]
    result, server, sleeps, clock = run(outcomes, policy=policy)
    assert result == "ok" and server.tries == 81 > policy.max_attempts
    assert all(0 <= s <= policy.max_delay_s for s in sleeps)  # capped backoff keeps probing the server
    assert policy.deadline_s < clock.t - 1000.0 < policy.outage_budget_s


def test_the_budget_ends_an_outage_with_how_long_and_how_to_wait_longer():
    result, server, _, clock = run([FakeRpcError(UNAVAILABLE, "connection refused\nmore")])
    assert isinstance(result, QdrantUnavailable) and result.__suppress_context__
    assert server.tries > POLICY.max_attempts
    assert clock.t - 1000.0 == pytest.approx(POLICY.outage_budget_s)  # the last try lands when the budget ends
    msg = str(result)
    assert "did not answer for 900 s (UNAVAILABLE: connection refused)" in msg and "\n" not in msg
    assert "retry.outage_budget_s (now 900)" in msg and "check the server is up" in msg


def test_deadline_exceeded_counts_its_own_time_against_the_budget():
    # Each try hangs 60 s until the RPC deadline: the budget bounds the whole, tries and waits together.
    result, server, _, clock = run([FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")],
                                        rpc_s=60.0)
    assert isinstance(result, QdrantUnavailable) and "DEADLINE_EXCEEDED" in str(result)
    assert POLICY.outage_budget_s <= clock.t - 1000.0 <= POLICY.outage_budget_s + 60.0
    assert server.tries > POLICY.max_attempts


def test_rate_limits_are_pacing_not_failure():
    # Qdrant's refusal with retry-after (whole seconds, lib/storage/src/content_manager/conversions.rs), 40 times,
    # then accepted: every wait is the server's hint, and max_attempts does not end it.
    refused = FakeRpcError(EXHAUSTED, "Write rate limit exceeded: Operation requires 256 tokens but only 3.0 were "
                                      "available. Retry after 2s", trailers=(("retry-after", "2"),))
    stats = retry.RetryStats()
    result, server, sleeps, _ = run([refused] * 40 + ["ok"], stats=stats)
    assert result == "ok" and sleeps == [2.0] * 40 and stats.snapshot() == {"resource_exhausted": 40}
    # without retry-after (a proxy's limit): the backoff, within the same budget
    bare = FakeRpcError(EXHAUSTED, "too many requests")
    result, server, sleeps, _ = run([bare] * 30 + ["ok"])
    assert result == "ok" and server.tries == 31 and all(s <= POLICY.max_delay_s for s in sleeps)


def test_a_rate_limit_that_outlasts_the_budget_says_so_not_server_down():
    refused = FakeRpcError(EXHAUSTED, "Write rate limit exceeded", trailers=(("retry-after", "5"),))
    result, _, _, clock = run([refused])
    msg = str(result)
    assert isinstance(result, QdrantUnavailable) and clock.t - 1000.0 == pytest.approx(900.0)
    assert "held back by Qdrant's rate limits for 900 s" in msg and "pipeline.max_points_per_s" in msg
    assert "retry.outage_budget_s" in msg and "server is up" not in msg


def test_a_request_over_the_rate_limiters_capacity_is_refused_at_once():
    # RateLimitError::AlwaysOverBudget: no retry-after, and no wait ever lets it through.
    never = FakeRpcError(EXHAUSTED, "Write rate limit exceeded, request larger than rate limiter capacity, please "
                                    "try to split your request")
    result, server, sleeps, _ = run([never])
    assert isinstance(result, retry.OverRateLimitCapacity) and isinstance(result, QdrantRequestError)
    assert server.tries == 1 and sleeps == [] and "pipeline.upload_batch" in str(result)


def test_a_node_over_its_storage_quota_is_waited_for_with_its_own_cause():
    full = FakeRpcError(EXHAUSTED, "Insufficient storage: disk usage 96% exceeds 95%",
                        trailers=(("qdrant-insufficient-storage", "1"),))
    stats = retry.RetryStats()
    seen = []
    result, _, _, _ = run([full] * 3 + ["ok"], stats=stats, watch=lambda c: seen.append(stats.waiting().cause))
    assert result == "ok" and stats.snapshot() == {"insufficient_storage": 3}
    assert seen == ["INSUFFICIENT_STORAGE"] * 3
    result, _, _, _ = run([full])
    assert "over its memory/disk quota" in str(result) and "retry.outage_budget_s" in str(result)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED])
def test_definite_errors_stay_immediate_even_mid_outage(code):
    stats = retry.RetryStats()
    result, server, sleeps, _ = run([FakeRpcError(UNAVAILABLE)] * 3 + [FakeRpcError(code, "Wrong input")],
                                    stats=stats)
    assert not isinstance(result, QdrantUnavailable) and server.tries == 4 and len(sleeps) == 3
    assert stats.waiting() is None  # the call is over: nobody waits any more


def test_waiting_is_visible_while_it_lasts():
    stats = retry.RetryStats()
    lines = []
    outcomes = [FakeRpcError(UNAVAILABLE)] * 5 + [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)] + ["ok"]
    result, _, _, _ = run(outcomes, stats=stats, watch=lambda c: lines.append(stats.waiting().describe(c.t)))
    assert result == "ok" and stats.waiting() is None
    assert lines[0] == "waiting for Qdrant (UNAVAILABLE) 0 s" and lines[-1].startswith(
        "waiting for Qdrant (DEADLINE_EXCEEDED) ")
    waited = [int(line.split()[-2]) for line in lines]
    assert waited == sorted(waited) and waited[-1] > 0
    # several calls of one worker: the oldest wait and the latest cause
    stats.wait_begins(1, since=10.0, cause="UNAVAILABLE")
    stats.wait_begins(2, since=30.0, cause="RESOURCE_EXHAUSTED")
    w = stats.waiting()
    assert (w.since, w.cause, w.calls) == (10.0, "RESOURCE_EXHAUSTED", 2) and w.describe(52.4) == \
        "waiting for Qdrant (RESOURCE_EXHAUSTED) 42 s"
    stats.wait_ends(1)
    stats.wait_ends(2)
    assert stats.waiting() is None


def test_on_retry_hears_each_failure_with_the_servers_hint():
    events: list[retry.RetryEvent] = []
    refused = FakeRpcError(EXHAUSTED, trailers=(("retry-after", "3"),))
    result, _, _, _ = run([FakeRpcError(UNAVAILABLE), refused, "ok"], on_retry=events.append)
    assert result == "ok"
    assert [(e.code, e.attempt, e.retry_after_s) for e in events] == [(UNAVAILABLE, 1, None), (EXHAUSTED, 2, 3.0)]
    assert events[1].delay_s == 3.0 and events[0].cause == "unavailable"


def test_the_asyncio_twin_decides_the_same():
    outcomes = [FakeRpcError(UNAVAILABLE)] * 30 + [FakeRpcError(EXHAUSTED, trailers=(("retry-after", "1"),))] + ["ok"]
    sync_result, sync_server, sync_sleeps, sync_clock = run(outcomes)
    clock = Clock(1000.0)
    server = Server(clock, outcomes)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.t += seconds

    async def fn():
        return server()

    result = asyncio.run(retry.call_async(fn, what="write 256 points", address="qdrant:6334", policy=POLICY,
                                          rng=random.Random(5), sleep=sleep, clock=clock))
    assert (result, server.tries, sleeps, clock.t) == (sync_result, sync_server.tries, sync_sleeps, sync_clock.t)


def test_backoff_never_overflows_after_thousands_of_tries():
    rng = random.Random(1)
    assert 0 <= POLICY.backoff(5000, rng) <= POLICY.max_delay_s


def test_the_budget_is_a_config_key_with_a_reasoned_default():
    assert tunables.RETRY_OUTAGE_BUDGET_S == 900.0 and retry.RetryPolicy().outage_budget_s == 900.0
    cfg = config_from_dict({"retry": {"outage_budget_s": 3600}}, env={})
    assert cfg.retry.outage_budget_s == 3600.0
    assert config_from_dict({}, env={}).retry.outage_budget_s == 900.0
    with pytest.raises(ConfigError, match="retry.outage_budget_s=-1 is out of range; a rolling restart"):
        config_from_dict({}, ["retry.outage_budget_s=-1"], env={})


def test_a_cancelled_wait_is_no_longer_shown_as_waiting():
    stats = retry.RetryStats()

    async def sleep(seconds: float) -> None:
        raise asyncio.CancelledError  # the lane is shut down while the call waits for Qdrant

    async def fn():
        raise FakeRpcError(UNAVAILABLE)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retry.call_async(fn, what="w", address="a", policy=POLICY, stats=stats, sleep=sleep))
    assert stats.waiting() is None and stats.snapshot() == {"unavailable": 1}


def test_a_driver_call_says_what_it_waits_for_without_flooding():
    # The driver's calls after the pipeline (index restore, cutover) have no progress line: an outage there was
    # waited out in silence. A line once the wait passes OUTAGE_ANNOUNCE_AFTER_S, then one per
    # OUTAGE_ANNOUNCE_EVERY_S, each saying what waits, on whom, for how long and how much longer it may.
    lines: list[tuple[float, str]] = []
    clock_seen: list[Clock] = []
    outcomes = [FakeRpcError(UNAVAILABLE, "connection refused")] * 60 + ["ok"]
    result, _, _, clock = run(outcomes, watch=clock_seen.append,
                              announce=lambda line: lines.append((clock_seen[-1].t - 1000.0, line)))
    assert result == "ok"
    waited = clock.t - 1000.0
    assert lines, "a minutes-long wait must be announced"
    first_at, first = lines[0]
    assert tunables.OUTAGE_ANNOUNCE_AFTER_S <= first_at < tunables.OUTAGE_ANNOUNCE_AFTER_S + POLICY.max_delay_s
    assert first.startswith("waiting for Qdrant (UNAVAILABLE)") and "write 256 points on qdrant:6334" in first
    assert "retry.outage_budget_s" in first
    gaps = [b - a for (a, _), (b, _) in zip(lines, lines[1:])]
    assert all(g >= tunables.OUTAGE_ANNOUNCE_EVERY_S for g in gaps)
    assert len(lines) <= waited / tunables.OUTAGE_ANNOUNCE_EVERY_S + 1


def test_a_short_blip_is_not_announced():
    lines: list[str] = []
    result, _, _, clock = run([FakeRpcError(UNAVAILABLE, "connection refused")] * 2 + ["ok"],
                              announce=lines.append)
    assert result == "ok" and clock.t - 1000.0 < tunables.OUTAGE_ANNOUNCE_AFTER_S and lines == []
