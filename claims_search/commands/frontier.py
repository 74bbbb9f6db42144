"""Print each task's accuracy-vs-cost Pareto frontier of a search, read back from MLflow.

One table per task: the non-dominated complete trials (higher metric, lower cost), cheapest
first, with the size, parameter count, metric with its bootstrap interval and cost; the
baseline takes part like any trial. Also the frontier's hypervolume in (metric, log10 cost)
space against the search's reference point (default: metric 0, 10x the largest cost seen).

The tracking URI defaults to $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working
directory (the embedded default of `claims-search search`).

Example: claims-search frontier --experiment smoke --task ckd_incidence
"""

from __future__ import annotations

import argparse

from claims_search.commands.formatting import fmt_metric, fmt_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search frontier`."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the search's name)")
    parser.add_argument("--task", help="only this task (default: every task of the search)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def run(args: argparse.Namespace) -> int:
    """Print the frontier tables; 0 on success."""
    from rich.console import Console
    from rich.table import Table

    from claims_search.commands.formatting import trial_counts
    from claims_search.errors import ClaimsSearchError
    from claims_search.results.frontier import default_reference, hypervolume, pareto_front
    from claims_search.results.prices import on_one_axis
    from claims_search.tracking.tracker import default_tracking_uri, load_records, load_settings

    uri = args.tracking_uri or default_tracking_uri()
    records = load_records(uri, args.experiment)
    settings = load_settings(uri, args.experiment)
    tasks = sorted({r.task for r in records})
    if args.task:
        if args.task not in tasks:
            raise ClaimsSearchError(f"{uri}: experiment {args.experiment!r}: no trials for task {args.task!r} (has: {', '.join(tasks) or 'none'})")
        tasks = [args.task]
    console = Console()
    for task in tasks:
        # Costs of several device kinds are priced into one unit first (prices.py), as the search did.
        mine, unit = on_one_axis(records, task, settings["cost"], settings.get("prices"))
        front = pareto_front(mine, task)
        n = sum(r.task == task for r in records)
        hv = hypervolume(front, tuple(settings["reference"] or default_reference(mine, task)))
        table = Table(
            title=f"{task}: Pareto frontier ({len(front)} of {n} trials: {trial_counts(records, task)} "
                  f"Transformer trials; hypervolume {hv:.3f})",
            caption=f"cost in {unit}; cheapest first",
        )
        table.add_column("trial")
        table.add_column("size", no_wrap=True)
        table.add_column("params", justify="right")
        table.add_column(settings["metric"].upper() + " [95% CI]", no_wrap=True)
        table.add_column("cost", justify="right")
        for r in front:
            params = f"{r.n_params / 1e6:.2f}M" if r.n_params else "-"
            table.add_row(str(r.trial_id), fmt_size(r), params, fmt_metric(r), f"{r.cost:.4g}")
        console.print(table)
    # No Transformer completed on some task: the search gave no answer there.
    return 0 if tasks and all(any(r.task == t and r.usable and not r.is_baseline for r in records)
                              for t in tasks) else 1
