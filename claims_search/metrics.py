"""AUROC and AUPRC with a patient-level bootstrap 95 % interval.

The point estimates are scikit-learn's ``roc_auc_score`` and ``average_precision_score``.
The interval resamples *patients*, not samples: a patient with several prediction times
(one per checkup) is drawn as a unit, because their samples are correlated and a per-sample
bootstrap would give intervals that are too narrow. A patient drawn k times is the same as
giving each of their samples weight k, so each replicate is one weighted scikit-learn call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from claims_search.errors import ClaimsSearchError

# The keys of one split's metrics, in the order docs/design.md lists them.
METRIC_KEYS = ("auroc", "auroc_low", "auroc_high", "auprc", "auprc_low", "auprc_high", "n", "positives")


def evaluate(
    y_true: Sequence[bool] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    *,
    where: str = "predictions",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """Return AUROC, AUPRC, their bootstrap intervals over ``groups`` (patients), n and positives.

    ``where`` names the task and split (e.g. ``"ckd_incidence/tuning"``) in error messages.
    Raises ClaimsSearchError if the inputs are empty, mismatched, not finite, or hold only one
    class (neither metric is defined then). Replicates that happen to draw one class only are
    skipped; the interval uses the rest.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, dtype=np.float64)
    g = np.asarray(groups)
    if not (len(y) == len(p) == len(g)):
        raise ClaimsSearchError(
            f"{where}: labels, probabilities and patient ids differ in length ({len(y)}, {len(p)}, {len(g)})"
        )
    if len(y) == 0:
        raise ClaimsSearchError(f"{where}: no labelled samples to evaluate")
    if not np.isfinite(p).all():
        raise ClaimsSearchError(f"{where}: {int((~np.isfinite(p)).sum())} predicted probabilities are NaN or infinite")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        cls = "positive" if positives else "negative"
        raise ClaimsSearchError(f"{where}: label: all {len(y)} samples are {cls}; AUROC/AUPRC need both classes")

    out: dict[str, float | int] = {
        "auroc": float(roc_auc_score(y, p)),
        "auprc": float(average_precision_score(y, p)),
    }
    # Patient index of every sample, 0..G-1.
    _, sample_group = np.unique(g, return_inverse=True)
    n_groups = int(sample_group.max()) + 1
    rng = np.random.default_rng(seed)
    # (n_boot, G): how many times each patient is drawn in each replicate.
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    pos_by_group = np.bincount(sample_group, weights=y, minlength=n_groups)
    neg_by_group = np.bincount(sample_group, weights=~y, minlength=n_groups)
    aurocs, auprcs = [], []
    for counts in draws:
        if counts @ pos_by_group == 0 or counts @ neg_by_group == 0:
            continue  # one class only in this replicate
        w = counts[sample_group]  # (N,) sample weights
        aurocs.append(roc_auc_score(y, p, sample_weight=w))
        auprcs.append(average_precision_score(y, p, sample_weight=w))
    tail = (1.0 - level) / 2.0 * 100.0
    for name, values in (("auroc", aurocs), ("auprc", auprcs)):
        if values:
            low, high = np.percentile(values, [tail, 100.0 - tail])
        else:  # tiny sets: no usable replicate, the interval is unknown
            low = high = float("nan")
        out[f"{name}_low"] = float(low)
        out[f"{name}_high"] = float(high)
    out["n"] = int(len(y))
    out["positives"] = positives
    return {k: out[k] for k in METRIC_KEYS}


def format_metrics(metrics: dict[str, dict[str, float | int]]) -> str:
    """One line per split: ``tuning  AUROC 0.812 [0.790, 0.833]  AUPRC ...  n=… positives=…``."""
    lines = []
    for split, m in metrics.items():
        lines.append(
            f"{split:<9} AUROC {m['auroc']:.3f} [{m['auroc_low']:.3f}, {m['auroc_high']:.3f}]  "
            f"AUPRC {m['auprc']:.3f} [{m['auprc_low']:.3f}, {m['auprc_high']:.3f}]  "
            f"n={m['n']} positives={m['positives']}"
        )
    return "\n".join(lines)
