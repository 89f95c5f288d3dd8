"""Lanes that die while starting (a node whose workers cannot start: a dead agent, a broken install) are bounded:
after LANE_START_DEATHS_MAX in a row a node gets no new lane for a while, and when no lane is up and every node rests
the job ends with one line naming the cause, instead of placing a new lane every second for ever (seen on a cluster
whose node had just been SIGKILLed: 24 lanes in 50 s, then a crash on a cancelled actor creation)."""

from __future__ import annotations

import os

import pytest

from actors.lane import LaneSpec
from actors.pool import RayLanePool
from actors.sizing import LaneOptions
from engine import tunables
from engine.errors import ReembedError
from engine.flow.lane import RedoPolicy
from engine.flow.sink import SinkSpec
from engine.flow.source import SourceSpec
from engine.flow.text import TextSpec
from engine.qdrant.connection import Endpoint
from engine.qdrant.retry import RetryPolicy

pytestmark = pytest.mark.integration


def test_a_node_whose_lanes_die_while_starting_is_rested_then_the_job_ends_with_the_cause(ray_local, tmp_path):
    class DiesOnArrival:
        """Stages whose unpickling in the lane's process ends that process: a lane that dies while starting."""

        def __init__(self) -> None:
            self.armed = True

        def __setstate__(self, state: dict) -> None:
            os._exit(3)

    spec = LaneSpec(job_id="t", endpoint=Endpoint("127.0.0.1", 1), policy=RetryPolicy(),
                    source=SourceSpec(collection="s", text=TextSpec(field="text")), sink=SinkSpec("t", "v"),
                    vectorizer={}, page_size=32, pages_in_flight=2, redo=RedoPolicy(), runs_root=str(tmp_path))
    options = LaneOptions(use_gpus=False, cpu_lanes_per_node=1, io_cpus=0.1, readers=1, writers=1)
    pool = RayLanePool(spec, options, name_prefix="doomed", stages=DiesOnArrival())
    try:
        with pytest.raises(ReembedError, match="every lane died while starting") as err:
            pool.wait_first(120)
        message = str(err.value)
        assert "\n" not in message and "re-run to resume" in message
        assert "died" in message.split("the last:")[1]  # Ray's own cause, not only ours
        # one node, LANE_START_DEATHS_MAX lanes tried on it, not one more
        assert pool._count == tunables.LANE_START_DEATHS_MAX
        assert not pool.lane_records()
    finally:
        pool.close()
