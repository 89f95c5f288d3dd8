"""Joining a Ray cluster, or starting a local node when there is none: the one place a job starts Ray."""

from __future__ import annotations

import logging
import os

import ray

from engine.errors import ReembedError

log = logging.getLogger(__name__)

RAY_START_ATTEMPTS = 3  # local Ray start-ups retried after a start-up timeout


def start_ray() -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
        return
    # A local node can miss Ray's start-up deadline on a loaded machine (seen on 2 busy cores); one more try
    # costs seconds, a failed job costs the operator a re-run.
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, ignore_reinit_error=True,
                     log_to_driver=True, configure_logging=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for a start-up timeout
            ray.shutdown()
            if attempt == RAY_START_ATTEMPTS:
                raise ReembedError(
                    f"a local Ray node could not start ({str(exc).splitlines()[0]}); free some CPU or memory, or "
                    "point RAY_ADDRESS at a running cluster, then re-run to resume"
                ) from None
            log.warning("local Ray start failed (%s); retrying", str(exc).splitlines()[0])
