"""Print a job's log; with --follow, keep printing until the job ends.

    claims-search logs raysubmit_XXXX --address http://HEAD:8265 --follow
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search logs`."""
    from claims_search.commands.submit import add_address

    parser.add_argument("job_id", metavar="JOB", help="the job id `claims-search submit` printed")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example's layout
    add_address(parser)
    parser.add_argument("--follow", "-f", action="store_true", help="stream the log until the job ends")


def run(args: argparse.Namespace) -> int:
    """Print (or follow) the log; exit 1 if the followed job did not succeed."""
    import sys

    from claims_search.cluster import jobs
    from claims_search.commands.submit import require_address

    client = jobs.connect(require_address(args))
    if not args.follow:
        sys.stdout.write(jobs.logs(client, args.job_id))
        return 0
    jobs.logs(client, args.job_id)  # a one-line error for an unknown job before streaming
    jobs.follow_logs(client, args.job_id)
    status = jobs.job_status(client, args.job_id)
    print(f"job {args.job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1
