"""API-key check, as Qdrant does it: `api-key` metadata or `authorization: Bearer <key>`; health check exempt."""

from __future__ import annotations

import hmac
import logging
from typing import Any, Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

# Qdrant lets these through without a key (src/tonic/auth.rs), so probes work on a secured server.
_EXEMPT = frozenset({"/qdrant.Qdrant/HealthCheck", "/grpc.health.v1.Health/Check"})
MISSING_KEY = "Must provide an API key or an Authorization bearer token"
WRONG_KEY = "Invalid API key or JWT"


def _deny(message: str) -> grpc.RpcMethodHandler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("ApiKeyInterceptor needs a non-empty key")
        self._key = api_key.encode()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        if handler_call_details.method in _EXEMPT:
            return await continuation(handler_call_details)
        offered = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "api-key":
                offered = value
                break
            if key == "authorization" and value.lower().startswith("bearer "):
                offered = value[7:].strip()
        if offered is None:
            log.debug("denied %s: no api key", handler_call_details.method)
            return _deny(MISSING_KEY)
        if not hmac.compare_digest(offered.encode(), self._key):
            log.debug("denied %s: wrong api key", handler_call_details.method)  # never log the key itself
            return _deny(WRONG_KEY)
        return await continuation(handler_call_details)
