"""What a trial reports to the searcher: multi-objective directions or one scalarised number.

``multi`` (the default): maximise each task's primary metric and minimise the trial's total
cost (pretraining once + fine-tuning on every task: what the trial really spent). Reported as
``"<task>/<metric>"`` keys and ``"cost"``; Optuna keeps the whole Pareto set.

``scalar``: one number, the mean over tasks of ``metric − λ·log2(cost / reference_cost)``,
where ``cost`` is that task's own cost (pretraining charged in full). λ is the metric a user
would give up for half the compute: λ = 0.01 trades one point of AUPRC per doubling of cost.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from claims_search.search.space import Space

# The space's cost name -> the field of cost.Cost it reads.
COST_FIELDS = {"device_seconds": "device_s", "flops": "flops", "wall_seconds": "wall_s"}
SCALAR_KEY = "objective"
COST_KEY = "cost"


def metric_key(task: str, metric: str) -> str:
    """The name a per-task metric is reported under, e.g. ``ckd_incidence/auprc``."""
    return f"{task}/{metric}"


def scalarise(metric: float, cost: float, lam: float, reference_cost: float) -> float:
    """``metric − λ·log2(cost / reference_cost)``: above the metric when cheaper than the
    reference, below it when dearer."""
    return metric - lam * math.log2(max(cost, 1e-12) / reference_cost)


def directions(space: "Space") -> tuple[list[str], list[str]]:
    """``(metric names, modes)`` for ``OptunaSearch(metric=..., mode=...)``."""
    if space.objective.kind == "scalar":
        return [SCALAR_KEY], ["max"]
    return [metric_key(t, space.metric) for t in space.task_names] + [COST_KEY], [
        "max" for _ in space.task_names
    ] + ["min"]


def objective_values(
    space: "Space", per_task: Mapping[str, tuple[float, float]], total_cost: float
) -> dict[str, float]:
    """The values a trial reports, from ``{task: (metric, task_cost)}`` and its total cost.

    Always includes every ``<task>/<metric>`` and ``cost``; adds ``objective`` in scalar mode.
    """
    out = {metric_key(t, space.metric): float(m) for t, (m, _) in per_task.items()}
    out[COST_KEY] = float(total_cost)
    if space.objective.kind == "scalar":
        o = space.objective
        out[SCALAR_KEY] = sum(
            scalarise(m, c, o.lambda_, o.reference_cost) for m, c in per_task.values()
        ) / max(len(per_task), 1)
    return out
