"""Chaos: server faults of every kind at 30 % of data calls combined with random kills of scroll, embedding and
upload actors, seeded. The run must end with the checker at zero; retries and redone work are reported.

Among the faults, writes answered `Acknowledged` before they are applied (ack_before_apply): the writers must take
that for an unknown outcome and send the write again, or a cursor would move past a write still waiting to land."""

from __future__ import annotations

import random

import pytest
import ray

from engine.app import job as jobs
from engine.embedded.process import EmbeddedProcess
from tests.integration.pipeline_support import assert_exact, client_for, config, make_payloads, seed_collection

pytestmark = pytest.mark.chaos
N = 2500
# exhausted at 10 %: at 5 % one CI run in several drew it on no page read or write at all (checkpoint writes take
# draws too, and the run makes only ~100 data calls), and the test asserts every kind was retried.
FAULTS = ("unavailable=0.08,exhausted=0.10,apply_then_fail=0.07,ack_before_apply=0.05,latency_ms=0-10,"
          "retry_after_s=0.05-0.2")


def test_heavy_faults_and_random_actor_kills(ray_local, tmp_path, monkeypatch):
    rng = random.Random(1234)
    kills: list[str] = []
    pools = []
    real = jobs.Progress.__call__

    def progress(self, state, stats):
        done = state.written + state.skipped
        # about one kill per 300 committed points, of a random actor of a random stage
        if done >= (len(kills) + 1) * 300 and done < N:
            (lane,) = pools[0].handles().values()
            stage = rng.choice(["readers", "embed", "writers"])
            actor = lane[stage] if stage == "embed" else rng.choice(lane[stage])
            ray.kill(actor, no_restart=False)
            kills.append(stage)
        real(self, state, stats)

    monkeypatch.setattr(jobs.Progress, "__call__", progress)
    with EmbeddedProcess(str(tmp_path / "q"), faults=FAULTS, seed=99) as server:
        client = client_for(server.port)
        seed_collection(client, "src", make_payloads(N, seed=31))
        client.close()
        cfg = config(server.port, tmp_path, page=64,
                     retry__max_attempts=60, retry__base_delay_s=0.02, retry__max_delay_s=0.5)
        out = jobs.run_job(cfg, progress=False, on_pool=pools.append)
        assert_exact(server.port, "src", "dst")
        assert out["points_written"] + out["points_skipped"] == N
        assert len(kills) >= 3
        assert {"unavailable", "resource_exhausted", "deadline_exceeded", "not_applied"} <= set(out["retries"])
        print(f"faults {FAULTS}: kills {kills}; retries {out['retries']}; pages redone {out['pages_redone']} "
              f"({out['points_redone']} points)")
