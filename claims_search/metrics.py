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
# The random stream is drawn in chunks of (patients x _REPLICATE_CHUNK) counts, cut further so
# that a chunk holds at most _CHUNK_CELLS cells however many patients there are: the chunking
# fixes which weights a seed gives, so it stays as it was when the replicates were summed with
# numpy (a seed's replicates are the same as then).
_REPLICATE_CHUNK = 64
_CHUNK_CELLS = 32_000_000
# The compiled kernel reads whole chunks at once in a block of (patients x <= _BLOCK_REPLICATES)
# uint8 counts (at most _BLOCK_CELLS: 128 MB, plus the next block drawn meanwhile): a sample's
# row of counts is then four cache lines, enough to amortise its random access, while the
# replicates' accumulators (6 x 256 values) stay in the L1 cache.
_BLOCK_REPLICATES = 256
_BLOCK_CELLS = 128_000_000
# The kernel asks the cache for the row of the sample this many places ahead: the rows are read
# in score order, i.e. at random, and waiting for each in turn made the kernel 2-3x slower.
_PREFETCH_AHEAD = 8
# Below this many samples x replicates x models the numpy path is used (at most ~2 s): loading
# the compiled kernels from numba's cache costs about 1 s per process, compiling them 5-10 s.
_KERNEL_MIN_CELLS = 500_000_000

# Poisson(1) drawn exactly by table: a 16-bit uniform picks a value, except in the few
# buckets a quantile boundary crosses, where a second uniform refines the position.
_POISSON_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64)) for k in range(19)])
_POISSON_CDF[-1] = 1.0
_BUCKET_LOW = np.searchsorted(_POISSON_CDF, np.arange(65536) / 65536.0, side="right").astype(np.uint8)
_BUCKET_HIGH = np.searchsorted(_POISSON_CDF, (np.arange(65536) + 1) / 65536.0, side="left").astype(np.uint8)
_SPLIT = 255  # a bucket that straddles a quantile (counts are at most 18)
_BUCKET_COUNT = np.where(_BUCKET_LOW == _BUCKET_HIGH, _BUCKET_LOW, _SPLIT).astype(np.uint8)  # (65536,)

# Each sample's part in a model's walk down its sorted order (`_Ranking.code`, uint8). An *event*
# is a tie block holding a positive (scikit-learn's thresholds that move recall); negatives in
# other blocks only add to the false positives of the next event.
_NEG = 0  # a negative outside any event's block
_NEG_TIED = 1  # a negative tied with a positive (AUROC counts it half)
_POS_TIED = 2  # a positive in a block of several samples
_POS_ALONE = 3  # a positive alone in its block: an event by itself
_END = 4  # flag: the last sample of an event's block (with _NEG_TIED or _POS_TIED)


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


# ---- the compiled kernels (numba), built on first use ------------------------------------------
# Plain functions here; `_kernels` compiles them with numba on first use (importing this module
# stays cheap, and without numba the numpy path below gives the same numbers, slower).

