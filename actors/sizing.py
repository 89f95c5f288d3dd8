"""The shape of a lane and how many lanes a node hosts, from that node's own resources (never from cluster totals:
a lane's actors must fit on one node together).

GPU nodes host one lane per `gpus_per_lane` GPUs; the node's CPUs are shared among its lanes: one for each
embedding actor (tokenisation, the CUDA launch thread), the rest to its readers and writers. CPU-only nodes (a
cluster without GPUs, or a laptop) host `cpu_lanes_per_node` lanes; the embedding actor reserves most of the lane's
CPUs and its torch threads use all of them, while the readers and writers, mostly waiting on the network, reserve a
small share each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from engine import tunables


@dataclass(frozen=True)
class LaneOptions:
    """The config's say in lane shapes; None = derived from the node."""

    gpus_per_lane: float = 1.0
    cpu_lanes_per_node: int = 1
    readers: int | None = None
    writers: int | None = None
    io_cpus: float | None = None  # CPUs reserved per reader and per writer
    requests_in_flight: int | None = None  # write requests in flight per writer
    use_gpus: bool = True  # False: the model runs on CPU even where GPUs exist (model.device: cpu)


@dataclass(frozen=True)
class LaneShape:
    gpus: float  # of the embedding actor; 0 on a CPU lane
    embed_cpus: float  # CPUs the embedding actor reserves
    threads: int  # torch intra-op threads of the embedding actor on CPU
    readers: int
    writers: int
    io_cpus: float  # CPUs each reader and each writer reserves
    requests_in_flight: int  # write requests in flight per writer

    @property
    def cpus(self) -> float:
        return self.embed_cpus + self.io_cpus * (self.readers + self.writers)

    def bundles(self) -> list[dict[str, float]]:
        """Placement-group bundles: the embedding actor (and the lane's conductor) first, then readers, writers."""
        head: dict[str, float] = {"CPU": self.embed_cpus}
        if self.gpus:
            head["GPU"] = self.gpus
        return [head, *({"CPU": self.io_cpus} for _ in range(self.readers + self.writers))]

    def describe(self) -> str:
        gpu = f"{self.gpus:g} GPU + " if self.gpus else ""
        return (f"embedding actor {gpu}{self.embed_cpus:g} CPU ({self.threads} threads), {self.readers} reader(s) "
                f"and {self.writers} writer(s) at {self.io_cpus:g} CPU each, {self.requests_in_flight} writes in "
                "flight per writer")


def _fits(shape: LaneShape, lanes: int, cpus: float) -> bool:
    return lanes * shape.cpus <= cpus + 1e-9


def node_lanes(resources: Mapping[str, float], opt: LaneOptions) -> tuple[int, LaneShape | None]:
    """How many lanes a node with these total resources hosts, and their shape (None when it hosts none)."""
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0)) if opt.use_gpus else 0.0
    if opt.use_gpus and gpus > 0:
        lanes = int(math.floor(gpus / opt.gpus_per_lane + 1e-9))
        gpu_each = opt.gpus_per_lane
    else:
        lanes, gpu_each = opt.cpu_lanes_per_node, 0.0
    readers = opt.readers or tunables.LANE_READERS
    writers = opt.writers or tunables.LANE_WRITERS
    flight = opt.requests_in_flight or tunables.UPLOAD_REQUESTS_IN_FLIGHT
    while lanes > 0:
        budget = cpus / lanes
        if gpu_each:
            embed = tunables.LANE_GPU_EMBED_CPUS
            io = opt.io_cpus if opt.io_cpus is not None else min(1.0, (budget - embed) / (readers + writers))
        else:
            io = opt.io_cpus if opt.io_cpus is not None else tunables.LANE_CPU_IO_CPUS
            embed = budget - io * (readers + writers)
        # A CPU's worth for the model at least; I/O actors at least the floor (else they would starve on a busy
        # node).
        io = round(io, 2)
        if embed >= (tunables.LANE_GPU_EMBED_CPUS if gpu_each else 1.0) and io >= tunables.LANE_MIN_IO_CPUS:
            embed = math.floor(embed * 100) / 100
            threads = 1 if gpu_each else max(1, int(round(budget)))
            shape = LaneShape(gpus=gpu_each, embed_cpus=embed, threads=threads, readers=readers, writers=writers,
                              io_cpus=io, requests_in_flight=flight)
            if _fits(shape, lanes, cpus):
                return lanes, shape
        lanes -= 1
    return 0, None
