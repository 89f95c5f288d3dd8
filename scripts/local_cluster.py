"""A Ray cluster of several nodes on this one machine, for the cluster tests, the benchmarks and
scripts/local-ray-head.sh: a head and worker nodes, each `ray start --block` on free ports with its own temp dir, in
a process group of its own, so it can be killed alone (a lost node) and stopped without touching any other Ray
process here (never `ray stop`, which ends every Ray node on the machine).

    python scripts/local_cluster.py --workers 2 --gpus-per-worker 1     # prints RAY_ADDRESS, waits for Ctrl-C

Worker nodes may declare GPUs they do not have (`--num-gpus`): enough to test lane placement with a CPU embedder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session), if any of it is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a `ray start --block` and everything in its process group, nothing else.

    SIGTERM goes to `ray start` alone first: it drains the node and stops its processes in order (about 2 s). A
    SIGTERM to the whole group at once kills the GCS under it and its drain then waits 30 s for a GCS that is gone.
    What is still in the group after `timeout_s` gets SIGKILL.
    """
    proc.send_signal(signal.SIGTERM)  # nothing once the leader is reaped
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reaps the leader, whose zombie would keep the group alive
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        kill_group(proc)
    proc.wait(timeout=timeout_s)


def processes_of(sessions: set[int], marks: tuple[str, ...]) -> dict[int, str]:
    """pid -> command line of every live process in one of `sessions` (Ray's processes keep their node's session
    even where they take a process group of their own, and rename themselves `ray::...`), or naming one of `marks`
    (a temp dir; a job's config, whose driver Ray starts in a session of its own)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if state != "Z" and (int(session) in sessions or any(m in cmd for m in marks)):
            found[int(entry.name)] = cmd
    return found


def kill_processes(pids: Iterable[int]) -> None:
    """SIGKILL each of `pids` still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


WORKER_PORTS = 200  # worker processes a node may run at once (each takes a port)
_WORKER_PORT_BASE = 10000  # below the kernel's ephemeral range, where free_port() picks the single ports
_next_block = [(os.getpid() * 7) % 80]  # per process, so two clusters on this machine start apart


