"""AUROC and AUPRC with a patient-level bootstrap 95 % interval.

The point estimates are scikit-learn's ``roc_auc_score`` and ``average_precision_score``.
The interval resamples *patients*, not samples: a patient with several prediction times
(one per checkup) is drawn as a unit, because their samples are correlated and a per-sample
bootstrap would give intervals that are too narrow. A patient drawn k times is the same as
giving each of their samples weight k, so each replicate is one weighted scikit-learn call.

The generator's oracle, whose true probability may take only a few values, is scored with
:func:`expected_average_precision` instead (AUPRC averaged over the order of its ties).
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

    # The replicates in one vectorised pass per metric (`bootstrap_replicates`, equal to the
    # weighted scikit-learn metrics): a loop of 2 x n_boot scikit-learn calls took ~17 s per
    # split, whatever its size, which was most of a small trial's evaluation.
    out: dict[str, float | int] = {}
    for name in ("auroc", "auprc"):
        points, reps = bootstrap_replicates(y, [p], g, name, n_boot=n_boot, seed=seed, where=where)
        out[name] = float(points[0])
        out[f"{name}_low"], out[f"{name}_high"] = percentile_interval(reps[0], level)
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


# ---- paired comparisons -----------------------------------------------------------------------
# Every model of a task is scored on the same tuning samples, so two models are compared on the
# *same* bootstrap replicates: each replicate draws patients once and both metrics are computed
# on that draw. What the two models share (which patients happen to be easy) cancels in the
# difference, so its interval is far narrower than either model's own interval when their
# scores are correlated, which is the normal case for sizes of one architecture.

METRICS = ("auprc", "auroc")
_CHUNK_CELLS = 4_000_000  # replicates x samples held at once (~32 MB of float64)


def _check_paired(y: np.ndarray, probs: list[np.ndarray], g: np.ndarray, metric: str, where: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if any(len(p) != len(y) for p in probs) or len(g) != len(y):
        raise ClaimsSearchError(f"{where}: labels, probabilities and patient ids differ in length")
    if len(y) == 0:
        raise ClaimsSearchError(f"{where}: no labelled samples to compare")
    if any(not np.isfinite(p).all() for p in probs):
        raise ClaimsSearchError(f"{where}: predicted probabilities are NaN or infinite")
    if y.all() or not y.any():
        raise ClaimsSearchError(f"{where}: label: only one class; AUROC/AUPRC need both")


class _Ranking:
    """One model's samples in descending score order, with tied scores grouped into blocks
    (scikit-learn's thresholds): per-block positive and negative counts of each patient."""

    def __init__(self, y: np.ndarray, p: np.ndarray, sample_group: np.ndarray, n_groups: int) -> None:
        from scipy import sparse

        order = np.argsort(p, kind="mergesort")[::-1]  # scikit-learn's order
        ps = p[order]
        block = np.concatenate([[0], np.cumsum(ps[1:] != ps[:-1])])  # tie block of each sample
        n_blocks = int(block[-1]) + 1
        ys, gs = y[order], sample_group[order]
        # (blocks x patients): how many positive / negative samples of a patient sit in a block.
        self.pos_t = sparse.csr_matrix((ys.astype(float), (block, gs)), shape=(n_blocks, n_groups))
        self.neg_t = sparse.csr_matrix(((~ys).astype(float), (block, gs)), shape=(n_blocks, n_groups))

    def scores(self, draws: np.ndarray, metric: str) -> np.ndarray:
        """The weighted metric of each replicate (row of ``draws``: draws per patient)."""
        tp_b = np.asarray(self.pos_t @ draws.T)  # (blocks, replicates) weighted positives
        fp_b = np.asarray(self.neg_t @ draws.T)
        tps, fps = np.cumsum(tp_b, axis=0), np.cumsum(fp_b, axis=0)
        pos, neg = tps[-1], fps[-1]
        if metric == "auroc":  # trapezoids under the ROC curve, ties count half
            return (fp_b * (tps - tp_b / 2.0)).sum(axis=0) / (pos * neg)
        total = tps + fps
        precision = np.divide(tps, total, out=np.zeros_like(tps), where=total > 0)
        return (tp_b * precision).sum(axis=0) / pos  # average precision: sum of dR x P


def bootstrap_replicates(
    labels: Sequence[bool] | np.ndarray,
    probs: Sequence[Sequence[float] | np.ndarray],
    groups: Sequence[int] | np.ndarray,
    metric: str = "auprc",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    where: str = "predictions",
) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates ``(k,)`` and bootstrap replicates ``(k, R)`` of ``metric`` for k models
    scored on the same samples, every model on the *same* patient draws.

    Each replicate draws the patients (``groups``) with replacement, like :func:`evaluate`: a
    patient drawn c times weighs c in a weighted scikit-learn metric (computed here in one
    vectorised pass, equal to ``roc_auc_score``/``average_precision_score`` with
    ``sample_weight``). Replicates that drew one class only are dropped for every model, so
    ``R <= n_boot``. Raises ClaimsSearchError on mismatched, empty, non-finite or one-class input.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(labels).astype(bool)
    ps = [np.asarray(p, dtype=np.float64) for p in probs]
    g = np.asarray(groups)
    _check_paired(y, ps, g, metric, where)
    point_fn = roc_auc_score if metric == "auroc" else average_precision_score
    points = np.array([point_fn(y, p) for p in ps], dtype=np.float64)
    _, sample_group = np.unique(g, return_inverse=True)
    n_groups = int(sample_group.max()) + 1
    rankings = [_Ranking(y, p, sample_group, n_groups) for p in ps]
    pos_by_group = np.bincount(sample_group, weights=y, minlength=n_groups)
    neg_by_group = np.bincount(sample_group, weights=~y, minlength=n_groups)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(len(y), n_groups))
    reps: list[np.ndarray] = []
    for start in range(0, n_boot, chunk):
        draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(chunk, n_boot - start))
        both = (draws @ pos_by_group > 0) & (draws @ neg_by_group > 0)  # else the metric is undefined
        draws = draws[both].astype(np.float64)
        reps.append(np.stack([r.scores(draws, metric) for r in rankings]) if len(draws) else np.empty((len(ps), 0)))
    return points, np.concatenate(reps, axis=1)


