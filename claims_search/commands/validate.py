"""Check a MEDS dataset against the `meds` schemas and the standard's rules.

Checks each shard's columns and types, that all shards have the same columns, null subject
ids, that every subject's rows sit in one file, contiguous and sorted by time (static rows
first), the split names, and that codes are described in metadata/codes.parquet. Shards with
different columns and undescribed codes are warnings (errors with --strict). Optionally also
loads task files and checks each has positive and negative labels, naming a predicate that
matches no code of the data. Prints aggregates only; exits 2 with one line naming the file and
column on bad input.

Example: claims-search validate meds/ --task my_task.yaml
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search validate`."""
    from claims_search.commands.formatting import use_help_formatter

    use_help_formatter(parser)
    parser.add_argument("meds", metavar="MEDS_DIR",
                        help="the MEDS dataset folder (the one holding data/ and metadata/)")
    parser.add_argument("--strict", action="store_true",
                        help="shards with different columns, and codes missing from "
                             "metadata/codes.parquet, are errors instead of warnings")
    parser.add_argument("--task", action="append", default=[], metavar="FILE_OR_NAME",
                        help="also extract this ACES task's labels (a .yaml file or a built-in "
                             "name) and check both classes occur; repeatable")


def warn(command: str):
    """A ``warn(line)`` printing ``claims-search COMMAND: warning: line`` to stderr."""
    return lambda line: print(f"claims-search {command}: warning: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Validate; print a summary."""
    from claims_search.data import labels, meds

    tasks = [labels.load_task(t) for t in args.task]
    report = meds.validate(args.meds, strict=args.strict, warn=warn("validate"))
    print(report.summary())
    ds = meds.open_dataset(args.meds)
    for t in tasks:
        lab = labels.extract(t, ds.shards)
        print(f"task {t.name}: {len(lab):,} samples, {int(lab['boolean_value'].sum()):,} positive")
    print("valid")
    return 0
