"""The job's lanes on a Ray cluster: one per GPU (or per CPU node), each in a placement group packed on one node,
added as nodes join and retired as they die.

Sizing is per node (actors/sizing.py). A lane's placement group targets its node softly; where it really lands is
read from the lane itself once it starts. Lanes start in the background (placement, then the model loaded), so the
coordinator gets to work as soon as the first lane is up and the others join when ready. A lane whose node is gone
or whose conductor died is reported lost (its leases go back to the queue) and its placement group removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import exceptions as rex
from ray.util import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.lane import LaneActor, LaneSpec, LaneWorkers, start_workers
from actors.sizing import LaneOptions, LaneShape, node_lanes
from engine import tunables
from engine.embed.base import identity
from engine.errors import ModelError, ReembedError
from engine.flow.lease import Lease
from engine.flow.seams import LaneInfo, LaneReport, PoolChange
from engine.qdrant.wire import PointIdValue

log = logging.getLogger(__name__)

POLL_WAIT_S = 1.0  # a lane's poll is held this long without news: bounds how stale a quiet lane's report gets


@dataclass
class _Lane:
    name: str
    pg: Any
    shape: LaneShape
    target_node: str
    actor: Any = None
    start_ref: Any = None
    started_at: float = field(default_factory=time.monotonic)
    node_id: str = ""
    poll_ref: Any = None
    up: bool = False
    workers: Any = None  # the lane's worker actors (actors/lane.LaneWorkers), killed with the lane


class RayLanePool:
    """A LanePool over Ray placement groups."""

    def __init__(self, spec: LaneSpec, options: LaneOptions, *, name_prefix: str, max_lanes: int | None = None,
                 start_timeout_s: float = tunables.LANE_START_TIMEOUT_S,
                 max_points_per_s: float | None = None, stages: Any = None) -> None:
        """`stages`: a stage executor every lane runs instead of its workers (no workers are started): the
        control-plane benchmark runs synthetic pages through the real pool and lane loop."""
        self.spec, self.options = spec, options
        self.prefix = name_prefix
        self.max_lanes = max_lanes
        self.start_timeout_s = start_timeout_s
        self._lanes: dict[str, _Lane] = {}
        self._count = 0
        self._model: dict[str, Any] | None = None
        self._pending_logged = False
        self._unreported = PoolChange()  # lanes started or lost since the coordinator last asked
        self._stages = stages
        self.max_points_per_s = max_points_per_s  # the job's cap, split evenly across the lanes up
        self.shapes: dict[str, LaneShape] = {}  # node -> its lane shape, for the log and the summary
        self._start_deaths: dict[str, int] = {}  # node -> lanes in a row that died while starting there
        self._resting: dict[str, float] = {}  # node -> when it may take a new lane again
        self._last_death = ""  # the latest start death's cause, for the error when no lane ever starts

    # --- growing and shrinking -----------------------------------------------------------------------------------
    def _alive_nodes(self) -> dict[str, dict[str, float]]:
        return {n["NodeID"]: dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")}

    def _plan_new(self, nodes: dict[str, dict[str, float]]) -> None:
        per_node: dict[str, int] = {}
        for lane in self._lanes.values():
            node = lane.node_id or lane.target_node
            per_node[node] = per_node.get(node, 0) + 1
        now = time.monotonic()
        for node_id, resources in sorted(nodes.items()):
            count, shape = node_lanes(resources, self.options)
            if shape is None or self._resting.get(node_id, 0.0) > now:
                continue
            self.shapes[node_id] = shape
            for _ in range(count - per_node.get(node_id, 0)):
                if self.max_lanes is not None and len(self._lanes) >= self.max_lanes:
                    return
                self._create(node_id, shape)

    def _create(self, node_id: str, shape: LaneShape) -> None:
        name = f"{self.prefix}-lane-{self._count}"
        self._count += 1
        pg = placement_group(shape.bundles(), strategy="STRICT_PACK", name=name, _soft_target_node_id=node_id)
        self._lanes[name] = _Lane(name=name, pg=pg, shape=shape, target_node=node_id)
        log.info("lane %s: placing on node %s (%s)", name, node_id[:12], shape.describe())

    def _start_placed(self) -> None:
        for lane in list(self._lanes.values()):  # a lane that cannot start is retired on the way
            if lane.actor is not None:
                continue
            ready, _ = ray.wait([lane.pg.ready()], timeout=0)
            if not ready:
                continue
            try:
                workers = LaneWorkers(None, [], []) if self._stages is not None else \
                    start_workers(self.spec, lane.shape, lane.pg, lane.name)
                lane.workers = workers
                lane.actor = ray.remote(LaneActor).options(
                    num_cpus=0, max_concurrency=4, max_restarts=0, name=lane.name,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=lane.pg,
                                                                         placement_group_bundle_index=0),
                ).remote(self.spec, workers, lane.name, self._stages)
                lane.start_ref = lane.actor.start.remote()
            except rex.RayError as err:  # e.g. "Actor creation cancelled": its placement group went with its node
                self._start_died(lane, err)

    def _collect_started(self, change: PoolChange) -> None:
        starting = {lane.start_ref: lane for lane in self._lanes.values() if lane.start_ref is not None}
        if not starting:
            return
        ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
        for ref in ready:
            lane = starting[ref]
            lane.start_ref = None
            try:
                started = ray.get(ref)
            except rex.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, ReembedError):
                    raise cause from None
                self._start_died(lane, err)
                continue
            except rex.RayActorError as err:
                self._start_died(lane, err)
                continue
            model = started["model"]
            if self._model is None:
                self._model = model
            elif identity(model) != identity(self._model):
                # A node with other model files would write vectors of another model into the same target.
                raise ModelError(
                    f"lane {lane.name} on node {started['node_id'][:12]} loaded a different model than the first "
                    f"lane ({identity(model)} vs {identity(self._model)}); install the same model files on every "
                    "node (reembed doctor checks this), then re-run to resume"
                )
            lane.node_id, lane.up = started["node_id"], True
            self._start_deaths.pop(lane.target_node, None)
            self._start_deaths.pop(lane.node_id, None)
            change.added.append(LaneInfo(lane.name, lane.node_id, lane.shape.gpus))

    def _start_died(self, lane: _Lane, err: Exception) -> None:
        """A lane that died or failed while starting: retired; its node rested after LANE_START_DEATHS_MAX in a row,
        and the job ended when no lane is up and every node is resting (nothing would ever start)."""
        cause = " ".join(str(err).split())[:400]  # Ray's message spans lines; the cause is often past the first
        node = lane.node_id or lane.target_node
        deaths = self._start_deaths.get(node, 0) + 1
        self._start_deaths[node] = deaths
        self._last_death = cause
        log.warning("lane %s died while starting on node %s (%d in a row there): %s; retiring it", lane.name,
                    node[:12], deaths, cause)
        self._retire(lane)
        if deaths < tunables.LANE_START_DEATHS_MAX:
            return
        self._start_deaths[node] = 0
        self._resting[node] = time.monotonic() + tunables.LANE_NODE_REST_S
        log.warning("node %s: %d lanes in a row died while starting; no new lane there for %.0f s", node[:12],
                    tunables.LANE_START_DEATHS_MAX, tunables.LANE_NODE_REST_S)
        alive = self._alive_nodes()
        now = time.monotonic()
        if not any(ln.up for ln in self._lanes.values()) and all(
                self._resting.get(n, 0.0) > now or node_lanes(r, self.options)[1] is None for n, r in alive.items()):
            raise ReembedError(
                f"every lane died while starting ({tunables.LANE_START_DEATHS_MAX} in a row on each node that can "
                f"host one); the last: {cause}. Check the nodes' logs (ray logs, /tmp/ray/session_latest/logs) and "
                "that reembed and its dependencies are installed on every node (reembed doctor), then re-run to resume"
            )

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        waiting = [ln for ln in self._lanes.values() if not ln.up and now - ln.started_at > self.start_timeout_s]
        if waiting and not any(ln.up for ln in self._lanes.values()):
            shapes = "; ".join(sorted({ln.shape.describe() for ln in waiting}))
            raise ReembedError(
                f"no lane could be placed and started in {self.start_timeout_s:.0f} s ({len(waiting)} waiting; a "
                f"lane needs on ONE node: {shapes}); check `ray status` for free resources, add a node or lower "
                "pipeline.embed_gpus_per_actor / pipeline.io_cpus_per_lane, then re-run to resume"
            )
        pending = [ln for ln in self._lanes.values() if ln.actor is None]
        if pending and any(ln.up for ln in self._lanes.values()) and not self._pending_logged:
            log.info("%d lane(s) wait for resources; they join when the cluster has room", len(pending))
            self._pending_logged = True

    def refresh(self) -> PoolChange:
        """Lanes added or lost since the last call (lanes that started during `wait_first` included)."""
        self._advance()
        change, self._unreported = self._unreported, PoolChange()
        if (change.added or change.lost) and self.max_points_per_s is not None:
            self._share_cap()
        return change

    def _share_cap(self) -> None:
        assert self.max_points_per_s is not None  # refresh calls this only when the job has a cap
        up = [ln for ln in self._lanes.values() if ln.up]
        for lane in up:
            lane.actor.set_rate.remote(self.max_points_per_s / len(up))

    def observe_search_p99(self, p99_ms: float | None) -> None:
        """The source's search latency, probed by the driver: every writer backs off while it is over target."""
        for lane in self._lanes.values():
            if lane.up:
                lane.actor.observe_search_p99.remote(p99_ms)

    def _advance(self) -> None:
        change = self._unreported
        nodes = self._alive_nodes()
        for lane in list(self._lanes.values()):
            if lane.up and lane.node_id not in nodes:
                log.warning("lane %s: node %s is gone", lane.name, lane.node_id[:12])
                self._retire(lane)
                change.lost.append(lane.name)
        self._plan_new(nodes)
        self._start_placed()
        self._collect_started(change)
        self._check_timeouts()

    def wait_first(self, timeout_s: float) -> None:
        """Block until at least one lane is up (or raise after `timeout_s` with the reason)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._advance()
            if any(ln.up for ln in self._lanes.values()):
                return
            if time.monotonic() > deadline:
                self.start_timeout_s = 0.0
                self._check_timeouts()
                raise ReembedError("no lane started; check `ray status`")
            starting = [ln.start_ref for ln in self._lanes.values() if ln.start_ref is not None]
            if starting:
                ray.wait(starting, num_returns=1, timeout=1.0)
            else:
                time.sleep(0.2)  # waiting for a placement group; Ray offers no wait on "any of these"

    @property
    def model(self) -> dict[str, Any] | None:
        """The model description the first lane reported."""
        return self._model

    def _retire(self, lane: _Lane) -> None:
        if lane.actor is not None:
            try:
                ray.get(lane.actor.stop.remote(), timeout=15)
            except Exception:  # noqa: BLE001 - a dead or stuck conductor: its actors go with its placement group
                pass
            ray.kill(lane.actor, no_restart=True)
        if lane.workers is not None:  # a conductor that died early did not stop them
            for actor in [lane.workers.embedder, *lane.workers.readers, *lane.workers.writers]:
                if actor is not None:
                    ray.kill(actor, no_restart=True)
        remove_placement_group(lane.pg)
        self._lanes.pop(lane.name, None)

    # --- the coordinator's calls ---------------------------------------------------------------------------------
    def assign(self, lane: str, lease: Lease) -> None:
        self._lanes[lane].actor.assign.remote(lease)

    def split(self, lane: str, shard: int, at: PointIdValue) -> PointIdValue | None:
        try:
            return ray.get(self._lanes[lane].actor.split.remote(shard, at), timeout=30)
        except (rex.RayActorError, rex.GetTimeoutError):
            return None

    def poll(self, timeout: float) -> list[tuple[str, LaneReport | None]]:
        up = [ln for ln in self._lanes.values() if ln.up]
        for lane in up:
            if lane.poll_ref is None:
                lane.poll_ref = lane.actor.poll.remote(POLL_WAIT_S)
        refs = {ln.poll_ref: ln for ln in up}
        if not refs:
            time.sleep(min(timeout, 0.2))  # no lane yet: the coordinator's refresh adds them
            return []
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        out: list[tuple[str, LaneReport | None]] = []
        for ref in ready:
            lane = refs[ref]
            lane.poll_ref = None
            try:
                out.append((lane.name, ray.get(ref)))
            except (rex.RayActorError, rex.RayTaskError) as err:
                log.warning("lane %s is lost (%s)", lane.name, str(err).splitlines()[0][:200])
                self._retire(lane)
                out.append((lane.name, None))
        return out

    def lane_records(self) -> dict[str, tuple[str, float]]:
        """lane -> (node id, GPUs) of the lanes up now."""
        return {ln.name: (ln.node_id, ln.shape.gpus) for ln in self._lanes.values() if ln.up}

    def handles(self) -> dict[str, dict[str, Any]]:
        """Every up lane's worker actors by role: {"embed": actor, "readers": [...], "writers": [...]}."""
        return {ln.name: ray.get(ln.actor.handles.remote()) for ln in self._lanes.values() if ln.up}

    def pids(self) -> dict[str, dict[str, int]]:
        """Process ids of every up lane's actors (for tests that kill them)."""
        return {ln.name: ray.get(ln.actor.pids.remote()) for ln in self._lanes.values() if ln.up}

    def lanes_by_node(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ln in self._lanes.values():
            if ln.up:
                out.setdefault(ln.node_id, []).append(ln.name)
        return out

    def close(self) -> None:
        for lane in list(self._lanes.values()):
            self._retire(lane)
