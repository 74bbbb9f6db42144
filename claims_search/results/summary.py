"""What a finished search says per task: the frontier, the recommendation, the hypervolume, the
plots and the frontier table, from trial records. Plain Python (no Ray, no MLflow):
``tracking.Tracker.publish`` only records what :func:`summarize` hands it.

Each trial's per-sample tuning predictions (``TrialRecord.predictions``, a path or URI under
``--storage``) are read here for the paired rule (see ``recommend.py``). They are
patient-level: they are read, never copied into artifacts or MLflow. A file that cannot be
read is a warning, and that trial is judged by the unpaired rule: a finished search never
fails at this step for a lost file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from claims_search.results.frontier import TrialRecord, default_reference, hypervolume, pareto_front
from claims_search.results.recommend import Recommendation, recommend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SummarySettings:
    """How to summarize: the space's ``metric`` and ``cost`` names and its ``recommend``
    settings (``margin``, ``tolerance``, ``reference``, ``min_gain_per_doubling``), plus the
    paired bootstrap's ``n_boot`` and ``seed``, and how many more seeds decide again to say how
    stable the answer is (``stability_seeds``: ``Recommendation.agreement``)."""

    metric: str = "auprc"
    cost: str = "device_seconds"
    margin: float | None = None
    tolerance: float | None = None
    reference: tuple[float, float] | None = None
    min_gain_per_doubling: float = 0.005
    n_boot: int = 1000
    seed: int = 0
    stability_seeds: int = 4
    prices: dict[str, float] | None = None  # per device kind (prices.py); None: the defaults

    @classmethod
    def from_space(cls, space: Any) -> "SummarySettings":
        """The settings of a loaded ``space.Space``."""
        rec = space.recommend
        ref = rec.reference
        return cls(
            metric=space.metric, cost=space.cost,
            margin=rec.margin, tolerance=rec.tolerance,
            reference=(ref.metric, ref.cost) if ref else None,
            min_gain_per_doubling=rec.min_gain_per_doubling,
            stability_seeds=rec.stability_seeds,
            prices=dict(space.prices) if getattr(space, "prices", None) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The search's published settings (tracked as experiment tags; `recommend` reads them)."""
        return {
            "tolerance": self.tolerance, "margin": self.margin,
            "min_gain_per_doubling": self.min_gain_per_doubling,
            "reference": list(self.reference) if self.reference else None,
            "stability_seeds": self.stability_seeds,
            "prices": self.prices,
        }


@dataclass(frozen=True)
class TaskSummary:
    """One task's outcome: its frontier, recommendation (None if no Transformer completed),
    hypervolume against ``reference``, where its artifacts were written (None if not), and how
    its trials ended."""

    task: str
    front: tuple[TrialRecord, ...]
    recommendation: Recommendation | None
    hypervolume: float
    reference: tuple[float, float]
    artifacts: Path | None
    n_trials: int
    n_failed: int
    n_pruned: int
    settings: SummarySettings

    def payload(self) -> dict[str, Any]:
        """The tracking outbox's ``summary`` entry (aggregates only)."""
        rec = self.recommendation
        diff = rec.difference if rec else None
        return {
            "task": self.task,
            "pareto": [r.trial_id for r in self.front],
            "recommended": rec.record.trial_id if rec else None,
            "checkpoint": rec.record.checkpoint if rec else None,
            "hypervolume": self.hypervolume,
            "reference": list(self.reference),
            "tolerance": self.settings.tolerance,
            "margin": self.settings.margin,
            "artifacts": str(self.artifacts) if self.artifacts else None,
            "n_trials": self.n_trials,
            "n_failed": self.n_failed,
            "n_pruned": self.n_pruned,
            "rule": rec.rule if rec else None,
            "choice": rec.choice if rec else None,
            "difference": diff.to_dict() if diff else None,
            "underpowered": rec.underpowered if rec else None,
            "underpowered_reason": rec.reason if rec else None,
            "recommendation": rec.to_dict() if rec else None,
        }


def load_predictions(record: TrialRecord):
    """``record``'s per-sample predictions (``predictions.read``), or None when it has none or
    the file cannot be read (a warning: the trial is then judged by the unpaired rule)."""
    if not record.predictions:
        return None
    from claims_search.runs import predictions

    try:
        return predictions.read(record.predictions)
    except Exception as e:  # noqa: BLE001 - a lost or corrupt file must not fail a finished search
        log.warning("%s/%s: %s; judged by the unpaired rule", record.task, record.trial_id, e)
        return None


