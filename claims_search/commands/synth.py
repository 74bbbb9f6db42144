"""Generate synthetic Japanese-style claims (monthly receipts, 2015-2022) as a MEDS 0.4 dataset,
with two built-in tasks of planted, known difficulty and their oracle (true probabilities).

Writes OUT/data/<split>/<shard>.parquet, OUT/metadata/{codes.parquet, subject_splits.parquet,
dataset.json} and OUT/oracle/<task>.parquet (subject_id, prediction_time, probability, label).
The same --seed, --patients and --shard-size give byte-identical files whatever --workers.
--complexity-tasks adds four disease-like tasks of rising complexity (their ACES files are in
claims_search/data/tasks/complexity/; prepare them with --task).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search synth`."""
    from claims_search.commands.formatting import use_help_formatter
    from claims_search.data.synth.writer import DEFAULT_SHARD_SIZE  # light: numpy + pyarrow

    use_help_formatter(parser)
    parser.add_argument("--patients", type=int, required=True, help="number of patients (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (must be empty or absent)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes simulating blocks of --shard-size patients in parallel")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help="patients simulated together; each block writes one shard file "
                             "per split (data/<split>/NNNNN.parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--complexity-tasks", action="store_true",
                        help="also plant the complexity family (complexity_k0 .. complexity_k3, "
                             "task files in claims_search/data/tasks/complexity/): disease-like tasks "
                             "whose risk needs more capacity as k rises; off, the output is the "
                             "same as without the option")
    parser.add_argument("--first-id", type=int, default=0,
                        help="subject ids start after this number (e.g. to tell datasets apart)")


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print a one-screen summary."""
    from pathlib import Path

    from claims_search.data.meds import plural
    from claims_search.data.synth import generate

    s = generate(args.out, args.patients, args.seed, workers=args.workers,
                 shard_size=args.shard_size, overwrite=args.overwrite, first_id=args.first_id,
                 complexity=args.complexity_tasks)
    # Shards as `validate` counts them: the Parquet files under data/ (one per split and block).
    files = len(list((Path(args.out) / "data").rglob("*.parquet")))
    print(f"wrote {args.out}: {plural(s['patients'], 'patient')}, {plural(s['events'], 'event')}, "
          f"{plural(files, 'shard')} in {s['seconds']:.1f} s "
          f"({s['patients'] / s['seconds']:,.0f} patients/s, {s['events'] / s['seconds']:,.0f} events/s)")
    for split, c in s["splits"].items():
        print(f"  {split:9s} {c['subjects']:>10,} subjects {c['events']:>13,} events")
    for task, t in s["tasks"].items():
        auroc = "n/a" if t["oracle_auroc"] is None else f"{t['oracle_auroc']:.3f}"
        auprc = "n/a" if t["oracle_auprc"] is None else f"{t['oracle_auprc']:.3f}"
        print(f"  {task:24s} {t['samples']:>9,} samples, prevalence {t['prevalence'] or 0:.3f}, "
              f"oracle AUROC {auroc}, AUPRC {auprc}")
    return 0
