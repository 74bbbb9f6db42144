"""Print the recommended model size per task of a search, read back from MLflow.

The recommendation is the cheapest complete trial whose metric is statistically
indistinguishable from the best: at least the best trial's bootstrap lower bound, or within
--tolerance of the best (default: the tolerance the search published). Also printed: the
metric with its interval, the cost, and the compute saved against the most expensive model on
the frontier (absolute and as a factor), the saturation point and the baseline.

The tracking URI defaults to $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working
directory.

Example: claims-search recommend --experiment smoke --json
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search recommend`."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the search's name)")
    parser.add_argument("--json", action="store_true", help="print one JSON object {task: recommendation}")
    parser.add_argument("--tolerance", type=float, help="metric a cheaper model may lose (default: the bootstrap interval)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def describe(rec, metric: str, cost: str) -> list[str]:
    """Human-readable lines for one task's Recommendation."""
    from claims_search.commands.frontier import fmt_metric, fmt_size

    r = rec.record
    params = f", {r.n_params / 1e6:.2f}M params" if r.n_params else ""
    how = f"within {rec.tolerance:g} of the best" if rec.tolerance is not None else "within the best's 95% interval"
    lines = [
        f"{rec.task}: recommended {fmt_size(r)}{params} (trial {r.trial_id})",
        f"  {metric.upper()} {fmt_metric(r)}  cost {r.cost:.4g} {cost}  ({how}: >= {rec.threshold:.4f})",
        f"  best {fmt_size(rec.best)} {metric.upper()} {fmt_metric(rec.best)}",
    ]
    if rec.record.trial_id == rec.largest.trial_id:
        lines.append("  it is the largest model on the frontier: bigger did help on this task")
    else:
        lines.append(f"  saves {rec.saved:.4g} {cost} ({rec.saved_factor:.1f}x less) vs the largest frontier model "
                     f"{fmt_size(rec.largest)}")
    if rec.saturation is not None:
        lines.append(f"  saturates at {fmt_size(rec.saturation)} (cost {rec.saturation.cost:.4g})")
    if rec.baseline is not None:
        b, best = rec.baseline, rec.best
        if best.metric_high is not None and b.metric > best.metric_high:
            verdict = " - above the best Transformer's interval: more pretraining or data needed"
        elif rec.baseline_indistinguishable:
            verdict = " - indistinguishable from the best Transformer"
        else:
            verdict = ""
        lines.append(f"  baseline (LightGBM) {metric.upper()} {fmt_metric(b)}{verdict}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Print (or emit as JSON) the recommendation per task; 0 on success."""
    import json

    from claims_search.recommend import recommend
    from claims_search.tracking import default_tracking_uri, load_records, load_settings

    from claims_search.errors import ClaimsSearchError

    if args.tolerance is not None and args.tolerance < 0:
        raise ClaimsSearchError(f"--tolerance: must be >= 0, got {args.tolerance}")
    uri = args.tracking_uri or default_tracking_uri()
    records = load_records(uri, args.experiment)
    settings = load_settings(uri, args.experiment)
    tolerance = args.tolerance if args.tolerance is not None else settings.get("tolerance")
    out = {}
    for task in sorted({r.task for r in records}):
        out[task] = recommend(records, task, tolerance, settings.get("min_gain_per_doubling", 0.005))
    if args.json:
        print(json.dumps({t: (r.to_dict() if r else None) for t, r in out.items()}, indent=2, default=str))
        return 0
    for task, rec in out.items():
        if rec is None:
            print(f"{task}: no complete trials to recommend from")
        else:
            print("\n".join(describe(rec, settings["metric"], settings["cost"])))
    return 0
