"""AUROC and AUPRC with a patient-level bootstrap 95 % interval.

The point estimates are scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(computed from the same sorted order as the replicates; tested equal). The interval resamples
*patients*, not samples: a patient with several prediction times (one per checkup) is drawn as
a unit, because their samples are correlated and a per-sample bootstrap would give intervals
that are too narrow. Each replicate is a Poisson bootstrap: every patient gets a Poisson(1)
weight, the number of times it is drawn, on all of its samples, and the metric is the weighted
scikit-learn metric. A model is sorted once; every replicate comes from cumulative weighted
sums over that order (:class:`PairedBootstrap`).

The generator's oracle, whose true probability may take only a few values, is scored with
:func:`expected_average_precision` instead (AUPRC averaged over the order of its ties).
"""

from __future__ import annotations

import threading
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

    # Both metrics' replicates in one pass (`PairedBootstrap`: one sort, every replicate from
    # cumulative weighted sums, equal to the weighted scikit-learn metrics): a loop of 2 x n_boot
    # scikit-learn calls took ~17 s per split, whatever its size.
    boot = PairedBootstrap(y, [p], g, where=where)
    reps = boot.replicates(METRICS, n_boot=n_boot, seed=seed)
    out: dict[str, float | int] = {}
    for name in ("auroc", "auprc"):
        out[name] = float(boot.points(name)[0])
        out[f"{name}_low"], out[f"{name}_high"] = percentile_interval(reps[name][0], level)
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
# Replicates computed at once: the patient weights of a chunk, (patients x _REPLICATE_CHUNK)
# float32, are read in patient order by every model's sparse matrix; the chunk is cut further
# so that it holds at most _CHUNK_CELLS cells (128 MB) however many patients there are.
_REPLICATE_CHUNK = 64
_CHUNK_CELLS = 32_000_000

# Poisson(1) drawn exactly by table: a 16-bit uniform picks a value, except in the few
# buckets a quantile boundary crosses, where a second uniform refines the position.
_POISSON_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64)) for k in range(19)])
_POISSON_CDF[-1] = 1.0
_BUCKET_LOW = np.searchsorted(_POISSON_CDF, np.arange(65536) / 65536.0, side="right").astype(np.uint8)
_BUCKET_HIGH = np.searchsorted(_POISSON_CDF, (np.arange(65536) + 1) / 65536.0, side="left").astype(np.uint8)
_BUCKET_VALUE = np.where(_BUCKET_LOW == _BUCKET_HIGH, _BUCKET_LOW, np.nan).astype(np.float32)


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


def poisson_weights(rng: np.random.Generator, n_groups: int, r: int) -> np.ndarray:
    """``(n_groups, r)`` float32 Poisson(1) counts: the patient weights of ``r`` replicates."""
    u = rng.integers(0, 65536, size=(n_groups, r), dtype=np.uint16)
    w = _BUCKET_VALUE[u]  # NaN where the bucket straddles a quantile
    split = np.flatnonzero(np.isnan(w))
    if len(split):
        x = (u.ravel()[split] + rng.random(len(split))) / 65536.0
        w.ravel()[split] = np.searchsorted(_POISSON_CDF, x, side="right")
    return w


def patient_weights(n_groups: int, n_boot: int, seed: int):
    """The replicates' patient weights, in chunks of ``(n_groups, r)`` (column = replicate):
    each patient drawn a Poisson(1) number of times, independently (the Poisson bootstrap)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(_REPLICATE_CHUNK, _CHUNK_CELLS // max(n_groups, 1)))
    for start in range(0, n_boot, chunk):
        yield poisson_weights(rng, n_groups, min(chunk, n_boot - start))


_buffers = threading.local()  # each worker thread's scratch arrays, reused across models


def _scratch(name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A reusable uninitialised array of ``shape`` for this thread: fresh large arrays cost a page
    fault per 4 KiB on every call, which was a third of the time."""
    size, have = shape[0] * shape[1], getattr(_buffers, name, None)
    if have is None or have.size < size or have.dtype != dtype:
        have = np.empty(size, dtype=dtype)
        setattr(_buffers, name, have)
    return have[:size].reshape(shape)


