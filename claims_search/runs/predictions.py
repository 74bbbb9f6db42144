"""Per-sample predictions of one model on one task's split: what paired comparisons read.

Patient-level data: these files live only in a trial's folder under ``--storage`` (or a local
path), never in MLflow, logs or artifacts. One Parquet file per (trial, task, split)::

    row          int64    position in ``cache.labels(task, split)`` (the same rows for every
                          model of a task: paired comparisons align on it)
    subject_idx  int32    the patient (row in the cache's subjects), the bootstrap's cluster
    label        bool
    prob         float64  predicted probability of the positive class

Sorted by ``row``.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from claims_search import storage as st
from claims_search.errors import ClaimsSearchError

COLUMNS = ("row", "subject_idx", "label", "prob")


def frame(rows: np.ndarray, subject_idx: np.ndarray, labels: np.ndarray, prob: np.ndarray) -> pd.DataFrame:
    """The predictions table, sorted by row (inputs are aligned 1-D arrays)."""
    df = pd.DataFrame({"row": np.asarray(rows, dtype=np.int64),
                       "subject_idx": np.asarray(subject_idx, dtype=np.int32),
                       "label": np.asarray(labels, dtype=bool), "prob": np.asarray(prob, dtype=np.float64)})
    return df.sort_values("row", kind="stable").reset_index(drop=True)


def write(df: pd.DataFrame, path: str | os.PathLike) -> str:
    """Write a predictions table to a local path or a URI; returns the normalized location."""
    buf = io.BytesIO()
    df.loc[:, list(COLUMNS)].to_parquet(buf, index=False)
    st.write_bytes(path, buf.getvalue())
    return st.normalize(path)


def read(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions table (local path or URI)."""
    try:
        df = pd.read_parquet(io.BytesIO(st.read_bytes(path)))
    except (OSError, FileNotFoundError) as e:
        raise ClaimsSearchError(f"{path}: predictions cannot be read: {st.one_line(e)}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ClaimsSearchError(f"{path}: predictions lack column(s) {missing}")
    return df
