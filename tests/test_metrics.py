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
