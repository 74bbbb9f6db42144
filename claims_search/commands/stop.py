"""Stop a job on a Ray cluster (SIGTERM to its driver, then SIGKILL after a grace period).

    claims-search stop raysubmit_XXXX --address http://HEAD:8265
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search stop`."""
    from claims_search.commands.submit import add_address

    parser.add_argument("job_id", metavar="JOB", help="the job id `claims-search submit` printed")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example's layout
    add_address(parser)


def run(args: argparse.Namespace) -> int:
    """Ask the cluster to stop the job; say whether it was running."""
    from claims_search.cluster import jobs
    from claims_search.commands.submit import require_address

    client = jobs.connect(require_address(args))
    if jobs.stop(client, args.job_id):
        print(f"job {args.job_id}: stopping")
    else:
        print(f"job {args.job_id}: was not running")
    return 0
