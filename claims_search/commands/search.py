"""Search model width and depth per task on Ray Tune + Optuna, tracked in MLflow.

Each trial pretrains one architecture once, fine-tunes it on every task of the space and
reports per-task metrics (with bootstrap intervals) and costs; the LightGBM baseline runs once
per task. At the end each task's Pareto frontier of metric vs cost, the recommended size and
the plots go to MLflow (one experiment per search, a parent run per task, a child per trial).

Examples:
  claims-search search --space smoke --data prepared/
  claims-search search --space search_spaces/default.yaml --data s3://bucket/prepared \\
      --address auto --tracking-uri http://mlflow:5000 --name ckd-2026-11
  claims-search search --space smoke --data prepared/ --name demo --resume
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search search`."""
    parser.add_argument("--space", required=True, help="search space YAML, or a shipped one: smoke, default, paper")
    data = os.environ.get("CLAIMS_SEARCH_DATA")  # set by `claims-search submit`
    parser.add_argument("--data", required=data is None, default=data,
                        help="prepared cache (claims-search prepare --out; default: $CLAIMS_SEARCH_DATA)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--address", help="Ray address (default: a local Ray instance; 'auto' on a cluster node)")
    parser.add_argument("--name", help="search (= MLflow experiment) name (default: <space>-<date-time>)")
    parser.add_argument("--storage", default=os.environ.get("CLAIMS_SEARCH_STORAGE_PATH", "runs"),
                        help="where trials, checkpoints and the outbox live (a path every node can reach "
                        "on a multi-node cluster; default: $CLAIMS_SEARCH_STORAGE_PATH, else ./runs)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted search of this --name")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of the live table")
    parser.add_argument("--no-resource-check", action="store_true",
                        help="don't check the space against the cluster (its nodes now, or the node types its "
                        "autoscaler can add): trials wait for whatever they ask")
    parser.add_argument("--cluster-config", metavar="YAML",
                        help="a Ray cluster launcher config naming the node types the autoscaler can add (default: "
                        "what the cluster says of itself, or ~/ray_bootstrap_config.yaml on the head)")


def run(args: argparse.Namespace) -> int:
    """Run the search, then print the recommendation per task."""
    from claims_search.commands.recommend import describe
    from claims_search.errors import ClaimsSearchError
    from claims_search.search.driver import SearchRequest, run_search
    from claims_search.named import generated_name
    from claims_search.search.space import load_space
    from claims_search.tracking.tracker import default_tracking_uri

    space = load_space(args.space)
    if args.resume and not args.name:
        raise ClaimsSearchError("--resume needs the --name of the search to finish")
    name = args.name or generated_name(space.name)
    uri = args.tracking_uri or default_tracking_uri()
    if os.environ.get(SUPERVISED) != "1":
        return _supervise(args, str(space.path), name, uri)
    print(f"search {name}: space {space.path}, tracking {uri}")
    result = run_search(SearchRequest(space=str(space.path), data=args.data, tracking_uri=uri, name=name,
                                      storage=args.storage, address=args.address, resume=args.resume,
                                      progress=not args.no_progress, resource_check=not args.no_resource_check,
                                      cluster_config=args.cluster_config))
    from claims_search.tracking.tracker import experiment_url

    link = experiment_url(uri, name)
    print(f"\nsearch {name} finished: {result.summary()}." + (f" MLflow: {link}" if link else ""))
    if result.policy_line:  # the ladder policy says why it stopped
        print(result.policy_line)
    if result.time_line():
        print(result.time_line())
    print("Recommendation per task:")
    for task, rec in sorted(result.recommendations.items()):
        held_out = result.held_out.get(task) or None  # an interrupted or model-less search has none
        print("\n".join(describe(rec, space.metric, space.cost, held_out)) if rec else f"{task}: no complete trial")
    return 0


SUPERVISED = "CLAIMS_SEARCH_SUPERVISED"


def _supervise(args: argparse.Namespace, space: str, name: str, uri: str) -> int:
    """Run the search in a child process and report how it ended. When Ray goes away under a
    driver, Ray's core aborts the process (a raylet dump, no Python exception): only a parent can
    then say so in one line, with the command that finishes the search."""
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-m", "claims_search.cli", *(["-v"] if getattr(args, "verbose", False) else []),
            "search", "--space", space, "--data", args.data, "--name", name, "--tracking-uri", uri,
            "--storage", args.storage, *(["--address", args.address] if args.address else []),
            *(["--resume"] if args.resume else []), *(["--no-progress"] if args.no_progress else []),
            *(["--no-resource-check"] if args.no_resource_check else []),
            *(["--cluster-config", args.cluster_config] if args.cluster_config else [])]
    child = subprocess.Popen(argv, env={**os.environ, SUPERVISED: "1"})
    try:
        rc = child.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C and stops on its own
        rc = child.wait()
    if rc in (0, 2, 130):  # done, a one-line error of its own, interrupted
        return rc
    import shlex

    from claims_search.errors import ClaimsSearchError

    if rc < 0:
        how = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
    else:
        how = f"exit status {rc}"
    again = ["claims-search", "search", "--space", space, "--data", args.data, "--name", name,
             "--tracking-uri", uri, "--storage", args.storage, *(["--address", args.address] if args.address else []),
             "--resume"]
    raise ClaimsSearchError(f"search {name}: the search process ended abnormally ({how}: Ray or the machine "
                            f"went away mid-search?); finished trials are kept; finish it with: {shlex.join(again)}")
