"""Predictions in the MEDS prediction schema, and the threshold that turns a probability into a
predicted class. What `claims-search predict` and the registered pyfunc hand back.

The schema is ``meds_evaluation.schema.PredictionSchema`` (meds-evaluation 0.0.6): the MEDS
label schema plus the model's outputs, one row per labelled sample::

    subject_id                     int64
    prediction_time                timestamp[us]
    boolean_value                  bool     the true label (MEDS: optional, never null)
    predicted_boolean_value        bool     probability >= the model's threshold
    predicted_boolean_probability  float32  the predicted probability of the positive class

The MEDS label schema makes ``boolean_value`` optional but not nullable: a sample whose label is
unknown has no row with a null label, the table has no ``boolean_value`` column at all (and
meds-evaluation cannot score it). Every sample claims-search predicts comes from a task's labels,
so the column is always there. PredictionSchema refuses columns it does not know: nothing else
is written.

The threshold rule: the probability cut that maximises F1 on the tuning split (ties: the
highest such cut, the fewest predicted positives). Why F1 and not accuracy or Youden's J:
claims tasks are rare-positive (a few per cent), where the accuracy-maximising cut predicts
nobody positive; Youden's J weighs sensitivity and specificity equally whatever the prevalence,
and at a few per cent that flags many times more patients than there are positives. F1 is the
figure meds-evaluation reports for ``predicted_boolean_value`` beside accuracy, and it asks the
predicted positives to be mostly right. The cut is chosen once, when the model is trained (the
tuning split is the one the search already reads; held-out stays untouched), and travels with
the model: a fine-tuned checkpoint's ``meta.json`` and a baseline folder's ``threshold.json``
(``packaging`` copies it into the MLflow model). Chosen on float32 probabilities, as written,
so ``predicted_boolean_value == (predicted_boolean_probability >= threshold)`` holds in the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
           "predicted_boolean_probability")
RULE = "max_f1_on_tuning"
THRESHOLD_FILE = "threshold.json"  # a baseline folder's (and its MLflow model's) threshold


def arrow_schema():
    """The pyarrow schema of the table this module writes (PredictionSchema's types)."""
    import pyarrow as pa

    return pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")),
                      ("boolean_value", pa.bool_()), ("predicted_boolean_value", pa.bool_()),
                      ("predicted_boolean_probability", pa.float32())])


def choose_threshold(labels, prob, split: str = "tuning") -> dict:
    """The F1-maximising cut of ``prob`` (aligned 1-D arrays) against ``labels``, as the record
    kept with the model: ``{"rule", "split", "value", "f1", "n"}`` (aggregates only).

    A split with one class only has no F1 to maximise: the cut is then 0.5 and ``f1`` null.
    """
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(prob, dtype=np.float32)
    record = {"rule": RULE, "split": split, "n": int(len(y))}
    if y.all() or not y.any():
        return {**record, "value": 0.5, "f1": None}
    cuts = np.unique(p)[::-1]  # candidate cuts, highest first; predicted positive: p >= cut
    order = np.argsort(-p, kind="stable")
    sorted_p, sorted_y = p[order], y[order]
    # For each cut, the samples with p >= cut are a prefix of the descending order.
    n_pred = np.searchsorted(-sorted_p, -cuts, side="right")
    tp = np.cumsum(sorted_y)[n_pred - 1]
    f1 = 2 * tp / (n_pred + y.sum())
    best = int(np.argmax(f1))  # the first maximum: the highest cut among ties
    return {**record, "value": float(cuts[best]), "f1": float(f1[best])}


def table(ids: pd.DataFrame, labels, prob, threshold: float) -> pd.DataFrame:
    """The prediction table: ``ids`` (``subject_id``, ``prediction_time``) with the labels, the
    float32 probabilities and the classes they give at ``threshold`` (arrays aligned with ids)."""
    p = np.asarray(prob, dtype=np.float32)
    return pd.DataFrame({
        "subject_id": ids["subject_id"].to_numpy().astype(np.int64),
        "prediction_time": pd.to_datetime(ids["prediction_time"]).to_numpy().astype("datetime64[us]"),
        "boolean_value": np.asarray(labels, dtype=bool),
        "predicted_boolean_value": p >= np.float32(threshold),
        "predicted_boolean_probability": p,
    })


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """The table as Parquet bytes, in the schema's exact types."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df.loc[:, list(COLUMNS)], schema=arrow_schema(),
                                        preserve_index=False), buf)
    return buf.getvalue()


def recorded_threshold(location: str | os.PathLike, is_baseline: bool) -> dict | None:
    """The threshold record kept with a model: a checkpoint's ``meta.json`` ``threshold``, a
    baseline folder's ``threshold.json``; None for a model trained before thresholds were kept."""
    folder = Path(location)
    if is_baseline:
        f = folder / THRESHOLD_FILE
        return json.loads(f.read_text()) if f.exists() else None
    meta = folder / "meta.json"
    return json.loads(meta.read_text()).get("threshold") if meta.exists() else None
