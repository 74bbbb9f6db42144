"""Check a MEDS dataset against the `meds` schemas and the standard's rules.

Checks each shard's columns and types, null subject ids, that every subject's rows sit in one
file, contiguous and sorted by time (static rows first), the split names, and that codes are
described in metadata/codes.parquet (a warning counting them; an error with --strict).
Optionally also loads task files and checks each has positive and negative labels.
Prints aggregates only; exits 2 with one line naming the file and column on bad input.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search validate`."""
    parser.add_argument("meds", metavar="MEDS_DIR", help="the MEDS dataset folder")
    parser.add_argument("--strict", action="store_true",
                        help="codes missing from metadata/codes.parquet are an error")
    parser.add_argument("--task", action="append", default=[], metavar="FILE_OR_NAME",
                        help="also extract this ACES task's labels and check both classes occur")


def run(args: argparse.Namespace) -> int:
    """Validate; print a summary."""
    from claims_search import labels, meds

    tasks = [labels.load_task(t) for t in args.task]
    report = meds.validate(args.meds, strict=args.strict)
    print(report.summary())
    ds = meds.open_dataset(args.meds)
    for t in tasks:
        lab = labels.extract(t, ds.shards)
        print(f"task {t.name}: {len(lab):,} samples, {int(lab['boolean_value'].sum()):,} positive")
    print("valid")
    return 0