def _replicate_sums_py(group, code, weights, negf, do_auprc, do_auroc):
    """One model's walk down its sorted order for every replicate (column) of ``weights`` at once.

    group (m,) int32: each sample's patient, in descending score order (samples below the last
    event dropped); code (m,) uint8: its part (`_NEG` ...); weights (patients, R) uint8 C-order:
    each replicate's Poisson counts, so a sample's counts are one contiguous row and every step
    updates R accumulators; negf (R,) float32: each replicate's weighted negatives.
    Returns ``(ap, au)``, (R,) float64: sum over events of precision x positives (AUPRC x pos)
    and of positives x negatives below, ties half (AUROC x pos x neg). Counts are summed in
    int32 and each event's terms computed in float32 as the numpy path does (float32 holds
    these integer counts exactly), each term added in float64: the same numbers as that path.
    """
    n, r_count = group.shape[0], weights.shape[1]
    tp = np.zeros(r_count, np.int32)  # weighted positives through the last event
    fp = np.zeros(r_count, np.int32)  # weighted negatives so far
    tb = np.zeros(r_count, np.int32)  # positives of the open tied block
    fb = np.zeros(r_count, np.int32)  # negatives of the open tied block
    ap = np.zeros(r_count, np.float64)
    au = np.zeros(r_count, np.float64)
    tiny = np.float32(1.1754944e-38)  # float32's smallest normal: 0 / tiny = 0 where tp = fp = 0
    half = np.float32(0.5)
    lines = (r_count + 63) // 64
    for i in range(n):
        if i + _PREFETCH_AHEAD < n:
            ahead = group[i + _PREFETCH_AHEAD]
            for line in range(lines):
                _prefetch(weights, ahead, line * 64)
        g, c = group[i], code[i]
        kind = c & 3
        if kind == _NEG:
            for r in range(r_count):
                fp[r] += weights[g, r]
        elif kind == _NEG_TIED:
            for r in range(r_count):
                x = weights[g, r]
                fp[r] += x
                fb[r] += x
        elif kind == _POS_TIED:
            for r in range(r_count):
                tb[r] += weights[g, r]
        else:  # _POS_ALONE: its own event (no tied negatives); one loop per metric set vectorises
            if do_auprc and do_auroc:
                for r in range(r_count):
                    x = np.int32(weights[g, r])
                    tp[r] += x
                    tf, ff, xf = np.float32(tp[r]), np.float32(fp[r]), np.float32(x)
                    ap[r] += np.float64(tf / max(tf + ff, tiny) * xf)
                    au[r] += np.float64((negf[r] - ff) * xf)
            elif do_auprc:
                for r in range(r_count):
                    x = np.int32(weights[g, r])
                    tp[r] += x
                    tf, ff, xf = np.float32(tp[r]), np.float32(fp[r]), np.float32(x)
                    ap[r] += np.float64(tf / max(tf + ff, tiny) * xf)
            else:
                for r in range(r_count):
                    x = np.int32(weights[g, r])
                    tp[r] += x
                    au[r] += np.float64((negf[r] - np.float32(fp[r])) * np.float32(x))
            continue
        if c & _END:  # a tied block with a positive closes: its event
            for r in range(r_count):
                tp[r] += tb[r]
            if do_auprc:
                for r in range(r_count):
                    tf, ff = np.float32(tp[r]), np.float32(fp[r])
                    ap[r] += np.float64(tf / max(tf + ff, tiny) * np.float32(tb[r]))
            if do_auroc:
                for r in range(r_count):
                    below = (negf[r] - np.float32(fp[r])) + np.float32(fb[r]) * half
                    au[r] += np.float64(below * np.float32(tb[r]))
            tb[:] = 0
            fb[:] = 0
    return ap, au


def _class_sums_py(weights, pos_by_group, neg_by_group):
    """``(pos, neg)`` (R,) int64: each replicate's weighted positives and negatives; weights
    (patients, R) uint8, pos_by_group/neg_by_group (patients,) int32 samples per patient."""
    r_count = weights.shape[1]
    pos = np.zeros(r_count, np.int64)
    neg = np.zeros(r_count, np.int64)
    for g in range(weights.shape[0]):
        a, b = pos_by_group[g], neg_by_group[g]
        for r in range(r_count):
            pos[r] += a * weights[g, r]
            neg[r] += b * weights[g, r]
    return pos, neg


def _bucket_counts_py(u, table, out, col):
    """``out[:, col:col + r] = table[u]`` (u (patients, r) uint16, out (patients, R) uint8
    C-order); returns the flat row-major positions in ``u`` whose bucket straddles a quantile
    (`_SPLIT`, about 1 in 8,500), int64, in order."""
    rows, cols = u.shape
    n_split = 0
    for i in range(rows):
        for j in range(cols):
            v = table[u[i, j]]
            out[i, col + j] = v
            n_split += v == _SPLIT
    # A second pass finds them: growing an array inside the loop above made it 8x slower.
    split = np.empty(n_split, np.int64)
    k = 0
    for i in range(rows):
        if k == n_split:
            break
        for j in range(cols):
            if out[i, col + j] == _SPLIT:
                split[k] = i * cols + j
                k += 1
    return split


def _prefetch(weights, row, col):  # replaced by a numba intrinsic in `_kernels`
    pass


_kernel_lock = threading.Lock()
_compiled: dict | None = None


