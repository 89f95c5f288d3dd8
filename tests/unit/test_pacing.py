"""The write controller (engine/qdrant/pacing.py) driven on simulated time against simulated servers: one that
refuses above R points/s the way Qdrant's strict-mode rate limiter does (a token bucket per shard holding a minute
of tokens, lib/common/common/src/rate_limiting.rs; `retry-after` rounded up to whole seconds,
lib/storage/src/content_manager/conversions.rs), one whose latency grows with its queue, and one without limits.
No test sleeps or reads the real clock."""

from __future__ import annotations

import asyncio
import heapq
import math
from dataclasses import replace
from types import SimpleNamespace

import grpc
import pytest
from qdrant_client import grpc as pb

from engine.config import config_from_dict
from engine.qdrant.pacing import PacingSettings, SearchProbe, Slot, TokenBucket, WriteController, split_rate
from engine.qdrant.retry import RetryEvent
from tests.unit.fakes import Clock
from tests.unit.test_retry import FakeRpcError

BATCH = 256


class QdrantRateLimiter:
    """RateLimiter of lib/common/common/src/rate_limiting.rs: `per_minute` tokens per minute, holding `capacity_s`
    seconds of them (Qdrant: 60, starting full). A refusal says how long until the request fits, rounded up to whole
    seconds as the gRPC trailer carries it."""

    def __init__(self, points_per_s: float, *, capacity_s: float = 60.0, full: bool = True) -> None:
        self.rate = points_per_s
        self.capacity = points_per_s * capacity_s
        self.tokens = self.capacity if full else 0.0
        self.last = 0.0

    def try_consume(self, cost: int, now: float) -> float | None:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return None
        return float(math.ceil((cost - self.tokens) / self.rate))


