"""meds-evaluation's figures of a model's predictions, computed here with its definitions.

The MEDS ecosystem scores binary predictions with ``meds-evaluation`` (0.0.6:
``meds_evaluation.evaluate.evaluate_binary_classification``). Its dependencies clash with the
project's (polars 2), so it lives in its own virtual environment (``make meds-eval``); the
held-out confirmation reports its figures beside the paired intervals by computing them here,
the way it does, on the table ``claims-search predict`` writes (``meds_predictions.table``:
its row order, its float32 probabilities). ``tests/test_meds_metrics.py`` runs
``meds-evaluation-cli`` on the same file and checks the figures are equal.

The definitions (meds-evaluation 0.0.6, scikit-learn's functions):

- ``roc_auc_score``, ``average_precision_score``: scikit-learn's, on the probabilities;
- ``brier_score``: ``sklearn.metrics.brier_score_loss``;
- ``calibration_error``: the unweighted mean, over the non-empty bins of
  ``sklearn.calibration.calibration_curve(n_bins=10)`` (ten equal-width bins on [0, 1]), of
  |fraction of positives - mean predicted probability|;

each computed twice:

- ``samples_equally_weighted``: every prediction once;
- ``subjects_equally_weighted``: every subject's predictions resampled to exactly
  ``samples_per_subject`` (4) rows, drawn with replacement: the table sorted by ``subject_id``
  (stably: polars keeps equal keys in order), then for each subject in ascending id order
  ``np.random.choice(its rows, 4, replace=True)`` from NumPy's legacy generator seeded once with
  ``resampling_seed`` (0). A subject with one prediction counts four times, one with forty
  counts four times. The draw is random, so the figure is one draw (as meds-evaluation's is),
  not an expectation.

meds-evaluation also reports ``binary_accuracy`` and ``f1_score`` of ``predicted_boolean_value``;
the confirmation leaves them out (they depend on the threshold, not on the model's ranking or
calibration). Aggregates only: nothing here keeps a subject id or a row.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

SAMPLES_PER_SUBJECT = 4  # meds-evaluation 0.0.6's defaults (configs/meds_evaluation.yaml)
RESAMPLING_SEED = 0
N_BINS = 10
FIGURES = ("roc_auc_score", "average_precision_score", "brier_score", "calibration_error")
WEIGHTINGS = {"samples": "samples_equally_weighted", "subjects": "subjects_equally_weighted"}
LABELS = {"roc_auc_score": "AUROC", "average_precision_score": "AUPRC", "brier_score": "Brier",
          "calibration_error": "calibration error"}


def binary_figures(y_true, prob) -> dict[str, float]:
    """meds-evaluation's probability figures of one set of predictions (``FIGURES``). A figure
    that one class alone leaves undefined (AUROC, AUPRC) is NaN, where meds-evaluation raises."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(prob)
    out: dict[str, float] = {}
    both = bool(y.any() and not y.all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's one-class warnings: NaN says it
        out["roc_auc_score"] = float(roc_auc_score(y, p)) if both else math.nan
        out["average_precision_score"] = float(average_precision_score(y, p)) if both else math.nan
        prob_true, prob_pred = calibration_curve(y, p, n_bins=N_BINS)
    out["calibration_error"] = float(np.abs(prob_true - prob_pred).mean())
    out["brier_score"] = float(brier_score_loss(y, p))
    return out


def subject_resample(subject_id, samples_per_subject: int = SAMPLES_PER_SUBJECT,
                     seed: int = RESAMPLING_SEED) -> np.ndarray:
    """Row positions (into the table as given) of meds-evaluation's per-subject resample:
    ``samples_per_subject`` rows per subject, in ascending subject order."""
    sid = np.asarray(subject_id)
    order = np.argsort(sid, kind="stable")
    splits = np.split(np.arange(len(sid)), np.unique(sid[order], return_index=True)[1][1:])
    rng = np.random.RandomState(seed)  # what np.random.seed(seed) seeds: the legacy MT19937 stream
    picked = np.concatenate([rng.choice(s, samples_per_subject, replace=True) for s in splits])
    return order[picked]


def evaluate(subject_id, y_true, prob, *, samples_per_subject: int = SAMPLES_PER_SUBJECT,
             seed: int = RESAMPLING_SEED) -> dict[str, dict[str, float]]:
    """meds-evaluation's probability figures of a prediction table given as aligned columns in
    the table's row order, shaped as its output JSON: ``{"samples_equally_weighted": {...},
    "subjects_equally_weighted": {...}}``. ``prob`` is rounded to float32, as the table stores
    it, then scored in float64, as meds-evaluation's scikit-learn calls convert its polars
    columns (a Brier score summed in float32 differs in the eighth digit)."""
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(prob, dtype=np.float32).astype(np.float64)
    rows = subject_resample(subject_id, samples_per_subject, seed)
    return {WEIGHTINGS["samples"]: binary_figures(y, p),
            WEIGHTINGS["subjects"]: binary_figures(y[rows], p[rows])}


def evaluate_table(table) -> dict[str, dict[str, float]]:
    """:func:`evaluate` of a table in the MEDS prediction schema (a pandas frame)."""
    return evaluate(table["subject_id"].to_numpy(), table["boolean_value"].to_numpy(),
                    table["predicted_boolean_probability"].to_numpy())


def flat(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"meds_samples_roc_auc_score": ..., "meds_subjects_calibration_error": ...}``: the
    figures as metric names (MLflow's, the confirmation's)."""
    return {f"meds_{short}_{name}": result[long][name]
            for short, long in WEIGHTINGS.items() for name in FIGURES if name in result.get(long, {})}


def lines(metrics: dict, indent: str = "") -> list[str]:
    """The figures of a flat metrics dict, one line per weighting (none if it holds none)."""
    out = []
    for short, long in WEIGHTINGS.items():
        got = [(LABELS[n], metrics.get(f"meds_{short}_{n}")) for n in FIGURES]
        if all(v is None for _, v in got):
            continue
        text = "  ".join(f"{label} {'-' if v is None or v != v else f'{v:.3f}'}" for label, v in got)
        out.append(f"{indent}meds-evaluation, {long.replace('_', ' ') + ':':<26} {text}")
    return out
