"""Submit a claims-search command (usually a search) to a Ray cluster as a job.

    claims-search submit --address http://HEAD:8265 --tracking-uri http://HEAD:5000 --wait \
        -- search --space search_spaces/default.yaml --data s3://bucket/prepared

The job's runtime env carries the project (the working dir, default the current directory,
uploaded without .venv, data and run outputs; a remote .zip URI; or --no-upload to use the
claims-search installed in the cluster's image), MLFLOW_TRACKING_URI, the data location
(CLAIMS_SEARCH_DATA) and the shared storage path (--storage-path: the search's --storage, and
CLAIMS_SEARCH_STORAGE_PATH). A search without
--name gets one (<space>-<UTC time>): it is the MLflow experiment. Prints the job id and the
experiment.

Before submitting: the head must answer within a few seconds, an http(s) tracking server must
accept our Host header, and one trial of the space must fit the cluster: its nodes now, or,
when the cluster autoscales, the node types it can add (checked by the search on the head, or
here with the search's --cluster-config). --no-resource-check skips both checks.
With --wait, a failed job (its runtime env included) is reported with the tail of its log.
The address defaults to $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS; the auth token comes from
$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_address(parser: argparse.ArgumentParser) -> None:
    """The ``--address`` option shared by submit, jobs, logs and stop."""
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="the head's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)",
    )


def require_address(args: argparse.Namespace) -> str:
    """``args.address`` or a one-line error."""
    from claims_search.errors import ClaimsSearchError

    if not args.address:
        raise ClaimsSearchError("--address: give the head's dashboard address, e.g. http://127.0.0.1:8265")
    check_address(args.address)
    return args.address


def check_address(address: str) -> None:
    """A one-line error for an address that cannot be a dashboard's ``http(s)://HOST:PORT``
    (a typo would otherwise read as "not reachable", which sends people to the network)."""
    from urllib.parse import urlsplit

    from claims_search.errors import ClaimsSearchError

    url = address if "://" in address else f"http://{address}"
    problem = None
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as e:
        problem = str(e)
    else:
        if parts.scheme not in ("http", "https"):
            problem = f"scheme {parts.scheme!r} is not http or https"
        elif any(c.isspace() for c in address):
            problem = "it contains spaces"
        elif not parts.hostname:
            problem = "no host name"
        elif port is None and "://" not in address:
            problem = "no port"
    if problem:
        raise ClaimsSearchError(f"--address {address!r}: not a dashboard address ({problem}); "
                                "expected http://HOST:PORT, e.g. http://127.0.0.1:8265")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search submit`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example's layout
    add_address(parser)
    parser.add_argument("--wait", action="store_true", help="wait for the job to end; fail if it fails")
    parser.add_argument("--follow", action="store_true", help="stream the job's log until it ends (implies --wait)")
    parser.add_argument("--timeout", type=float, help="with --wait: give up waiting after this many seconds")
    parser.add_argument("--working-dir", default=".", help="project folder to upload, or a remote .zip URI (default: .)")
    parser.add_argument("--no-upload", action="store_true", help="upload nothing: use the claims-search installed on the cluster")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow tracking URI as the cluster sees it (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--storage-path", help="shared storage for trials, checkpoints and results (s3://, gs://, "
                        "an NFS path mounted on every node); passed to the search as --storage")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable for the job (repeatable)")
    parser.add_argument("--pip", action="append", default=[], metavar="REQ", help="pip requirement installed for the job (repeatable)")
    parser.add_argument("--no-tracking-check", action="store_true", help="don't probe the tracking server from here")
    parser.add_argument("--no-resource-check", action="store_true",
                        help="don't check the space against the cluster, here or in the search (passed on to it)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the command, e.g. -- search --space smoke --data s3://bucket/prepared")


def _env_vars(args: argparse.Namespace, command: list[str]) -> dict[str, str]:
    from claims_search.commands.entrypoint import flag_value
    from claims_search import storage
    from claims_search.errors import ClaimsSearchError

    env: dict[str, str] = {}
    for kv in args.env:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ClaimsSearchError(f"--env {kv!r}: expected KEY=VALUE")
        env[key] = value
    tracking = args.tracking_uri or flag_value(command, "--tracking-uri")
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    if args.storage_path:
        # A URI as given; a path as given too: it names the shared mount on the cluster's nodes.
        env["CLAIMS_SEARCH_STORAGE_PATH"] = args.storage_path
    data = flag_value(command, "--data")
    if data:
        env["CLAIMS_SEARCH_DATA"] = data
        if storage.is_local(data) and not os.path.isabs(data):
            print(f"claims-search submit: warning: --data {data} is relative: on the cluster it is "
                  "read inside the uploaded working dir, which never contains data/; use an "
                  "absolute path on shared storage or an s3://-style URI", file=sys.stderr)
    return env


def run(args: argparse.Namespace) -> int:
    """Pre-flight checks, submit, print the job id and experiment; optionally wait."""
    from claims_search.cluster import jobs
    from claims_search.commands.entrypoint import build_entrypoint, flag_value

    address = require_address(args)
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    entrypoint, experiment = build_entrypoint(command, args.tracking_uri, args.storage_path)
    client = jobs.connect(address)  # an unreachable head first: the warnings below can wait
    env = _env_vars(args, command)

    tracking = env.get("MLFLOW_TRACKING_URI")
    if command[:1] == ["search"] and not tracking:
        print("claims-search submit: warning: no --tracking-uri (and $MLFLOW_TRACKING_URI unset): the "
              "search tracks into sqlite:///mlflow.db inside the job's temporary working dir, which "
              "Ray deletes; use the cluster's MLflow server (cluster/README.md)", file=sys.stderr)
    if tracking and not args.no_tracking_check:
        jobs.probe_tracking(tracking)
    space = flag_value(command, "--space") if command[:1] == ["search"] else None
    if space and not args.no_resource_check:
        # On the cluster the path is read inside the uploaded working dir; here, the same file.
        local = space
        if not (os.path.isabs(space) or args.no_upload or "://" in args.working_dir):
            local = os.path.join(args.working_dir, space)
        if not os.path.isfile(local):  # a folder never counts (named.resolve)
            local = space  # a shipped space's name, e.g. "smoke"
        if jobs.autoscales(address):  # nodes come on demand: the search checks the node types on the head
            from claims_search.cluster import capacity
            from claims_search.search.space import load_space

            config = flag_value(command, "--cluster-config")
            if config and os.path.isfile(config):
                capacity.check_space(load_space(local), capacity.load_launcher_config(config))
        else:
            check_space_fits(local, jobs.cluster_resources(address))
    if args.no_resource_check and command[:1] == ["search"] and "--no-resource-check" not in command:
        command = [*command, "--no-resource-check"]  # the search on the cluster skips it too
        entrypoint, experiment = build_entrypoint(command, args.tracking_uri, args.storage_path)

    working_dir = None if args.no_upload else args.working_dir
    sub = jobs.submit(client, entrypoint, jobs.runtime_env(working_dir, env, pip=args.pip), experiment)
    print(f"job_id: {sub.job_id}")
    print(f"experiment: {sub.experiment or '-'}")
    print(f"entrypoint: {sub.entrypoint}")
    if not (args.wait or args.follow):
        print(f"follow it: claims-search logs {sub.job_id} --address {address} --follow")
        return 0
    try:
        jobs.wait(client, sub.job_id, follow=args.follow, timeout=args.timeout)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {sub.job_id} keeps running "
              f"(claims-search stop {sub.job_id} --address {address})", file=sys.stderr)
        return 130
    print(f"job {sub.job_id} succeeded")
    return 0


def check_space_fits(space_path: str | Path, resources: dict[str, float]) -> int:
    """Raise if one trial of the space can't run on ``resources``; return usable concurrency."""
    from claims_search.search import space

    return space.validate_against_cluster(space.load_space(space_path), resources)
