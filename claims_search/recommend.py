"""The recommended size per task: the cheapest trial statistically indistinguishable from the best.

Pure (no Ray, no MLflow). The best is the complete Transformer trial with the highest metric;
a trial is indistinguishable from it when its metric is at least

- the best trial's bootstrap lower bound (``tolerance=None``, the default), or
- ``best.metric - tolerance`` when the user sets a tolerance.

The baseline is shown beside the recommendation (and flagged when it too is indistinguishable
from the best) but never recommended: it has no size to recommend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from claims_search.frontier import TrialRecord, _order, pareto_front, saturation_point


@dataclass(frozen=True)
class Recommendation:
    """Per-task outcome of a search. ``saved``/``saved_factor`` compare ``record`` against the
    most expensive Transformer on the frontier (``largest``): ``largest.cost - record.cost`` and
    ``largest.cost / record.cost``."""

    task: str
    record: TrialRecord
    best: TrialRecord
    threshold: float
    tolerance: float | None
    largest: TrialRecord
    saved: float
    saved_factor: float
    saturation: TrialRecord | None
    front: tuple[TrialRecord, ...]
    baseline: TrialRecord | None
    baseline_indistinguishable: bool
    n_complete: int

    def to_dict(self) -> dict[str, Any]:
        """Aggregate summary for `recommend --json` and the tracking artifacts."""

        def brief(r: TrialRecord | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {
                "trial_id": r.trial_id,
                "model": r.model,
                "n_params": r.n_params,
                "metric": r.metric,
                "metric_low": r.metric_low,
                "metric_high": r.metric_high,
                "cost": r.cost,
            }

        return {
            "task": self.task,
            "recommended": brief(self.record),
            "best": brief(self.best),
            "threshold": self.threshold,
            "tolerance": self.tolerance,
            "largest_on_frontier": brief(self.largest),
            "compute_saved": self.saved,
            "compute_saved_factor": self.saved_factor,
            "saturation": brief(self.saturation),
            "frontier_trial_ids": [r.trial_id for r in self.front],
            "baseline": brief(self.baseline),
            "baseline_indistinguishable": self.baseline_indistinguishable,
            "n_complete": self.n_complete,
        }


def recommend(
    records: Iterable[TrialRecord],
    task: str,
    tolerance: float | None = None,
    min_gain_per_doubling: float = 0.005,
) -> Recommendation | None:
    """Recommend a size for ``task`` from all trial records; None if no Transformer completed.

    ``tolerance=None`` uses the best trial's bootstrap interval (its ``metric_low``; if it has
    none, only ties with the best qualify). The recommendation is the cheapest qualifying
    trial; it is on the Pareto frontier unless a cheaper baseline shadows it.
    """
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    records = [r for r in records if r.task == task]
    models = [r for r in records if r.usable and not r.is_baseline]
    if not models:
        return None
    # Best: highest metric; among ties the cheapest (deterministic via _order).
    best = min(models, key=lambda r: (-r.metric, *_order(r)))
    if tolerance is None:
        threshold = best.metric_low if best.metric_low is not None else best.metric
    else:
        threshold = best.metric - tolerance
    chosen = min((r for r in models if r.metric >= threshold), key=_order)
    front = pareto_front(records, task)
    model_front = [r for r in front if not r.is_baseline] or [best]
    largest = max(model_front, key=lambda r: (r.cost, str(r.trial_id)))
    saved = largest.cost - chosen.cost
    factor = largest.cost / chosen.cost if chosen.cost > 0 else float("inf")
    baselines = [r for r in records if r.usable and r.is_baseline]
    baseline = max(baselines, key=lambda r: (r.metric, str(r.trial_id))) if baselines else None
    return Recommendation(
        task=task,
        record=chosen,
        best=best,
        threshold=threshold,
        tolerance=tolerance,
        largest=largest,
        saved=saved,
        saved_factor=factor,
        saturation=saturation_point(model_front, min_gain_per_doubling),
        front=tuple(front),
        baseline=baseline,
        baseline_indistinguishable=baseline is not None and baseline.metric >= threshold,
        n_complete=sum(r.status == "complete" for r in records if not r.is_baseline),
    )
