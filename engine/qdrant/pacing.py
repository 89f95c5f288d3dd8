"""Write pacing: how hard one writer pushes a Qdrant cluster that is also serving production.

Four controls, one gate (`async with controller.slot(points=n) as slot: ...`):

- **AIMD on the requests in flight.** The window grows by one request per window's worth of successful writes
  (additive increase, as TCP grows per round trip) while writes finish under `target_latency_ms`, and shrinks by
  `decrease_factor` (multiplicative decrease) when the server refuses a write with RESOURCE_EXHAUSTED, when a
  write takes longer than the target or times out, or when the source's search p99 (probed from outside, see
  `SearchProbe`) is above `protect_search_p99_ms`. Only a request sent after the last cut may cut again, so the
  burst of refusals from the requests already in flight counts as one congestion event, not as several.
- **AIMD on rate.** A window cannot pace below one request in flight, and a strict-mode write limit is points per
  minute per shard replica (shards/replica_set/update.rs counts the points a write touches): often only a few
  requests' worth per second. So a refusal also cuts a learned points/s rate (from what the server acknowledged
  over the last seconds; so does any other cut once the window is at its floor). The learned rate climbs back
  additively (`rate_increase_per_s` of the rate it was cut from, per second) only while it is what holds the writer
  back; past the refused rate and calm for `rate_calm_s`, it doubles every `rate_doubling_s` (a lifted limit is
  found again in about a minute), and it is dropped when the window is what limits again. Qdrant's bucket holds a
  minute of tokens, so time spent just below the limit is not lost: the long-run throughput is the limit itself.
- **retry-after as a pause.** Qdrant's strict-mode rate limiter is a token bucket per shard replica
  (lib/common/common/src/rate_limiting.rs) and says when the refused request would fit (`retry-after`, whole
  seconds rounded up: lib/storage/src/content_manager/conversions.rs). No new request of this writer starts before
  then; the refused request itself waits in the retry layer (engine/qdrant/retry.py) holding its slot.
- **A token bucket for a points/s cap.** The job's `max_points_per_s` is split across writers by the caller
  (`split_rate`); `set_rate` changes a writer's share as lanes come and go.

The controller keeps no thread and reads time only through the injected `clock` (and waits through the injected
async `sleep`), so its tests drive it on simulated time. `pace()` is what a progress line shows: the window, the
points/s written, the cap, and why the window last changed ("RESOURCE_EXHAUSTED: in flight 8 -> 5").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from qdrant_client import grpc as pb

from engine import tunables
from engine.qdrant.retry import RetryEvent, retry_after_s, status_of

log = logging.getLogger(__name__)
_TOKEN_SLACK = 1e-6  # points


@dataclass(frozen=True)
class PacingSettings:
    """One writer's pacing; see engine/tunables.py for the reason of each default."""

    initial_in_flight: int = tunables.UPLOAD_REQUESTS_IN_FLIGHT
    min_in_flight: int = tunables.PACING_MIN_IN_FLIGHT
    max_in_flight: int = tunables.PACING_MAX_IN_FLIGHT
    decrease_factor: float = tunables.PACING_DECREASE_FACTOR
    target_latency_ms: float | None = tunables.WRITE_LATENCY_TARGET_MS
    protect_search_p99_ms: float | None = None
    max_points_per_s: float | None = None  # this writer's share of the job's cap
    burst_s: float = tunables.PACING_BURST_S
    probe_cooldown_s: float = tunables.PACING_PROBE_COOLDOWN_S
    rate_window_s: float = tunables.PACING_RATE_WINDOW_S
    rate_increase_per_s: float = tunables.PACING_RATE_INCREASE_PER_S
    rate_doubling_s: float = tunables.PACING_RATE_DOUBLING_S
    rate_calm_s: float = tunables.PACING_RATE_CALM_S
    slowest_request_interval_s: float = tunables.PACING_SLOWEST_REQUEST_INTERVAL_S
    # False: a fixed window of initial_in_flight requests that refusals, latency and the search probe never move (a
    # refused request still waits out its own retry-after in the retry layer); the baseline bench/pacing.py beats
    adaptive: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_in_flight <= self.initial_in_flight <= self.max_in_flight:
            raise ValueError(f"pacing needs 1 <= min ({self.min_in_flight}) <= initial ({self.initial_in_flight}) "
                             f"<= max ({self.max_in_flight}) requests in flight")
        if not 0 < self.decrease_factor < 1:
            raise ValueError(f"pacing decrease_factor {self.decrease_factor} must be between 0 and 1")

    @classmethod
    def from_pipeline(cls, pipeline: Any, *, writers: int = 1) -> PacingSettings:
        """From the job's `pipeline:` section, for one of `writers` writers sharing the cap: the configured requests
        in flight are the starting window, and the window may grow past them up to PACING_MAX_IN_FLIGHT (with
        `adaptive_pacing: false` they are the window for good: `fixed`)."""
        start = int(pipeline.upload_requests_in_flight)
        rate = split_rate(pipeline.max_points_per_s, writers)
        if not pipeline.adaptive_pacing:
            return cls.fixed(start, max_points_per_s=rate)
        return cls(initial_in_flight=start, max_in_flight=max(start, tunables.PACING_MAX_IN_FLIGHT),
                   target_latency_ms=pipeline.write_latency_target_ms,
                   protect_search_p99_ms=pipeline.protect_search_p99_ms, max_points_per_s=rate)

    @classmethod
    def fixed(cls, in_flight: int, *, max_points_per_s: float | None = None) -> PacingSettings:
        """`in_flight` requests at all times, whatever the server answers (the points/s cap still holds)."""
        return cls(initial_in_flight=in_flight, min_in_flight=min(in_flight, tunables.PACING_MIN_IN_FLIGHT),
                   max_in_flight=in_flight, target_latency_ms=None, max_points_per_s=max_points_per_s,
                   adaptive=False)


