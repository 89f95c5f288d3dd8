"""gRPC errors shaped like Qdrant's: the same status codes and the same message prefixes.

Qdrant formats a storage error as `<kind>: <description>` ("Not found: Collection `x` doesn't exist!",
"Wrong input: Vector dimension error: expected dim: 384, got 3") and maps the kind to a status code
(lib/storage/src/content_manager/conversions.rs). Clients, ours included, branch on the code and show the message,
so both are kept identical.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, Callable, Sequence, TypeVar

import grpc

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the endpoint answers with: a gRPC status code, Qdrant's message, optional trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = tuple(trailers)


def bad_input(description: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"Wrong input: {description}")


def bad_request(description: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"Bad request: {description}")


def already_exists(description: str) -> ApiError:
    """StorageError::AlreadyExists: worded as bad input, answered ALREADY_EXISTS (content_manager/errors.rs)."""
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Wrong input: {description}")


def invalid_argument(message: str) -> ApiError:
    """A status the gRPC layer answers itself (tonic `Status::invalid_argument`): the message has no prefix."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def validation_error(field: str, problem: str) -> ApiError:
    """A request failing Qdrant's gRPC validation (src/tonic/api/mod.rs `validate`, operations/validation.rs)."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"Validation error in body: [{field}: {problem}]")


def not_found(description: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"Not found: {description}")


def internal(description: str) -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, f"Service internal error: {description}")


def collection_not_found(name: str) -> ApiError:
    return not_found(f"Collection `{name}` doesn't exist!")


def unsupported(what: str) -> ApiError:
    """A valid Qdrant request the embedded endpoint does not implement (said plainly, never silently ignored)."""
    return bad_request(f"{what}: not supported by the embedded endpoint (qdrant-edge); use a Qdrant server")


_MISSING_POINT = re.compile(r"No point with id (\S+?)(?: found)?$")
# qdrant-edge errors are bare Exceptions carrying the segment layer's text; these prefixes are the ones Qdrant
# reports as bad input (OperationError -> CollectionError::BadInput) or as a bad request (missing index).
_BAD_INPUT = (
    "Vector dimension error",
    "Not existing vector name error",
    "Wrong usage of sparse vectors",
    "Wrong usage of multi vectors",
    "Validation error",
)
_BAD_REQUEST = ("No range index", "No appropriate index", "Index required but not found")


def from_edge(exc: Exception) -> ApiError:
    """Translate a qdrant-edge exception to the status and message a Qdrant server gives for the same failure."""
    text = str(exc).strip()
    missing = _MISSING_POINT.search(text)
    if missing:
        return not_found(f"No point with id {missing.group(1)} found")
    if text.startswith(("Wrong input: ", "Bad request: ", "Not found: ")):
        code = grpc.StatusCode.NOT_FOUND if text.startswith("Not found: ") else grpc.StatusCode.INVALID_ARGUMENT
        return ApiError(code, text)
    if text.startswith(_BAD_INPUT):
        return bad_input(text)
    if text.startswith(_BAD_REQUEST):
        return bad_request(text)
    return internal(text)


def as_api_error(exc: Exception) -> ApiError:
    """An exception raised while applying to a shard, as the status the client would get for it."""
    if isinstance(exc, ApiError):
        return exc
    if type(exc) is Exception:
        return from_edge(exc)
    return internal(f"{type(exc).__name__}: {exc}")


_PREFIXES = ("Wrong input: ", "Bad request: ", "Not found: ", "Service internal error: ")


def some_shards_failed(errors: Sequence[ApiError], shards: int) -> ApiError:
    """What Qdrant answers when a write failed on some of the shards it reached (collection/point_ops.rs):
    the first error's status, worded `N out of M shards failed to apply operation. First error captured: ...`
    (CollectionError::InconsistentShardFailure); when every shard failed, the first error as it is."""
    first = errors[0]
    if len(errors) == shards:
        return first
    prefix = next((p for p in _PREFIXES if first.message.startswith(p)), "")
    captured = first.message[len(prefix):] if prefix == "Not found: " else first.message
    return ApiError(
        first.code,
        f"{prefix}{len(errors)} out of {shards} shards failed to apply operation. First error captured: {captured}",
        first.trailers,
    )


F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Mark a servicer method as an RPC and normalise its failures to ApiError.

    ApiError passes through; qdrant-edge's bare Exceptions become Qdrant's status (from_edge); anything else is a
    bug, logged with its traceback and answered INTERNAL. The async adapter (engine.embedded.aio) turns the
    ApiError into the call's status.
    """

    @functools.wraps(method)
    def handler(self: Any, request: Any, context: Any) -> Any:
        try:
            return method(self, request, context)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status, never a dropped stream
            if type(exc) is Exception:  # qdrant-edge raises bare Exception with the engine's message
                raise from_edge(exc) from exc
            log.exception("%s failed", method.__name__)
            raise internal(f"{type(exc).__name__}: {exc}") from exc

    return handler  # type: ignore[return-value]
