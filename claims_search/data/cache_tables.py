"""The cache's tables, assembled from the workers' part files one shard at a time.

``subjects.parquet`` and ``labels/<task>.parquet`` are the concatenation, in shard order, of
the part files written by :func:`claims_search.data.cache_shards.encode_shard` (subjects are
numbered across shards, so that order is also ``subject_idx`` order). Only one part is in
memory at a time; what is kept across parts per task is the label and oracle probability of
each sample (9 bytes) for the per-split counts and oracle scores, and the oracle itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from claims_search.errors import ClaimsSearchError


def concat_parts(parts: list[Path], out: Path) -> None:
    """Write the rows of ``parts`` (same columns), in order, to the Parquet file ``out`` with
    polars' streaming engine (a few row groups in memory at a time), then delete them."""
    pl.scan_parquet(parts).sink_parquet(out, maintain_order=True)
    for p in parts:
        p.unlink()


class Oracle:
    """The generator's true probabilities of one task (``oracle/<task>.parquet``), sorted by
    subject, to attach to labels part by part: the same result as
    :func:`claims_search.data.labels.attach_oracle` on the whole table."""

    def __init__(self, path: Path):
        self.table = None
        if not path.exists():
            return
        oracle = pl.read_parquet(path)
        for col in ("subject_id", "prediction_time", "probability"):
            if col not in oracle.columns:
                raise ClaimsSearchError(f"{path}: column '{col}' is missing")
        self.table = oracle.select(
            pl.col("subject_id").cast(pl.Int64),
            pl.col("prediction_time").cast(pl.Datetime("us")),
            pl.col("probability").cast(pl.Float64).alias("true_prob"),
        ).unique(["subject_id", "prediction_time"], keep="first", maintain_order=True
                 ).sort("subject_id", maintain_order=True)
        self.ids = self.table["subject_id"].to_numpy()

    def attach(self, lab: pl.DataFrame) -> pl.DataFrame:
        """``lab`` with ``true_prob`` (null where the oracle has no row, or no file)."""
        if self.table is None:
            return lab.with_columns(pl.lit(None, dtype=pl.Float64).alias("true_prob"))
        # The oracle rows of this part's subjects only: a join against the whole oracle would
        # hash millions of rows for every shard.
        want = np.unique(lab["subject_id"].to_numpy())
        lo = np.searchsorted(self.ids, want, "left")
        hi = np.searchsorted(self.ids, want, "right")
        n = hi - lo
        rows = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(n.sum())
        sub = self.table[rows]
        return lab.join(sub, on=["subject_id", "prediction_time"], how="left",
                        maintain_order="left")


def assemble_labels(parts: list[Path], oracle: Oracle, out: Path) -> pl.DataFrame:
    """Attach the oracle to each labels part, write them all to ``out`` (in order), and return
    the compact ``label, split, true_prob`` of every sample, for counts and oracle scores."""
    kept = []
    for p in parts:
        lab = oracle.attach(pl.read_parquet(p)).select(
            "subject_id", "prediction_time", "label", "split", "subject_idx", "end", "true_prob")
        lab.write_parquet(p)
        kept.append(lab.select("label", pl.col("split").cast(pl.Categorical), "true_prob"))
    concat_parts(parts, out)
    return pl.concat(kept)
