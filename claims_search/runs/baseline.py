"""The study's baseline done right: code counts in recent windows -> LightGBM, per task.

Features for one labelled sample (a patient at a prediction time) come only from events at or
before the prediction time (the cache's ``end``):

- counts of every code over the whole history, and in the last 365, 91 and 30 days
  (a sparse matrix: one block of ``vocab_size`` columns per window). Without the windows the
  baseline cannot see recency ("a hypertension diagnosis last month") and is a straw man;
- age at the prediction time, number of events, days since the first and the last event.

Early stopping uses a carve-out of the *train* split (patients, stratified), so the tuning
split stays untouched for comparing against the Transformers. The same metrics
(`metrics.evaluate`) and the same cost record (`cost.Cost`) as the neural runs; a tree has no
meaningful FLOP count, so ``flops`` is None and ``n_params`` is the number of tree leaves.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from claims_search.errors import ClaimsSearchError

log = logging.getLogger(__name__)

# (name, days); None = the whole history. Ordered as the column blocks of the count matrix.
WINDOWS: tuple[tuple[str, int | None], ...] = (("all", None), ("365d", 365), ("91d", 91), ("30d", 30))
DENSE = ("age_years", "n_events", "days_since_first", "days_since_last")

LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass(frozen=True)
class BaselineResult:
    """What one baseline run returns: ``{split: metrics}``, its cost and a summary of the model;
    how many train samples and patients the trees were fit on (early-stopping carve-out
    included, as a Transformer's ``trained_on``) and the splits it read from the cache."""

    metrics: dict[str, dict[str, float | int]]
    cost: Any  # cost.Cost
    info: dict[str, Any]
    predictions: dict[str, Any] = field(default_factory=dict)  # split -> predictions.frame(...)
    trained_on: dict[str, int] = field(default_factory=dict)  # {"samples", "patients"}
    splits_read: tuple[str, ...] = ()


def prediction_days(prediction_time) -> np.ndarray:
    """Days since 1970-01-01 (floor) of a column of timestamps, as int64."""
    t = np.asarray(prediction_time, dtype="datetime64[us]")
    return t.astype("datetime64[D]").astype(np.int64)


def count_features(cache, labels, windows: Sequence[tuple[str, int | None]] = WINDOWS):
    """Build the feature matrix for ``labels`` (rows of a cache's labels table).

    Returns ``(X, names)``: X is a scipy CSR matrix (n_samples, len(windows) * vocab_size +
    len(DENSE)) of float32, names the column names (``"91d:DX//ICD10//I10"``, ``"age_years"``).
    """
    import scipy.sparse as sp

    vocab = cache.vocab_size
    n = len(labels)
    pred_days = prediction_days(labels["prediction_time"].to_numpy())
    subject_idx = labels["subject_idx"].to_numpy()
    ends = labels["end"].to_numpy()
    birth = cache.subjects["birth_days"].to_numpy()
    rows, cols = [], []
    dense = np.full((n, len(DENSE)), np.nan, dtype=np.float32)
    for i in range(n):
        # The whole history (max_len far above any patient), not the model's crop.
        tokens, days = cache.sequence(int(subject_idx[i]), end=int(ends[i]), max_len=1 << 40)  # (T,)
        if len(tokens) == 0:
            dense[i, 1] = 0
            continue
        for w, (_, span) in enumerate(windows):
            keep = tokens if span is None else tokens[days > pred_days[i] - span]
            rows.append(np.full(len(keep), i, dtype=np.int64))
            cols.append(keep.astype(np.int64) + w * vocab)
        dense[i, 1] = len(tokens)
        dense[i, 2] = pred_days[i] - days.min()
        dense[i, 3] = pred_days[i] - days.max()
    b = birth[subject_idx]
    dense[:, 0] = np.where(b != -1, (pred_days - b) / 365.25, np.nan)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    # Duplicate (row, col) entries are summed: that is the count.
    counts = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, len(windows) * vocab))
    X = sp.hstack([counts, sp.csr_matrix(dense)], format="csr")
    codes = cache.vocab["code"].tolist() if hasattr(cache, "vocab") else [str(t) for t in range(vocab)]
    names = [f"{w}:{code}" for w, _ in windows for code in codes] + list(DENSE)
    return X, names


