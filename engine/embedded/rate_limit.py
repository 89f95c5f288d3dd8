"""Qdrant's token-bucket rate limiter and the RESOURCE_EXHAUSTED error it produces.

Read from lib/common/common/src/rate_limiting.rs (the bucket), lib/collection/src/operations/types.rs
(`CollectionError::rate_limit_error`: the wording) and lib/storage/src/content_manager/conversions.rs (the status:
RESOURCE_EXHAUSTED, with a `retry-after` of whole seconds rounded up; none when the request can never fit).
Strict mode uses one bucket per shard and per minute (`read_rate_limit`, `write_rate_limit`); the `rate_limit`
fault uses one per server and per second.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

import grpc

from engine.embedded.status import ApiError

READ = "Read"
WRITE = "Write"


class RateLimiter:
    """A bucket of `capacity` tokens refilled at `per_second`, starting full (Qdrant: burst allowed at start)."""

    def __init__(self, capacity: float, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(capacity)
        self.per_second = float(per_second)
        self._clock = clock
        self._tokens = float(capacity)
        self._last = clock()
        self._lock = threading.Lock()

    @classmethod
    def per_minute(cls, operations: int, clock: Callable[[], float] = time.monotonic) -> "RateLimiter":
        return cls(operations, operations / 60.0, clock)

    def try_consume(self, cost: float, kind: str) -> None:
        """Take `cost` tokens, or raise the ApiError Qdrant answers when they are not there."""
        if cost > self.capacity:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Rate limiting exceeded: {kind} rate limit exceeded, request larger than rate limiter capacity, "
                "please try to split your request",
            )
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + self.per_second * (now - self._last))
            self._last = now
            if self._tokens >= cost:
                self._tokens -= cost
                return
            available = self._tokens
        retry_after = math.ceil((cost - available) / self.per_second)
        raise ApiError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Rate limiting exceeded: {kind} rate limit exceeded: Operation requires {int(cost)} tokens but only "
            f"{available:.1f} were available. Retry after {retry_after}s",
            trailers=(("retry-after", str(retry_after)),),
        )
