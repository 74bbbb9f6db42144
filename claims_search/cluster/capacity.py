"""What a cluster *can* provide, and whether a search space's trials fit it. Plain Python.

An autoscaling cluster (the shipped ``cluster/launcher.yaml`` and KubeRay configs) starts with
no training nodes: what is up now says nothing about what a trial may get. Its node types and
their maximum counts do. They come from the autoscaler's own config: the cluster config Ray's
GCS holds (autoscaler v2, KubeRay), else a cluster launcher YAML (``ray up`` leaves it on the
head as ``~/ray_bootstrap_config.yaml``; ``--cluster-config`` names another).

A trial is one driver bundle (``{"CPU": 0.01, **driver_resources}``) plus ``workers_per_trial``
worker bundles (``{"CPU": cpus_per_worker, "GPU": gpus_per_worker, **worker_resources}``), each
placed whole on one node. It fits when some node type holds a driver bundle and the node types'
maximum counts hold its workers at once; the concurrency is what they hold of whole trials,
never more than the space asks for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from claims_search.errors import ClaimsSearchError

# Where `ray up` writes the cluster's config on the head node (the autoscaler reads it there).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
DRIVER_CPU = 0.01  # search_tune gives each trial's driver this much (a driver needs ~no CPU)
UNBOUNDED = 10_000  # "no maximum" in a node group (KubeRay's -1)


@dataclass(frozen=True)
class NodeType:
    """One kind of node the cluster has or can add: what Ray may schedule on one, and how many."""

    name: str
    resources: dict[str, float]
    max_count: int

    def holds(self, bundle: dict[str, float]) -> int:
        """How many ``bundle``s fit on one node of this type."""
        counts = [math.floor(self.resources.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
        return min(counts) if counts else UNBOUNDED

    def describe(self) -> str:
        res = ", ".join(f"{k} {v:g}" for k, v in sorted(self.resources.items()) if v)
        return f"{self.name} ({res or 'no resources'}; at most {self.max_count})"


def from_launcher_config(config: dict[str, Any]) -> list[NodeType]:
    """The node types of a Ray cluster launcher config (``available_node_types``; the head
    counts once, workers up to their ``max_workers``, all workers up to the global one)."""
    types = config.get("available_node_types") or {}
    if not isinstance(types, dict) or not types:
        raise ClaimsSearchError("cluster config: no available_node_types")
    head = config.get("head_node_type")
    cap = int(config.get("max_workers", UNBOUNDED))
    out = []
    for name, spec in types.items():
        resources = {k: float(v) for k, v in ((spec or {}).get("resources") or {}).items()}
        count = 1 if name == head else min(int((spec or {}).get("max_workers", cap)), cap)
        out.append(NodeType(str(name), resources, count))
    return out


def from_gcs_config(cluster_config) -> list[NodeType]:
    """The node types of the cluster config an autoscaler reported to Ray's GCS
    (``ray.core.generated.autoscaler_pb2.ClusterConfig``); [] when it has none."""
    if cluster_config is None:
        return []
    return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()},
                     UNBOUNDED if g.max_count < 0 else int(g.max_count))
            for g in cluster_config.node_group_configs]


def load_launcher_config(path: str | os.PathLike) -> list[NodeType]:
    """Node types from a cluster launcher YAML file, with one line naming what is wrong."""
    import yaml

    p = Path(path).expanduser()
    try:
        config = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ClaimsSearchError(f"{p}: cannot read the cluster config ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ClaimsSearchError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return from_launcher_config(config if isinstance(config, dict) else {})
    except (ClaimsSearchError, TypeError, ValueError, AttributeError) as e:
        raise ClaimsSearchError(f"{p}: {str(e).removeprefix('cluster config: ')}") from None


def bundles(space) -> tuple[dict[str, float], dict[str, float], int]:
    """(driver bundle, worker bundle, workers per trial) of one trial of ``space``."""
    b = space.budget
    worker = {"CPU": b.cpus_per_worker, "GPU": b.gpus_per_worker, **b.worker_resources}
    driver = {"CPU": DRIVER_CPU, **b.driver_resources}
    return driver, {k: v for k, v in worker.items() if v > 0}, max(b.workers_per_trial, 1)


def _fmt(bundle: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(bundle.items()))


def check_space(space, types: Iterable[NodeType]) -> int:
    """Raise if a trial of ``space`` can never run on these node types (naming what it needs
    and what the types offer); else the concurrency to use: the space's, lowered only to what
    the types can hold at their maximum counts."""
    types = list(types)
    driver, worker, workers = bundles(space)
    where = space.path or "<space>"
    offer = "; ".join(t.describe() for t in types)
    if not any(t.holds(worker) and t.max_count > 0 for t in types):
        raise ClaimsSearchError(
            f"{where}: budget: a trial's worker needs {_fmt(worker)} on one node, and no node type of the "
            f"cluster provides it ({offer}); add a node type with at least {_fmt(worker)}")
    if not any(t.holds(driver) and t.max_count > 0 for t in types):
        raise ClaimsSearchError(f"{where}: budget.driver_resources: a trial's driver needs {_fmt(driver)} on one "
                                f"node, and no node type of the cluster provides it ({offer})")
    slots = sum(min(t.holds(worker), UNBOUNDED) * t.max_count for t in types)
    if slots < workers:
        raise ClaimsSearchError(
            f"{where}: budget.workers_per_trial: a trial needs {workers} workers of {_fmt(worker)} at once, and the "
            f"cluster's node types hold at most {slots} ({offer})")
    b = space.budget
    return max(1, min(b.concurrency, b.trials, slots // workers))


def waiting_for(space, types: Iterable[NodeType], pending: int) -> str | None:
    """The live line's note for ``pending`` trials that wait on the autoscaler: which node type
    they would be started on and how many nodes; None when nothing waits."""
    if pending <= 0:
        return None
    _, worker, workers = bundles(space)
    fitting = [t for t in types if t.holds(worker) and t.max_count > 0]
    if not fitting:
        return None
    t = min(fitting, key=lambda t: (sum(t.resources.values()), t.name))  # the smallest that fits
    nodes = math.ceil(pending * workers / max(t.holds(worker), 1))
    kind = "GPU node" if worker.get("GPU") else "node"
    return f"waiting for {nodes} {kind}(s) of {t.name}"