def baseline(
    cache_dir: str | os.PathLike,
    task: str,
    out_dir: str | os.PathLike | None = None,
    *,
    eval_splits: Sequence[str] = ("tuning",),
    seed: int = 0,
    num_threads: int = 0,
    max_rounds: int = 2000,
    n_boot: int = 1000,
    train_patients: int | None = None,
) -> BaselineResult:
    """Train LightGBM on recent-window code counts for ``task``; evaluate on ``eval_splits``.

    ``num_threads=0`` uses every core this process may run on. ``train_patients`` trains on
    that many train patients drawn at random (as ``FinetuneSettings.train_patients``). The cost covers training only
    (features of the train split and the fit), as a Transformer's does, and counts the cores
    used as devices. If ``out_dir`` is given, it is written atomically with ``result.json``
    (metrics, cost, model summary, ``trained_on``, ``splits_read``: aggregates only),
    ``model.txt`` (the trees) and the per-sample ``predictions/<split>.parquet`` (patient-level: that folder only).
    """
    import lightgbm as lgb

    from claims_search.runs import predictions as P
    from claims_search.model.batches import carve_out, labelled_rows, trained_on
    from claims_search.data.cache import Cache
    from claims_search.model.cost import CostMeter
    from claims_search.metrics import evaluate

    cache = Cache.open(cache_dir)
    if task not in cache.tasks:
        raise ClaimsSearchError(f"{cache_dir}: task {task!r} is not in the cache (has: {', '.join(sorted(cache.tasks))})")
    threads = num_threads or len(os.sched_getaffinity(0))
    meter = CostMeter(n_params=0, device="cpu", n_devices=threads)
    with meter:
        train = cache.labels(task, split="train").reset_index(drop=True)
        train = train.iloc[labelled_rows(train, train_patients, seed)].reset_index(drop=True)
        y_train = train["label"].to_numpy().astype(bool)
        if len(np.unique(y_train)) < 2:
            raise ClaimsSearchError(f"{cache_dir}: labels/{task}.parquet: label: the train split has one class only")
        X_train, names = count_features(cache, train)
        fit, stop = carve_out(train, seed)
        params = {**LGB_PARAMS, "seed": seed, "num_threads": threads}
        d_fit = lgb.Dataset(X_train[fit], y_train[fit], free_raw_data=False)
        d_stop = lgb.Dataset(X_train[stop], y_train[stop], reference=d_fit)
        model = lgb.train(
            {**params, "metric": "auc"},
            d_fit,
            num_boost_round=max_rounds,
            valid_sets=[d_stop],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        # "Tokens" = events read to build the training features (the whole-history block).
        meter.add(tokens=int(X_train[:, : cache.vocab_size].sum()), flops=0.0)
    # Trees have no meaningful FLOP count: null, not zero. Size = number of leaves.
    info = _model_summary(model, names)
    cost = replace(meter.cost, flops=None, n_params=info["n_leaves"])
    metrics, preds = {}, {}
    for split in eval_splits:  # scoring is not training: outside the meter, as for Transformers
        rows = cache.labels(task, split=split).reset_index(drop=True)
        if len(rows) == 0:
            raise ClaimsSearchError(f"{cache_dir}: labels/{task}.parquet: split: no samples in split {split!r}")
        X, _ = count_features(cache, rows)
        prob = model.predict(X, num_iteration=model.best_iteration)
        y, groups = rows["label"].to_numpy(), rows["subject_idx"].to_numpy()
        metrics[split] = evaluate(y, prob, groups, where=f"{task}/{split}", n_boot=n_boot, seed=seed)
        preds[split] = P.frame(np.arange(len(rows)), groups, y, prob)
    result = BaselineResult(metrics=metrics, cost=cost, info=info, predictions=preds,
                            trained_on=trained_on(train, np.arange(X_train.shape[0])),
                            splits_read=tuple(cache.splits_read()))
    if out_dir is not None:
        write_result(out_dir, result, model)
    return result


def _model_summary(model, names: list[str]) -> dict[str, Any]:
    """Aggregate facts about the trees: size and how much gain each window carries."""
    gain = model.feature_importance(importance_type="gain")
    dump = model.dump_model()
    n_leaves = int(sum(t["num_leaves"] for t in dump["tree_info"]))
    by_window: dict[str, float] = {}
    for name, g in zip(names, gain):
        group = name.split(":", 1)[0] if ":" in name else name
        by_window[group] = by_window.get(group, 0.0) + float(g)
    total = sum(by_window.values()) or 1.0
    top = np.argsort(gain)[::-1][:20]
    return {
        "best_iteration": int(model.best_iteration),
        "n_trees": int(model.num_trees()),
        "n_leaves": n_leaves,
        "n_features": len(names),
        "gain_share": {k: round(v / total, 4) for k, v in by_window.items()},
        "top_features": [names[i] for i in top if gain[i] > 0],
    }


def write_result(out_dir: str | os.PathLike, result: BaselineResult, model=None) -> None:
    """Write ``result.json`` (and ``model.txt`` if a model is given) into ``out_dir`` atomically."""
    from claims_search.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        payload = {
            "kind": "baseline",
            "metrics": result.metrics,
            "cost": asdict(result.cost) if hasattr(result.cost, "__dataclass_fields__") else result.cost,
            "model": result.info,
            "trained_on": result.trained_on,
            "splits_read": list(result.splits_read),
        }
        (Path(tmp) / "result.json").write_text(json.dumps(payload, indent=2, default=str))
        if model is not None:
            model.save_model(str(Path(tmp) / "model.txt"))
        from claims_search.runs import predictions as P

        for split, df in result.predictions.items():
            P.write(df, Path(tmp) / "predictions" / f"{split}.parquet")
        if "tuning" in result.predictions:  # the cut for predicted classes (meds_predictions.py)
            from claims_search.runs.meds_predictions import THRESHOLD_FILE, choose_threshold

            tuning = result.predictions["tuning"]
            (Path(tmp) / THRESHOLD_FILE).write_text(
                json.dumps(choose_threshold(tuning["label"], tuning["prob"]), indent=2) + "\n")
