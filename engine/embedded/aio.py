"""Serving the synchronous servicers from a `grpc.aio` server.

Measured here (2 cores, endpoint and client on the same box, alternating runs): the asyncio server takes ~15 % more
upserts per second than the thread-pool server (a call no longer hops from gRPC's polling thread to a worker
thread), with scroll throughput and small-call latency alike.
The handlers stay synchronous and run on the event loop thread: qdrant-edge holds the GIL while it works, so a
thread pool would add switching, not parallelism.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import grpc

from engine.embedded.status import ApiError

NOT_IMPLEMENTED = "Method not implemented!"  # what grpc's generated servicer base answers


def async_servicer(service: object, base: type) -> types.SimpleNamespace:
    """An object with one coroutine per RPC of `base` (a generated *Servicer class), calling `service`'s methods.

    RPCs the service does not override answer UNIMPLEMENTED, as Qdrant servers too old to know them do.
    """
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(base):
        if not name[:1].isupper():
            continue
        overridden = getattr(type(service), name, None) is not getattr(base, name)
        methods[name] = _adapt(getattr(service, name)) if overridden else _unimplemented
    return types.SimpleNamespace(**methods)


def _adapt(impl: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return impl(request, context)
        except ApiError as err:
            await abort(context, err)

    return handler


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_IMPLEMENTED)


async def abort(context: grpc.aio.ServicerContext, err: ApiError) -> None:
    """End the call with `err`'s status, message and trailing metadata (raises, as grpc's abort does)."""
    if err.trailers:
        context.set_trailing_metadata(err.trailers)
    await context.abort(err.code, err.message)
