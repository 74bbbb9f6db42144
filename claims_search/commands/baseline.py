"""Train the LightGBM baseline for one task: counts of codes over the whole history and in the
last 365, 91 and 30 days before the prediction time, plus age. Early stopping on a carve-out of
the train split; AUROC and AUPRC with patient-level bootstrap 95 % intervals on the tuning split
(and the held-out split with --held-out). Writes OUT/result.json (aggregates only) and
OUT/model.txt, atomically.

Example: claims-search baseline --data prepared --task ckd_incidence --out runs/ckd-lgbm
"""

from __future__ import annotations

import argparse

from claims_search.commands.formatting import format_cost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search baseline`."""
    from claims_search.commands.formatting import use_help_formatter

    use_help_formatter(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="prepared cache folder (claims-search prepare)")
    parser.add_argument("--task", required=True,
                        help="task name, one of the prepared cache's (its manifest.json lists them)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--held-out", action="store_true", help="also evaluate on the held-out split")
    parser.add_argument("--seed", type=int, default=0, help="random seed (early-stopping carve-out, LightGBM)")
    parser.add_argument("--threads", type=int, default=0, help="LightGBM threads (0: OpenMP's default)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap replicates (patients resampled) for the 95 %% intervals")


def run(args: argparse.Namespace) -> int:
    """Run the baseline, print metrics with intervals and cost; 0 on success."""
    from claims_search.runs.baseline import baseline
    from claims_search.metrics import format_metrics

    splits = ("tuning", "held_out") if args.held_out else ("tuning",)
    result = baseline(
        args.data, args.task, args.out,
        eval_splits=splits, seed=args.seed, num_threads=args.threads, n_boot=args.bootstrap,
    )
    print(f"baseline {args.task}: LightGBM, {result.info['n_trees']} trees, "
          f"gain share by window {result.info['gain_share']}")
    print(format_metrics(result.metrics))
    print(format_cost(result.cost))
    print(f"wrote {args.out}/result.json")
    return 0


