"""AUROC/AUPRC with patient-level bootstrap intervals (claims_search.metrics)."""

import numpy as np
import pytest

from claims_search.errors import ClaimsSearchError
from claims_search.metrics import METRIC_KEYS, evaluate, format_metrics


def test_hand_computed_case():
    # Ranked by probability: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg).
    # AUROC: of the 4 (pos, neg) pairs, 3 are ordered right -> 0.75.
    # AUPRC (average precision): recall 0.5 at precision 1, recall 1 at precision 2/3 -> 5/6.
    m = evaluate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], groups=[1, 2, 3, 4], n_boot=50)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auprc"] == pytest.approx(5 / 6)
    assert (m["n"], m["positives"]) == (4, 2)
    assert list(m) == list(METRIC_KEYS)


def test_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.3
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 400), 0, 1)
    a = evaluate(y, p, groups=np.arange(400), seed=7, n_boot=200)
    b = evaluate(y, p, groups=np.arange(400), seed=7, n_boot=200)
    c = evaluate(y, p, groups=np.arange(400), seed=8, n_boot=200)
    assert a == b
    assert a != c
    assert a["auroc_low"] < a["auroc"] < a["auroc_high"]
    assert a["auprc_low"] < a["auprc"] < a["auprc_high"]
    assert 0.5 < a["auroc_low"]  # a real signal: the interval excludes chance


def test_bootstrap_resamples_patients_not_samples():
    # 60 patients, each with 5 identical samples (one per checkup, same label and score).
    rng = np.random.default_rng(0)
    y1 = rng.random(60) < 0.4
    p1 = np.clip(0.4 + 0.2 * y1 + rng.normal(0, 0.25, 60), 0, 1)
    patients = np.repeat(np.arange(60), 5)
    y5, p5 = np.repeat(y1, 5), np.repeat(p1, 5)

    by_patient = evaluate(y5, p5, groups=patients, seed=3, n_boot=300)
    one_each = evaluate(y1, p1, groups=np.arange(60), seed=3, n_boot=300)
    by_sample = evaluate(y5, p5, groups=np.arange(300), seed=3, n_boot=300)

    # Repeating a patient's samples adds no information: resampling patients gives exactly the
    # interval of one sample per patient, while resampling samples pretends there are 300.
    assert by_patient["auroc_low"] == pytest.approx(one_each["auroc_low"])
    assert by_patient["auroc_high"] == pytest.approx(one_each["auroc_high"])
    width = lambda m: m["auroc_high"] - m["auroc_low"]  # noqa: E731
    assert width(by_sample) < 0.7 * width(by_patient)


def test_one_class_names_task_and_split():
    with pytest.raises(ClaimsSearchError, match="ckd_incidence/tuning.*negative"):
        evaluate([0, 0, 0], [0.1, 0.2, 0.3], groups=[1, 2, 3], where="ckd_incidence/tuning")


def test_nan_probabilities_and_length_mismatch_are_errors():
    with pytest.raises(ClaimsSearchError, match="NaN"):
        evaluate([0, 1], [0.1, float("nan")], groups=[1, 2])
    with pytest.raises(ClaimsSearchError, match="differ in length"):
        evaluate([0, 1], [0.1], groups=[1, 2])


def test_format_metrics_prints_intervals():
    m = evaluate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], groups=[1, 2, 3, 4], n_boot=50)
    line = format_metrics({"tuning": m})
    assert line.startswith("tuning") and "AUROC 0.750 [" in line and "positives=2" in line


# ---- paired comparisons ------------------------------------------------------------------------
from claims_search.metrics import bootstrap_replicates, paired_bootstrap, patient_weights, percentile_interval  # noqa: E402,E501

# 30 patients, one tuning sample each, listed in model A's order (highest score first): every
# positive sits right below a negative. Model B is A with each positive moved one place down,
# below the next negative: the same ranking almost everywhere, slightly worse throughout.
LABELS = np.array([0, 1] * 10 + [0] * 10, dtype=bool)
PROB_A = np.linspace(0.95, 0.05, 30)
PROB_B = np.where(LABELS, np.roll(PROB_A, -1) - 0.001, PROB_A)
PATIENTS = np.arange(30)


