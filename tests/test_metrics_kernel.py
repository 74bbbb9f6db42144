"""The paired bootstrap's compiled kernel (claims_search.metrics) against the numpy path it
replaced and against scikit-learn's weighted metrics, on the same patient weights."""

import numpy as np
import pytest

from claims_search import metrics as M

pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def kernel_at_any_size(monkeypatch):
    """The kernel however small the case (below `_KERNEL_MIN_CELLS` the numpy path runs)."""
    assert M._kernels() is not None
    monkeypatch.setattr(M, "_KERNEL_MIN_CELLS", 0)


def _case(seed, patients=120):
    """Patients with 1-4 samples, ~30 % positive, scores tied in blocks (one model rounded to
    one decimal, one to two, one continuous)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(patients), rng.integers(1, 5, patients))
    y = rng.random(len(groups)) < 0.3
    risk = rng.normal(size=len(groups)) + y
    probs = [np.round(1 / (1 + np.exp(-risk)), d) for d in (1, 2)] + [1 / (1 + np.exp(-risk - rng.normal(size=len(groups))))]
    return y, probs, groups


def _weights(n_groups, patient, y, rng, r=40):
    """``(n_groups, r)`` uint8 counts, Poisson(1) but for columns that weigh no positive, no
    negative, or nothing at all (replicates that drop a class)."""
    w = rng.poisson(1.0, (n_groups, r)).astype(np.uint8)
    has_pos = np.bincount(patient, y, n_groups) > 0
    has_neg = np.bincount(patient, ~y, n_groups) > 0
    w[has_pos, 0] = 0
    w[has_neg, 1] = 0
    w[:, 2] = 0
    w[:, 3] = 3  # every patient drawn thrice: the point estimate
    return w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_equals_the_numpy_path_and_weighted_scikit_learn(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, probs, groups = _case(seed)
    _, patient = np.unique(groups, return_inverse=True)
    n_groups = patient.max() + 1
    w = _weights(n_groups, patient, y, np.random.default_rng(seed))
    pos = np.bincount(patient, y, n_groups) @ w.astype(np.float64)  # (r,)
    neg = np.bincount(patient, ~y, n_groups) @ w.astype(np.float64)
    both = (pos > 0) & (neg > 0)
    assert not both[:3].any() and both[3:].all()
    for p in probs:
        ranking = M._Ranking(y, p, patient, n_groups)
        for metrics in (("auprc", "auroc"), ("auprc",), ("auroc",)):
            ap, au = ranking.sums(w, neg, metrics)
            ref = ranking.scores(np.ascontiguousarray(w[:, both], dtype=np.float32), pos[both], neg[both], metrics)
            if "auprc" in metrics:
                assert np.array_equal(ap[both] / pos[both], ref["auprc"])
            if "auroc" in metrics:
                assert np.array_equal(au[both] / (pos[both] * neg[both]), ref["auroc"])
        ap, au = ranking.sums(w, neg, M.METRICS)
        for j in np.flatnonzero(both):
            sw = w[patient, j]
            assert ap[j] / pos[j] == pytest.approx(average_precision_score(y, p, sample_weight=sw), abs=1e-6)
            assert au[j] / (pos[j] * neg[j]) == pytest.approx(roc_auc_score(y, p, sample_weight=sw), abs=1e-6)
        assert ap[2] == au[2] == 0.0  # no weight: nothing summed


def test_replicates_are_the_numpy_path_s_whatever_the_blocks(monkeypatch):
    # Small chunks of the random stream, several to a block and the last one short, and more
    # replicates than one block: the kernel's blocks must give the replicates in the numpy
    # path's order, the same numbers for the same seed.
    y, probs, groups = _case(5, patients=150)
    monkeypatch.setattr(M, "_CHUNK_CELLS", 1000)  # 6 replicates per chunk
    monkeypatch.setattr(M, "_BLOCK_CELLS", 5000)  # 5 chunks per block
    boot = M.PairedBootstrap(y, probs, groups)
    fast = boot.replicates(n_boot=100, seed=3)
    monkeypatch.setattr(M, "_kernels", lambda: None)
    slow = M.PairedBootstrap(y, probs, groups)
    assert slow.replicates(n_boot=100, seed=3).keys() == fast.keys()
    for m in M.METRICS:
        assert fast[m].shape == (3, 100)
        assert np.array_equal(fast[m], slow.replicates(n_boot=100, seed=3)[m])
        assert np.array_equal(boot.points(m), slow.points(m))


def test_replicates_that_drop_a_class_are_dropped_for_every_model():
    # 12 patients, one of them the only positive: the replicates that do not draw it are dropped.
    y = np.zeros(12, dtype=bool)
    y[4] = True
    probs = [np.linspace(0.9, 0.1, 12), np.round(np.linspace(0.9, 0.1, 12), 1)]
    boot = M.PairedBootstrap(y, probs, np.arange(12))
    draws = np.concatenate(list(M.patient_weights(12, 300, 9)), axis=1)  # (12, 300)
    kept = draws[4] > 0
    reps = boot.replicates(n_boot=300, seed=9)
    assert 0 < kept.sum() < 300 and reps["auroc"].shape == (2, kept.sum())
    c = draws[4, kept]  # the positive, 5th of 12, drawn c times: precision c / (c + negatives above)
    assert reps["auprc"][0] == pytest.approx(c / (c + draws[:4, kept].sum(axis=0)))


def _old_poisson_weights(rng, n_groups, r):
    """The float32 draw the numpy path used before the kernel (copied): a seed's weights."""
    value = np.where(M._BUCKET_LOW == M._BUCKET_HIGH, M._BUCKET_LOW, np.nan).astype(np.float32)
    u = rng.integers(0, 65536, size=(n_groups, r), dtype=np.uint16)
    w = value[u]
    split = np.flatnonzero(np.isnan(w))
    if len(split):
        x = (u.ravel()[split] + rng.random(len(split))) / 65536.0
        w.ravel()[split] = np.searchsorted(M._POISSON_CDF, x, side="right")
    return w


def test_a_seed_draws_the_weights_it_drew_before():
    rng = np.random.default_rng(11)
    old = np.concatenate([_old_poisson_weights(rng, 5000, r) for r in (64, 64, 22)], axis=1)
    new = np.concatenate(list(M.patient_weights(5000, 150, 11)), axis=1)
    assert (M._BUCKET_COUNT == M._SPLIT).sum() > 0  # some draws take the second uniform
    assert new.dtype == np.float32 and np.array_equal(old, new)
    for kernels in (None, M._kernels()):  # the numpy and the compiled look-up
        blocks = list(M._count_blocks(5000, 150, 11, chunks_per_block=2, kernels=kernels))
        assert [b.shape[1] for b in blocks] == [128, 22] and np.array_equal(np.concatenate(blocks, axis=1), new)
