"""List the jobs on a Ray cluster, newest first: id, status, start time, experiment, entrypoint.

    claims-search jobs --address http://HEAD:8265
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search jobs`."""
    from claims_search.commands.submit import add_address

    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example's layout
    add_address(parser)
    parser.add_argument("--limit", type=int, default=20, help="show at most this many jobs (default 20)")


def run(args: argparse.Namespace) -> int:
    """Print the cluster's jobs as a table."""
    import datetime as dt

    from rich.console import Console
    from rich.table import Table

    from claims_search.cluster import jobs
    from claims_search.commands.submit import require_address

    client = jobs.connect(require_address(args))
    table = Table("job id", "status", "started (UTC)", "experiment", "entrypoint")
    for job in jobs.list_jobs(client)[: args.limit]:
        started = (
            dt.datetime.fromtimestamp(job.start_time / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time else "-"
        )
        table.add_row(
            job.submission_id or job.job_id or "-", str(job.status.value), started,
            (job.metadata or {}).get("experiment", "-"), job.entrypoint[-80:],
        )
    Console(width=200).print(table)
    return 0
