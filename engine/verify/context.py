"""What one verify is given: narrow, typed inputs instead of the job config.

The composition root (engine/app/verify_job.py) builds a `VerifyContext` from the config and the job's checkpoint:
how to open a client (an endpoint and a retry policy, so parallel streams and Ray tasks open their own channels),
the collections and vector names the run wrote, the text source, the embedders, the job's shards, the options, and
how to map a function over the shards (threads here, Ray tasks on a cluster). Nothing in engine/verify reads the
config or imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from engine.flow.state import ShardState
from engine.flow.text import TextSource
from engine.qdrant.client import QdrantGrpc
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.tunables import COUNT_STREAMS
from engine.verify.evalset import EvalQuery

T = TypeVar("T")
R = TypeVar("R")

# map_shards(fn, items): fn applied to every item, results yielded as they finish (in any order).
MapShards = Callable[[Callable[[T], R], Sequence[T]], Iterable[R]]


class ClientFactory(Protocol):
    """Opens a client of its own (a gRPC channel per stream); the caller closes it."""

    def __call__(self) -> Any: ...


@dataclass(frozen=True)
class GrpcClients:
    """The production factory: a small picklable value, so a Ray task opens its own channel to the same server."""

    endpoint: Endpoint
    policy: RetryPolicy

    def __call__(self) -> QdrantGrpc:
        return QdrantGrpc(self.endpoint, self.policy)


def thread_map(fn: Callable[[T], R], items: Sequence[T], streams: int = COUNT_STREAMS) -> Iterator[R]:
    """The default map: a few threads, results as they finish."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(streams, len(items)))) as pool:
        for done in as_completed([pool.submit(fn, item) for item in items]):
            yield done.result()


@dataclass(frozen=True)
class VectorNames:
    """The vectors the run wrote and read; "" is a collection's unnamed vector, None "none"."""

    source: str = ""  # the old dense vector in the source (label-free comparison, old-model queries)
    dense: str | None = ""  # the new dense vector in the target
    sparse: str | None = None  # hybrid: the new sparse vector
    multi: str | None = None  # late interaction: the new multivector
    copied: dict[str, str] = field(default_factory=dict)  # source name -> target name, copied verbatim

    @property
    def new(self) -> str | None:
        """The vector made from the text, which verify recomputes: the multivector when there is one."""
        return self.multi if self.multi is not None else self.dense

    @property
    def new_is_multi(self) -> bool:
        return self.multi is not None


@dataclass(frozen=True)
class VerifyOptions:
    sample: int = 1000  # points checked; at least the collection size checks every point
    min_cosine: float = 0.999
    min_hnsw_recall: float = 0.95
    k: int = 10
    queries: int = 100  # sampled points used as queries
    max_ndcg_drop: float | None = None


class SparseQueryEncoder(Protocol):
    def __call__(self, texts: Sequence[str]) -> list: ...


@dataclass(frozen=True)
class HybridPlan:
    """Hybrid quality: which dense and sparse vectors of the target to query, and how to encode the queries."""

    dense: str  # the new dense vector, or the copied/kept old one
    dense_queries: Any | None  # the embedder whose vectors `dense` holds; None: dense side not measurable
    sparse: str
    sparse_queries: SparseQueryEncoder
    dense_origin: str = "new"  # new | copied | kept (in place: the source's own dense vector)


@dataclass
class VerifyContext:
    clients: ClientFactory
    source: str
    target: str
    vectors: VectorNames
    text: TextSource
    shards: list[ShardState]
    options: VerifyOptions = field(default_factory=VerifyOptions)
    embedder: Any | None = None  # recomputes the new vectors; None: they are not made from the text (shortcuts)
    query_embedder: Any | None = None  # embeds queries for the new vectors; None: `embedder`
    old_embedder: Any | None = None  # the model of the source vectors (verify.old_model)
    dim: int | None = None  # the new vectors' dimension when there is no embedder
    not_from_text: str | None = None  # why the new vectors are not recomputed
    eval_queries: list[EvalQuery] | None = None
    hybrid: HybridPlan | None = None
    dead_letter_path: str | None = None
    job_id: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # the run's model description (provenance fallback)
    map_shards: MapShards = thread_map

    def __post_init__(self) -> None:
        if self.dim is None and self.embedder is not None:
            self.dim = getattr(self.embedder, "dim", None)

    @property
    def queries_by(self) -> Any | None:
        return self.query_embedder if self.query_embedder is not None else self.embedder
