"""Retries for Qdrant RPCs: exponential backoff with full jitter, bounded by attempts and a deadline.

Retried: UNAVAILABLE, RESOURCE_EXHAUSTED (after the server's `retry-after` when it sends one), DEADLINE_EXCEEDED and
ABORTED. UNAVAILABLE and DEADLINE_EXCEEDED do not prove the write did not happen, so every write reembed sends is
idempotent and safe to repeat. Everything else is a definite answer and is translated into a one-line error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import grpc

from engine import tunables
from engine.errors import (NotFound, PointNotFound, PreconditionError, QdrantRequestError, QdrantUnavailable,
                           ReplyTooLarge)

log = logging.getLogger(__name__)
T = TypeVar("T")
# RESOURCE_EXHAUSTED also means "the reply is over the message limit" (said by either side); retrying cannot help,
# asking for less can.
_TOO_LARGE = re.compile(r"(Sent|Received) message larger than max")
# Qdrant's answer when a request names a point that does not exist (UpdateVectors refuses the whole request).
_POINT_MISSING = re.compile(r"No point with id \S+ found")


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


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = tunables.RETRY_MAX_ATTEMPTS
    base_delay_s: float = tunables.RETRY_BASE_DELAY_S
    max_delay_s: float = tunables.RETRY_MAX_DELAY_S
    deadline_s: float = tunables.RETRY_DEADLINE_S

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)] spreads retries of many workers apart."""
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * (2**attempt)))


@dataclass
class RetryStats:
    """Retries by cause, shared by every call of one worker; read by the coordinator for reports and metrics."""

    by_cause: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, cause: str) -> None:
        with self._lock:
            self.by_cause[cause] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_cause)


def retry_after_s(err: grpc.RpcError) -> float | None:
    """The server's `retry-after` trailer in seconds, if it sent one."""
    try:
        trailers = err.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - some error objects carry no call
        return None
    for key, value in trailers:
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
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


def translate(err: grpc.RpcError, what: str, address: str) -> Exception:
    """A definite gRPC failure as one line naming the problem and the fix."""
    code = status_of(err)
    detail = details_of(err).splitlines()[0] if details_of(err) else ""
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
    if code in RETRYABLE:
        return QdrantUnavailable(
            f"{what} on {address} kept failing ({code.name}: {detail}); "
            "check the server is up and reachable, or raise retry.max_attempts / retry.deadline_s"
        )
    name = code.name if code else "ERROR"
    return QdrantRequestError(f"{what} was rejected by {address} ({name}: {detail})")


def _cause(code: grpc.StatusCode | None) -> str:
    return code.name.lower() if code else "unknown"


class _Attempts:
    """The retries of one RPC, the one logic of the blocking and the asyncio loop: each try runs inside
    `with attempts:`, which turns a retryable gRPC failure into `delay_s` (the wait before the next try) and raises
    the translated error once retrying is over. The loops only run the call and sleep, each its own way."""

    def __init__(self, what: str, address: str, policy: RetryPolicy, stats: RetryStats | None, rng) -> None:
        self.what, self.address, self.policy, self.stats = what, address, policy, stats
        self.rng = rng or random.Random()
        self.start = time.monotonic()
        self.attempt = 0
        self.delay_s = 0.0

    def __enter__(self) -> "_Attempts":
        return self

    def __exit__(self, exc_type, err, tb) -> bool:
        if not isinstance(err, grpc.RpcError):
            return False  # success, or not an RPC failure: nothing to retry
        self.delay_s = self.delay_or_raise(err)
        return True

    def delay_or_raise(self, err: grpc.RpcError) -> float:
        """Seconds to sleep before the next attempt; raises the translated error when retrying is over."""
        code = status_of(err)
        self.attempt += 1
        if code not in RETRYABLE or _too_large(code, details_of(err)):
            raise translate(err, self.what, self.address) from None
        if self.stats is not None:
            self.stats.record(_cause(code))
        delay = self.policy.backoff(self.attempt, self.rng)
        hinted = retry_after_s(err) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
        if hinted is not None:
            delay = max(delay, hinted)
        if self.attempt >= self.policy.max_attempts or time.monotonic() - self.start + delay > self.policy.deadline_s:
            raise translate(err, self.what, self.address) from None
        log.debug("%s: %s, retry %d in %.2fs", self.what, code, self.attempt, delay)
        return delay


def call(fn: Callable[[], T], *, what: str, address: str, policy: RetryPolicy, stats: RetryStats | None = None,
         rng: random.Random | None = None) -> T:
    """Run a blocking RPC with retries. `fn` must be safe to repeat."""
    attempts = _Attempts(what, address, policy, stats, rng)
    while True:
        with attempts:
            return fn()
        time.sleep(attempts.delay_s)


async def call_async(fn: Callable[[], Awaitable[T]], *, what: str, address: str, policy: RetryPolicy,
                     stats: RetryStats | None = None, rng: random.Random | None = None) -> T:
    """The asyncio twin of `call`, for the upload actors' grpc.aio channels."""
    attempts = _Attempts(what, address, policy, stats, rng)
    while True:
        with attempts:
            return await fn()
        await asyncio.sleep(attempts.delay_s)