def test_vectorised_replicates_equal_weighted_scikit_learn_calls():
    from sklearn.metrics import average_precision_score, roc_auc_score

    # Tied scores (scikit-learn counts a tie as half a pair, and scores a tied block at the
    # precision of its end) and patients with two samples; then a larger case, half its scores
    # tied in blocks. Each replicate's weights are its patients' Poisson draws
    # (`patient_weights`), on all of each patient's samples.
    small = (np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0], dtype=bool),
             np.array([0.9, 0.9, 0.7, 0.7, 0.5, 0.4, 0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 2, 2, 3, 4, 5, 6, 7]))
    rng = np.random.default_rng(3)
    big_y, big_p, big_g = rng.random(400) < 0.3, rng.random(400), rng.integers(0, 150, 400)
    big_p[::2] = np.round(big_p[::2], 1)
    for y, p, groups in (small, (big_y, big_p, big_g)):
        _, patient = np.unique(groups, return_inverse=True)
        draws = np.concatenate(list(patient_weights(patient.max() + 1, 60, 5)), axis=1).T  # (60, patients)
        weights = [d[patient] for d in draws if d[patient] @ y > 0 and d[patient] @ ~y > 0]
        for metric, fn in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
            points, reps = bootstrap_replicates(y, [p], groups, metric, n_boot=60, seed=5)
            assert points[0] == pytest.approx(fn(y, p), abs=1e-12)
            # float32 sums of integer weights are exact; a precision is rounded to float32 (1e-7)
            assert reps[0] == pytest.approx([fn(y, p, sample_weight=w) for w in weights], abs=1e-6)


def test_patient_weights_are_poisson_one_and_reproducible():
    w = np.concatenate(list(patient_weights(20_000, 100, 7)), axis=1)
    assert w.shape == (20_000, 100) and w.dtype == np.float32
    assert np.array_equal(w, np.concatenate(list(patient_weights(20_000, 100, 7)), axis=1))
    freq = np.bincount(w.astype(int).ravel(), minlength=6)[:6] / w.size
    assert freq == pytest.approx(np.exp(-1) / np.array([1, 1, 2, 6, 24, 120]), abs=1e-3)


def _multinomial_replicates(y, probs, groups, metric, n_boot, seed):
    """The bootstrap this module used until issue 26: each replicate draws the n patients with
    replacement (multinomial counts), every model's weighted metric on that draw."""
    from claims_search.metrics import _Ranking

    _, patient = np.unique(groups, return_inverse=True)
    n_groups = patient.max() + 1
    draws = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_boot)
    pos, neg = draws @ np.bincount(patient, y, n_groups), draws @ np.bincount(patient, ~y, n_groups)
    both = (pos > 0) & (neg > 0)
    w = np.ascontiguousarray(draws[both].T, dtype=np.float32)
    return np.stack([_Ranking(y, np.asarray(p, float), patient, n_groups).scores(
        w, pos[both].astype(float), neg[both].astype(float), (metric,))[metric] for p in probs])


