"""One function run once on every alive Ray node (reembed doctor's per-node checks), each in a task pinned to its node.

The task reserves no resources, so a node whose CPUs and GPUs are all held still answers, and a head started with
no CPUs (ray-cluster.yaml, the KubeRay head) is asked too. It runs in a worker process of its own that exits after
it (max_calls=1): a check that touched CUDA must not leave a context holding GPU memory before a job starts. A node
that has not answered within the timeout is reported, not waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import exceptions as rex
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterNode:
    """An alive node as Ray lists it."""

    node_id: str
    address: str
    resources: dict[str, float] = field(default_factory=dict)

    def label(self) -> str:
        return f"{self.address} ({self.node_id[:8]})"


@dataclass(frozen=True)
class NodeAnswer:
    """What one node returned, or why it returned nothing (`error`: one line)."""

    node: ClusterNode
    value: Any = None
    error: str | None = None


def alive_nodes() -> list[ClusterNode]:
    nodes = [ClusterNode(node_id=n["NodeID"], address=n.get("NodeManagerAddress") or n.get("NodeManagerHostname", "?"),
                         resources={k: float(v) for k, v in (n.get("Resources") or {}).items()})
             for n in ray.nodes() if n.get("Alive")]
    return sorted(nodes, key=lambda n: (n.address, n.node_id))


def _on_node(fn: Callable[[ClusterNode, Any], Any], node: ClusterNode, arg: Any) -> Any:
    here = ray.get_runtime_context().get_node_id()
    if here != node.node_id:  # cannot happen with soft=False; a report from the wrong node would mislead
        raise RuntimeError(f"the check meant for node {node.node_id[:8]} ran on {here[:8]}")
    return fn(node, arg)


_remote_on_node = ray.remote(num_cpus=0, num_gpus=0, max_retries=0, max_calls=1)(_on_node)


def _why(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    if isinstance(err, rex.RayTaskError) and cause is not None:
        text = str(cause).strip().splitlines()
        return f"the check failed on the node: {type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")
    text = str(err).strip().splitlines()
    return f"the check did not finish on the node: {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def on_every_node(fn: Callable[[ClusterNode, Any], Any], arg: Any, nodes: Sequence[ClusterNode],
                  timeout_s: float) -> list[NodeAnswer]:
    """fn(node, arg) on each node, all at once; answers in the order of `nodes`."""
    refs = {
        _remote_on_node.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False),
            name=f"reembed-doctor-{node.node_id[:8]}",
        ).remote(fn, node, arg): node
        for node in nodes
    }
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    answers: dict[str, NodeAnswer] = {}
    for ref in ready:
        node = refs[ref]
        try:
            answers[node.node_id] = NodeAnswer(node, value=ray.get(ref))
        except rex.RayError as err:
            answers[node.node_id] = NodeAnswer(node, error=_why(err))
    for ref in pending:
        node = refs[ref]
        try:
            ray.cancel(ref, force=True)
        except Exception as exc:  # noqa: BLE001 - a task that cannot be cancelled is still reported
            log.debug("could not cancel the check on %s: %s", node.label(), exc)
        answers[node.node_id] = NodeAnswer(
            node, error=f"node did not answer within {timeout_s:g} s (busy, out of memory, or unable to start a "
                        "worker)")
    return [answers[n.node_id] for n in nodes]
