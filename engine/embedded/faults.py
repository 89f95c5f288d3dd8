"""Injected faults for reliability tests: the failures a real Qdrant deployment produces, on demand and seeded.

Spec grammar (`--faults`), comma-separated `key=value` items, each key at most once:

    unavailable=P        UNAVAILABLE before the call is applied
    exhausted=P          RESOURCE_EXHAUSTED with `retry-after` trailing metadata (seconds), before applying
    apply_then_fail=P    DEADLINE_EXCEEDED after a *write* was applied: the client cannot know it succeeded
    latency_ms=A-B       extra latency, uniform in [A, B] ms (or a single number), on every faulted call
    retry_after_s=A-B    range the retry-after hint is drawn from (default 0.1-1)

P is a probability in [0, 1]; the three probabilities may sum to at most 1 (one draw decides the call's fate).
Faults apply only to Points data calls (upsert, update-vectors, delete, payload writes, get, scroll, count,
query...), never to the health check or collection administration, so test set-up stays deterministic.
Example: `unavailable=0.05,exhausted=0.02,latency_ms=0-30,apply_then_fail=0.02`.
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

from engine.errors import ConfigError

log = logging.getLogger(__name__)

_PROBABILITY_KEYS = ("unavailable", "exhausted", "apply_then_fail")
_RANGE_KEYS = ("latency_ms", "retry_after_s")

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
    latency_ms: tuple[float, float] = (0.0, 0.0)
    retry_after_s: tuple[float, float] = (0.1, 1.0)

    @property
    def active(self) -> bool:
        return bool(self.unavailable or self.exhausted or self.apply_then_fail or self.latency_ms[1] > 0)

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
            else:
                known = ", ".join(_PROBABILITY_KEYS + _RANGE_KEYS)
                raise ConfigError(f"fault spec key {key!r} is unknown; use one of {known}")
        total = sum(values.get(k, 0.0) for k in _PROBABILITY_KEYS)
        if total > 1.0 + 1e-9:
            raise ConfigError(
                f"fault spec {text!r}: unavailable + exhausted + apply_then_fail = {total:g} exceeds 1"
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
        return ",".join(parts)


def _probability(key: str, value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        raise ConfigError(f"fault spec {key}={value!r}: not a number; give a probability like 0.05") from None
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"fault spec {key}={value}: a probability must be between 0 and 1")
    return p


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


class FaultInjector:
    """Draws each call's fate from one seeded generator (deterministic for a given sequence of calls)."""

    def __init__(self, spec: FaultSpec, seed: int = 0) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

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
        else:
            fate = Fate.PASS
        with self._lock:
            self.counts[fate] += 1
        return fate, latency, retry_after


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