def _synthetic_split(seed, patients=600, ties=False):
    """Patients with 1-3 samples, a shared risk and two correlated models' probabilities."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(patients), rng.integers(1, 4, patients))
    risk = rng.normal(size=patients)[groups] + 0.5 * rng.normal(size=len(groups))
    y = rng.random(len(groups)) < 1 / (1 + np.exp(-(2 * risk - 2.5)))
    shared = rng.normal(size=len(groups))
    a = 1 / (1 + np.exp(-(risk + 0.6 * shared)))
    b = 1 / (1 + np.exp(-(risk + 0.6 * shared + 0.5 * rng.normal(size=len(groups)))))
    if ties:  # scores with few values: large tied blocks
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b, groups


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True)])
def test_poisson_intervals_equal_the_multinomial_patient_bootstrap_within_monte_carlo_error(seed, ties):
    # Each end of a 95 % percentile interval from B = 1000 replicates has Monte-Carlo standard
    # error sqrt(0.025 * 0.975 / B) / phi(1.96) * sd = 0.085 sd for near-normal replicates, so the
    # ends of two independent bootstraps differ with standard error 0.12 sd (the Poisson and the
    # multinomial bootstrap of a ratio of sums agree to O(1/patients) beyond that). Tolerance:
    # 0.5 sd, about 4 standard errors, on the model's own interval and on the paired difference.
    y, a, b, groups = _synthetic_split(seed, ties=ties)
    for metric in ("auroc", "auprc"):
        _, new = bootstrap_replicates(y, [a, b], groups, metric, n_boot=1000, seed=seed)
        old = _multinomial_replicates(y, [a, b], groups, metric, 1000, seed)
        for new_reps, old_reps in ((new[0], old[0]), (new[0] - new[1], old[0] - old[1])):
            sd = old_reps.std()
            assert sd > 0
            assert percentile_interval(new_reps) == pytest.approx(percentile_interval(old_reps), abs=0.5 * sd)
            assert new_reps.std() == pytest.approx(sd, rel=0.15)  # the same spread, not only the ends


def test_every_seed_reuses_the_one_sort_of_each_model():
    from claims_search.metrics import PairedBootstrap

    y, a, b, groups = _synthetic_split(4)
    boot = PairedBootstrap(y, [a, b], groups)
    for seed in (0, 1):
        _, reps = bootstrap_replicates(y, [a, b], groups, "auprc", n_boot=200, seed=seed)
        assert np.array_equal(boot.replicates(("auprc",), n_boot=200, seed=seed)["auprc"], reps)
    assert not np.array_equal(boot.replicates(("auprc",), n_boot=200, seed=0)["auprc"],
                              boot.replicates(("auprc",), n_boot=200, seed=1)["auprc"])


def test_one_model_replicates_give_evaluate_s_interval():
    points, reps = bootstrap_replicates(LABELS, [PROB_B], PATIENTS, "auroc", n_boot=300, seed=2)
    m = evaluate(LABELS, PROB_B, PATIENTS, n_boot=300, seed=2)
    assert percentile_interval(reps[0]) == pytest.approx((m["auroc_low"], m["auroc_high"]))


def test_a_model_against_itself_differs_by_exactly_zero():
    d = paired_bootstrap(LABELS, PROB_A, PROB_A, PATIENTS, "auprc", n_boot=200)
    assert (d["diff"], d["low"], d["high"]) == (0.0, 0.0, 0.0)
    assert (d["n"], d["patients"], d["positives"], d["metric"]) == (30, 30, 10, "auprc")


def test_correlated_models_give_a_paired_interval_far_narrower_than_their_own():
    for metric in ("auroc", "auprc"):
        d = paired_bootstrap(LABELS, PROB_A, PROB_B, PATIENTS, metric)
        _, reps = bootstrap_replicates(LABELS, [PROB_B], PATIENTS, metric)  # B's own interval
        low, high = percentile_interval(reps[0])
        assert 0 < d["low"] < d["diff"] < d["high"]  # A is better, and the pairing sees it
        assert d["high"] - d["low"] < 0.3 * (high - low)


def test_swapping_the_models_mirrors_the_difference():
    ab = paired_bootstrap(LABELS, PROB_A, PROB_B, PATIENTS, "auroc", n_boot=200)
    ba = paired_bootstrap(LABELS, PROB_B, PROB_A, PATIENTS, "auroc", n_boot=200)
    assert ba["diff"] == pytest.approx(-ab["diff"])
    assert (ba["low"], ba["high"]) == pytest.approx((-ab["high"], -ab["low"]))


def test_paired_bootstrap_resamples_patients_not_samples():
    # Each patient's sample repeated 4 times (4 checkups, same scores): no new information.
    four = paired_bootstrap(np.repeat(LABELS, 4), np.repeat(PROB_A, 4), np.repeat(PROB_B, 4),
                            np.repeat(PATIENTS, 4), "auroc", n_boot=300, seed=1)
    one = paired_bootstrap(LABELS, PROB_A, PROB_B, PATIENTS, "auroc", n_boot=300, seed=1)
    assert (four["low"], four["high"]) == pytest.approx((one["low"], one["high"]))
    assert (four["n"], four["patients"]) == (120, 30)


def test_paired_bootstrap_refuses_what_it_cannot_compare():
    with pytest.raises(ClaimsSearchError, match="one class"):
        paired_bootstrap([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [1, 2, 3])
    with pytest.raises(ClaimsSearchError, match="differ in length"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.1], [1, 2])
    with pytest.raises(ClaimsSearchError, match="NaN"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="metric"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.1, 0.2], [1, 2], metric="f1")


# ---- average precision over tied scores ------------------------------------------------------
from claims_search.metrics import expected_average_precision  # noqa: E402


def test_expected_average_precision_is_scikit_learn_s_when_no_scores_tie():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    y, p = rng.random(400) < 0.2, rng.random(400)
    assert expected_average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_a_two_valued_score_gets_the_average_over_orders_of_its_ties_not_the_block_end():
    # One tie block: 1 positive among 2 samples. Either order is equally likely, so the
    # positive's precision is 1 or 1/2: 0.75 on average. scikit-learn scores the block at its
    # end (1/2), below both orders' mean: a ceiling with ties would read lower than its models.
    from sklearn.metrics import average_precision_score

    y, p = np.array([True, False]), np.array([0.9, 0.9])
    assert average_precision_score(y, p) == pytest.approx(0.5)
    assert expected_average_precision(y, p) == pytest.approx(0.75)


def test_expected_average_precision_matches_random_tie_breaking_on_average():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.3
    p = np.where(y, rng.choice([0.9, 0.5, 0.1], 300, p=[0.5, 0.3, 0.2]), rng.choice([0.9, 0.5, 0.1], 300, p=[0.1, 0.3, 0.6]))
    orders = [average_precision_score(y, p + rng.random(300) * 1e-9) for _ in range(3000)]
    assert expected_average_precision(y, p) == pytest.approx(np.mean(orders), abs=3 * np.std(orders) / np.sqrt(3000) + 1e-4)
    assert expected_average_precision(y, p) > average_precision_score(y, p)
