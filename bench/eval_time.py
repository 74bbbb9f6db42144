"""What scoring one split costs: ``metrics.evaluate`` (AUROC, AUPRC and their 1,000-replicate
patient-bootstrap intervals) on synthetic predictions of several sizes (not a test).

    .venv/bin/python bench/eval_time.py [--samples 300,3000] [--repeats 3]
    .venv/bin/python bench/eval_time.py --quick      # 300 samples, one timed call: seconds

Labels 12 % positive, about 3 samples per patient, scores a noisy view of the label. Prints the
median and range of the wall seconds per call over ``--repeats`` calls, after one untimed call.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def main(argv=None) -> int:
    from claims_search.metrics import evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default="300,3000", help="comma-separated split sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="--samples 300 --repeats 1 (flags given still win)")
    args = p.parse_args(argv)
    if args.quick:  # presets; flags given explicitly still win
        p.set_defaults(samples="300", repeats=1)
        args = p.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    rng = np.random.default_rng(0)
    for n in (int(s) for s in args.samples.split(",")):
        y = rng.random(n) < 0.12
        prob = 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1, n) - 2)))
        groups = np.arange(n) // 3
        evaluate(y, prob, groups)  # first call (imports, caches), untimed
        secs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            evaluate(y, prob, groups)
            secs.append(time.perf_counter() - t)
        print(f"{n:>7,} samples: {np.median(secs):.3f} s per evaluate "
              f"({min(secs):.3f}-{max(secs):.3f}, {args.repeats} calls, n_boot 1000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
