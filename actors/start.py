"""Joining a Ray cluster, or starting a local node when there is none: the one place a job starts Ray."""

from __future__ import annotations

import logging
import os
import time

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


def wait_for_gpus(wanted: int, timeout_s: float) -> None:
    """Ask the autoscaler for `wanted` GPUs and wait, bounded, until the cluster has them: a job submitted to a
    scaled-down cluster then runs on what it asked for instead of the one GPU that happened to be up."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[{"GPU": 1}] * wanted)
    except Exception as exc:  # noqa: BLE001 - a cluster without an autoscaler: wait for nodes added by hand
        log.info("no autoscaler to ask for %d GPUs (%s); waiting for them to join", wanted, exc)
    t0 = time.monotonic()
    last_log = t0
    while True:
        have = float(ray.cluster_resources().get("GPU", 0.0))
        if have >= wanted:
            log.info("the cluster has %g GPUs (pipeline.min_gpus %d)", have, wanted)
            return
        now = time.monotonic()
        if now - t0 > timeout_s:
            raise ReembedError(
                f"waited {timeout_s:.0f} s for pipeline.min_gpus={wanted} GPUs but the cluster has {have:g}; check "
                "the autoscaler (ray status) or lower pipeline.min_gpus (0 starts on what there is), then re-run"
            )
        if now - last_log >= 30:
            log.info("waiting for %d GPUs (the cluster has %g) for %.0f s", wanted, have, now - t0)
            last_log = now
        time.sleep(2.0)  # the autoscaler adds nodes in minutes; polling faster buys nothing