def _kernels() -> dict | None:
    """The kernels compiled with numba (``cache=True``: compiled once per machine, later loaded
    from numba's cache), or None where numba is missing or fails: then the numpy path."""
    global _compiled
    with _kernel_lock:
        if _compiled is None:
            try:
                _compiled = _compile()
            except Exception as e:  # noqa: BLE001 - no numba, or an incompatible one: numpy path
                import logging

                logging.getLogger(__name__).warning("bootstrap kernel unavailable (%s); using the numpy path", e)
                _compiled = {}
        return _compiled or None


def _compile() -> dict:
    import numba
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, arr, row, col):
        """A read hint for ``arr[row, col]`` (LLVM's prefetch: never faults, returns nothing)."""
        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            inds = [context.cast(builder, v, t, numba.types.intp) for v, t in zip(args[1:], signature.args[1:])]
            ptr = cgutils.get_item_pointer2(context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
                                            strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
                                            inds=inds, wraparound=False, boundscheck=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(1), i32(1)])  # read, low locality, data
            return context.get_dummy_value()
        return numba.types.void(arr, row, col), codegen

    globals()["_prefetch"] = prefetch  # the global the kernel calls, resolved when it compiles

    def jit(fn):
        # error_model="numpy": no division-by-zero branch, so the loops vectorise; no fastmath:
        # the float32 terms round exactly as the numpy path's.
        try:
            return numba.njit(nogil=True, cache=True, error_model="numpy")(fn)
        except RuntimeError:  # no writable cache location: compile each process
            return numba.njit(nogil=True, error_model="numpy")(fn)

    kernels = {"replicate_sums": jit(_replicate_sums_py), "class_sums": jit(_class_sums_py),
               "bucket_counts": jit(_bucket_counts_py)}
    # Compile (or load from the cache) now, on tiny inputs: a failure falls back here, not mid-run.
    w = np.ones((2, 3), np.uint8)
    kernels["replicate_sums"](np.array([0, 1], np.int32), np.array([_POS_ALONE, _NEG], np.uint8), w,
                              np.ones(3, np.float32), True, True)
    kernels["class_sums"](w, np.ones(2, np.int32), np.ones(2, np.int32))
    kernels["bucket_counts"](np.zeros((2, 3), np.uint16), _BUCKET_COUNT, np.empty((2, 3), np.uint8), 0)
    return kernels


# ---- the Poisson weights ---------------------------------------------------------------------------