class Sim:
    """Tasks with endless work behind one controller each, or spread over several controllers (writers of several
    lanes), on a discrete-event clock. A refused request holds its slot and is sent again after `retry-after`, as
    engine.qdrant.retry does inside `async with controller.slot()`."""

    def __init__(self, ctl: WriteController | list[WriteController], clock: Clock, *,
                 limiter: QdrantRateLimiter | None = None, latency_s: float = 0.05,
                 capacity_pps: float | None = None, writers: int = 20) -> None:
        self.ctls = ctl if isinstance(ctl, list) else [ctl]
        self.clock, self.limiter = clock, limiter
        self.latency_s, self.capacity_pps = latency_s, capacity_pps
        self.queue: list = []
        self.seq = 0
        self.blocked: dict[int, list[int]] = {i: [] for i in range(len(self.ctls))}
        self.owner: dict[int, int] = {}
        self.free_at = 0.0  # the queueing server's next idle moment
        self.log: list[tuple[float, str, int, float]] = []  # (time, ok|refused, points, latency)
        for task in range(writers * len(self.ctls)):
            self.at(0.0, "try", task)

    def at(self, t: float, kind: str, data) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, data))

    def send(self, slot: Slot, now: float) -> None:
        if self.limiter is not None:
            retry_after = self.limiter.try_consume(slot.points, now)
            if retry_after is not None:
                self.log.append((now, "refused", slot.points, 0.0))
                self.at(now + 0.005, "refused", (slot, retry_after))
                return
        if self.capacity_pps is not None:  # one FIFO server: the latency is the queue ahead plus the service
            self.free_at = max(now, self.free_at) + slot.points / self.capacity_pps
            self.at(self.free_at + self.latency_s, "done", slot)
        else:
            self.at(now + self.latency_s, "done", slot)

    def run(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            t, _, kind, data = heapq.heappop(self.queue)
            self.clock.t = t
            if kind == "try":
                got = self.ctls[data % len(self.ctls)].try_acquire(BATCH)
                if isinstance(got, Slot):
                    self.owner[id(got)] = data
                    self.send(got, t)
                elif math.isinf(got):
                    self.blocked[data % len(self.ctls)].append(data)
                else:
                    self.at(t + got, "try", data)
            elif kind == "done":
                self.log.append((t, "ok", data.points, t - data.started))
                task = self.owner.pop(id(data))
                which = task % len(self.ctls)
                self.ctls[which].release(data, "ok")
                self.at(t, "try", task)
                blocked, self.blocked[which] = self.blocked[which], []
                for waiting in blocked:
                    self.at(t, "try", waiting)
            elif kind == "refused":
                slot, retry_after = data
                slot.on_retry(RetryEvent(grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", 1, retry_after,
                                         retry_after))
                self.at(t + retry_after, "resend", slot)
            else:  # resend
                self.send(data, t)
        self.clock.t = until

    def throughput(self, t0: float, t1: float) -> float:
        return sum(p for t, kind, p, _ in self.log if kind == "ok" and t0 <= t < t1) / (t1 - t0)

    def refused_share(self, t0: float, t1: float) -> float:
        kinds = [kind for t, kind, _, _ in self.log if t0 <= t < t1]
        return kinds.count("refused") / max(1, len(kinds))

    def mean_latency(self, t0: float, t1: float) -> float:
        lat = [lat for t, kind, _, lat in self.log if kind == "ok" and t0 <= t < t1]
        return sum(lat) / len(lat)


def grant(ctl: WriteController, points: int = BATCH) -> Slot:
    """A slot the test expects to be granted at once."""
    got = ctl.try_acquire(points)
    assert isinstance(got, Slot), f"no slot: wait {got}"
    return got


def controller(**settings) -> tuple[WriteController, Clock]:
    clock = Clock()
    settings.setdefault("target_latency_ms", None)
    return WriteController(PacingSettings(**settings), clock=clock), clock


# One request in flight at 50 ms carries 5,120 points/s: 1,000/s (a strict-mode write_rate_limit of 60,000 per
# minute on one shard) and 2,000/s need less than one (the rate pacing below the window's floor), 20,000 about four,
# 60,000 about twelve. A 60 s bucket is Qdrant's; a 1 s bucket punishes every burst, the harder case.
@pytest.mark.parametrize("rate,capacity_s,settle,until", [
    (1_000, 60.0, 120, 400), (2_000, 60.0, 120, 300), (20_000, 60.0, 120, 300), (60_000, 60.0, 300, 600),
    (2_000, 1.0, 60, 240), (20_000, 1.0, 60, 240), (60_000, 1.0, 60, 240),
])
def test_converges_under_a_rate_limit(rate, capacity_s, settle, until):
    ctl, clock = controller()
    sim = Sim(ctl, clock, limiter=QdrantRateLimiter(rate, capacity_s=capacity_s))
    sim.run(until)
    assert sim.throughput(settle, until) >= 0.8 * rate
    assert sim.refused_share(settle, until) <= 0.05
    pace = ctl.pace()
    assert pace.throttled > 0 and pace.limit <= ctl.settings.max_in_flight
    assert 0.8 * rate <= pace.points_per_s <= 1.3 * rate  # what the progress line reports


@pytest.mark.parametrize("rate,capacity_s", [(2_000, 60.0), (20_000, 1.0), (60_000, 1.0)])
def test_writers_of_several_lanes_share_a_limit(rate, capacity_s):
    clock = Clock()
    ctls = [WriteController(PacingSettings(target_latency_ms=None), clock=clock) for _ in range(4)]
    sim = Sim(ctls, clock, limiter=QdrantRateLimiter(rate, capacity_s=capacity_s))
    sim.run(400)
    assert sim.throughput(200, 400) >= 0.8 * rate and sim.refused_share(200, 400) <= 0.05
    shares = [c.pace().points_per_s for c in ctls]
    assert min(shares) > 0.1 * rate / 4  # nobody is starved


def test_reason_names_the_refusal_and_the_cut():
    ctl, clock = controller(initial_in_flight=8)
    slots = [grant(ctl) for _ in range(8)]
    assert ctl.try_acquire(BATCH) == math.inf
    clock.t = 0.5
    slots[0].on_retry(RetryEvent(grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", 1, 2.0, 2.0))
    pace = ctl.pace()
    assert pace.reason.startswith("RESOURCE_EXHAUSTED (retry after 2 s): in flight 8 -> 5")
    assert pace.paused_s == pytest.approx(2.0) and pace.limit == 5
    # the others were sent before the cut: their refusals are the same congestion event, not seven more cuts
    for s in slots[1:]:
        s.on_retry(RetryEvent(grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", 1, 2.0, 2.0))
    assert ctl.pace().limit == 5 and ctl.pace().throttled == 8
    assert ctl.try_acquire(BATCH) == pytest.approx(2.0)  # the pause holds new requests back
    assert "in flight 8/5" in ctl.pace().describe() and "paused 2 s" in ctl.pace().describe()


def test_backs_off_on_latency():
    # A server taking 20,000 points/s queues whatever is sent faster: eight requests in flight already wait
    # 8 x 12.8 ms; at 64 they would wait 0.8 s. The 200 ms target keeps the queue near 15 requests.
    ctl, clock = controller(target_latency_ms=200.0, max_in_flight=64)
    sim = Sim(ctl, clock, capacity_pps=20_000, latency_s=0.01, writers=70)
    sim.run(120)
    assert sim.throughput(30, 120) >= 0.8 * 20_000
    assert sim.mean_latency(30, 120) <= 0.2
    assert ctl.pace().limit <= 20
    assert any(kind == "ok" and lat > 0.2 for _, kind, _, lat in sim.log)  # it did overshoot and came back
    ctl2, clock2 = controller(target_latency_ms=None, max_in_flight=64)
    sim2 = Sim(ctl2, clock2, capacity_pps=20_000, latency_s=0.01, writers=70)
    sim2.run(120)
    assert ctl2.pace().limit == 64 and sim2.mean_latency(30, 120) > 0.6  # without a target the queue just grows


def test_respects_the_cap_and_its_changes():
    ctl, clock = controller(max_points_per_s=5_000.0)
    sim = Sim(ctl, clock)  # a server without limits: 16 in flight would write ~80,000 points/s
    sim.run(60)
    assert 0.95 * 5_000 <= sim.throughput(0, 60) <= 5_000 + 5_000 / 60  # the cap, plus one second of burst
    ctl.set_rate(10_000.0)
    assert ctl.pace().reason == "points/s cap 5,000 -> 10,000"
    sim.run(120)
    assert 0.95 * 10_000 <= sim.throughput(61, 120) <= 10_000 * 1.02
    ctl.set_rate(None)
    sim.run(150)
    assert sim.throughput(140, 150) > 60_000 and ctl.pace().rate_cap is None and ctl.pace().learned_rate is None


def test_recovers_after_pressure_ends():
    ctl, clock = controller()
    sim = Sim(ctl, clock, limiter=QdrantRateLimiter(2_000, capacity_s=1.0))
    sim.run(120)
    assert ctl.pace().limit <= 2 and ctl.pace().learned_rate is not None  # pacing below one request in flight
    sim.limiter = None  # the application's burst is over, or the limit was raised
    sim.run(300)
    assert ctl.pace().limit == ctl.settings.max_in_flight and ctl.pace().learned_rate is None
    assert sim.throughput(280, 300) >= 0.9 * 16 * BATCH / 0.05


def test_search_p99_protection():
    ctl, clock = controller(initial_in_flight=16, protect_search_p99_ms=50.0, probe_cooldown_s=5.0)
    ctl.observe_search_p99(80.0)
    assert ctl.pace().limit == 11 and ctl.pace().reason.startswith("search p99 80 ms over 50 ms")
    clock.t = 1.0
    ctl.observe_search_p99(90.0)
    assert ctl.pace().limit == 11  # within the cooldown: the p99 has not had time to show the last cut
    slot = grant(ctl)
    ctl.release(slot, "ok")
    assert ctl.pace().limit == 11  # no growth while the search p99 is over its bound
    for step in range(1, 12):
        clock.t = 1.0 + 5.0 * step
        ctl.observe_search_p99(90.0)
    assert ctl.pace().limit == 1 and ctl.pace().learned_rate is not None  # at the floor it slows by rate
    ctl.observe_search_p99(20.0)
    sim = Sim(ctl, clock)
    sim.run(clock.t + 120)
    assert ctl.pace().limit == 16  # healthy again
    unprotected, _ = controller()
    unprotected.observe_search_p99(10_000.0)
    assert unprotected.pace().reason.startswith("start")


def test_deadline_exceeded_and_other_errors():
    ctl, _ = controller(initial_in_flight=8)
    slot = grant(ctl)
    slot.on_retry(RetryEvent(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", 1, 1.0, None))
    assert ctl.pace().limit == 5 and ctl.pace().reason.startswith("DEADLINE_EXCEEDED")
    other = grant(ctl)
    other.on_retry(RetryEvent(grpc.StatusCode.UNAVAILABLE, "unavailable", 1, 1.0, None))
    ctl.release(other, "failed")
    ctl.release(slot, "ok")  # retried: its latency says nothing about load
    assert ctl.pace().limit == 5 and ctl.pace().in_flight == 0


def test_token_bucket_lets_an_oversized_request_through_in_debt():
    bucket = TokenBucket(100.0, burst_s=1.0, now=0.0)
    assert bucket.wait_s(1_000, 0.0) == 0.0  # full: a request bigger than the bucket goes, leaving a debt
    bucket.take(1_000, 0.0)
    assert bucket.wait_s(50, 0.0) == pytest.approx(9.5)
    bucket.set_rate(None, 1.0)
    assert bucket.wait_s(10**9, 1.0) == 0.0


def test_split_rate_and_settings_from_the_config():
    assert split_rate(None, 4) is None and split_rate(10_000.0, 4) == 2_500.0 and split_rate(100.0, 0) == 100.0
    cfg = config_from_dict({"pipeline": {"max_points_per_s": 12_000, "protect_search_p99_ms": 80,
                                         "upload_requests_in_flight": 3}}, env={})
    s = PacingSettings.from_pipeline(cfg.pipeline, writers=4)
    assert (s.initial_in_flight, s.max_points_per_s, s.protect_search_p99_ms) == (3, 3_000.0, 80.0)
    assert s.target_latency_ms == cfg.pipeline.write_latency_target_ms == 2000.0
    with pytest.raises(ValueError, match="min"):
        PacingSettings(initial_in_flight=0)


def test_async_gate_waits_for_a_slot_the_pause_and_tokens():
    clock = Clock()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.t += seconds
        await asyncio.sleep(0)

    ctl = WriteController(PacingSettings(initial_in_flight=1, max_in_flight=1, target_latency_ms=None,
                                         max_points_per_s=1_000.0), clock=clock, sleep=fake_sleep)
    order: list[str] = []

    async def write(name: str, fail: BaseException | None = None, hold: float = 0.0):
        async with ctl.slot(points=500) as slot:
            order.append(f"{name} at {clock.t:g}")
            await asyncio.sleep(0)
            clock.t += hold
            if fail is not None:
                raise fail
            return slot

    async def main():
        await write("a", hold=0.1)
        await asyncio.gather(write("b", hold=0.1), write("c"))  # c waits for b's slot, then for tokens
        refused = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, trailers=(("retry-after", "3"),))
        with pytest.raises(grpc.RpcError):
            await write("d", fail=refused)
        await write("e")  # after d's 3 s pause
        with pytest.raises(KeyError):
            await write("f", fail=KeyError("k"))

    asyncio.run(main())
    assert order[0] == "a at 0"
    assert [o.split()[0] for o in order] == ["a", "b", "c", "d", "e", "f"]
    # c waited for b's slot (until 0.2 s), then for tokens: a and b took 1,000 of the 1,000 + 200 refilled by then
    assert float(order[2].split()[-1]) == pytest.approx(0.5)
    assert ctl.pace().throttled == 1 and ctl.pace().in_flight == 0
    assert float(order[4].split()[-1]) >= float(order[3].split()[-1]) + 3.0
    assert all(s > 0 for s in slept)


def test_search_probe_keeps_a_rolling_p99_on_an_injected_clock():
    clock = Clock()
    latencies = iter([0.010] * 98 + [0.500, 0.020] + [0.030])

    def search():
        clock.t += next(latencies)

    probe = SearchProbe(search, clock=clock, samples=100, window_s=60.0)
    assert probe.p99_ms() is None
    for _ in range(100):
        probe.measure()
    assert probe.p99_ms() == pytest.approx(20.0)  # nearest rank: the slowest but one of 100
    clock.t += 61.0
    assert probe.p99_ms() is None  # every sample is older than the window

    def failing():
        clock.t += 0.001
        raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)

    slow = SearchProbe(failing, clock=clock, timeout_s=2.0)
    assert slow.measure() == 2000.0 and slow.p99_ms() == 2000.0  # a failed search counts as the timeout


def test_search_probe_for_a_collection_sends_a_top_k_query_without_payload():
    sent = []

    class Points:
        def Query(self, req, metadata, timeout):  # the stub's name
            sent.append((req, metadata, timeout))

    client = SimpleNamespace(points=Points(), endpoint=SimpleNamespace(metadata=lambda: (("api-key", "k"),)))
    clock = Clock()
    probe = SearchProbe.for_collection(client, "docs", [0.5, 1, 2], using="dense", clock=clock, timeout_s=3.0)
    probe.measure()
    req, metadata, timeout = sent[0]
    assert isinstance(req, pb.QueryPoints) and req.collection_name == "docs" and req.using == "dense"
    assert req.limit == 10 and not req.with_payload.enable and list(req.query.nearest.dense.data) == [0.5, 1.0, 2.0]
    assert metadata == (("api-key", "k"),) and timeout == 3.0


# --- a fixed window (`PacingSettings.fixed`, `adaptive_pacing: false`): the baseline the adaptive one is measured
# against, so nothing the server says may move it; only the job's points/s cap still holds.


def fixed_controller(**overrides) -> tuple[WriteController, Clock]:
    clock = Clock()
    return WriteController(replace(PacingSettings.fixed(4), **overrides), clock=clock), clock


def assert_untouched(ctl: WriteController) -> None:
    pace = ctl.pace()
    assert pace.limit == 4 and pace.paused_s == 0.0 and pace.learned_rate is None
    assert pace.reason == "start: in flight 4"


def test_fixed_window_ignores_resource_exhausted():
    ctl, clock = fixed_controller()
    slots = [grant(ctl) for _ in range(4)]
    assert ctl.try_acquire(BATCH) == math.inf
    clock.t = 0.5
    for s in slots:  # every request refused, each after the other's cut would have been possible
        s.on_retry(RetryEvent(grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", 1, 30.0, 30.0))
    ctl.throttled(None, 30.0)  # a refusal heard outside any slot
    assert_untouched(ctl)
    assert ctl.pace().throttled == 5  # still counted, for the progress line
    ctl.release(slots[0], "throttled")
    grant(ctl)  # no pause: only the refused request waits, in the retry layer
    assert_untouched(ctl)


def test_fixed_window_under_a_rate_limit_keeps_its_window():
    # A server refusing above 2,000 points/s for a simulated minute (4 in flight would send 20,480): the window
    # never moves, no rate is learned, and no pause holds the other requests back.
    ctl, clock = fixed_controller()
    sim = Sim(ctl, clock, limiter=QdrantRateLimiter(2_000, capacity_s=1.0))
    sim.run(60)
    assert ctl.pace().throttled > 10 and sim.refused_share(0, 60) > 0.2
    assert_untouched(ctl)


def test_fixed_window_ignores_slow_writes_and_timeouts():
    # A target is set on purpose: a fixed window must not judge latency even when told one.
    ctl, clock = fixed_controller(target_latency_ms=100.0)
    for _ in range(20):
        slot = grant(ctl)
        clock.t += 30.0  # 300 times the target
        ctl.release(slot, "ok")
    slot = grant(ctl)
    slot.on_retry(RetryEvent(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", 1, 1.0, None))
    ctl.release(slot, "timeout")
    assert_untouched(ctl)
    sim = Sim(ctl, clock, capacity_pps=2_000, latency_s=0.5, writers=20)  # a queue growing past any target
    sim.run(clock.t + 120)
    assert sim.mean_latency(clock.t - 60, clock.t) > 0.5
    assert_untouched(ctl)


def test_fixed_window_ignores_a_slow_search_probe():
    # Even with a bound given (fixed() sets none; `replace` forces one), a hot source never cuts the window.
    ctl, clock = fixed_controller(protect_search_p99_ms=50.0, probe_cooldown_s=1.0)
    for step in range(30):
        clock.t = 2.0 * step
        ctl.observe_search_p99(5_000.0)
        ctl.release(grant(ctl), "ok")
    assert_untouched(ctl)
    cfg = config_from_dict({"pipeline": {"adaptive_pacing": False, "protect_search_p99_ms": 80,
                                         "upload_requests_in_flight": 4}}, env={})
    settings = PacingSettings.from_pipeline(cfg.pipeline)
    assert settings == PacingSettings.fixed(4)  # the config's probe bound does not reach a fixed writer
    from_config = WriteController(settings, clock=clock)
    from_config.observe_search_p99(5_000.0)
    assert_untouched(from_config)


def test_fixed_window_still_keeps_the_points_per_s_cap():
    clock = Clock()
    ctl = WriteController(PacingSettings.fixed(4, max_points_per_s=5_000.0), clock=clock)
    # 4 requests in flight at 100 ms would carry 10,240 points/s: the cap alone holds the writer back.
    sim = Sim(ctl, clock, latency_s=0.1)
    sim.run(60)
    assert 0.9 * 5_000 <= sim.throughput(0, 60) <= 5_000 + 5_000 / 60
    pace = ctl.pace()
    assert pace.limit == 4 and pace.rate_cap == 5_000.0 and pace.learned_rate is None and pace.paused_s == 0.0
    ctl.set_rate(1_000.0)
    sim.run(180)
    assert sim.throughput(121, 180) <= 1_000 * 1.05 and ctl.pace().limit == 4