def split_rate(total_points_per_s: float | None, writers: int) -> float | None:
    """One writer's share of a job-wide points/s cap (None: no cap)."""
    if total_points_per_s is None:
        return None
    return total_points_per_s / max(1, writers)


class TokenBucket:
    """The points/s cap. It refills at `rate` and holds `burst_s` seconds of tokens. A request larger than the
    bucket goes out once the bucket is full and leaves it in debt, so the cap holds on average and no request waits
    forever. `rate` None: no cap."""

    def __init__(self, rate: float | None, *, burst_s: float, now: float) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self.tokens = self.capacity
        self.stamp = now

    @property
    def capacity(self) -> float:
        return 0.0 if self.rate is None else self.rate * self.burst_s

    def _refill(self, now: float) -> None:
        if self.rate is not None and now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait_s(self, points: int, now: float) -> float:
        """Seconds until `points` may go (0: now)."""
        if self.rate is None:
            return 0.0
        self._refill(now)
        need = min(float(points), self.capacity)
        # A hair short is enough: refills in float arithmetic can land a rounding error under `need`, and a wait of
        # 1e-13 s would not move a clock forward.
        return 0.0 if self.tokens >= need - _TOKEN_SLACK else (need - self.tokens) / self.rate

    def take(self, points: int, now: float) -> None:
        if self.rate is not None:
            self._refill(now)
            self.tokens -= points

    def set_rate(self, rate: float | None, now: float, *, start_empty: bool = False) -> None:
        """A new rate; a bucket that had none starts full (or empty: the server has just refused a write), one
        whose rate changes keeps its tokens (or its debt)."""
        self._refill(now)
        was_capped = self.rate is not None
        self.rate = rate
        if start_empty:
            self.tokens = min(self.tokens, 0.0) if was_capped else 0.0
        elif not was_capped:
            self.tokens = self.capacity
        else:
            self.tokens = min(self.tokens, self.capacity)


@dataclass
class Slot:
    """One granted write request. Hand `on_retry` to retry.call_async so refusals inside the retry loop reach the
    controller while the request keeps its slot."""

    points: int
    started: float
    epoch: int  # the window's generation when sent: only a request sent after the last cut may cut again
    window_full: bool  # the window was in use when it was granted: only then does success argue for a larger one
    throttled: bool = False
    retried: bool = False
    _controller: WriteController | None = field(default=None, repr=False)

    def on_retry(self, event: RetryEvent) -> None:
        self.retried = True
        if self._controller is None:
            return
        if event.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self._controller.throttled(self, event.retry_after_s)
        elif event.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self._controller.timed_out(self)


