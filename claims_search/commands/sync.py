"""Deliver a search's tracked results to MLflow after the tracking server was away.

A search writes every result to its outbox first (under --storage, or mirrored there), so a
tracking server that was down loses nothing: this command pushes what is still pending. An
entry the server refused several times is set aside with its reason (it never blocks the
others); --retry-set-aside tries those again.

Examples:
  claims-search sync --name ckd-2026-11 --storage s3://bucket/runs --tracking-uri http://mlflow:5000
  claims-search sync --name demo --retry-set-aside
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search sync`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--name", required=True, help="the search's name (its MLflow experiment)")
    parser.add_argument("--storage", default=os.environ.get("CLAIMS_SEARCH_STORAGE_PATH", "runs"),
                        help="the search's --storage (default: $CLAIMS_SEARCH_STORAGE_PATH, else ./runs)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--retry-set-aside", action="store_true", help="try the set-aside entries again too")


def run(args: argparse.Namespace) -> int:
    """Push the pending entries; exit 1 if some are still pending, 0 when all were delivered."""
    import json

    from claims_search.errors import ClaimsSearchError
    from claims_search.search.state import SearchState
    from claims_search.tracking.tracker import Tracker, default_tracking_uri

    state = SearchState.for_search(args.storage, args.name)
    state.restore()
    ident = state.local / "search.json"
    if not ident.exists():
        raise ClaimsSearchError(f"{state.mirror or state.local}: no search named {args.name!r} there")
    was = json.loads(ident.read_text())
    tracker = Tracker(args.tracking_uri or default_tracking_uri(), args.name, state.outbox,
                      metric=was.get("metric", "auprc"), cost=was.get("cost", "device_seconds"))
    if args.retry_set_aside:
        print(f"{tracker.retry_set_aside()} set-aside result(s) will be tried again")
    before = len(tracker.pending())
    left = tracker.sync()
    state.push()
    aside = tracker.set_aside()
    print(f"{before - left} result(s) delivered, {left} still pending, {len(aside)} set aside"
          + (f" (first: {aside[0]['key']}: {aside[0]['reason']})" if aside else ""))
    return 1 if left else 0
