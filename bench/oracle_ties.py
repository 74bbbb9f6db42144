"""The oracle's AUPRC with and without its ties: scikit-learn's ``average_precision_score``
against ``metrics.expected_average_precision`` on a ``claims-search synth`` output (not a test).

    .venv/bin/python bench/oracle_ties.py --meds DIR [--split held_out]
    .venv/bin/python bench/oracle_ties.py --quick [--meds DIR]   # seconds, on tiny data

Per task in ``DIR/oracle/``: samples, the largest block of samples sharing one true
probability, the samples whose probability is within 1e-9 of 0 or 1, scikit-learn's AUPRC and
the AUPRC in expectation over the order of tied probabilities (what ``oracle/summary.json`` and
the cache's manifest report). All splits
unless ``--split`` names one (``metadata/subject_splits.parquet``). Aggregates only. ``--quick``
without ``--meds`` synthesises ``common.quick_data``'s tiny dataset in a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None) -> int:
    from sklearn.metrics import average_precision_score

    from claims_search.metrics import expected_average_precision

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meds", type=Path, default=None, help="a claims-search synth output folder")
    p.add_argument("--split", default=None, help="train, tuning or held_out (default: all)")
    p.add_argument("--quick", action="store_true", help="without --meds: a tiny synthesised dataset (seconds)")
    args = p.parse_args(argv)
    if args.meds is None:
        if not args.quick:
            p.error("--meds is required (or --quick)")
        args.meds = common.quick_data(Path(tempfile.mkdtemp(prefix="oracle-ties-quick-"))).parent / "meds"
    keep = None
    if args.split:
        splits = pl.read_parquet(args.meds / "metadata" / "subject_splits.parquet")
        keep = splits.filter(pl.col("split") == args.split)["subject_id"]
    print(f"{args.meds} ({args.split or 'all splits'})")
    print("\n".join(common.table(["task", "samples", "largest tied block", "within 1e-9 of 0 or 1",
                                  "scikit-learn AUPRC", "expected AUPRC"], [], "lrrrrr")))
    for f in sorted((args.meds / "oracle").glob("*.parquet")):
        df = pl.read_parquet(f, columns=["subject_id", "probability", "label"])
        if keep is not None:
            df = df.filter(pl.col("subject_id").is_in(keep.implode()))
        y, prob = df["label"].to_numpy(), df["probability"].to_numpy()
        tied = int(df.group_by("probability").len()["len"].max())
        extreme = int(((prob < 1e-9) | (prob > 1 - 1e-9)).sum())
        print(common.row([f.stem, f"{len(df):,}", f"{tied:,}", f"{extreme:,}",
                          f"{average_precision_score(y, prob):.3f}", f"{expected_average_precision(y, prob):.3f}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
