"""List a search's trials, read back from MLflow: size, status, metric, cost and, for a failed
or pruned trial, the one-line reason it stopped (never patient data).

Examples:
  claims-search trials --experiment smoke-20261202-0100
  claims-search trials --experiment smoke-20261202-0100 --status failed
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search trials`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the search's name)")
    parser.add_argument("--status", choices=["complete", "failed", "pruned"], help="only trials with this status")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def run(args: argparse.Namespace) -> int:
    """One row per trial (the Transformer trials once, whatever the task; the baseline per task)."""
    from rich.console import Console
    from rich.table import Table

    from claims_search.commands.formatting import fmt_metric, fmt_size
    from claims_search.tracking.tracker import default_tracking_uri, load_records, load_settings

    uri = args.tracking_uri or default_tracking_uri()
    records = load_records(uri, args.experiment)
    settings = load_settings(uri, args.experiment)
    table = Table(title=f"search {args.experiment}: trials", caption=f"{settings['metric'].upper()} on the tuning "
                  f"split; cost in {settings['cost']}")
    for col in ("trial", "task", "size", "status", settings["metric"].upper() + " [95% CI]", "cost", "reason"):
        table.add_column(col, overflow="fold")
    shown = 0
    for r in sorted(records, key=lambda r: (r.is_baseline, str(r.trial_id), r.task)):
        if args.status and r.status != args.status:
            continue
        # A pruned trial never reaches a frontier, but what it trained was paid for.
        paid = r.cost if r.cost is not None else r.pretrain_cost if r.status == "pruned" else None
        cost = "-" if paid is None else f"{paid:.4g}" + (" (pruned)" if r.status == "pruned" else "")
        table.add_row(str(r.trial_id), r.task, fmt_size(r), r.status, fmt_metric(r), cost, r.tags.get("reason", ""))
        shown += 1
    Console(width=200).print(table)
    print(f"{shown} row(s)")
    return 0
