"""MEDS + task files -> labels and a tokenized cache that training reads fast.

Validates the MEDS dataset, extracts each task's labels with ACES (default: the built-in
tasks ckd_incidence and antihypertensive_start), fits a vocabulary on the train split
(codes seen at least --min-count times, checkup values as quantile tokens such as
HC//SBP//Q3) and writes per-subject token and day arrays, labels, the split and a manifest.
The manifest records a hash of the inputs and settings: running prepare again with the same
inputs does nothing; a changed input or setting rebuilds. Output is written atomically.
"""

from __future__ import annotations

import argparse
import os

from claims_search.labels import BUILTIN_TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search prepare`."""
    parser.add_argument("--meds", required=True, metavar="DIR", help="the MEDS dataset folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="the cache folder to write")
    parser.add_argument("--task", action="append", metavar="FILE_OR_NAME",
                        help=f"ACES task file or built-in name (repeatable; default: "
                             f"{' '.join(BUILTIN_TASKS)})")
    parser.add_argument("--max-len", type=int, default=512,
                        help="events kept per sample: the last N at or before the prediction time")
    parser.add_argument("--min-count", type=int, default=5,
                        help="train occurrences a token needs to enter the vocabulary")
    parser.add_argument("--n-bins", type=int, default=5, help="quantile tokens per numeric code")
    parser.add_argument("--strict", action="store_true",
                        help="codes missing from metadata/codes.parquet are an error")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes working on shards in parallel (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")


def run(args: argparse.Namespace) -> int:
    """Prepare the cache, or say it is up to date."""
    from pathlib import Path

    from claims_search import cache, labels
    from claims_search.errors import ClaimsSearchError

    if args.max_len < 1 or args.min_count < 1 or args.n_bins < 2:
        raise ClaimsSearchError("--max-len and --min-count must be >= 1, --n-bins >= 2")
    tasks = [labels.load_task(t) for t in (args.task or BUILTIN_TASKS)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ClaimsSearchError(f"--task: two tasks share a name: {', '.join(names)}")
    settings = cache.Settings(args.max_len, args.min_count, args.n_bins, args.strict)
    out = Path(args.out)
    digest = cache.inputs_hash(Path(args.meds), {t.name: t.text for t in tasks}, settings)
    if out.exists() and not out.is_dir():
        raise ClaimsSearchError(f"{out}: --out is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ClaimsSearchError(f"{out}: exists and is not a prepared cache; refusing to replace it")
    if not args.force and cache.is_up_to_date(out, digest):
        print(f"{out}: up to date (same inputs and settings), nothing to do")
        return 0
    manifest = cache.write_cache(args.meds, out, tasks, settings, workers=args.workers,
                                  progress=print)
    print(f"{out}: {manifest['n_subjects']:,} subjects, {manifest['n_events']:,} events, "
          f"vocabulary {manifest['vocab_size']:,}")
    for name, t in manifest["tasks"].items():
        oracle = t["oracle"]
        o = f", oracle AUROC {oracle['auroc']:.3f}" if oracle and oracle.get("auroc") else ""
        print(f"  {name}: " + ", ".join(
            f"{s} {v['n']:,} ({v['positives']:,} pos)" for s, v in t["splits"].items()) + o)
    return 0