@dataclass(frozen=True)
class Pace:
    """What a progress line shows about one writer's pacing."""

    limit: int  # requests allowed in flight now
    in_flight: int
    points_per_s: float  # points written (acknowledged) per second over the last rate window
    rate_cap: float | None  # this writer's share of the job's points/s cap
    learned_rate: float | None  # points/s learned from refusals (None: the window alone paces)
    paused_s: float  # seconds left of a server-requested pause
    reason: str  # why the window last changed
    ok: int
    throttled: int

    def describe(self) -> str:
        cap = f" (cap {self.rate_cap:,.0f})" if self.rate_cap is not None else ""
        if self.learned_rate is not None and (self.rate_cap is None or self.learned_rate < self.rate_cap):
            cap = f" (paced at {self.learned_rate:,.0f})"
        pause = f", paused {self.paused_s:.0f} s" if self.paused_s > 0 else ""
        return (f"in flight {self.in_flight}/{self.limit}, {self.points_per_s:,.0f} points/s{cap}{pause}; "
                f"{self.reason}")


class WriteController:
    """AIMD window + retry-after pause + points/s token bucket for one writer (see the module docstring).

    The synchronous core (`try_acquire`, `release`, `throttled`, `observe_search_p99`, `set_rate`) holds the logic;
    `slot` wraps it for asyncio writers. One event loop drives one controller: it is not thread-safe."""

    def __init__(self, settings: PacingSettings | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] | None = None) -> None:
        self.settings = s = settings or PacingSettings()
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._started = now
        self._limit = float(s.initial_in_flight)
        self._in_flight = 0
        self._epoch = 0
        self._paused_until = -math.inf
        self._cap = s.max_points_per_s  # this writer's share of the job's cap
        self._learned: float | None = None  # points/s learned from cuts (None: not pacing by rate)
        self._rate_step = 0.0  # points/s the learned rate climbs per second
        self._rate_refused = 0.0  # the rate the last rate cut started from
        self._rate_bound = False  # the learned rate made a request wait since the last acknowledgement
        self._rate_bound_at = now  # when it last did
        self._last_cut = now
        self._last_points = 0  # the size of the last request granted: a cut without a request is sized by it
        self._bucket = TokenBucket(s.max_points_per_s, burst_s=s.burst_s, now=now)
        self._done: deque[tuple[float, int]] = deque()  # (time, points) of acknowledged writes in the rate window
        self._done_points = 0
        self._search_hot = False
        self._last_probe_cut = -math.inf
        self._ok = 0
        self._throttled = 0
        self._reason = f"start: in flight {s.initial_in_flight}"
        self._waiters: list[asyncio.Future] = []

    # --- the synchronous core ---------------------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        return max(self.settings.min_in_flight, int(self._limit))

    def try_acquire(self, points: int) -> Slot | float:
        """A slot now, or the seconds to wait before asking again (math.inf: until a request in flight ends)."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self._in_flight >= self.limit:
            return math.inf
        wait = self._bucket.wait_s(points, now)
        if wait > 0:
            if self._learned is not None and (self._cap is None or self._learned < self._cap):
                self._rate_bound = True
                self._rate_bound_at = now
            return wait
        self._bucket.take(points, now)
        self._in_flight += 1
        self._last_points = points
        return Slot(points=points, started=now, epoch=self._epoch, window_full=self._in_flight >= self.limit,
                    _controller=self)

    def release(self, slot: Slot, outcome: str = "ok") -> None:
        """The request ended: "ok" (acknowledged), "throttled" (refused for good by a rate limit), "timeout", or
        "failed" (any other error: no signal about load)."""
        now = self._clock()
        self._in_flight = max(0, self._in_flight - 1)
        slot._controller = None  # a late on_retry from a finished request must not count
        if outcome == "ok":
            self._ok += 1
            self._done.append((now, slot.points))
            self._done_points += slot.points
            if not (slot.throttled or slot.retried):  # a retried request's time includes the waits
                self._judge_latency(slot, now - slot.started)
        elif outcome == "timeout":
            self._cut(slot.epoch, "DEADLINE_EXCEEDED", slot.points, False)
        self._wake()

    def _judge_latency(self, slot: Slot, latency_s: float) -> None:
        if not self.settings.adaptive:
            return
        target = self.settings.target_latency_ms
        latency_ms = latency_s * 1000.0
        if target is not None and latency_ms > target:
            self._cut(slot.epoch, f"write latency {latency_ms:,.0f} ms over {target:,.0f} ms", slot.points, False)
            return
        now = self._clock()
        if self._search_hot or now < self._paused_until:
            return
        if self._learned is not None:
            if self._rate_bound:  # climb only while the learned rate is what holds the writer back
                self._rate_bound = False
                if self._learned < self._rate_refused or now - self._last_cut < self.settings.rate_calm_s:
                    # near the limit that refused us: gently, the same points/s every second
                    step = self._rate_step * slot.points / self._learned
                else:
                    # past the rate that was refused and calm for a while: the limit may be gone; double every
                    # rate_doubling_s (per acknowledgement, as they come `learned / points` times a second)
                    step = slot.points * math.log(2) / self.settings.rate_doubling_s
                self._set_learned(self._learned + step)
                return
            if not slot.window_full or now - self._rate_bound_at < self.settings.rate_window_s:
                return
            # For a whole rate window the rate has not held the writer back: the window does again.
            self._reason = f"rate pacing ends at {self._learned:,.0f} points/s: in flight {self.limit}"
            self._set_learned(None)
        if slot.window_full:
            before = self.limit
            self._limit = min(float(self.settings.max_in_flight), self._limit + 1.0 / max(self._limit, 1.0))
            if self.limit != before:
                self._reason = f"writes under target: in flight {before} -> {self.limit}"

    def throttled(self, slot: Slot | None, retry_after: float | None) -> None:
        """The server refused a write with RESOURCE_EXHAUSTED (`retry_after`: its hint in seconds, if any)."""
        now = self._clock()
        self._throttled += 1
        if not self.settings.adaptive:
            return  # counted for pace(); the refused request alone waits (in the retry layer)
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
        why = "RESOURCE_EXHAUSTED" + (f" (retry after {retry_after:g} s)" if retry_after else "")
        if slot is None:
            self._cut(self._epoch, why, 0, True)
            return
        slot.throttled = True
        self._cut(slot.epoch, why, slot.points, True)
        slot.epoch = self._epoch  # its next try goes out after this cut, so a refusal of it may cut again

    def timed_out(self, slot: Slot) -> None:
        """A write ran past its RPC deadline: far over any latency target."""
        self._cut(slot.epoch, "DEADLINE_EXCEEDED", slot.points, False)
        slot.epoch = self._epoch

    def observe_search_p99(self, p99_ms: float | None) -> None:
        """A fresh p99 of the source's search latency (SearchProbe.p99_ms); ignored without protect_search_p99_ms."""
        bound = self.settings.protect_search_p99_ms
        if bound is None or p99_ms is None:
            return
        self._search_hot = p99_ms > bound
        now = self._clock()
        if self._search_hot and now - self._last_probe_cut >= self.settings.probe_cooldown_s:
            self._last_probe_cut = now
            self._cut(self._epoch, f"search p99 {p99_ms:,.0f} ms over {bound:,.0f} ms", 0, False)

    def set_rate(self, points_per_s: float | None) -> None:
        """Change this writer's share of the job's points/s cap (None: no cap)."""
        before = self._cap
        self._cap = points_per_s
        self._apply_rate()
        if before != points_per_s:
            self._reason = f"points/s cap {_rate_text(before)} -> {_rate_text(points_per_s)}"
        self._wake()

    def _apply_rate(self, *, start_empty: bool = False) -> None:
        rates = [r for r in (self._cap, self._learned) if r is not None]
        self._bucket.set_rate(min(rates) if rates else None, self._clock(), start_empty=start_empty)

    def _set_learned(self, rate: float | None, *, start_empty: bool = False) -> None:
        self._learned = rate
        self._apply_rate(start_empty=start_empty)

    def _cut(self, epoch: int, why: str, points: int, rate_limited: bool) -> None:
        """Multiplicative decrease of the window, and of the learned rate when a rate limit refused the write (or
        the window is already at its floor)."""
        if epoch != self._epoch or not self.settings.adaptive:
            return  # sent before the last cut: it cannot tell whether that cut was enough
        self._epoch += 1
        self._last_cut = self._clock()
        before = self.limit
        beta = self.settings.decrease_factor
        parts = []
        if before > self.settings.min_in_flight:
            self._limit = max(float(self.settings.min_in_flight), self._limit * beta)
            parts.append(f"in flight {before} -> {self.limit}")
        size = points or self._last_points
        if (rate_limited or before <= self.settings.min_in_flight) and size > 0:
            # From what the server actually took lately (one request per second before anything was acknowledged).
            base = self._learned if self._learned is not None else max(self.points_per_s(), float(size))
            self._rate_step = base * self.settings.rate_increase_per_s
            self._rate_refused = base
            self._rate_bound = False
            self._rate_bound_at = self._last_cut
            self._set_learned(max(size / self.settings.slowest_request_interval_s, base * beta), start_empty=True)
            parts.append(f"{base:,.0f} -> {self._learned:,.0f} points/s")
        self._reason = f"{why}: {', '.join(parts) or f'in flight {before} (the floor)'}"
        log.debug("pacing: %s", self._reason)

    def points_per_s(self) -> float:
        now = self._clock()
        window = self.settings.rate_window_s
        while self._done and self._done[0][0] <= now - window:
            self._done_points -= self._done.popleft()[1]
        span = min(window, now - self._started)
        return self._done_points / span if span > 0 else 0.0

    def pace(self) -> Pace:
        now = self._clock()
        return Pace(limit=self.limit, in_flight=self._in_flight, points_per_s=self.points_per_s(),
                    rate_cap=self._cap, learned_rate=self._learned, paused_s=max(0.0, self._paused_until - now),
                    reason=self._reason, ok=self._ok, throttled=self._throttled)

    # --- asyncio ------------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def acquire(self, points: int) -> Slot:
        """Wait for an in-flight slot, the end of any pause and the tokens for `points`."""
        sleep = self._sleep or asyncio.sleep
        while True:
            got = self.try_acquire(points)
            if isinstance(got, Slot):
                return got
            if math.isinf(got):
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut
            else:
                await sleep(got)

    @asynccontextmanager
    async def slot(self, points: int) -> AsyncIterator[Slot]:
        """`async with controller.slot(points=n) as slot:` send one write (pass `slot.on_retry` to
        retry.call_async); the outcome is reported when the block ends: acknowledged, or the gRPC error raised."""
        granted = await self.acquire(points)
        try:
            yield granted
        except grpc.RpcError as err:
            code = status_of(err)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                if not granted.throttled:  # not yet heard through on_retry
                    self.throttled(granted, retry_after_s(err))
                self.release(granted, "throttled")
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.release(granted, "timeout")
            else:
                self.release(granted, "failed")
            raise
        except BaseException:
            self.release(granted, "failed")
            raise
        else:
            self.release(granted, "ok")


