"""Ray tasks for the O(N) work the driver hands out (verify's count parity per shard): `ray_map(fn, items)` runs
`fn(item)` as one Ray task per item and yields the results as they finish, with a bounded number in flight, so the
driver holds a few results at a time whatever the number of items. `fn` is put in the object store once and must be
picklable (a frozen dataclass with `__call__` is the usual shape); tasks reserve a little CPU because they mostly
wait on the network, and are retried when their node dies (they only read, so a rerun is harmless)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import ray

from engine.tunables import RAY_MAP_CPUS, RAY_MAP_IN_FLIGHT

T = TypeVar("T")
R = TypeVar("R")
TASK_RETRIES = 3  # a task lost with its node (spot preemption) is rerun this many times before the map fails


@ray.remote
def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def ray_map(fn: Callable[[T], R], items: Iterable[T], *, num_cpus: float = RAY_MAP_CPUS,
            in_flight: int = RAY_MAP_IN_FLIGHT) -> Iterator[R]:
    """fn over items as Ray tasks, results in completion order. A task's exception is raised here (Ray's
    RayTaskError is an instance of the task's own exception class, so callers catch what they would locally)."""
    if in_flight < 1:
        raise ValueError(f"ray_map in_flight={in_flight} must be at least 1")
    remote = _apply.options(num_cpus=num_cpus, max_retries=TASK_RETRIES)
    fn_ref = ray.put(fn)
    todo = iter(items)
    pending: list = []

    def submit() -> bool:
        for item in todo:
            pending.append(remote.remote(fn_ref, item))
            return True
        return False

    while len(pending) < in_flight and submit():
        pass
    while pending:
        done, rest = ray.wait(pending, num_returns=1)
        pending[:] = rest
        submit()
        yield ray.get(done[0])
