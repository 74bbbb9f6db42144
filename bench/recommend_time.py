"""What the paired rule costs: ``recommend`` on synthetic tuning predictions, with 1 bootstrap
seed and with ``--seeds`` (the stability check's extra seeds included).

    python bench/recommend_time.py [--trials 40] [--samples 500000] [--seeds 5] [--quick]

Issue 26's target: at most 60 s per task at 40 trials x 500,000 tuning samples x 5 seeds on
2 cores, peak memory at most 2 GiB. Trial i's scores are a noisier or cleaner view of one
latent risk (metrics then differ a little, as sizes of one search do); labels 12 % positive;
one sample per patient. Prints wall and CPU seconds per call (on a shared machine the
CPU seconds are the steadier figure) and the process's peak RSS (its high-water
mark, predictions included).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def records_and_predictions(n_trials: int, n: int, seed: int = 0):
    """``n_trials`` complete TrialRecords of one task, cheapest first, and their predictions."""
    from claims_search.runs import predictions as pr
    from claims_search.results.frontier import TrialRecord

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
    from claims_search.results.recommend import recommend

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--samples", type=int, default=500_000)
    p.add_argument("--seeds", type=int, default=5, help="bootstrap seeds in all (1 + stability seeds)")
    p.add_argument("--quick", action="store_true", help="5 trials, 500 samples")
    args = p.parse_args(argv)
    trials, samples = (5, 500) if args.quick else (args.trials, args.samples)
    import os
    import resource
    records, preds = records_and_predictions(trials, samples)
    print(f"{trials} trials, {samples} tuning samples; {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    recommend(records[:2], "x", {k: preds[k] for k in ("t0", "t1")}, n_boot=10)  # imports, untimed
    from claims_search import metrics

    if trials * samples * 1000 >= metrics._KERNEL_MIN_CELLS:  # recommend's 1,000 replicates use the kernel
        t = time.perf_counter()
        compiled = metrics._kernels() is not None  # numba's, once per process: untimed below, shown here
        print(f"bootstrap kernel: {'compiled (numba)' if compiled else 'unavailable: numpy path'}, "
              f"{time.perf_counter() - t:.1f} s to load or compile")
    for more in sorted({0, args.seeds - 1}):
        t, cpu = time.perf_counter(), time.process_time()
        rec = recommend(records, "x", preds, stability_seeds=more)
        print(f"{1 + more} seed(s): {time.perf_counter() - t:.1f} s wall, {time.process_time() - cpu:.1f} s CPU "
              f"(all threads; recommended {rec.record.trial_id}, agreement {rec.agreement})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"peak RSS {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
