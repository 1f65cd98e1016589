"""What the Ray cluster can hold: GPU shares that add up, how many trials run at once
(``max_concurrent: auto``), the device a trial trains on, and whether every node sees the storage."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_tune.errors import UserError
from fer_tune.search.space import AUTO

GRANULARITY = 10_000  # Ray places resources in units of 0.0001
SEES_TIMEOUT_S = 120.0  # how long the storage check waits for the nodes' answers
AUTO_SHARE_OF_TRIALS = 0.25  # max_concurrent auto: at most this fraction of num_trials at once (TPE learns between)


def share_for(trials_per_gpu: int) -> float:
    """The GPU share of one of ``trials_per_gpu`` trials on a GPU, rounded down to Ray's 0.0001 so that
    that many fit exactly (1/6 -> 0.1666: six of them take 0.9996)."""
    return math.floor(GRANULARITY / trials_per_gpu) / GRANULARITY


def _units(value: float) -> int:
    return int(round(value * GRANULARITY))


def placeable(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many trials asking ``cpus`` CPUs and ``gpus`` of a GPU the ``nodes`` (each node's total
    resources, as ``ray.nodes()`` gives them) can run at once."""
    total = 0
    for node in nodes:
        fits = _units(node.get("CPU", 0)) // max(_units(cpus), 1)
        if gpus > 0:
            fits = min(fits, _units(node.get("GPU", 0)) // _units(gpus))
        total += fits
    return total


def cpus_one_node_holds(nodes: list[dict[str, float]], cpus: float, gpus: float) -> float:
    """The CPUs one trial may ask: ``cpus``, or the most that a node able to hold its GPU share has, if
    that is fewer (Ray places a trial on one node; a request no node fits stays PENDING forever)."""
    hosts = [node for node in nodes if gpus <= 0 or _units(node.get("GPU", 0)) >= _units(gpus)]
    most = max((node.get("CPU", 0) for node in hosts), default=0)
    return min(cpus, max(most, 1))


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's live nodes (``ray.nodes()`` entries)."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


@dataclass
class Concurrency:
    """How many trials run at once: a number, or (``auto``) as many as the live nodes place, at most
    :data:`AUTO_SHARE_OF_TRIALS` of ``num_trials``, and at least one."""

    setting: int | str
    num_trials: int
    cpus: float
    gpus: float

    def limit(self, nodes: list[dict[str, float]]) -> int:
        if self.setting != AUTO:
            return int(self.setting)
        cap = max(1, math.floor(self.num_trials * AUTO_SHARE_OF_TRIALS))
        return max(1, min(placeable(nodes, self.cpus, self.gpus), cap))

    def why(self, nodes: list[dict[str, float]]) -> str:
        """The search's first line about it: how many at once, and why."""
        limit = self.limit(nodes)
        if self.setting != AUTO:
            return f"{limit} trial(s) at once (max_concurrent {self.setting})"
        places = placeable(nodes, self.cpus, self.gpus)
        gpu = f" and {self.gpus:g} GPU" if self.gpus else ""
        return (
            f"{limit} trial(s) at once (max_concurrent auto: {len(nodes)} node(s) place {places} trial(s) of "
            f"{self.cpus:g} CPU{gpu}; at most {AUTO_SHARE_OF_TRIALS:.0%} of {self.num_trials} trials, so that TPE "
            "learns from finished ones)"
        )


def node_resources() -> list[dict[str, float]]:
    """Each live node's total resources."""
    return [node.get("Resources", {}) for node in alive_nodes()]


def trial_device(gpu_ids: list[Any]) -> str:
    """The device a trial trains on: ``cuda`` only when Ray gave it a GPU (a share of 0 leaves
    ``CUDA_VISIBLE_DEVICES`` alone, so such a trial would land on GPU 0 unaccounted for)."""
    return "cuda" if gpu_ids else "cpu"


def this_trial_device() -> str:
    """:func:`trial_device` of the running trial."""
    import ray

    return trial_device(ray.get_gpu_ids())


def check_nodes_see(folder: Path, storage_option: str = "--storage") -> None:
    """On a cluster of more than one node, make sure every node sees the local folder ``folder`` where
    Ray Tune keeps the trials (Ray does not copy a worker node's files to the head node); else one
    :class:`UserError` naming the node and the ways out. A node that left the cluster since Ray last
    listed it (Ray notices a dead node only after its health checks fail) is not asked."""
    import ray
    from ray.exceptions import NodeDiedError, TaskUnschedulableError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".fer-tune-sees-{uuid.uuid4().hex}"
    marker.write_text("written by fer-tune's driver: can every node of the cluster read this file?\n")
    sees = ray.remote(num_cpus=0)(lambda path: Path(path).is_file())
    deadline = time.monotonic() + SEES_TIMEOUT_S
    blind = []
    try:
        asked = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(marker)
            )
            for n in nodes
        ]
        for node, answer in zip(nodes, asked):
            try:
                if not ray.get(answer, timeout=max(1.0, deadline - time.monotonic())):
                    blind.append(node)
            except (TaskUnschedulableError, NodeDiedError):
                continue  # gone from the cluster: no trial will run there
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(
            f"{folder}: {len(blind)} of the cluster's {len(nodes)} nodes (e.g. {blind[0]['NodeManagerAddress']}) "
            f"cannot see this folder, where Ray Tune would keep the trials; give {storage_option} a folder mounted "
            "at the same path on every node (NFS), or a URI such as s3://bucket/fer-tune"
        )
