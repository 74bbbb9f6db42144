"""Trial records and the per-task accuracy-vs-cost Pareto frontier. Pure: no Ray, no MLflow.

A point is better when its metric is higher and its cost lower. Only ``complete`` records take
part; a pruned or failed trial never enters a frontier, whatever it reported before it stopped.
The LightGBM baseline (``is_baseline=True``) takes part like any other record.

Hypervolume is measured in (metric, log10 cost) space against a fixed reference point
``(metric_ref, cost_ref)``: the area dominated by the front and bounded by the reference, in
"metric × decades of cost". Log cost because sizes grow geometrically (a 4x bigger model is one
step, not a hundred); a fixed reference, because the hypervolume of two searches (or of one
search after more trials) is only comparable against the same point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

STATUSES = ("complete", "pruned", "failed")


@dataclass(frozen=True)
class TrialRecord:
    """One trial's result on one task: what the frontier, recommendation and tracking read.

    ``params`` is the trial config (``{"model": {...}, "pretrain": {...}, "finetune": {...}}``,
    see docs/design.md) or, for the baseline, its own settings. ``metric`` is the space's primary
    metric on the tuning split (trials are compared on it, so the winner's figure is optimistic:
    confirm the chosen size with `finetune --held-out`), with its bootstrap interval
    ``metric_low``/``metric_high``; ``cost`` is what this task pays in the space's cost measure:
    ``pretrain_cost + finetune_cost`` (pretraining is charged in full to each task, since each
    task would pay it alone).
    ``checkpoint`` is the fine-tuned checkpoint folder (weights + config) the registry wraps;
    ``extras`` holds further aggregate numbers to track (e.g. the other metric, the shared total
    cost, tokens, peak memory); ``tags`` short strings (why a trial failed, the nodes of its
    driver and of its Ray Train ranks). Nothing patient-level goes in a record.
    """

    trial_id: str
    task: str
    status: str
    params: dict[str, Any]
    n_params: int | None
    metric: float | None
    metric_low: float | None
    metric_high: float | None
    cost: float | None
    pretrain_cost: float | None
    finetune_cost: float | None
    is_baseline: bool = False
    checkpoint: str | None = None
    extras: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # reason of a failure, nodes it ran on
    # Where this trial's per-sample tuning predictions live (a path or URI under --storage;
    # patient-level: never sent to MLflow). See ``predictions.py`` for the file's columns.
    predictions: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"TrialRecord {self.trial_id}: status {self.status!r} not in {STATUSES}")

    @property
    def usable(self) -> bool:
        """Complete and with a metric and a cost: may enter a frontier."""
        return (
            self.status == "complete"
            and self.metric is not None
            and self.cost is not None
            and math.isfinite(self.metric)
            and math.isfinite(self.cost)
        )

    @property
    def model(self) -> dict[str, Any]:
        """The ModelSize kwargs of this trial (empty for the baseline)."""
        return dict(self.params.get("model", {})) if isinstance(self.params, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the outbox and the frontier table use it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialRecord":
        """Inverse of :meth:`to_dict`; unknown keys are ignored so old outboxes still load."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _order(r: TrialRecord) -> tuple:
    # Deterministic: cheapest first, then best metric, then baseline last, then trial id.
    return (r.cost, -r.metric, r.is_baseline, str(r.trial_id))


def pareto_front(records: Iterable[TrialRecord], task: str) -> list[TrialRecord]:
    """The non-dominated complete records of ``task``, sorted by cost (ascending).

    A record is dominated when another is at least as good on both axes and strictly better on
    one. Exact duplicates (same metric and cost) are not dominated by each other: the one first
    in (cost, -metric, baseline last, trial_id) order is kept, so the result does not depend on
    input order.
    """
    pts = sorted((r for r in records if r.task == task and r.usable), key=_order)
    front: list[TrialRecord] = []
    best = -math.inf
    for r in pts:  # sweep by cost: a point is on the front iff it beats every cheaper point
        if r.metric > best:
            front.append(r)
            best = r.metric
    return front


def _log10_cost(cost: float) -> float:
    return math.log10(max(cost, 1e-12))  # a zero cost (cached baseline) stays finite


