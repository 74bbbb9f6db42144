"""MEDS + task files -> labels and a tokenized cache that training reads fast.

Validates the MEDS dataset, extracts each task's labels with ACES, fits a vocabulary on the
train split (codes seen at least --min-count times, checkup values as quantile tokens such as
HC//SBP//Q3) and writes per-subject token and day arrays, labels, the split and a manifest.

Tasks: the built-in ones (ckd_incidence, antihypertensive_start) plus every --task and every
label table of --labels; with --only-tasks, those alone. --labels DIR takes precomputed labels
in the MEDS label schema (subject_id, prediction_time, boolean_value), as MEDS-DEV and ACES hand
them over: one task per DIR/NAME.parquet or DIR/NAME/ folder of Parquet files, named NAME,
checked with one line per problem (missing columns, wrong types, nulls, duplicate rows, subjects
the data lacks, prediction times after a subject's last event); the samples' split is their
subject's in metadata/subject_splits.parquet. A built-in task you did not name that has one class only
on your data (its codes are the synthetic world's) is left out with a warning; a task you named
is an error. A tuning or held-out split with fewer than about 30 positives gets a warning: its
intervals will be wide.

The manifest records a hash of the inputs and settings: running prepare again with the same
inputs does nothing; a changed input or setting rebuilds. Output is written atomically.

Examples:
  claims-search prepare --meds meds/ --out prepared/
  claims-search prepare --meds meds/ --out prepared/ --task my_task.yaml
  claims-search prepare --meds meds/ --out prepared/ --task my_task.yaml --only-tasks
  claims-search prepare --meds meds/ --out prepared/ --labels labels/ --only-tasks
"""

from __future__ import annotations

import argparse
import os

from claims_search.data.labels import BUILTIN_TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search prepare`."""
    from claims_search.commands.formatting import use_help_formatter

    use_help_formatter(parser)
    parser.add_argument("--meds", required=True, metavar="DIR",
                        help="the MEDS dataset folder (the one holding data/ and metadata/)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the cache folder to write")
    parser.add_argument("--task", action="append", default=[], metavar="FILE_OR_NAME",
                        help="add a task: an ACES .yaml file (the task is named after the file) "
                             f"or a built-in name; repeatable; added to the built-in tasks "
                             f"({', '.join(BUILTIN_TASKS)}) unless --only-tasks")
    parser.add_argument("--labels", metavar="DIR",
                        help="precomputed MEDS label tables as tasks: DIR/NAME.parquet or DIR/NAME/*.parquet "
                             "(subject_id, prediction_time, boolean_value), each a task named NAME")
    parser.add_argument("--only-tasks", action="store_true",
                        help="prepare the --task and --labels tasks only, without the built-in ones")
    parser.add_argument("--max-len", type=int, default=512,
                        help="events kept per sample: the last N at or before the prediction time")
    parser.add_argument("--min-count", type=int, default=5,
                        help="train occurrences a token needs to enter the vocabulary")
    parser.add_argument("--n-bins", type=int, default=5, help="quantile tokens per numeric code")
    parser.add_argument("--strict", action="store_true",
                        help="shards with different columns, and codes missing from "
                             "metadata/codes.parquet, are errors instead of warnings")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes working on shards in parallel")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")


def choose_tasks(given: list[str], only: bool, labels_dir: str | None = None) -> tuple[list, set[str]]:
    """The tasks to prepare (:class:`claims_search.data.labels.Task`) and the names of those that
    may be left out: the built-in tasks added without being named."""
    from claims_search.data import label_tables, labels
    from claims_search.errors import ClaimsSearchError

    if only and not given and not labels_dir:
        raise ClaimsSearchError("--only-tasks: give the tasks to prepare with --task FILE_OR_NAME or --labels DIR")
    named = [labels.load_task(t) for t in dict.fromkeys(given)]
    if labels_dir:
        named += [label_tables.load(p) for p in label_tables.find(labels_dir)]
    seen: dict[str, str] = {}
    for t in named:
        if t.name in seen:
            raise ClaimsSearchError(f"{seen[t.name]} and {t.source} are both named "
                                    f"{t.name!r} (a task is named after its file); rename one")
        seen[t.name] = t.source
    implied = [] if only else [labels.load_task(b) for b in BUILTIN_TASKS if b not in seen]
    return implied + named, {t.name for t in implied}


def run(args: argparse.Namespace) -> int:
    """Prepare the cache, or say it is up to date."""
    import json
    from pathlib import Path

    from claims_search.data import cache, labels, meds
    from claims_search.commands.validate import warn
    from claims_search.errors import ClaimsSearchError

    if args.max_len < 1 or args.min_count < 1 or args.n_bins < 2:
        raise ClaimsSearchError("--max-len and --min-count must be >= 1, --n-bins >= 2")
    if args.workers < 1:
        raise ClaimsSearchError(f"--workers: must be >= 1, got {args.workers}")
    tasks, optional = choose_tasks(args.task, args.only_tasks, args.labels)
    meds.open_dataset(args.meds)  # a folder that is not a MEDS dataset: say so before anything
    for t in tasks:
        if t.name in BUILTIN_TASKS and Path(t.source).resolve() != labels.task_path(t.name).resolve():
            print(f"task {t.name}: from {t.source}, in place of the built-in task of that name")
    settings = cache.Settings(args.max_len, args.min_count, args.n_bins, args.strict)
    out = Path(args.out)
    digest = cache.inputs_hash(Path(args.meds), {t.name: t.text for t in tasks}, settings)
    if out.exists() and not out.is_dir():
        raise ClaimsSearchError(f"{out}: --out is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ClaimsSearchError(f"{out}: exists and is not a prepared cache; refusing to replace it")
    say_warning = warn("prepare")
    if not args.force and cache.is_up_to_date(out, digest):
        print(f"{out}: up to date (same inputs and settings), nothing to do")
        manifest = json.loads((out / "manifest.json").read_text())
        for name, why in manifest.get("skipped_tasks", {}).items():  # still true: say it again
            say_warning(cache.left_out_warning(name, why))
        for name, t in manifest["tasks"].items():
            for line in cache.split_warnings(name, t["splits"]):
                say_warning(line)
        return 0
    manifest = cache.write_cache(args.meds, out, tasks, settings, workers=args.workers,
                                  progress=print, warn=say_warning, optional=optional)
    print(f"{out}: {meds.plural(manifest['n_subjects'], 'subject')}, "
          f"{meds.plural(manifest['n_events'], 'event')}, vocabulary {manifest['vocab_size']:,}")
    for name, t in manifest["tasks"].items():
        oracle = t["oracle"]
        o = f", oracle AUROC {oracle['auroc']:.3f}" if oracle and oracle.get("auroc") else ""
        splits = sorted(t["splits"].items(), key=lambda kv: meds.SPLITS.index(kv[0])
                        if kv[0] in meds.SPLITS else len(meds.SPLITS))
        print(f"  {name}: " + ", ".join(
            f"{s} {v['n']:,} ({v['positives']:,} pos)" for s, v in splits) + o)
    return 0
