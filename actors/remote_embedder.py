"""An embedder on a cluster GPU behind the Embedder seam: one EmbedWorker (actors/workers.py) placed with a GPU, and
a proxy with `embed(texts)`, `dim` and `describe()` that calls it. Verify re-embeds its sample (up to 100k points)
through it, so the recomputation runs on a GPU node instead of the driver's CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from actors.workers import EmbedWorker
from engine import tunables
from engine.embed.vectorset import VectorSet
from engine.errors import ReembedError
from engine.tunables import REMOTE_EMBED_CPUS


class RemoteEmbedder:
    def __init__(self, vectorizer: dict, job_id: str, *, gpus: float = 1.0, cpus: float = REMOTE_EMBED_CPUS,
                 start_timeout_s: float = tunables.LANE_START_TIMEOUT_S) -> None:
        """`vectorizer`: the spec of engine.embed.vectorize.build_vectorizer (a dense or late-interaction model)."""
        # An ActorHandle, used untyped as in actors/lane.py: ray types a handle's methods only with @ray.method.
        actor: Any = ray.remote(EmbedWorker).options(num_gpus=gpus, num_cpus=cpus).remote(vectorizer, job_id)
        self._actor = actor
        try:
            self._describe: dict = ray.get(self._actor.describe.remote(), timeout=start_timeout_s)
        except GetTimeoutError:
            ray.kill(self._actor)
            raise ReembedError(
                f"the verify embedder was not placed on a GPU (or its model did not load) within {start_timeout_s:.0f} "
                "s; the cluster's GPUs may all be busy with a running job: run verify when they are free"
            ) from None
        self.dim = self._describe.get("dim")

    def embed(self, texts: Sequence[str]) -> Any:
        out = ray.get(self._actor.embed.remote(list(texts)))
        if isinstance(out, VectorSet):  # a model that writes one vector kind: hand back that one
            return out.multi if out.multi is not None else out.dense
        return out

    def describe(self) -> dict:
        return dict(self._describe)

    def close(self) -> None:
        ray.kill(self._actor)