def _poisson_counts(rng: np.random.Generator, n_groups: int, r: int, out: np.ndarray | None = None,
                    col: int = 0, kernels: dict | None = None) -> np.ndarray:
    """``(n_groups, r)`` uint8 Poisson(1) counts, the patient weights of ``r`` replicates from
    ``rng``'s stream as `poisson_weights`; written to columns ``col:col + r`` of ``out``
    ((n_groups, R) uint8 C-order) if given; the table look-up compiled if ``kernels`` are
    given (the same counts)."""
    u = rng.integers(0, 65536, size=(n_groups, r), dtype=np.uint16)
    if out is None:
        out, col = np.empty((n_groups, r), dtype=np.uint8), 0
    view = out[:, col:col + r]
    if kernels is not None:
        split = kernels["bucket_counts"](u, _BUCKET_COUNT, out, col)  # flat positions in u, row-major
    else:
        view[...] = _BUCKET_COUNT[u]
        split = np.flatnonzero(view == _SPLIT)  # flat positions in the view's (n_groups, r) order
    if len(split):
        x = (u.ravel()[split] + rng.random(len(split))) / 65536.0
        view[split // r, split % r] = np.searchsorted(_POISSON_CDF, x, side="right")
    return view


def poisson_weights(rng: np.random.Generator, n_groups: int, r: int) -> np.ndarray:
    """``(n_groups, r)`` float32 Poisson(1) counts: the patient weights of ``r`` replicates."""
    return _poisson_counts(rng, n_groups, r).astype(np.float32)


def _chunk_size(n_groups: int) -> int:
    return max(1, min(_REPLICATE_CHUNK, _CHUNK_CELLS // max(n_groups, 1)))


def patient_weights(n_groups: int, n_boot: int, seed: int):
    """The replicates' patient weights, in chunks of ``(n_groups, r)`` (column = replicate):
    each patient drawn a Poisson(1) number of times, independently (the Poisson bootstrap)."""
    for counts in _count_blocks(n_groups, n_boot, seed, chunks_per_block=1):
        yield counts.astype(np.float32)


def _count_blocks(n_groups: int, n_boot: int, seed: int, chunks_per_block: int, buffers: list | None = None,
                  kernels: dict | None = None):
    """`patient_weights`' counts as uint8 blocks ``(n_groups, r)`` C-order, each the next
    ``chunks_per_block`` chunks of the stream side by side (replicates in the same order).
    With ``buffers`` (flat uint8 arrays of at least n_groups x block width) the blocks are
    written into them in turn: a block is overwritten two blocks later, so its reader must be
    done with it by then (fresh 128 MB arrays cost a page fault per 4 KiB each time)."""
    rng = np.random.default_rng(seed)
    chunk = _chunk_size(n_groups)
    starts = list(range(0, n_boot, chunk))
    for i, b in enumerate(range(0, len(starts), chunks_per_block)):
        widths = [min(chunk, n_boot - s) for s in starts[b:b + chunks_per_block]]
        cells = n_groups * sum(widths)
        if buffers:
            block = buffers[i % len(buffers)][:cells].reshape(n_groups, sum(widths))
        else:
            block = np.empty((n_groups, sum(widths)), dtype=np.uint8)
        at = 0
        for w in widths:
            _poisson_counts(rng, n_groups, w, out=block, col=at, kernels=kernels)
            at += w
        yield block


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
    (scikit-learn's thresholds), kept as each sample's patient (``group``) and part in the walk
    (``code``, `_NEG` ...). Only blocks holding a positive matter to either metric: for each
    such *event* e, in order, a replicate's tp[e] (positives in the block), fp[e] (negatives
    since the previous event's block, through this block) and tie[e] (negatives in the block
    itself; AUROC counts them half) give both metrics. `sums` walks the order once for a block
    of replicates (the compiled kernel); `scores` is the numpy path, which sums them with
    sparse (events x patients) matrices: the kernel's reference and its fallback."""

    def __init__(self, y: np.ndarray, p: np.ndarray, sample_group: np.ndarray, n_groups: int) -> None:
        order = np.argsort(p, kind="mergesort")[::-1]  # scikit-learn's order
        ps, ys, gs = p[order], y[order], sample_group[order]
        block = np.concatenate([[0], np.cumsum(ps[1:] != ps[:-1])])  # (n,) tie block of each sample
        has_pos = np.zeros(int(block[-1]) + 1, dtype=bool)  # (blocks,)
        has_pos[block[ys]] = True
        alone = np.bincount(block)[block] == 1  # (n,) the only sample of its block
        code = np.where(ys, np.where(alone, _POS_ALONE, _POS_TIED),
                        np.where(has_pos[block], _NEG_TIED, _NEG)).astype(np.uint8)
        last = np.append(block[1:] != block[:-1], True)  # (n,) the last sample of its block
        code[last & has_pos[block] & ~(ys & alone)] |= _END
        # Samples below the last event's block count towards no event: dropped.
        m = int(np.flatnonzero(last & has_pos[block])[-1]) + 1
        self.group = np.ascontiguousarray(gs[:m], dtype=np.int32 if n_groups < 2**31 else np.int64)  # (m,)
        self.code = code[:m]  # (m,)
        self.n_groups = n_groups
        self.n_events = int(has_pos.sum())
        self._matrices = None

    def _events(self):
        """``(event, positive, tied)`` per kept sample: the event whose sums it adds to (a
        negative's: the first event at or after its block), whether it is a positive, and
        whether it is a negative tied with a positive."""
        kind = self.code & 3
        ends = (kind == _POS_ALONE) | (self.code & _END != 0)
        event = np.cumsum(ends) - ends  # (m,) events closed before the sample
        return event, kind >= _POS_TIED, kind == _NEG_TIED

    def sums(self, weights: np.ndarray, neg: np.ndarray, metrics) -> tuple[np.ndarray, np.ndarray]:
        """The compiled walk (`_replicate_sums_py`) over ``weights`` (patients x R uint8
        counts) given each replicate's weighted negatives ``neg`` (R,): ``(ap, au)`` (R,)."""
        kernel = _kernels()["replicate_sums"]
        return kernel(self.group, self.code, weights, np.asarray(neg, dtype=np.float32),
                      "auprc" in metrics, "auroc" in metrics)

    def _sparse(self):
        """The numpy path's CSC matrices, built on first use: (2E x patients) summing a
        replicate's patient weights into tp[e] and fp[e], and (E x patients) into tie[e]
        (None when no negative ties with a positive)."""
        if self._matrices is None:
            from scipy import sparse

            n = self.n_events
            event, pos, tied = self._events()
            g = self.group.astype(np.int64)

            # CSC: the product reads the weights in patient order (sequentially) and scatters
            # into the 2E x r result; duplicates (a patient's samples in one row) are summed.
            def csc(rows, cols, n_rows):
                m = sparse.csc_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, self.n_groups))
                m.sum_duplicates()
                return m

            matrix = csc(np.concatenate([event[pos], n + event[~pos]]), np.concatenate([g[pos], g[~pos]]), 2 * n)
            self._matrices = (matrix, csc(event[tied], g[tied], n) if tied.any() else None)
        return self._matrices

    def points(self, pos: float, neg: float) -> dict[str, float]:
        """Both metrics on all samples (every weight 1), in float64."""
        n = self.n_events
        event, positive, tied = self._events()
        tp_e = np.bincount(event[positive], minlength=n).astype(np.float64)[:, None]  # (E, 1)
        fps = np.bincount(event[~positive], minlength=n).astype(np.float64)[:, None]
        ties = np.bincount(event[tied], minlength=n).astype(np.float64)[:, None] if tied.any() else None
        out = _finish(tp_e, fps, ties, np.array([pos], float), np.array([neg], float), METRICS)
        return {m: float(v[0]) for m, v in out.items()}

    def scores(self, weights: np.ndarray, pos: np.ndarray, neg: np.ndarray, metrics) -> dict[str, np.ndarray]:
        """The numpy path: the weighted metrics of each replicate (column of ``weights``,
        patients x r, float32 counts: every sum below is an exact integer in float32), given
        each replicate's weighted positives ``pos`` and negatives ``neg``; float64 weights are
        computed in float64 throughout."""
        n = self.n_events
        matrix, tie = self._sparse()
        if weights.dtype == np.float32:
            sums = _product(matrix, weights, "sums")  # (2E, r)
            ties = _product(tie, weights, "ties") if tie is not None and "auroc" in metrics else None
        else:
            sums = np.asarray(matrix @ weights)
            ties = np.asarray(tie @ weights) if tie is not None else None
        return _finish(sums[:n], sums[n:], ties, pos, neg, metrics)


def _finish(tp_e: np.ndarray, fps: np.ndarray, ties, pos: np.ndarray, neg: np.ndarray, metrics) -> dict[str, np.ndarray]:
    """Both metrics from each event's sums, (E, r): positives ``tp_e``, negatives since the
    previous event ``fps`` (overwritten), tied negatives ``ties`` or None; float32 sums give
    float32 terms (summed in float64), as the kernel computes them."""
    dtype = fps.dtype
    scratch = dtype == np.float32
    tps = _scratch("tps", tp_e.shape, dtype) if scratch else np.empty_like(tp_e)
    np.cumsum(tp_e, axis=0, out=tps)  # weighted positives through each event's block
    np.cumsum(fps, axis=0, out=fps)  # and negatives
    out = {}
    if "auprc" in metrics:  # average precision: sum of dR x P at each threshold
        t = _scratch("t", tps.shape, dtype) if scratch else np.empty_like(tps)
        np.add(tps, fps, out=t)
        np.maximum(t, np.finfo(dtype).tiny, out=t)  # t = 0 only where tps = tp_e = 0
        np.divide(tps, t, out=t)  # precision at each event
        np.multiply(t, tp_e, out=t)
        out["auprc"] = t.sum(axis=0, dtype=np.float64) / pos
    if "auroc" in metrics:  # negatives below each positive, ties count half
        np.subtract(neg.astype(dtype), fps, out=fps)
        if ties is not None:
            fps += ties * dtype.type(0.5)
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
    tests/test_metrics.py checks it.

    The replicates are computed by a compiled kernel (numba) that walks each model's order
    once per block of 256 replicates, the replicates' counts contiguous per patient; without
    numba, by the numpy path (sparse products, the same numbers, about 10x slower)."""

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
        self._class_counts = (self.pos_by_group.astype(np.int32), self.neg_by_group.astype(np.int32))
        self._buffers: list[np.ndarray] = []  # flat uint8 blocks of counts, reused across seeds
        self._buffers_lock = threading.Lock()

    def points(self, metric: str) -> np.ndarray:
        """``(k,)`` the metric of each model on all samples (every sample weight 1)."""
        if metric not in self._points:
            pos, neg = float(self.y.sum()), float((~self.y).sum())
            per_model = [r.points(pos, neg) for r in self.rankings]
            for m in METRICS:
                self._points[m] = np.array([s[m] for s in per_model])
        return self._points[metric]

    def replicates(self, metrics=METRICS, *, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
        """``{metric: (k, R)}`` replicates; those that weigh one class only are dropped for
        every model, so ``R <= n_boot``."""
        metrics = tuple(metrics)
        for m in metrics:
            if m not in METRICS:
                raise ValueError(f"metric must be one of {METRICS}, got {m!r}")
        cells = len(self.y) * n_boot * len(self.rankings)
        kernels = _kernels() if cells >= _KERNEL_MIN_CELLS else None
        chunk = _chunk_size(self.n_groups)
        per_block = 1 if kernels is None else max(1, min(_BLOCK_REPLICATES // chunk,
                                                         _BLOCK_CELLS // (self.n_groups * chunk)))
        score = self._block_kernel if kernels is not None else self._block_numpy
        # Two blocks (this one and the next, drawn meanwhile) kept for the next seeds; a call
        # made while another is running on this object draws into fresh arrays.
        mine = kernels is not None and self._buffers_lock.acquire(blocking=False)
        try:
            cells = self.n_groups * min(n_boot, per_block * chunk)
            if mine and (not self._buffers or self._buffers[0].size < cells):
                self._buffers = [np.empty(cells, dtype=np.uint8) for _ in range(2)]
            blocks = _count_blocks(self.n_groups, n_boot, seed, per_block, self._buffers if mine else None, kernels)
            return self._replicates(blocks, score, metrics)
        finally:
            if mine:
                self._buffers_lock.release()

    def _replicates(self, blocks, score, metrics) -> dict[str, np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        reps: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
        k = len(self.rankings)
        # The next block's counts are drawn on their own thread while the models score this one.
        with ThreadPoolExecutor(max_workers=max(1, min(k, _workers()))) as pool, \
                ThreadPoolExecutor(max_workers=1) as drawer:
            ahead = drawer.submit(next, blocks, None)
            while (w := ahead.result()) is not None:
                ahead = drawer.submit(next, blocks, None)
                for m, v in score(pool, w, metrics).items():
                    if v.shape[1]:
                        reps[m].append(v)
        return {m: np.concatenate(v, axis=1) if v else np.empty((k, 0)) for m, v in reps.items()}

    def _block_kernel(self, pool, w: np.ndarray, metrics) -> dict[str, np.ndarray]:
        """``{metric: (k, r)}`` for the replicates of the uint8 block ``w`` (patients x R) that
        weigh both classes: every model's compiled walk, one model per thread."""
        kernels = _kernels()
        pos, neg = kernels["class_sums"](w, *self._class_counts)  # (R,) int64 each
        both = (pos > 0) & (neg > 0)  # else the metrics are undefined
        per_model = list(pool.map(lambda r: r.sums(w, neg, metrics), self.rankings))  # [(ap, au)]
        pos, neg = pos[both].astype(np.float64), neg[both].astype(np.float64)
        out = {}
        if "auprc" in metrics:
            out["auprc"] = np.stack([ap[both] for ap, _ in per_model]) / pos
        if "auroc" in metrics:
            out["auroc"] = np.stack([au[both] for _, au in per_model]) / (pos * neg)
        return out

    def _block_numpy(self, pool, w: np.ndarray, metrics) -> dict[str, np.ndarray]:
        """The same as `_block_kernel` by the numpy path (`_Ranking.scores`)."""
        w = w.astype(np.float32)
        pos, neg = self.pos_by_group @ w, self.neg_by_group @ w  # (r,)
        both = (pos > 0) & (neg > 0)
        if not both.all():
            w, pos, neg = np.ascontiguousarray(w[:, both]), pos[both], neg[both]
        if w.shape[1] == 0:
            return {m: np.empty((len(self.rankings), 0)) for m in metrics}
        per_model = list(pool.map(lambda r: r.scores(w, pos, neg, metrics), self.rankings))
        return {m: np.stack([s[m] for s in per_model]) for m in metrics}


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
