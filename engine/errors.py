"""The one error hierarchy. Every error a user can cause carries a one-line message naming the problem and the fix.

Exit codes follow the CLI contract: 2 for bad input or a failed precondition (nothing was written), 1 for a run that
started and failed.
"""

from __future__ import annotations


class ReembedError(Exception):
    """Base of every error reembed raises on purpose."""

    exit_code = 1


class ConfigError(ReembedError):
    """The job configuration is malformed or inconsistent."""

    exit_code = 2


class PreconditionError(ReembedError):
    """The world is not as the job needs it (missing collection, old server, foreign target...). Nothing written."""

    exit_code = 2


class CheckpointMismatch(PreconditionError):
    """A checkpoint exists for this job but was made with an incompatible plan, model or text spec."""


class ModelError(ReembedError):
    """The embedding model cannot be found, loaded or run."""

    exit_code = 2


class QdrantUnavailable(ReembedError):
    """The server could not be reached, or kept failing past the retry budget."""


class QdrantRequestError(ReembedError):
    """The server rejected a request for a reason retrying will not fix."""


class ReplyTooLarge(QdrantRequestError):
    """A reply exceeded the gRPC message limit (e.g. a scroll page of very large payloads); ask for fewer points."""


class VerifyFailed(ReembedError):
    """Verification found the target wrong; cutover is refused."""


class NotFound(PreconditionError):
    """A collection, alias or point the job needs does not exist."""


class PointNotFound(NotFound):
    """A request named a point the collection does not hold (Qdrant refuses the whole request)."""
