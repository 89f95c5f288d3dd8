"""Prometheus metrics of a run, through `ray.util.metrics`, visible in the Ray dashboard and on every node's metrics
export port (`ray.nodes()[i]["MetricsExportPort"]`, path /metrics).

Ray prefixes every name with `ray_`, and Prometheus adds `_total` to counters and `_bucket`/`_sum`/`_count` to
histograms, so the exported series are:

| exported name | type | tags | meaning |
|---|---|---|---|
| `ray_reembed_points_scrolled_total` | counter | `job` | points read from the source (the lanes' readers) |
| `ray_reembed_points_embedded_total` | counter | `job` | texts embedded by the model (the lanes' embedding actors) |
| `ray_reembed_points_written_total` | counter | `job` | points written with a new vector (writers, acknowledged) |
| `ray_reembed_points_skipped_total` | counter | `job` | points written without a new vector: dead letters |
| `ray_reembed_dead_letters_total` | counter | `job`, `stage` (scroll, upload) | dead-lettered points, by stage |
| `ray_reembed_retries_total` | counter | `job`, `cause` (e.g. unavailable, resource_exhausted) | retried requests |
| `ray_reembed_write_requests_total` | counter | `job` | write requests sent (after splitting pages) |
| `ray_reembed_batch_latency_seconds` | histogram | `job`, `stage` (scroll, embed, upload) | a page's time in a stage |
| `ray_reembed_pages_in_flight` | gauge | `job`, `stage` (scroll, process) | pages in flight per stage, all lanes |

Every series carries a `job` tag (the job id), and Ray's own tags too (node address, worker id, session). Counters
count this process's work since it started, so a restarted actor starts again at zero: use Prometheus
`rate()`/`increase()`, which handle resets. Ray exports a gauge only for a short while after it was last set, so
`pages_in_flight` exists while a run goes on (the driver sets it from the lanes' reports: pages being read, and being
embedded and written, across all lanes).

The engine stays importable and runnable without Ray: `ray` is imported lazily, and every method is a no-op unless
Ray is initialised in this process (a driver after `ray.init`, or any Ray worker).

`StageSampler` also keeps a small, downsampled time series of pages in flight per stage on the driver, which the
run report plots (busy and backpressure per stage) after the run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

log = logging.getLogger(__name__)

# Seconds; spans one small scroll page on a fast server up to one large embedding batch on a CPU.
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
STAGE_SERIES_MAX = 1200  # samples kept for the report (5 min at 0.25 s); past it, every other one is dropped


class Metrics:
    """One set of metric objects per process; created on first use, only when Ray is initialised."""

    def __init__(self) -> None:
        self._objs: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._disabled = False
        self._job = ""

    def set_job(self, job_id: str) -> None:
        """Tag every series this process records with the job, so two jobs on one cluster stay apart."""
        self._job = job_id

    def _get(self) -> dict[str, Any] | None:
        if self._objs is not None or self._disabled:
            return self._objs
        with self._lock:
            if self._objs is not None or self._disabled:
                return self._objs
            try:
                import ray

                if not ray.is_initialized():
                    return None  # may become initialised later: try again next time
                from ray.util import metrics as rm
            except ImportError:
                self._disabled = True
                return None
            try:
                self._objs = {
                    "scrolled": rm.Counter("reembed_points_scrolled", description="Points read from the source.",
                                           tag_keys=("job",)),
                    "embedded": rm.Counter("reembed_points_embedded", description="Texts embedded by the model.",
                                           tag_keys=("job",)),
                    "written": rm.Counter("reembed_points_written",
                                          description="Points written with a new vector (acknowledged).",
                                          tag_keys=("job",)),
                    "skipped": rm.Counter("reembed_points_skipped",
                                          description="Points written without a new vector (no usable text).",
                                          tag_keys=("job",)),
                    "dead": rm.Counter("reembed_dead_letters", description="Points recorded as dead letters.",
                                       tag_keys=("job", "stage")),
                    "retries": rm.Counter("reembed_retries", description="Retried write requests, by cause.",
                                          tag_keys=("job", "cause")),
                    "requests": rm.Counter("reembed_write_requests", description="Write requests sent.",
                                           tag_keys=("job",)),
                    "latency": rm.Histogram("reembed_batch_latency_seconds",
                                            description="Seconds one page spends in a stage.",
                                            boundaries=LATENCY_BOUNDARIES, tag_keys=("job", "stage")),
                    "in_flight": rm.Gauge("reembed_pages_in_flight",
                                          description="Pages in flight per stage (coordinator view).",
                                          tag_keys=("job", "stage")),
                }
            except Exception as exc:  # noqa: BLE001 - metrics must never break a run
                log.warning("Prometheus metrics disabled: %s", exc)
                self._disabled = True
            return self._objs

    def _record(self, key: str, method: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        """Call `method` (inc / observe / set) of metric `key`; a failure is logged, never raised."""
        objs = self._get()
        if objs is None:
            return
        try:
            getattr(objs[key], method)(value, tags={"job": self._job, **(tags or {})})
        except Exception as exc:  # noqa: BLE001 - metrics must never break a run
            log.debug("metric %s not recorded: %s", key, exc)

    def _inc(self, key: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        if value > 0:
            self._record(key, "inc", value, tags)

    def page_read(self, points: int, dead: int, seconds: float) -> None:
        self._inc("scrolled", points)
        self._inc("dead", dead, {"stage": "scroll"})
        self.latency("scroll", seconds)

    def embedded(self, texts: int, seconds: float) -> None:
        self._inc("embedded", texts)
        self.latency("embed", seconds)

    def page_written(self, written: int, skipped: int, dead: int, requests: int, retries: Mapping[str, int],
                     seconds: float) -> None:
        self._inc("written", written)
        self._inc("skipped", skipped)
        self._inc("dead", dead, {"stage": "upload"})
        self._inc("requests", requests)
        for cause, n in retries.items():
            self._inc("retries", n, {"cause": str(cause)})
        self.latency("upload", seconds)

    def latency(self, stage: str, seconds: float) -> None:
        self._record("latency", "observe", max(0.0, float(seconds)), {"stage": stage})

    def in_flight(self, stage: str, pages: int) -> None:
        self._record("in_flight", "set", float(pages), {"stage": stage})


_METRICS = Metrics()


def metrics() -> Metrics:
    """This process's metrics (a no-op object until Ray is initialised)."""
    return _METRICS


class StageSampler:
    """Pages in flight per stage: at most once per `interval_s`, sets the gauges and keeps a sample for the report,
    thinned so a run of any length keeps at most STAGE_SERIES_MAX samples."""

    def __init__(self, stages: tuple[str, ...], interval_s: float = 0.25, clock=time.monotonic) -> None:
        self.stages = stages
        self.interval_s = interval_s
        self.clock = clock
        self.t0: float | None = None  # the first call: when the coordinator starts, not when the actors were built
        self._last = -float("inf")
        self.samples: list[list[float]] = []  # [elapsed s, pages per stage...]

    def __call__(self, **pages: int) -> None:
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        if now - self._last < self.interval_s:
            return  # the coordinator loop turns far more often than Prometheus scrapes
        self._last = now
        m = metrics()
        for stage in self.stages:
            m.in_flight(stage, pages.get(stage, 0))
        self.samples.append([round(now - self.t0, 3), *(int(pages.get(s, 0)) for s in self.stages)])
        if len(self.samples) > STAGE_SERIES_MAX:
            self.samples = self.samples[::2]
            self.interval_s *= 2

    def series(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "samples": [list(s) for s in self.samples]}