def _product(matrix, weights: np.ndarray, name: str) -> np.ndarray:
    """``matrix @ weights`` (CSC sparse times dense, both float32) into this thread's buffer."""
    out = _scratch(name, (matrix.shape[0], weights.shape[1]), np.float32)
    out.fill(0)
    try:
        from scipy.sparse import _sparsetools  # the kernel behind ``@``, without its fresh output

        _sparsetools.csc_matvecs(matrix.shape[0], matrix.shape[1], weights.shape[1], matrix.indptr,
                                 matrix.indices, matrix.data, weights.ravel(), out.ravel())
    except (ImportError, AttributeError, TypeError, ValueError):  # another SciPy: the public product
        out[...] = matrix @ weights
    return out


class _Ranking:
    """One model's samples sorted once by descending score, tied scores grouped into blocks
    (scikit-learn's thresholds). Only blocks holding a positive matter to either metric: for
    each such *event* e, in order, a sparse (2E x patients) matrix sums a replicate's patient
    weights into tp[e] (positives in the block) and fp[e] (negatives since the previous
    event's block, through this block), and a (E x patients) one into tie[e] (negatives in the
    block itself; AUROC counts them half), kept only when a negative ties with a positive."""

    def __init__(self, y: np.ndarray, p: np.ndarray, sample_group: np.ndarray, n_groups: int) -> None:
        from scipy import sparse

        order = np.argsort(p, kind="mergesort")[::-1]  # scikit-learn's order
        ps, ys, gs = p[order], y[order], sample_group[order]
        block = np.concatenate([[0], np.cumsum(ps[1:] != ps[:-1])])  # tie block of each sample
        has_pos = np.zeros(int(block[-1]) + 1, dtype=bool)
        has_pos[block[ys]] = True
        event_of_block = np.cumsum(has_pos) - 1  # the event at or before each block
        self.n_events = n = int(has_pos.sum())
        # A negative counts towards fp of the first event at or after its block.
        events_from = np.cumsum(has_pos[::-1])[::-1]  # events in this block and after it
        neg_event = n - events_from[block[~ys]]  # (negatives,) event index; n = after the last
        keep = neg_event < n
        rows = np.concatenate([event_of_block[block[ys]], n + neg_event[keep]])
        cols = np.concatenate([gs[ys], gs[~ys][keep]])

        # CSC: the product reads the weights in patient order (sequentially) and scatters into
        # the 2E x r result; duplicates (a patient's samples in one row) are summed.
        def csc(rows, cols, n_rows):
            m = sparse.csc_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, n_groups))
            m.sum_duplicates()
            return m

        self.matrix = csc(rows, cols, 2 * n)
        tie = ~ys & has_pos[block]  # negatives tied with a positive
        self.tie = csc(event_of_block[block[tie]], gs[tie], n) if tie.any() else None

    def scores(self, weights: np.ndarray, pos: np.ndarray, neg: np.ndarray, metrics) -> dict[str, np.ndarray]:
        """The weighted metrics of each replicate (column of ``weights``, patients x r, float32
        counts: every sum below is an exact integer in float32), given each replicate's weighted
        positives ``pos`` and negatives ``neg``; float64 weights (the point estimates) are
        computed in float64 throughout."""
        n = self.n_events
        if weights.dtype == np.float32:
            sums = _product(self.matrix, weights, "sums")  # (2E, r)
            tps = _scratch("tps", (n, weights.shape[1]), np.float32)
        else:
            sums = np.asarray(self.matrix @ weights)
            tps = np.empty((n, weights.shape[1]), dtype=sums.dtype)
        tp_e, fps = sums[:n], sums[n:]
        np.cumsum(tp_e, axis=0, out=tps)  # weighted positives through each event's block
        np.cumsum(fps, axis=0, out=fps)  # and negatives
        out = {}
        if "auprc" in metrics:  # average precision: sum of dR x P at each threshold
            t = _scratch("t", tps.shape, tps.dtype) if tps.dtype == np.float32 else np.empty_like(tps)
            np.add(tps, fps, out=t)
            np.maximum(t, np.finfo(t.dtype).tiny, out=t)  # t = 0 only where tps = tp_e = 0
            np.divide(tps, t, out=t)  # precision at each event
            np.multiply(t, tp_e, out=t)
            out["auprc"] = t.sum(axis=0, dtype=np.float64) / pos
        if "auroc" in metrics:  # negatives below each positive, ties count half
            np.subtract(neg.astype(fps.dtype), fps, out=fps)
            if self.tie is not None:
                ties = _product(self.tie, weights, "ties") if weights.dtype == np.float32 else self.tie @ weights
                fps += np.asarray(ties) * 0.5
            np.multiply(fps, tp_e, out=fps)
            out["auroc"] = fps.sum(axis=0, dtype=np.float64) / (pos * neg)
        return out


