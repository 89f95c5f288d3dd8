"""Retries for Qdrant RPCs: exponential backoff with full jitter, and an outage budget so a busy or restarting
cluster pauses the job instead of ending it.

Three kinds of trouble, each bounded its own way:
- **outage** (UNAVAILABLE, DEADLINE_EXCEEDED: the server is unreachable, restarting or overloaded): retried with
  capped backoff until `outage_budget_s` is spent, whatever `max_attempts` and `deadline_s` say. Neither code proves
  the write did not happen, so every write reembed sends is idempotent and safe to repeat.
- **pacing** (RESOURCE_EXHAUSTED from a rate limit, with or without `retry-after`): Qdrant's strict-mode token bucket
  refusing a request it could take later (lib/common/common/src/rate_limiting.rs; the status and the `retry-after`
  trailer in whole seconds come from lib/storage/src/content_manager/conversions.rs). Not a failure: the call waits
  the server's `retry-after` (else the backoff) within the same outage budget. A node over its memory/disk quota
  answers RESOURCE_EXHAUSTED with the `qdrant-insufficient-storage` trailer (lib/collection/src/operations/types.rs);
  that too is waited out, since an operator can free space while the job waits.
- **other transient** (ABORTED): bounded by `max_attempts` and `deadline_s` as before.

RESOURCE_EXHAUSTED that retrying cannot cure is a definite answer: a message over the gRPC size limit (ask for fewer
points), and a request costing more than the rate limiter's whole capacity ("AlwaysOverBudget" in rate_limiting.rs,
sent without `retry-after`: split the request). Every other code is definite too and becomes a one-line error.

While a call waits, `RetryStats.waiting()` says so (since when, the last cause), for a progress line such as
"waiting for Qdrant (UNAVAILABLE) 42 s". The blocking `call` and the asyncio `call_async` share one logic
(`_Attempts`); both take an injectable `sleep` and `clock`, so tests never really sleep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self, TypeVar

import grpc

from engine import tunables
from engine.errors import (
    NotFound,
    PointNotFound,
    PreconditionError,
    QdrantRequestError,
    QdrantUnavailable,
    ReplyTooLarge,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# RESOURCE_EXHAUSTED also means "the reply is over the message limit" (said by either side); retrying cannot help,
# asking for less can.
_TOO_LARGE = re.compile(r"(Sent|Received) message larger than max")
# Qdrant's answer when a request names a point that does not exist (UpdateVectors refuses the whole request).
_POINT_MISSING = re.compile(r"No point with id \S+ found")
# RateLimitError::AlwaysOverBudget (lib/common/common/src/rate_limiting.rs): the request costs more tokens than the
# bucket holds when full, so no wait can ever let it through.
_OVER_CAPACITY = re.compile(r"larger than rate limiter capacity")
# The trailer Qdrant adds when a node refuses writes over its memory/disk quota (lib/collection/src/operations/types.rs
# INSUFFICIENT_STORAGE_METADATA_KEY).
_INSUFFICIENT_STORAGE = "qdrant-insufficient-storage"
# Backoff doubles per attempt; past this exponent the cap has long been reached (and 2**n would overflow a float).
_MAX_EXPONENT = 60


def _too_large(code: grpc.StatusCode | None, detail: str) -> bool:
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE.search(detail) is not None


RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)
# The server cannot be reached or is restarting: wait within the outage budget.
OUTAGE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class OverRateLimitCapacity(QdrantRequestError):
    """One request costs more than the collection's strict-mode rate limiter can ever grant; send fewer points."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = tunables.RETRY_MAX_ATTEMPTS
    base_delay_s: float = tunables.RETRY_BASE_DELAY_S
    max_delay_s: float = tunables.RETRY_MAX_DELAY_S
    deadline_s: float = tunables.RETRY_DEADLINE_S
    # Outages and rate limits are waited out this long per call, whatever max_attempts / deadline_s say.
    outage_budget_s: float = tunables.RETRY_OUTAGE_BUDGET_S

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)] spreads retries of many workers apart."""
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * (2 ** min(attempt, _MAX_EXPONENT))))


@dataclass(frozen=True)
class Waiting:
    """Calls of one worker waiting for Qdrant: since when (the clock of the calls, time.monotonic by default), the
    cause of the latest failure (a gRPC code name, or INSUFFICIENT_STORAGE) and how many calls wait."""

    since: float
    cause: str
    calls: int

    def seconds(self, now: float) -> float:
        return max(0.0, now - self.since)

    def describe(self, now: float) -> str:
        return f"waiting for Qdrant ({self.cause}) {self.seconds(now):.0f} s"


@dataclass(frozen=True)
class RetryEvent:
    """One retryable failure, handed to `on_retry` before the wait (a write pacer backs off on it)."""

    code: grpc.StatusCode
    cause: str  # the RetryStats counter name
    attempt: int
    delay_s: float  # the wait before the next try
    retry_after_s: float | None  # the server's hint, RESOURCE_EXHAUSTED only


@dataclass
class RetryStats:
    """Retries by cause, shared by every call of one worker; read by the coordinator for reports and metrics. Also
    which calls are waiting for Qdrant right now (`waiting`), for a progress line."""

    by_cause: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # id of the waiting call -> (since, cause, sequence number of the last update)
    _waiting: dict[int, tuple[float, str, int]] = field(default_factory=dict, repr=False)
    _seq: int = field(default=0, repr=False)
    # A longer-lived stats object that hears the waits too (a writer's, while each page counts its own retries).
    parent: "RetryStats | None" = field(default=None, repr=False)

    def record(self, cause: str) -> None:
        with self._lock:
            self.by_cause[cause] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_cause)

    def wait_begins(self, key: int, since: float, cause: str) -> None:
        with self._lock:
            self._seq += 1
            self._waiting[key] = (since, cause, self._seq)
        if self.parent is not None:
            self.parent.wait_begins(key, since, cause)

    def wait_ends(self, key: int) -> None:
        with self._lock:
            self._waiting.pop(key, None)
        if self.parent is not None:
            self.parent.wait_ends(key)

    def waiting(self) -> Waiting | None:
        """None when no call is waiting; else the oldest wait and the latest cause."""
        with self._lock:
            if not self._waiting:
                return None
            since = min(s for s, _, _ in self._waiting.values())
            cause = max(self._waiting.values(), key=lambda v: v[2])[1]
            return Waiting(since=since, cause=cause, calls=len(self._waiting))


def retry_after_s(err: grpc.RpcError) -> float | None:
    """The server's `retry-after` trailer in seconds, if it sent one."""
    value = _trailer(err, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def _trailer(err: grpc.RpcError, name: str) -> str | None:
    try:
        trailers = err.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - some error objects carry no call
        return None
    for key, value in trailers:
        if key.lower() == name:
            return value
    return None


def status_of(err: BaseException) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    if callable(code):
        try:
            return code()
        except Exception:  # noqa: BLE001
            return None
    return None


def details_of(err: BaseException) -> str:
    details = getattr(err, "details", None)
    if callable(details):
        try:
            return (details() or "").strip()
        except Exception:  # noqa: BLE001
            return ""
    return str(err)


def _first_line(err: grpc.RpcError) -> str:
    text = details_of(err)
    return text.splitlines()[0] if text else ""


def translate(err: grpc.RpcError, what: str, address: str) -> Exception:
    """A definite gRPC failure as one line naming the problem and the fix."""
    code = status_of(err)
    detail = _first_line(err)
    if code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
        return PreconditionError(
            f"the Qdrant server at {address} refused the API key during {what}; "
            "set the right key in QDRANT_API_KEY or qdrant.api_key"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        if _POINT_MISSING.search(detail):  # a point, not a collection: the caller knows which and why
            return PointNotFound(f"{what}: {detail}")
        return NotFound(f"{what}: {detail or 'not found'}; check the collection or alias name in the config")
    if _too_large(code, detail):
        return ReplyTooLarge(f"{what}: the message exceeds the gRPC size limit ({detail}); ask for fewer points")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _OVER_CAPACITY.search(detail):
        return OverRateLimitCapacity(
            f"{what}: one request costs more than the collection's strict-mode rate limit can ever grant ({detail}); "
            "send fewer points per request (pipeline.upload_batch, or fewer ids per read)"
        )
    if code is not None and code in RETRYABLE:
        return QdrantUnavailable(
            f"{what} on {address} kept failing ({code.name}: {detail}); "
            "check the server is up and reachable, or raise retry.max_attempts / retry.deadline_s"
        )
    name = code.name if code else "ERROR"
    return QdrantRequestError(f"{what} was rejected by {address} ({name}: {detail})")


def _cause(code: grpc.StatusCode | None) -> str:
    return code.name.lower() if code else "unknown"


class UnknownOutcome(grpc.RpcError):
    """A write the server answered without saying it was applied (a wait=true write answered `Acknowledged`): its
    outcome is unknown, like a timeout's, so it is sent again (every write reembed sends is idempotent)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self._detail = detail

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return self._detail


class _Attempts:
    """The retries of one RPC, the one logic of the blocking and the asyncio loop: each try runs inside
    `with attempts:`, which turns a retryable gRPC failure into `delay_s` (the wait before the next try) and raises
    the translated error once retrying is over. The loops only run the call and sleep, each its own way."""

    def __init__(self, what: str, address: str, policy: RetryPolicy, stats: RetryStats | None,
                 rng: random.Random | None, clock: Callable[[], float],
                 on_retry: Callable[[RetryEvent], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        self.what, self.address, self.policy, self.stats = what, address, policy, stats
        self.announce = announce
        self.announced_at: float | None = None
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_retry = on_retry
        self.start = clock()
        self.attempt = 0  # every failed try: the backoff exponent
        self.counted = 0  # failed tries of the kind max_attempts bounds (not outages, not rate limits)
        self.delay_s = 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, err, tb) -> bool:
        if not isinstance(err, grpc.RpcError):
            return False  # success, or not an RPC failure: nothing to retry
        self.delay_s = self.delay_or_raise(err)
        return True

    def close(self) -> None:
        """The call is over, however it ended (an answer, an error, a cancelled task): it waits no more."""
        if self.stats is not None:
            self.stats.wait_ends(id(self))

    def delay_or_raise(self, err: grpc.RpcError) -> float:
        """Seconds to sleep before the next attempt; raises the translated error when retrying is over."""
        code = status_of(err)
        detail = details_of(err)
        self.attempt += 1
        unknown = isinstance(err, UnknownOutcome)
        if not unknown and (code not in RETRYABLE or _too_large(code, detail)
                            or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and _OVER_CAPACITY.search(detail))):
            raise translate(err, self.what, self.address) from None
        storage = code == grpc.StatusCode.RESOURCE_EXHAUSTED and _trailer(err, _INSUFFICIENT_STORAGE) is not None
        cause = "not_applied" if unknown else "insufficient_storage" if storage else _cause(code)
        if self.stats is not None:
            self.stats.record(cause)
        hinted = retry_after_s(err) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
        # The server's hint is for this request's tokens (whole seconds, rounded up); a hint of 0 from a proxy must
        # not turn into a busy loop.
        if hinted is not None:
            delay = max(hinted, self.policy.base_delay_s)
        else:
            delay = self.policy.backoff(self.attempt, self.rng)
        elapsed = self.clock() - self.start
        if unknown or code in OUTAGE or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            left = self.policy.outage_budget_s - elapsed
            if left <= 0:
                raise self._budget_spent(code, cause, err, elapsed) from None
            delay = min(delay, left)  # the last try lands when the budget ends, not after
            self._announce(cause, elapsed, left)
        else:
            self.counted += 1
            if self.counted >= self.policy.max_attempts or elapsed + delay > self.policy.deadline_s:
                raise translate(err, self.what, self.address) from None
        if self.stats is not None:
            self.stats.wait_begins(id(self), self.start, cause.upper())
        if self.on_retry is not None:
            self.on_retry(RetryEvent(code=code, cause=cause, attempt=self.attempt, delay_s=delay,
                                     retry_after_s=hinted))
        log.debug("%s: %s, retry %d in %.2fs", self.what, code, self.attempt, delay)
        return delay

    def _announce(self, cause: str, elapsed: float, left: float) -> None:
        if self.announce is None or elapsed < tunables.OUTAGE_ANNOUNCE_AFTER_S:
            return
        now = self.clock()
        if self.announced_at is not None and now - self.announced_at < tunables.OUTAGE_ANNOUNCE_EVERY_S:
            return
        self.announced_at = now
        self.announce(f"waiting for Qdrant ({cause.upper()}) {elapsed:.0f} s: {self.what} on {self.address}; "
                      f"retrying for up to {left:.0f} s more (retry.outage_budget_s)")

    def _budget_spent(self, code: grpc.StatusCode, cause: str, err: grpc.RpcError, waited: float) -> Exception:
        detail = _first_line(err)
        budget = f"retry.outage_budget_s (now {self.policy.outage_budget_s:g})"
        if cause == "insufficient_storage":
            return QdrantUnavailable(
                f"{self.what} on {self.address}: Qdrant refused writes for {waited:.0f} s because a node is over its "
                f"memory/disk quota ({detail}); free space or raise the server's quota, or raise {budget}"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return QdrantUnavailable(
                f"{self.what} on {self.address} was held back by Qdrant's rate limits for {waited:.0f} s "
                f"({code.name}: {detail}); lower pipeline.max_points_per_s or the load on the collection, or raise "
                f"{budget}"
            )
        return QdrantUnavailable(
            f"{self.what} on {self.address}: Qdrant did not answer for {waited:.0f} s ({code.name}: {detail}); "
            f"check the server is up and reachable, or raise {budget} to wait longer"
        )


def call(fn: Callable[[], T], *, what: str, address: str, policy: RetryPolicy, stats: RetryStats | None = None,
         rng: random.Random | None = None, sleep: Callable[[float], object] | None = None,
         clock: Callable[[], float] | None = None, on_retry: Callable[[RetryEvent], None] | None = None,
         announce: Callable[[str], None] | None = None) -> T:
    """Run a blocking RPC with retries. `fn` must be safe to repeat. `sleep` and `clock` default to time.sleep and
    time.monotonic (looked up per call, so a test's patch applies); `on_retry` hears every retryable failure;
    `announce` (the driver's calls: no progress line speaks for them) hears a line once an outage wait passes
    OUTAGE_ANNOUNCE_AFTER_S, then every OUTAGE_ANNOUNCE_EVERY_S."""
    sleep = sleep or time.sleep
    attempts = _Attempts(what, address, policy, stats, rng, clock or time.monotonic, on_retry, announce)
    try:
        while True:
            with attempts:
                return fn()
            sleep(attempts.delay_s)
    finally:
        attempts.close()


async def call_async(fn: Callable[[], Awaitable[T]], *, what: str, address: str, policy: RetryPolicy,
                     stats: RetryStats | None = None, rng: random.Random | None = None,
                     sleep: Callable[[float], Awaitable[object]] | None = None,
                     clock: Callable[[], float] | None = None,
                     on_retry: Callable[[RetryEvent], None] | None = None) -> T:
    """The asyncio twin of `call`, for the upload actors' grpc.aio channels (`sleep` defaults to asyncio.sleep)."""
    sleep = sleep or asyncio.sleep
    attempts = _Attempts(what, address, policy, stats, rng, clock or time.monotonic, on_retry)
    try:
        while True:
            with attempts:
                return await fn()
            await sleep(attempts.delay_s)
    finally:
        attempts.close()
