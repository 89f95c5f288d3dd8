"""The local Ray node of the integration and chaos tests that drive the pipeline in-process (imported by their
conftest files; the unit tier never imports Ray)."""

from __future__ import annotations

import os

import pytest
import ray

from actors.start import start_ray


@pytest.fixture(scope="module")
def ray_local(request):
    """A fresh local Ray node for one test module, shut down after it: actors a module kills, and what it leaves
    running, never reach the next module. A module sets `RAY_ENV = {name: value}` for Ray settings read from the
    environment at start-up (only while the node starts; the environment is restored after)."""
    if ray.is_initialized():
        ray.shutdown()
    overrides = getattr(request.module, "RAY_ENV", {})
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        start_ray()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield
    ray.shutdown()
