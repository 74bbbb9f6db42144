"""meds-evaluation's figures computed in claims_search (claims_search/runs/meds_metrics.py): equal to
what ``meds-evaluation-cli`` (0.0.6, its own venv: ``make meds-eval``) writes for the same file,
and carried by the held-out confirmation to MLflow and to ``recommend``'s output."""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from claims_search import cli
from tests.conftest import meds_eval
from claims_search.runs import meds_metrics as MM
from claims_search.runs import meds_predictions as MP


def meds_evaluation_cli(table: pd.DataFrame, folder: Path) -> dict:
    """meds-evaluation-cli's output JSON for ``table``, written as ``predict`` writes it."""
    path = folder / "predictions.parquet"
    path.write_bytes(MP.to_parquet_bytes(table))
    res = subprocess.run([meds_eval("meds-evaluation-cli"), f"predictions_path={path}",
                          f"output_file={folder / 'eval.json'}"], capture_output=True, text=True,
                         timeout=300, cwd=folder)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((folder / "eval.json").read_text())


def a_table(seed: int, n: int = 2000, subjects: int = 400) -> pd.DataFrame:
    """Predictions as a model makes them: subjects in no order, several samples each (one
    subject with a single sample), tied and extreme probabilities, a few per cent positive."""
    rng = np.random.default_rng(seed)
    sid = rng.integers(10_000, 10_000 + subjects, n)
    sid[0] = 99_999  # a subject with one prediction
    y = rng.random(n) < 0.06
    p = np.clip(rng.beta(1, 8, n) + 0.25 * y, 0, 1).round(2)  # ties
    p[:3] = [0.0, 1.0, 0.1]  # the bin edges
    ids = pd.DataFrame({"subject_id": sid, "prediction_time": pd.Timestamp("2021-01-01")
                        + pd.to_timedelta(rng.integers(0, 900, n), unit="D")})
    return MP.table(ids, y, p, 0.3)


@pytest.mark.parametrize("seed", [0, 1])
def test_our_figures_equal_meds_evaluation_cli_on_the_same_file(seed, tmp_path):
    table = a_table(seed)
    theirs = meds_evaluation_cli(table, tmp_path)
    ours = MM.evaluate_table(table)
    for weighting in MM.WEIGHTINGS.values():
        for name in MM.FIGURES:
            assert ours[weighting][name] == theirs[weighting][name], (weighting, name)
    # The subject weighting is a different draw, not the same figure.
    assert ours["subjects_equally_weighted"] != ours["samples_equally_weighted"]


def test_subject_resample_draws_four_rows_per_subject_in_subject_order():
    sid = np.array([7, 3, 7, 3, 3, 9])
    rows = MM.subject_resample(sid)
    assert len(rows) == 12
    assert sid[rows].tolist() == [3] * 4 + [7] * 4 + [9] * 4
    assert (rows[-4:] == 5).all()  # subject 9's only row, four times


def test_a_draw_with_one_class_leaves_auroc_and_auprc_undefined():
    got = MM.binary_figures([False, False, False], [0.1, 0.2, 0.3])
    assert math.isnan(got["roc_auc_score"]) and math.isnan(got["average_precision_score"])
    assert got["brier_score"] == pytest.approx((0.01 + 0.04 + 0.09) / 3)
    assert got["calibration_error"] == pytest.approx(0.2)  # three bins, each |0 - p|


def test_flat_names_and_lines():
    result = MM.evaluate_table(a_table(0, n=300, subjects=60))
    flat = MM.flat(result)
    assert sorted(flat) == sorted(f"meds_{w}_{n}" for w in ("samples", "subjects") for n in MM.FIGURES)
    text = MM.lines(flat, "  ")
    assert len(text) == 2 and text[0].startswith("  meds-evaluation, samples equally weighted:  AUROC ")
    assert text[1].startswith("  meds-evaluation, subjects equally weighted: AUROC ")
    assert MM.lines({"auprc": 0.5}) == []
    # A figure MLflow never received (NaN is not logged) is shown as missing, not as a number.
    assert "AUROC -" in MM.lines({k: v for k, v in flat.items() if k != "meds_subjects_roc_auc_score"})[1]


def test_the_confirmation_carries_them_to_mlflow_and_recommend(tmp_path, checkpoint, capsys):
    pytest.importorskip("mlflow")
    from claims_search.tracking.tracker import Tracker, load_confirmation
    from tests.test_tracking import search_results

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "meds-figures", tmp_path / "outbox", metric="auprc", cost="device_seconds")
    for r in search_results(checkpoint):
        tracker.log_trial(r, sync=False)
    tracker.publish()
    figures = MM.flat(MM.evaluate_table(a_table(0)))
    scores = {"auprc": 0.40, "auprc_low": 0.35, "auprc_high": 0.46, "auroc": 0.8, "auroc_low": 0.7,
              "auroc_high": 0.9, "n": 2000, "positives": 120, **figures}
    tracker.log_confirmation("ckd_incidence", "held_out", {
        "recommended": {"trial_id": "t0", "metrics": scores},
        "baseline": {"trial_id": "baseline", "metrics": {**scores, "meds_subjects_roc_auc_score": float("nan")}}})
    tracker.sync()

    got = load_confirmation(uri, "meds-figures")["ckd_incidence"]
    assert got["recommended"]["metrics"] == pytest.approx(scores)
    assert "meds_subjects_roc_auc_score" not in got["baseline"]["metrics"]  # NaN: not logged

    assert cli.main(["recommend", "--experiment", "meds-figures", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out.splitlines()
    at = text.index("    recommended AUPRC 0.400 [0.350, 0.460]  (n=2000, trial t0)")
    assert text[at + 1:at + 3] == MM.lines(figures, " " * 16)
    samples = text[at + 1]
    assert samples.startswith("                meds-evaluation, samples equally weighted:  AUROC ")
    assert f"AUPRC {figures['meds_samples_average_precision_score']:.3f}" in samples
    assert f"calibration error {figures['meds_samples_calibration_error']:.3f}" in samples
    base = text.index("    baseline    AUPRC 0.400 [0.350, 0.460]  (n=2000, trial baseline)")
    assert "AUROC -  AUPRC" in text[base + 2]