class PairedBootstrap:
    """k models scored on the same samples, each sorted once: their point estimates, and their
    replicates under any number of bootstrap seeds, every model on the *same* patient weights.

    A replicate is a Poisson bootstrap over patients: each patient gets a Poisson(1) weight
    (the number of times it is drawn), applied to all of its samples, and each metric is the
    weighted scikit-learn metric (``roc_auc_score``/``average_precision_score`` with
    ``sample_weight``, ties as scikit-learn treats them), computed for every replicate from the
    one sorted order with cumulative weighted sums. For a statistic that is a ratio of sums
    such as these, it gives the intervals of the multinomial patient bootstrap (n patients drawn
    with replacement) within Monte-Carlo error (Hanley & MacGibbon 2006; Chamandy et al. 2012);
    tests/test_metrics.py checks it."""

    def __init__(self, labels, probs, groups, *, where: str = "predictions", metric: str = "auprc") -> None:
        self.y = np.asarray(labels).astype(bool)
        ps = [np.asarray(p, dtype=np.float64) for p in probs]
        g = np.asarray(groups)
        _check_paired(self.y, ps, g, metric, where)
        _, sample_group = np.unique(g, return_inverse=True)
        self.n_groups = int(sample_group.max()) + 1
        self.pos_by_group = np.bincount(sample_group, weights=self.y, minlength=self.n_groups)
        self.neg_by_group = np.bincount(sample_group, weights=~self.y, minlength=self.n_groups)
        self.rankings = [_Ranking(self.y, p, sample_group, self.n_groups) for p in ps]
        self.where = where
        self._points: dict[str, np.ndarray] = {}

    def points(self, metric: str) -> np.ndarray:
        """``(k,)`` the metric of each model on all samples (every sample weight 1)."""
        if metric not in self._points:
            ones = np.ones((self.n_groups, 1), dtype=np.float64)
            pos, neg = np.array([self.y.sum()], float), np.array([(~self.y).sum()], float)
            for m in METRICS:
                self._points[m] = np.array([r.scores(ones, pos, neg, METRICS)[m][0] for r in self.rankings])
        return self._points[metric]

    def replicates(self, metrics=METRICS, *, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
        """``{metric: (k, R)}`` replicates; those that weigh one class only are dropped for
        every model, so ``R <= n_boot``."""
        from concurrent.futures import ThreadPoolExecutor

        metrics = tuple(metrics)
        for m in metrics:
            if m not in METRICS:
                raise ValueError(f"metric must be one of {METRICS}, got {m!r}")
        reps: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
        k = len(self.rankings)
        chunks = patient_weights(self.n_groups, n_boot, seed)
        with ThreadPoolExecutor(max_workers=max(1, min(k, _workers()))) as pool:
            ahead = pool.submit(next, chunks, None)  # the next chunk's weights, drawn meanwhile
            while (w := ahead.result()) is not None:
                ahead = pool.submit(next, chunks, None)
                pos, neg = self.pos_by_group @ w, self.neg_by_group @ w  # (r,)
                both = (pos > 0) & (neg > 0)  # else the metrics are undefined
                if not both.all():
                    w, pos, neg = np.ascontiguousarray(w[:, both]), pos[both], neg[both]
                if w.shape[1] == 0:
                    continue
                per_model = list(pool.map(lambda r, w=w, pos=pos, neg=neg: r.scores(w, pos, neg, metrics),
                                          self.rankings))
                for m in metrics:
                    reps[m].append(np.stack([s[m] for s in per_model]))
        return {m: np.concatenate(v, axis=1) if v else np.empty((k, 0)) for m, v in reps.items()}


def _workers() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    scored on the same samples, every model on the *same* patient weights.

    Each replicate is a Poisson bootstrap over patients (``groups``), like :func:`evaluate`: a
    patient drawn c times weighs c in a weighted scikit-learn metric (:class:`PairedBootstrap`:
    one sort per model, every replicate from cumulative weighted sums). Replicates that weigh
    one class only are dropped for every model, so ``R <= n_boot``. Raises ClaimsSearchError on
    mismatched, empty, non-finite or one-class input.
    """
    boot = PairedBootstrap(labels, probs, groups, where=where, metric=metric)
    return boot.points(metric), boot.replicates((metric,), n_boot=n_boot, seed=seed)[metric]


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
    patients (``groups``: Poisson weights) and scores both models on that same draw, so the
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