def summarize(
    records: Iterable[TrialRecord],
    tasks: Iterable[str] | None = None,
    settings: SummarySettings = SummarySettings(),
    out_dir: str | Path | None = None,
    predictions: Callable[[TrialRecord], Any] | None = load_predictions,
) -> dict[str, TaskSummary]:
    """Summarize every task (default: those in ``records``), writing each task's plots and
    frontier table to ``out_dir/<task>/`` (atomically; nothing written when ``out_dir`` is
    None). ``predictions`` loads a record's predictions (None: unpaired rule throughout)."""
    records = list(records)
    tasks = sorted(set(tasks) if tasks is not None else {r.task for r in records})
    return {task: _summarize_task(records, task, settings, out_dir, predictions) for task in tasks}


def for_space(records: Iterable[TrialRecord], space: Any, out_dir: str | Path) -> dict[str, TaskSummary]:
    """:func:`summarize` with a loaded space's settings, for the tasks in ``records``."""
    return summarize(records, None, SummarySettings.from_space(space), out_dir)


def _summarize_task(records: list[TrialRecord], task: str, settings: SummarySettings,
                    out_dir: str | Path | None, predictions) -> TaskSummary:
    from claims_search.results.prices import on_one_axis

    # Costs measured on different kinds of device (GPU trials, the CPU baseline) are priced into
    # one unit before anything compares them: frontier, hypervolume, the rule, the plots.
    records, unit = on_one_axis(records, task, settings.cost, settings.prices)
    settings = replace(settings, cost=unit)
    rec = recommend(
        records, task, predictions, metric=settings.metric, margin=settings.margin,
        tolerance=settings.tolerance, min_gain_per_doubling=settings.min_gain_per_doubling,
        n_boot=settings.n_boot, seed=settings.seed, stability_seeds=settings.stability_seeds,
    )
    if rec is not None:
        rec = replace(rec, cost_unit=unit)
    front = pareto_front(records, task)
    ref = tuple(settings.reference) if settings.reference else default_reference(records, task)
    art = _write_artifacts(Path(out_dir) / task, records, task, front, rec, settings) if out_dir else None
    mine = [r for r in records if r.task == task]
    return TaskSummary(
        task=task, front=tuple(front), recommendation=rec, hypervolume=hypervolume(front, ref),
        reference=ref, artifacts=art, n_trials=len(mine),
        n_failed=sum(r.status == "failed" for r in mine), n_pruned=sum(r.status == "pruned" for r in mine),
        settings=settings,
    )


def _write_artifacts(art: Path, records, task, front, rec, settings: SummarySettings) -> Path:
    from claims_search.atomic import atomic_dir
    from claims_search.results.plots import write_plots

    with atomic_dir(art) as tmp:
        write_frontier_table(tmp, records, task, front, rec)
        write_plots(tmp, records, task, rec, metric=settings.metric, cost=settings.cost)
    return art


def write_frontier_table(
    out_dir: Path, records: Iterable[TrialRecord], task: str, front: list[TrialRecord], rec
) -> None:
    """``frontier.csv``/``frontier.json`` (every trial of the task, flagged) and
    ``recommendation.json`` in ``out_dir``. Aggregates only."""
    import csv

    pareto = {r.trial_id for r in front}
    chosen = rec.record.trial_id if rec else None
    rows = []
    for r in sorted((r for r in records if r.task == task), key=lambda r: (r.cost is None, r.cost or 0, str(r.trial_id))):
        m = r.model
        rows.append(
            {
                "trial_id": r.trial_id,
                "status": r.status,
                "baseline": r.is_baseline,
                "width": m.get("width"),
                "depth": m.get("depth"),
                "heads": m.get("heads"),
                "n_params": r.n_params,
                "metric": r.metric,
                "metric_low": r.metric_low,
                "metric_high": r.metric_high,
                "cost": r.cost,
                "pretrain_cost": r.pretrain_cost,
                "finetune_cost": r.finetune_cost,
                "device": r.tags.get("device"),  # the kind its cost was measured on
                "pareto": r.trial_id in pareto,
                "recommended": r.trial_id == chosen,
            }
        )
    with open(out_dir / "frontier.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        w.writeheader()
        w.writerows(rows)
    (out_dir / "frontier.json").write_text(json.dumps(rows, indent=2, default=str))
    (out_dir / "recommendation.json").write_text(json.dumps(rec.to_dict() if rec else None, indent=2, default=str))