def hypervolume(front: Iterable[TrialRecord], reference: tuple[float, float]) -> float:
    """Area dominated by ``front`` in (metric, log10 cost) space, bounded by ``reference``.

    ``reference = (metric_ref, cost_ref)``: the worst metric and the largest cost that still
    count. Points with metric <= metric_ref or cost >= cost_ref add nothing. Units: metric ×
    decades of cost; e.g. one point at metric 0.8, cost 10 against (0.5, 1000) gives
    0.3 × 2 = 0.6.
    """
    m_ref, c_ref = reference
    x_ref = _log10_cost(c_ref)
    pts = sorted(
        ((_log10_cost(r.cost), r.metric) for r in front if r.usable),
        key=lambda p: (p[0], -p[1]),
    )
    area, best = 0.0, m_ref
    # Sweep from the cheapest point: each new best metric adds a strip out to the reference cost.
    for x, m in pts:
        if x >= x_ref or m <= best:
            continue
        area += (m - best) * (x_ref - x)
        best = m
    return area


def default_reference(records: Iterable[TrialRecord], task: str) -> tuple[float, float]:
    """A reference point when the space sets none: metric 0, cost 10x the largest cost seen.

    Fixed within one search (it depends on the costs, not on which points are on the front),
    but two searches are comparable only when they share an explicit reference.
    """
    costs = [r.cost for r in records if r.task == task and r.usable]
    return (0.0, 10.0 * max(costs) if costs else 1.0)


def gain_per_doubling(smaller: TrialRecord, larger: TrialRecord) -> float:
    """Metric gained per doubling of cost from ``smaller`` to ``larger`` (a point-estimate
    heuristic, no interval: what the unpaired fallback calls "better")."""
    doublings = math.log2(max(larger.cost, 1e-12) / max(smaller.cost, 1e-12))
    return (larger.metric - smaller.metric) / max(doublings, 1e-12)


def _sizes(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    # Complete Transformer trials, cheapest first: the sizes the words are about.
    return sorted((r for r in records if r.usable and not r.is_baseline), key=_order)


def saturation_point(
    records: Iterable[TrialRecord],
    min_gain_per_doubling: float = 0.005,
    as_good: Callable[[TrialRecord, TrialRecord], bool] | None = None,
) -> TrialRecord | None:
    """The cheapest trial that no more expensive trial beats: where more compute stops paying.

    ``as_good(x, y)`` says whether trial ``x`` is as good as the more expensive ``y`` under the
    rule in force (the recommendation passes its paired-bootstrap rule). By default it is the
    point-estimate heuristic: ``y`` gains less than ``min_gain_per_doubling`` of metric per
    doubling of cost (0.005 = half a point of AUPRC for twice the compute). Only complete
    Transformer trials count (the baseline has no size). A saturation point needs a more
    expensive trial to have been tried: the largest trial never saturates by default, so
    a task that kept improving has none (see :func:`still_improving`). None if there is none.
    """
    if as_good is None:
        def as_good(x: TrialRecord, y: TrialRecord) -> bool:
            return gain_per_doubling(x, y) < min_gain_per_doubling
    sizes = _sizes(records)
    for i, x in enumerate(sizes):
        larger = [y for y in sizes[i + 1:] if y.cost > x.cost]
        if larger and all(as_good(x, y) for y in larger):
            return x
    return None


def still_improving(
    records: Iterable[TrialRecord],
    min_gain_per_doubling: float = 0.005,
    better: Callable[[TrialRecord, TrialRecord], bool] | None = None,
) -> bool:
    """Whether the most expensive complete Transformer trial beats every cheaper one.

    ``better(y, x)`` says whether ``y`` is better than the cheaper ``x`` under the rule (by
    default: gains at least ``min_gain_per_doubling`` per doubling of cost). False when fewer
    than two sizes completed: one trial shows no trend.
    """
    if better is None:
        def better(y: TrialRecord, x: TrialRecord) -> bool:
            return gain_per_doubling(x, y) >= min_gain_per_doubling
    sizes = _sizes(records)
    if len(sizes) < 2:
        return False
    largest = sizes[-1]
    smaller = [x for x in sizes[:-1] if x.cost < largest.cost]
    return bool(smaller) and all(better(largest, x) for x in smaller)
