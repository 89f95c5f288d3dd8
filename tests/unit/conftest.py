"""Guards of the unit tier: no test may sleep or start Ray, and Ray cannot even be imported here.

Unit tests inject clocks and redo policies instead of waiting on real time, and run the flow over threads and
in-memory seams instead of Ray (Ray Data's unit tests guard the same way). A test that needs either belongs in
tests/integration."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest


class _BlockRay:
    """A meta-path finder that refuses `ray` and its submodules."""

    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"the unit tier runs without Ray; {name} imported (move the test to tests/integration)")
        return None


_BLOCK = _BlockRay()


_ROOT = Path(__file__).resolve().parents[2]
_OURS = tuple(str(_ROOT / d) + os.sep for d in ("engine", "actors", "tests", "bench"))


@pytest.fixture(autouse=True)
def _no_sleep_no_ray(monkeypatch):
    # Blocked while each unit test runs. `make test` runs this tier in a process of its own, where Ray is never
    # imported at all; in a mixed run an earlier tier may have loaded it, so it is hidden from the test instead.
    loaded = {m: sys.modules.pop(m) for m in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]}
    sys.meta_path.insert(0, _BLOCK)
    real_sleep = time.sleep

    def guarded_sleep(seconds):
        # Our code and our tests may not sleep; the standard library's own polling (subprocess waits) may.
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(_OURS):
            raise AssertionError(f"time.sleep({seconds}) in a unit test ({caller}): inject a clock or a policy")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", guarded_sleep)
    try:
        yield
    finally:
        sys.meta_path.remove(_BLOCK)
        sys.modules.update(loaded)
