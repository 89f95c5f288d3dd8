"""The Ray Runtime for the coordinator: scroll, embed and upload actors, each stage with bounded work queued.

Page data never passes through the driver: a scroll task returns three objects (metadata, texts, body); the texts go
to an embedding actor, the body and the vectors to an upload actor, and the driver only fetches metadata and
acknowledgements. Actors restart when they die (max_restarts=-1); the coordinator redoes the pages they held.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray import exceptions as rex

from actors.workers import EmbedWorker, ScrollWorker, UploadWorker
from engine import tunables
from engine.errors import ReembedError
from actors.metrics import StageSampler
from engine.flow.page import PageMeta
from engine.flow.coordinator import WorkerLost
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy
from engine.flow.sink import SinkSpec

log = logging.getLogger(__name__)

_LOST = tuple(
    getattr(rex, name)
    for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError", "OwnerDiedError",
                 "WorkerCrashedError", "ObjectReconstructionFailedError", "NodeDiedError")
    if hasattr(rex, name)
)


def _transient(err: BaseException) -> bool:
    """The actor is restarting or briefly unreachable: the page did nothing wrong."""
    unavailable = getattr(rex, "ActorUnavailableError", None)
    return unavailable is not None and isinstance(err, unavailable)


@dataclass
class RuntimeSpec:
    endpoint: Endpoint
    policy: RetryPolicy
    source_collection: str
    text_field: str | None
    text_template: str | None
    model_spec: dict
    sink: SinkSpec
    scroll_actors: int
    embed_actors: int
    upload_actors: int
    gpus_per_embed_actor: float
    cpus_per_embed_actor: float
    copy_vectors: dict[str, str] | None = None  # source vector name -> target name, copied verbatim
    name_prefix: str = "reembed"
    vectorizer: dict | None = None  # engine.embed.vectorize spec (hybrid, shortcuts); None = the dense model_spec
    vector_input: str | None = None  # shortcuts: the stored vector read instead of the text
    text_dataset: dict | None = None  # external text: {"path", "id_column", "text_column"}


class RayRuntime:
    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec
        # I/O-bound actors reserve no CPU so the embedding actors get every core the model can use.
        restart = dict(max_restarts=-1, max_task_retries=0)
        scroll_cls = ray.remote(num_cpus=0, **restart)(ScrollWorker)
        # On a GPU, a second call tokenizes the next page while the model runs; on CPU the tokenizer would only take
        # cores from the model (bench/e2e.py: no gain there), so one call at a time.
        embed_concurrency = tunables.EMBED_ACTOR_CONCURRENCY if spec.gpus_per_embed_actor else 1
        embed_cls = ray.remote(num_cpus=spec.cpus_per_embed_actor, num_gpus=spec.gpus_per_embed_actor,
                               max_concurrency=embed_concurrency, **restart)(EmbedWorker)
        upload_cls = ray.remote(num_cpus=0, max_concurrency=64, **restart)(UploadWorker)
        p = spec.name_prefix
        self.scrollers = [
            scroll_cls.options(name=f"{p}-scroll-{i}").remote(
                spec.endpoint, spec.policy, spec.source_collection, spec.text_field, spec.text_template,
                spec.copy_vectors, spec.vector_input, spec.text_dataset)
            for i in range(spec.scroll_actors)
        ]
        env = {"OMP_NUM_THREADS": str(int(spec.cpus_per_embed_actor) or 1), "HF_HUB_OFFLINE": os.environ.get(
            "HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "true",
            # OpenMP threads that spin at barriers burn the core a preempted sibling needs: on CPU the model shares
            # the cores with scroll/upload actors and Ray. bench/e2e.py, MiniLM on 2 cores: ACTIVE 13.5 texts/s,
            # libgomp's default 52.9 (model alone 62.0: efficiency 0.85), PASSIVE 53.4 of 56.5 (0.95).
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.embedders = [
            embed_cls.options(name=f"{p}-embed-{i}", runtime_env={"env_vars": env}).remote(spec.model_spec,
                                                                                         spec.vectorizer)
            for i in range(spec.embed_actors)
        ]
        self.uploaders = [
            upload_cls.options(name=f"{p}-upload-{i}").remote(spec.endpoint, spec.sink, spec.policy)
            for i in range(spec.upload_actors)
        ]
        self._rr = 0
        self._parts: dict[Any, tuple[Any, Any]] = {}  # meta ref -> (texts ref, body ref)
        self._load = {"embed": [0] * len(self.embedders), "upload": [0] * len(self.uploaders)}
        self._owner: dict[Any, tuple[int, int]] = {}  # ack ref -> (embed idx or -1, upload idx)
        self.stage_sampler = StageSampler(("scroll", "process"))  # Prometheus gauges + the report's series

    def describe_model(self) -> dict:
        """Loads the model on every embedding actor (surfacing a bad model before anything is written)."""
        try:
            described = ray.get([e.describe.remote() for e in self.embedders])
        except rex.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ReembedError):
                raise cause from None
            raise
        except rex.RayActorError as err:
            cause = getattr(err, "cause", None) or getattr(err, "error_msg", "")
            # An actor whose constructor raised carries that exception.
            if isinstance(cause, ReembedError):
                raise cause from None
            text = str(err)
            for line in text.splitlines():
                if "ModelError:" in line:
                    from engine.errors import ModelError

                    raise ModelError(line.split("ModelError:", 1)[1].strip()) from None
            raise
        return described[0]

    def read(self, shard, seq, start, stop, limit, to_stop):
        actor = self.scrollers[self._rr % len(self.scrollers)]
        self._rr += 1
        meta, texts, body = actor.read.remote(shard, seq, start, stop, limit, to_stop)
        self._parts[meta] = (texts, body)
        return meta

    @staticmethod
    def _least(loads: list[int]) -> int:
        return min(range(len(loads)), key=loads.__getitem__)

    def process(self, read_handle, meta: PageMeta):
        texts, body = self._parts.pop(read_handle)
        e = -1
        vectors = None
        if meta.n_texts:
            e = self._least(self._load["embed"])
            self._load["embed"][e] += 1
            vectors = self.embedders[e].embed.remote(texts)
        u = self._least(self._load["upload"])
        self._load["upload"][u] += 1
        ack = self.uploaders[u].write.remote(meta.shard, meta.seq, body, vectors)
        self._owner[ack] = (e, u)
        return ack

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        self.stage_sampler(scroll=len(self._parts), process=len(self._owner))
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout, fetch_local=False)
        if ready:  # take everything else that is already done too
            more, _ = ray.wait(handles, num_returns=len(handles), timeout=0, fetch_local=False)
            return more or ready
        return ready

    def result(self, handle) -> Any:
        owner = self._owner.pop(handle, None)
        if owner is not None:
            e, u = owner
            if e >= 0:
                self._load["embed"][e] -= 1
            self._load["upload"][u] -= 1
        try:
            return ray.get(handle)
        except _LOST as err:
            self._parts.pop(handle, None)
            raise WorkerLost(type(err).__name__, transient=_transient(err)) from None
        except rex.RayTaskError as err:
            self._parts.pop(handle, None)
            cause = getattr(err, "cause", None)
            if isinstance(cause, ReembedError):
                raise cause from None
            if isinstance(cause, _LOST):
                raise WorkerLost(type(cause).__name__, transient=_transient(cause)) from None
            raise WorkerLost(f"{type(cause).__name__ if cause else 'task error'}: {str(cause or err)[:200]}") from None

    def all_actors(self) -> list[Any]:
        return [*self.scrollers, *self.embedders, *self.uploaders]

    def shutdown(self) -> None:
        for actor in self.all_actors():
            ray.kill(actor, no_restart=True)
