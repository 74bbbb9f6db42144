"""What the recommendation's stability check costs: ``recommend`` on synthetic tuning
predictions, with and without 4 more bootstrap seeds.

    python bench/recommend_time.py [--trials 40] [--samples 5000] [--quick]

Trial i's scores are a noisier or cleaner view of one latent risk (metrics then differ a
little, as sizes of one search do); labels 12 % positive. Prints seconds per call.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def records_and_predictions(n_trials: int, n: int, seed: int = 0):
    """``n_trials`` complete TrialRecords of one task, cheapest first, and their predictions."""
    from claims_search import predictions as pr
    from claims_search.frontier import TrialRecord

    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.12
    risk = rng.normal(0, 1, n) + 1.2 * y  # (n,)
    records, preds = [], {}
    for i in range(n_trials):
        prob = 1 / (1 + np.exp(-(risk * (0.5 + i / n_trials) + rng.normal(0, 1, n))))
        preds[f"t{i}"] = pr.frame(np.arange(n), np.arange(n), y, prob)
        records.append(TrialRecord(trial_id=f"t{i}", task="x", status="complete",
                                   params={"model": {"width": 16 * (i + 1), "depth": 2, "heads": 2}},
                                   n_params=1000 * (i + 1), metric=0.3 + i * 0.001, metric_low=0.25,
                                   metric_high=0.35, cost=10.0 * (i + 1), pretrain_cost=None, finetune_cost=None))
    return records, preds


def main(argv=None) -> int:
    from claims_search.recommend import recommend

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--quick", action="store_true", help="5 trials, 500 samples")
    args = p.parse_args(argv)
    trials, samples = (5, 500) if args.quick else (args.trials, args.samples)
    records, preds = records_and_predictions(trials, samples)
    print(f"{trials} trials, {samples} tuning samples; {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    recommend(records[:2], "x", preds)  # imports and first-call set-up, untimed
    for more in (0, 4):
        t = time.perf_counter()
        rec = recommend(records, "x", preds, stability_seeds=more)
        print(f"stability_seeds={more}: {time.perf_counter() - t:.2f} s (recommended {rec.record.trial_id}, "
              f"agreement {rec.agreement})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