def paired_bootstrap(
    labels: Sequence[bool] | np.ndarray,
    prob_a: Sequence[float] | np.ndarray,
    prob_b: Sequence[float] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    metric: str = "auprc",
    n_boot: int = 1000,
    seed: int = 0,
    *,
    level: float = 0.95,
    where: str = "predictions",
) -> dict[str, float | int | str]:
    """Patient-level paired bootstrap of ``metric(a) - metric(b)`` on the same samples.

    ``metric`` is ``"auprc"`` (average precision) or ``"auroc"``. Every replicate resamples
    patients (``groups``) with replacement and scores both models on that same draw, so the
    interval reflects only how the two models *differ* across patients. Returns ``diff`` (on
    all samples), the percentile interval ``low``/``high`` (``level``, default 95 %), ``n``
    samples, ``patients``, ``positives``, ``n_boot`` (replicates used: those with both classes)
    and ``metric``. With no usable replicate (tiny sets) ``low``/``high`` are NaN.
    """
    y = np.asarray(labels).astype(bool)
    points, reps = bootstrap_replicates(y, [prob_a, prob_b], groups, metric, n_boot=n_boot, seed=seed, where=where)
    low, high = percentile_interval(reps[0] - reps[1], level)
    return {
        "diff": float(points[0] - points[1]), "low": low, "high": high, "n": int(len(y)),
        "patients": int(len(np.unique(np.asarray(groups)))), "positives": int(y.sum()),
        "n_boot": int(reps.shape[1]), "metric": metric,
    }


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values``; NaNs if there are none."""
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def expected_average_precision(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Average precision in expectation over every order of tied scores (McSherry & Najork, ECIR
    2008); scikit-learn's ``average_precision_score`` when no two scores tie.

    Why: scikit-learn scores a block of tied samples at the precision of its end, below what any
    order within it averages. A score with few distinct values (the medication task's true
    probability is 0.9 or 0.05) is then under-rated against models that break its ties.
    Each positive of a tied block of n samples with p positives, after s samples holding t
    positives, sits at each place r = 1..n with chance 1/n, and has on average
    1 + (r - 1)(p - 1)/(n - 1) positives of its block at or above it.
    """
    y = np.asarray(labels).astype(bool)
    x = np.asarray(scores, dtype=np.float64)
    if len(y) != len(x) or not y.any():
        raise ValueError("expected_average_precision needs labels and scores of one length and a positive")
    order = np.argsort(x, kind="mergesort")[::-1]
    xs, ys = x[order], y[order]
    block = np.concatenate([[0], np.cumsum(xs[1:] != xs[:-1])])  # (n,) tie block of each sample
    size = np.bincount(block)  # (blocks,)
    pos = np.bincount(block, weights=ys)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])  # samples above each block
    above = np.concatenate([[0], np.cumsum(pos)[:-1]])  # positives above each block
    b = block
    r = np.arange(len(xs)) - start[b] + 1  # (n,) place within the block, from 1
    hits = above[b] + 1 + (r - 1) * (pos[b] - 1) / np.maximum(size[b] - 1, 1)  # positives at or above
    per_place = pos[b] / size[b] * hits / (start[b] + r)  # (chance a positive is there) x its precision
    return float(per_place.sum() / y.sum())
