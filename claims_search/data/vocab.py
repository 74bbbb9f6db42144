"""The vocabulary: event -> token string -> token id, fit on the train split only.

An event's token is its code, except for codes that carry numbers (checkup results such as
``HC//SBP`` with ``numeric_value``): those become one of ``n_bins`` quantile tokens,
``HC//SBP//Q1`` (lowest fifth of train values) ... ``HC//SBP//Q5``, with cut points fit on the
train split. A code gets bins when at least ``MIN_NUMERIC`` of its train events have a value;
its events without a value keep the plain code.

Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]``, 3 ``[MASK]``, then tokens seen at least
``min_count`` times in train, most frequent first (ties by name). Every other token, and every
token never seen in train, maps to ``[UNK]`` (the unknown-code bucket).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
PAD, UNK, CLS, MASK = range(4)
MIN_NUMERIC = 10
SAMPLE_PER_SHARD = 20_000  # numeric values kept per code per shard to fit quantiles


def numeric_sample(df: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Up to ``SAMPLE_PER_SHARD`` numeric values per code from one shard's (train) rows.

    Sampling bounds memory at 2.3 M patients; quantiles of a 20 k sample are exact to ~0.01.
    """
    num = df.filter(pl.col("numeric_value").is_not_null() & pl.col("numeric_value").is_not_nan())
    return (
        num.select("code", "numeric_value")
        .with_columns(pl.int_range(pl.len()).shuffle(seed).over("code").alias("_r"))
        .filter(pl.col("_r") < SAMPLE_PER_SHARD)
        .drop("_r")
    )


def sample_values(sample: pl.DataFrame) -> dict[str, np.ndarray]:
    """A sample (``code``, ``numeric_value``) as ``{code: float32 values}``.

    Four bytes a value instead of a string and a float per row: the samples of hundreds of
    shards are held together until the bins are fit.
    """
    return {code: grp["numeric_value"].to_numpy().astype(np.float32, copy=False)
            for (code,), grp in sample.group_by("code")}


def fit_bins(sample: pl.DataFrame | dict, n_bins: int) -> pl.DataFrame:
    """Quantile cut points per code: ``code`` and ``e1`` .. ``e{n_bins-1}`` (float32).

    ``sample``: a frame (``code``, ``numeric_value``) or ``{code: [float32 arrays]}`` (the
    samples of several shards, see :func:`sample_values`); the same values give the same cut
    points whatever their order.
    """
    if isinstance(sample, pl.DataFrame):
        sample = {code: [v] for code, v in sample_values(sample).items()}
    cols = [f"e{i}" for i in range(1, n_bins)]
    qs = np.arange(1, n_bins) / n_bins
    rows = []
    for code, parts in sample.items():
        v = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(v) >= MIN_NUMERIC:
            rows.append([code, *np.quantile(v, qs).astype(np.float32).tolist()])
    schema = {"code": pl.String, **{c: pl.Float32 for c in cols}}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("code")


def token_strings(df: pl.DataFrame, bins: pl.DataFrame) -> pl.Series:
    """The token string of every row of ``df`` (``code``, ``numeric_value``), in row order."""
    cols = [c for c in bins.columns if c != "code"]
    joined = df.select("code", "numeric_value").join(
        bins, on="code", how="left", maintain_order="left"
    )
    v = pl.col("numeric_value")
    # bin k (1-based) = 1 + number of cut points strictly below the value
    k = pl.sum_horizontal([(v > pl.col(c)).cast(pl.Int32) for c in cols]) + 1
    has_bin = v.is_not_null() & v.is_not_nan() & pl.col(cols[0]).is_not_null() if cols else pl.lit(False)
    tok = pl.when(has_bin).then(pl.col("code") + "//Q" + k.cast(pl.String)).otherwise(pl.col("code"))
    return joined.select(tok.alias("token"))["token"]


@dataclass
class Vocab:
    """Token strings by id, with their train counts (0 for the special tokens)."""

    tokens: list[str]
    counts: list[int]

    @classmethod
    def build(cls, counts: pl.DataFrame, min_count: int) -> "Vocab":
        """From train token counts (``token``, ``count``): specials, then frequent tokens."""
        kept = (
            counts.filter(pl.col("count") >= min_count)
            .filter(~pl.col("token").is_in(SPECIALS))
            .sort(["count", "token"], descending=[True, False])
        )
        return cls(list(SPECIALS) + kept["token"].to_list(), [0] * 4 + kept["count"].to_list())

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, tokens: pl.Series) -> np.ndarray:
        """Token ids (int32) of token strings; unknown ones -> ``[UNK]``."""
        ids = tokens.replace_strict(
            self.tokens, list(range(len(self.tokens))), default=UNK, return_dtype=pl.Int32
        )
        return ids.to_numpy()

    def to_frame(self) -> pl.DataFrame:
        """The ``vocab.parquet`` table: token_id int32, code string, count int64."""
        return pl.DataFrame(
            {"token_id": range(len(self.tokens)), "code": self.tokens, "count": self.counts},
            schema={"token_id": pl.Int32, "code": pl.String, "count": pl.Int64},
        )

    @classmethod
    def from_frame(cls, df) -> "Vocab":
        """Inverse of :meth:`to_frame` (polars or pandas)."""
        return cls(list(df["code"]), [int(c) for c in df["count"]])

