"""Injected faults for reliability tests: the failures a real Qdrant deployment produces, on demand and seeded.

Spec grammar (`--faults`), comma-separated `key=value` items, each key at most once:

    unavailable=P        UNAVAILABLE before the call is applied
    exhausted=P          RESOURCE_EXHAUSTED with `retry-after` trailing metadata (seconds), before applying
    apply_then_fail=P    DEADLINE_EXCEEDED after a *write* was applied: the client cannot know it succeeded
    ack_before_apply=P   a *write* is answered at once with status Acknowledged (even with wait=true) and applied
                         only after `ack_delay_ms`: a server that acknowledges before applying. Held-back writes
                         are applied in arrival order, before any later write (Qdrant's WAL order), and on stop
    ack_delay_ms=A-B     how long an acknowledged write waits before it is applied (default 100-300)
    rate_limit=N         at most N points per second across all writes (a bucket of N, refilled at N/s); a write
                         over it is refused as Qdrant's strict-mode write rate limiter refuses it:
                         RESOURCE_EXHAUSTED "Rate limiting exceeded: Write rate limit exceeded: ..." with a
                         `retry-after` of whole seconds, or without one when the write alone exceeds N
    latency_ms=A-B       extra latency, uniform in [A, B] ms (or a single number), on every faulted call
    retry_after_s=A-B    range the retry-after hint of `exhausted` is drawn from (default 0.1-1)

P is a probability in [0, 1]; the four probabilities may sum to at most 1 (one draw decides the call's fate).
N is a positive number. A write costs its point count (upsert, update-vectors, delete by ids), 1 when it selects by
filter, the sum of its operations for a batch.
Faults apply only to Points data calls (upsert, update-vectors, delete, payload writes, get, scroll, count,
query...), never to the health check or collection administration, so test set-up stays deterministic.
Example: `unavailable=0.05,exhausted=0.02,latency_ms=0-30,apply_then_fail=0.02,ack_before_apply=0.05,rate_limit=20000`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import grpc
from qdrant_client import grpc as pb

from engine.embedded.aio import abort
from engine.embedded.rate_limit import WRITE, RateLimiter
from engine.embedded.status import ApiError
from engine.errors import ConfigError

log = logging.getLogger(__name__)

_PROBABILITY_KEYS = ("unavailable", "exhausted", "apply_then_fail", "ack_before_apply")
_RANGE_KEYS = ("latency_ms", "retry_after_s", "ack_delay_ms")
_RATE_KEYS = ("rate_limit",)

# Points methods that change data: apply_then_fail may hit these after they are applied.
WRITE_METHODS = frozenset(
    {
        "Upsert",
        "Delete",
        "UpdateVectors",
        "DeleteVectors",
        "SetPayload",
        "OverwritePayload",
        "DeletePayload",
        "ClearPayload",
        "UpdateBatch",
    }
)
READ_METHODS = frozenset(
    {
        "Get",
        "Scroll",
        "Count",
        "Query",
        "QueryBatch",
        "QueryGroups",
        "Facet",
        "Search",
        "SearchBatch",
        "SearchGroups",
        "Recommend",
        "RecommendBatch",
        "RecommendGroups",
        "Discover",
        "DiscoverBatch",
        "SearchMatrixPairs",
        "SearchMatrixOffsets",
    }
)
_POINTS_PREFIX = "/qdrant.Points/"


@dataclass(frozen=True)
class FaultSpec:
    unavailable: float = 0.0
    exhausted: float = 0.0
    apply_then_fail: float = 0.0
    ack_before_apply: float = 0.0
    latency_ms: tuple[float, float] = (0.0, 0.0)
    retry_after_s: tuple[float, float] = (0.1, 1.0)
    # Long enough that a client reading right after the ack misses the write, short enough for a test run.
    ack_delay_ms: tuple[float, float] = (100.0, 300.0)
    rate_limit: float = 0.0  # points per second across writes; 0 = no limit

    @property
    def active(self) -> bool:
        return bool(
            self.unavailable
            or self.exhausted
            or self.apply_then_fail
            or self.ack_before_apply
            or self.latency_ms[1] > 0
            or self.rate_limit
        )

    @classmethod
    def parse(cls, text: Optional[str]) -> "FaultSpec":
        """Parse a spec (see module doc). Raises ConfigError with a one-line reason on any malformed input."""
        if text is None or not text.strip():
            return cls()
        values: dict[str, Any] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                raise ConfigError(f"fault spec {text!r}: empty item; write key=value items separated by commas")
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise ConfigError(f"fault spec item {item!r} is not key=value; e.g. unavailable=0.05")
            if key in values:
                raise ConfigError(f"fault spec {text!r} sets {key} twice")
            if key in _PROBABILITY_KEYS:
                values[key] = _probability(key, value)
            elif key in _RANGE_KEYS:
                values[key] = _range(key, value)
            elif key in _RATE_KEYS:
                values[key] = _rate(key, value)
            else:
                known = ", ".join(_PROBABILITY_KEYS + _RANGE_KEYS + _RATE_KEYS)
                raise ConfigError(f"fault spec key {key!r} is unknown; use one of {known}")
        total = sum(values.get(k, 0.0) for k in _PROBABILITY_KEYS)
        if total > 1.0 + 1e-9:
            raise ConfigError(
                f"fault spec {text!r}: unavailable + exhausted + apply_then_fail + ack_before_apply = {total:g} "
                "exceeds 1"
            )
        if "retry_after_s" in values and values["retry_after_s"][0] <= 0:
            raise ConfigError(f"fault spec {text!r}: retry_after_s must be above 0 seconds")
        return cls(**values)

    def describe(self) -> str:
        if not self.active:
            return "none"
        parts = [f"{k}={getattr(self, k):g}" for k in _PROBABILITY_KEYS if getattr(self, k)]
        if self.latency_ms[1] > 0:
            parts.append(f"latency_ms={self.latency_ms[0]:g}-{self.latency_ms[1]:g}")
        if self.exhausted:
            parts.append(f"retry_after_s={self.retry_after_s[0]:g}-{self.retry_after_s[1]:g}")
        if self.ack_before_apply:
            parts.append(f"ack_delay_ms={self.ack_delay_ms[0]:g}-{self.ack_delay_ms[1]:g}")
        if self.rate_limit:
            parts.append(f"rate_limit={self.rate_limit:g}")
        return ",".join(parts)


def _probability(key: str, value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        raise ConfigError(f"fault spec {key}={value!r}: not a number; give a probability like 0.05") from None
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"fault spec {key}={value}: a probability must be between 0 and 1")
    return p


def _rate(key: str, value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise ConfigError(f"fault spec {key}={value!r}: not a number; give points per second like 20000") from None
    if not rate > 0:
        raise ConfigError(f"fault spec {key}={value}: points per second must be above 0")
    return rate


def _range(key: str, value: str) -> tuple[float, float]:
    low_text, sep, high_text = value.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise ConfigError(f"fault spec {key}={value!r}: give a number or a range like 0-30") from None
    if low < 0 or high < low:
        raise ConfigError(f"fault spec {key}={value}: need 0 <= low <= high")
    return (low, high)


class Fate:
    PASS = "pass"
    UNAVAILABLE = "unavailable"
    EXHAUSTED = "exhausted"
    APPLY_THEN_FAIL = "apply_then_fail"
    ACK_BEFORE_APPLY = "ack_before_apply"


def write_cost(method: str, request: Any) -> int:
    """Points a write touches, for the `rate_limit` fault: ids or points listed, 1 for a filter, summed in a batch."""
    if method == "UpdateBatch":
        return sum(_operation_cost(op) for op in request.operations)
    if method in ("Upsert", "UpdateVectors"):
        return len(request.points)
    selector = request.points if method in ("Delete", "ClearPayload") else request.points_selector
    return _selector_cost(selector)


def _selector_cost(selector: pb.PointsSelector) -> int:
    return len(selector.points.ids) if selector.WhichOneof("points_selector_one_of") == "points" else 1


def _operation_cost(op: pb.PointsUpdateOperation) -> int:
    kind = op.WhichOneof("operation")
    if kind in ("upsert", "update_vectors"):
        return len(getattr(op, kind).points)
    if kind in ("delete_points", "clear_payload"):
        return _selector_cost(getattr(op, kind).points)
    if kind in ("set_payload", "overwrite_payload", "delete_payload", "delete_vectors"):
        return _selector_cost(getattr(op, kind).points_selector)
    return 1


def acknowledged(method: str, request: Any) -> Any:
    """The reply of a write accepted but not applied yet: status Acknowledged, as Qdrant answers from its WAL."""
    result = pb.UpdateResult(operation_id=0, status=pb.UpdateStatus.Acknowledged)
    if method == "UpdateBatch":
        return pb.UpdateBatchResponse(result=[result] * len(request.operations))
    return pb.PointsOperationResponse(result=result)


class _DetachedContext:
    """What a held-back write runs with: its client is gone, so a failure can only be logged."""

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise ApiError(code, details)


class DeferredWrites:
    """Writes acknowledged before they are applied, in arrival order (the order Qdrant's WAL would apply them)."""

    def __init__(self) -> None:
        self._queue: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self.failed = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def hold(self, method: str, apply: Callable[[], Awaitable[Any]], delay_s: float) -> None:
        self._queue.append((method, apply))
        loop = asyncio.get_running_loop()
        loop.call_later(delay_s, lambda: loop.create_task(self.drain(upto=1)))

    async def drain(self, upto: Optional[int] = None) -> int:
        """Apply the oldest held writes (all, or `upto` of them); returns how many were applied or failed."""
        done = 0
        while self._queue and (upto is None or done < upto):
            method, apply = self._queue.pop(0)
            done += 1
            try:
                await apply()
            except ApiError as err:  # the client was told Acknowledged: this is the outcome it could not see
                self.failed += 1
                log.warning("held-back %s failed when applied: %s", method, err.message)
        return done


class FaultInjector:
    """Draws each call's fate from one seeded generator (deterministic for a given sequence of calls)."""

    def __init__(self, spec: FaultSpec, seed: int = 0) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.deferred = DeferredWrites()
        self.limiter = RateLimiter(spec.rate_limit, spec.rate_limit) if spec.rate_limit else None

    def draw(self, is_write: bool) -> tuple[str, float, float]:
        """(fate, latency seconds, retry-after seconds) for one call."""
        spec = self.spec
        with self._lock:
            roll = self._rng.random()
            latency = self._rng.uniform(*spec.latency_ms) / 1000.0
            retry_after = self._rng.uniform(*spec.retry_after_s)
        if roll < spec.unavailable:
            fate = Fate.UNAVAILABLE
        elif roll < spec.unavailable + spec.exhausted:
            fate = Fate.EXHAUSTED
        elif is_write and roll < spec.unavailable + spec.exhausted + spec.apply_then_fail:
            fate = Fate.APPLY_THEN_FAIL
        elif is_write and roll < spec.unavailable + spec.exhausted + spec.apply_then_fail + spec.ack_before_apply:
            fate = Fate.ACK_BEFORE_APPLY
        else:
            fate = Fate.PASS
        with self._lock:
            self.counts[fate] += 1
        return fate, latency, retry_after

    def ack_delay(self) -> float:
        """Seconds a held-back write waits (drawn only for those, so other calls' draws stay as they were)."""
        with self._lock:
            return self._rng.uniform(*self.spec.ack_delay_ms) / 1000.0


class FaultInterceptor(grpc.aio.ServerInterceptor):
    """Wraps Points data handlers with the injector's decisions; every other RPC passes untouched."""

    def __init__(self, injector: FaultInjector) -> None:
        self.injector = injector

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method_path: str = handler_call_details.method
        if handler is None or not method_path.startswith(_POINTS_PREFIX) or handler.unary_unary is None:
            return handler
        method = method_path[len(_POINTS_PREFIX):]
        if method not in WRITE_METHODS and method not in READ_METHODS:
            return handler  # collection administration (indexes, vector names): never faulted
        is_write = method in WRITE_METHODS
        inner = handler.unary_unary
        injector = self.injector

        async def faulty(request: Any, context: grpc.aio.ServicerContext) -> Any:
            fate, latency, retry_after = injector.draw(is_write)
            if latency > 0:
                await asyncio.sleep(latency)  # delays this call only; the others keep flowing
            if fate == Fate.UNAVAILABLE:
                log.debug("injected UNAVAILABLE on %s", method)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "Shard temporarily unavailable: injected fault (reembed --faults); the request was not applied",
                )
            if fate == Fate.EXHAUSTED:
                log.debug("injected RESOURCE_EXHAUSTED on %s (retry after %.2fs)", method, retry_after)
                context.set_trailing_metadata((("retry-after", f"{retry_after:.3f}"),))
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Rate limiting exceeded: injected fault (reembed --faults); retry after {retry_after:.3f}s",
                )
            if not is_write:
                return await inner(request, context)  # reads never see held-back writes
            if injector.limiter is not None:
                try:
                    injector.limiter.try_consume(write_cost(method, request), WRITE)
                except ApiError as err:
                    injector.counts["rate_limited"] += 1
                    await abort(context, err)
            if fate == Fate.ACK_BEFORE_APPLY:
                injector.deferred.hold(method, lambda: inner(request, _DetachedContext()), injector.ack_delay())
                return acknowledged(method, request)
            await injector.deferred.drain()  # earlier acknowledged writes land first, as from a WAL
            response = await inner(request, context)
            if fate == Fate.APPLY_THEN_FAIL:
                log.debug("injected DEADLINE_EXCEEDED after applying %s", method)
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "Timeout: injected fault (reembed --faults) after the write was applied",
                )
            return response

        return grpc.unary_unary_rpc_method_handler(
            faulty,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