def _worker_range() -> tuple[int, int]:
    """A block of worker ports outside the ephemeral range, none of it in use now."""
    for _ in range(100):
        low = _WORKER_PORT_BASE + (_next_block[0] % 100) * WORKER_PORTS
        _next_block[0] += 1
        if all(_port_free(p) for p in range(low, low + WORKER_PORTS, 20)):
            return low, low + WORKER_PORTS - 1
    raise RuntimeError("no free block of worker ports between 10000 and 30000")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _node_ports(manager: int) -> list[str]:
    """Every port a node takes at a fixed default, chosen free instead (another node here may hold the default)."""
    low, high = _worker_range()
    return [f"--node-manager-port={manager}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}", f"--max-worker-port={high}"]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    gpus: int = 0
    node_manager_port: int = 0  # how Ray's node list names this node (NodeManagerPort)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LocalCluster:
    """A head and its workers; use as a context manager, or call start() and stop()."""

    head_cpus: int = 1
    object_store_mb: int = 300  # per node: test pages are small, and the machine's memory is shared by every node
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        """For `ray.init(address=...)` and RAY_ADDRESS of a driver on this machine."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        """For `ray job submit --address`."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **self.env}
        env.pop("RAY_ADDRESS", None)
        return env

    def _spawn(self, name: str, args: list[str], gpus: int = 0, manager: int = 0) -> Node:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address=127.0.0.1",
                                 f"--object-store-memory={self.object_store_mb * 1024 * 1024}", *args],
                                env=self._env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        node = Node(name, proc, log, gpus, manager)
        self.nodes.append(node)
        return node

    def start(self, workers: int = 0, cpus_per_worker: int = 2, gpus_per_worker: int = 0) -> "LocalCluster":
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        # Unix socket paths must stay under 107 bytes: the temp dir is short.
        manager = free_port()
        self._spawn("head", ["--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                             "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.root / 'ray'}",
                             f"--ray-client-server-port={free_port()}", *_node_ports(manager)], manager=manager)
        self._wait_head()
        for i in range(workers):
            # One at a time: raylets starting together on one machine can miss each other's start-up deadline.
            self.add_worker(cpus_per_worker, gpus_per_worker)
            self.wait_nodes(2 + i)
        return self

    def add_worker(self, cpus: int = 2, gpus: int = 0) -> Node:
        """A worker node joins (as an autoscaler adds one); returns once it is started, not yet registered."""
        index = sum(1 for n in self.nodes if n.name.startswith("worker"))
        manager = free_port()
        # A temp dir of its own, as a separate machine has: nodes sharing one (Ray's default here) share one
        # runtime_resources dir, and one node's agent deleting a job's unused working_dir pulls the files from
        # under another node's workers mid-import ("No module named ..." seen in a cluster test).
        return self._spawn(f"worker-{index}", [f"--address={self.address}", f"--num-cpus={cpus}",
                                               f"--num-gpus={gpus}", f"--temp-dir={self.root / f't{index}'}",
                                               *_node_ports(manager)], gpus, manager)

    def node_ids(self) -> dict[str, str]:
        """Ray's node id -> this cluster's node name, for the nodes alive now (asked through the dashboard)."""
        try:
            with urllib.request.urlopen(f"{self.dashboard}/nodes?view=summary", timeout=10) as r:
                data = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return {}
        by_port = {n.node_manager_port: n.name for n in self.nodes}
        out = {}
        for entry in data.get("data", {}).get("summary", []):
            raylet = entry.get("raylet", {})
            name = by_port.get(raylet.get("nodeManagerPort"))
            if name is not None and raylet.get("state") == "ALIVE":
                out[raylet.get("nodeId")] = name
        return out

    def _wait_head(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            head = self.nodes[0]
            if not head.alive:
                raise RuntimeError(f"the Ray head exited with {head.proc.returncode}: {head.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not answer within {START_TIMEOUT_S} s")

    def alive_nodes(self) -> int:
        """Nodes the cluster counts as alive (asked through the dashboard's state API, without joining Ray)."""
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=100", timeout=10) as r:
                data = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return 0
        nodes = data.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for n in nodes if n.get("state") == "ALIVE")

    def wait_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.alive_nodes() >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{count} Ray nodes did not come up within {timeout_s:.0f} s")

    def kill(self, node: Node) -> None:
        """SIGKILL a node and every process it started: a lost machine."""
        kill_group(node.proc)
        node.proc.wait(timeout=30)

    def leftovers(self) -> dict[int, str]:
        """Live processes of this cluster after a stop (in a node's session, or naming its temp dir)."""
        return processes_of({n.proc.pid for n in self.nodes}, (str(self.root),))

    def stop(self) -> dict[int, str]:
        """Stop every node (workers first), kill what survived; returns what had to be killed."""
        for node in reversed(self.nodes):
            stop_group(node.proc)
        left = self.leftovers()
        kill_processes(left)
        if os.environ.get("REEMBED_KEEP_CLUSTER_DIR"):  # the nodes' logs and Ray's session dirs, for a post-mortem
            print(f"cluster dir kept: {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--head-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cpus-per-worker", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=int, default=0)
    args = parser.parse_args()
    cluster = LocalCluster(head_cpus=args.head_cpus).start(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    print(f"RAY_ADDRESS={cluster.dashboard}  (ray job submit --address {cluster.dashboard} ...; "
          f"ray.init(address='{cluster.address}'))\nCtrl-C stops this cluster, and only it.", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and cluster.nodes[0].alive:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    left = cluster.stop()
    print("stopped" + (f"; killed {len(left)} leftover processes" if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
