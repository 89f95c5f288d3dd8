"""The progress line of a run on stderr: a live bar on a terminal, a log line every 10 s otherwise.

Points done / total, points/s, ETA, lanes, retries and redone pages; while nothing moves it says what the job waits
for (a restarting worker, Qdrant, a lane with no node to run on) and the ETA pauses instead of drifting.
"""

from __future__ import annotations

import logging
import sys
import time

from engine.flow.coordinator import RunStats
from engine.flow.state import JobState

log = logging.getLogger(__name__)

TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 10.0


class Progress:
    def __init__(self, total: int, done0: int, enabled: bool = True, clock=time.monotonic) -> None:
        self.total, self.done0, self.enabled = total, done0, enabled
        self.clock = clock
        self.t0 = clock()
        self.last = -float("inf")
        self.tty = sys.stderr.isatty()

    def line(self, state: JobState, stats: RunStats, now: float) -> str:
        done = state.written + state.skipped
        rate = (done - self.done0) / max(1e-6, now - self.t0)
        left = max(0, self.total - done)
        frac = min(1.0, done / self.total) if self.total else 1.0
        if stats.status is not None:
            eta = "paused"
        else:
            eta = f"{int(left / rate // 60)}m{int(left / rate % 60):02d}s" if rate > 0 else "?"
        text = (f"{done:,}/{self.total:,} points ({frac:.0%}) {rate:,.0f} points/s ETA {eta} lanes "
                f"{len(stats.in_flight)} retries {sum(stats.retries.values())} redone pages {stats.pages_redone}")
        if stats.pace:
            text += f" | pace: {stats.pace}"
        if stats.status is not None:
            text += f" | {stats.status}"
        return text

    def __call__(self, state: JobState, stats: RunStats) -> None:
        now = self.clock()
        if not self.enabled or now - self.last < (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S):
            return
        self.last = now
        text = self.line(state, stats, now)
        if self.tty:
            done = state.written + state.skipped
            frac = min(1.0, done / self.total) if self.total else 1.0
            sys.stderr.write(f"\r[{'#' * int(frac * 30):<30}] {text}   ")
            sys.stderr.flush()
        else:
            log.info("progress: %s", text)

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