def _rate_text(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:,.0f}"


class SearchProbe:
    """Times a cheap search against the source collection and keeps a rolling p99 of the last samples, for
    `WriteController.observe_search_p99`. The caller decides how often to `measure` (about once a second is
    plenty): each probe is one more read on a server the job is trying to spare."""

    def __init__(self, search: Callable[[], object], *, clock: Callable[[], float] = time.monotonic,
                 samples: int = tunables.SEARCH_PROBE_SAMPLES, window_s: float = tunables.SEARCH_PROBE_WINDOW_S,
                 timeout_s: float = tunables.SEARCH_PROBE_TIMEOUT_S) -> None:
        self._search = search
        self._clock = clock
        self._window_s = window_s
        self._timeout_ms = timeout_s * 1000.0
        self._samples: deque[tuple[float, float]] = deque(maxlen=samples)

    def measure(self) -> float:
        """Run one probe search; returns its latency in ms. A failed search (timeout, refusal) counts as the
        timeout: for the application it was at least that slow."""
        t0 = self._clock()
        try:
            self._search()
            ms = (self._clock() - t0) * 1000.0
        except grpc.RpcError as err:
            log.debug("search probe failed (%s); counted as %.0f ms", status_of(err), self._timeout_ms)
            ms = self._timeout_ms
        self._samples.append((self._clock(), ms))
        return ms

    def p99_ms(self) -> float | None:
        """The 99th percentile (nearest rank) of the samples younger than the window; None without samples."""
        now = self._clock()
        while self._samples and self._samples[0][0] < now - self._window_s:
            self._samples.popleft()
        if not self._samples:
            return None
        ordered = sorted(ms for _, ms in self._samples)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    @classmethod
    def for_collection(cls, client: Any, collection: str, vector: Sequence[float], *, using: str | None = None,
                       limit: int = tunables.SEARCH_PROBE_LIMIT, timeout_s: float = tunables.SEARCH_PROBE_TIMEOUT_S,
                       clock: Callable[[], float] = time.monotonic) -> SearchProbe:
        """A probe that asks `collection` (through a blocking engine.qdrant.client.QdrantGrpc) for the `limit`
        nearest neighbours of `vector` (a stored vector makes a realistic query), without payload, straight on the
        stub: no retries, since a probe that waits out an outage would measure the retry policy, not the server."""
        dense = pb.DenseVector(data=[float(x) for x in vector])
        req = pb.QueryPoints(collection_name=collection, limit=limit,
                             query=pb.Query(nearest=pb.VectorInput(dense=dense)))
        if using:
            req.using = using
        req.with_payload.enable = False
        metadata = client.endpoint.metadata()

        def search() -> object:
            return client.points.Query(req, metadata=metadata, timeout=timeout_s)

        return cls(search, clock=clock, timeout_s=timeout_s)
