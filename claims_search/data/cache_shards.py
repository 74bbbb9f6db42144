"""The per-shard work of ``prepare`` (claims_search/data/cache.py), run in worker processes.

Pass 1 (:func:`scan_shard`) checks a shard and samples its train numeric values; pass 2
(:func:`encode_shard`) writes the shard's tokens and days into the cache's arrays and its
subjects and labels into part files. Whatever a worker returns to the main process is small
(checks, value samples as float32, token counts), and no worker holds a table of the whole
dataset. A worker's heap used to creep up with the number of shards it had run ACES on
(~1.2-1.9 GiB per worker at 2.3 M patients): a reference cycle kept each shard's rows alive
until Python's next full collection; fixed in labels.extract_shard (2026-12-02), which also
runs ACES on slices of at most 5,000 subjects.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_STATE: dict = {}  # per worker process: the dataset, the tasks, every subject's split


class Workers:
    """A process pool over shards (spawned, one polars thread pool each), or this process."""

    def __init__(self, n: int, meds_root: Path, shards: list[Path], task_sources: list[str]):
        self.n = max(1, int(n))
        self.args = (str(meds_root), [str(s) for s in shards], task_sources)

    def __enter__(self):
        if self.n == 1:
            init_worker(*self.args)
        else:
            # Read by polars when each worker imports it; workers start with each pool, so the
            # variable stays set until the last pool is shut down.
            self.old_threads = os.environ.get("POLARS_MAX_THREADS")
            os.environ["POLARS_MAX_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.n))
        return self

    def imap(self, fn, args: list[tuple]):
        """``fn(*a) for a in args``, in order, over the workers, as results arrive: the caller
        folds them in one at a time instead of holding them all. One pool per call (per pass):
        what a pass leaves in a worker's heap is gone before the next pass.

        Recycling workers within a pass was tried and dropped (2026-12-02): a fresh pool every 8
        shards a worker kept the 2.3 M-patient peak at 4.2 GiB and added ~200 CPU-s of
        restarts; and ``max_tasks_per_child`` hung on Python 3.11. (What grew was a reference
        cycle in the label extraction, since fixed: see labels.extract_shard.)"""
        if self.n == 1:
            yield from (fn(*a) for a in args)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if not args:
            return
        with ProcessPoolExecutor(self.n, mp_context=mp.get_context("spawn"),
                                 initializer=init_worker, initargs=self.args) as pool:
            yield from pool.map(fn, *zip(*args))

    def __exit__(self, *exc):
        if self.n > 1:
            if self.old_threads is None:
                os.environ.pop("POLARS_MAX_THREADS", None)
            else:
                os.environ["POLARS_MAX_THREADS"] = self.old_threads
        _STATE.clear()


def init_worker(meds_root: str, shards: list[str], task_sources: list[str]) -> None:
    """Load the tasks and the subject splits (as two numpy arrays, ~9 bytes a subject).

    The main process has already read and checked the dataset's metadata; a worker needs the
    shard paths, and each subject's split to pick train rows and label the subjects.
    """
    import polars as pl
    import pyarrow.parquet as pq

    from claims_search.data import labels, meds

    root = Path(meds_root)
    empty = pl.DataFrame(schema={"subject_id": pl.Int64, "split": pl.String})
    _STATE["ds"] = meds.MedsDataset(root, [Path(s) for s in shards], empty, None)
    _STATE["tasks"] = [labels.load_source(s) for s in task_sources]  # ACES files or label tables
    splits = pl.from_arrow(pq.read_table(root / "metadata" / "subject_splits.parquet",
                                         columns=["subject_id", "split"]))
    ids = splits["subject_id"].to_numpy()
    order = np.argsort(ids, kind="stable")
    code = splits["split"].cast(pl.String).replace_strict(
        list(meds.SPLITS), list(range(len(meds.SPLITS))), default=255, return_dtype=pl.UInt8)
    _STATE["split_ids"] = ids[order]
    _STATE["split_code"] = code.to_numpy()[order]


def split_codes(subject_ids: np.ndarray) -> np.ndarray:
    """Index into ``meds.SPLITS`` of each subject id (uint8; 255: no split)."""
    ids, code = _STATE["split_ids"], _STATE["split_code"]
    pos = np.searchsorted(ids, subject_ids)
    pos = np.minimum(pos, len(ids) - 1) if len(ids) else pos
    found = (ids[pos] == subject_ids) if len(ids) else np.zeros(len(subject_ids), bool)
    return np.where(found, code[pos] if len(ids) else 0, 255).astype(np.uint8)


def scan_shard(i: int):
    """Pass 1 on shard ``i``: its checks and ``{code: float32 train values}`` (a sample)."""
    from claims_search.data import meds
    from claims_search.data.vocab import numeric_sample, sample_values

    ds = _STATE["ds"]
    df = meds.read_shard(ds, ds.shards[i])
    scan = meds.scan_shard(ds, ds.shards[i], df)
    train = split_codes(df["subject_id"].to_numpy()) == 0
    sample = sample_values(numeric_sample(df.filter(train), seed=i))
    del df
    release_memory()
    return scan, sample


def encode_shard(i: int, start: int, first: int, tmp: str, header: int, bins) -> dict:
    """Pass 2 on shard ``i``: shard-local token ids and days into ``tmp``'s arrays from event
    ``start`` (``header``: bytes before the data in the .npy files); its subjects (numbered
    from ``first``) and labels per task into ``tmp/parts``. Returns its token strings with
    their train counts."""
    import polars as pl

    from claims_search.data import labels as task_labels
    from claims_search.data import meds
    from claims_search.data.vocab import token_strings

    ds = _STATE["ds"]
    path = ds.shards[i]
    df = read_rows(path).with_row_index("row")
    split = split_codes(df["subject_id"].to_numpy())
    subj = subject_rows(df).with_columns(
        pl.int_range(pl.len()).cast(pl.Int32).alias("subject_idx"),
        (pl.col("start").cast(pl.Int64) + start).alias("offset"),
    )
    subj = subj.with_columns(pl.Series(
        "split", np.asarray(meds.SPLITS + (None,), dtype=object)[
            np.minimum(split[subj["start"].to_numpy()], 3)], dtype=pl.String))
    toks = token_strings(df, bins)
    uniq = toks.unique().sort()
    local = toks.cast(pl.Enum(uniq.to_list())).to_physical().to_numpy().astype(np.int32)
    counts = np.bincount(local[split == 0], minlength=len(uniq))
    write_at(Path(tmp) / "tokens.npy", header, start, local)
    write_at(Path(tmp) / "days.npy", header, start, event_days(df, subj))
    parts = Path(tmp) / "parts"
    # subject_idx is shard-local inside label_ends; global (numbered from `first`) on disk.
    glob_idx = (pl.col("subject_idx") + first).cast(pl.Int32)
    subj.select(
        "subject_id", "split", "offset", pl.col("length").cast(pl.Int32),
        "birth_days", pl.col("n_static").cast(pl.Int32),
    ).write_parquet(parts / f"subjects-{i:06d}.parquet")
    for k, t in enumerate(_STATE["tasks"]):
        lab = label_ends(task_labels.extract_shard(t, path, df), df, subj)
        lab.join(subj.select("subject_idx", "split"), on="subject_idx", how="left").select(
            "subject_id", "prediction_time", "label", "split", glob_idx, "end",
        ).sort(["subject_idx", "prediction_time"]).write_parquet(
            parts / f"labels{k}-{i:06d}.parquet")
    out = {"counts": pl.DataFrame({"token": uniq, "count": counts.astype(np.int64)})}
    del df, split, subj, toks, local
    release_memory()
    return out


def read_rows(path: Path):
    """The rows of a shard that pass 1 checked (columns, nulls), read by polars itself.

    Not through pyarrow (as ``meds.read_shard`` does): pyarrow's memory pool keeps what it
    freed, and a worker's memory crept up shard after shard.
    """
    import polars as pl
    import pyarrow.parquet as pq

    from claims_search.data.meds import DATA_COLUMNS

    present = [c for c in DATA_COLUMNS if c in pq.read_schema(path).names]
    df = pl.read_parquet(path, columns=present)
    if "numeric_value" not in present:
        return df.with_columns(pl.lit(None, dtype=pl.Float32).alias("numeric_value"))
    return df.with_columns(pl.col("numeric_value").cast(pl.Float32))


def release_memory() -> None:
    """Hand the memory pyarrow's pool and the C heap keep after a shard back to the system.

    glibc's ``malloc_trim``: numpy's arrays of a few MiB to 32 MiB come from the heap once
    glibc's mmap threshold has risen, and freed heap memory otherwise stays in the process.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim_heap()


def trim_heap() -> None:
    """``malloc_trim(0)`` where the C library is glibc; nothing elsewhere."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def write_at(path: Path, header: int, start: int, values: np.ndarray) -> None:
    """Write int32 ``values`` into the .npy file at ``path`` from element ``start``.

    Plain file writes, not a memory map: mapped pages count in the process's resident memory
    until unmapped, and the main process touching a 1.2 GB array that way made prepare's
    memory grow with the number of events.
    """
    with open(path, "r+b") as f:
        f.seek(header + 4 * start)
        np.ascontiguousarray(values, dtype=np.int32).tofile(f)


def read_at(path: Path, header: int, start: int, n: int) -> np.ndarray:
    """``n`` int32 elements of the .npy file at ``path`` from element ``start``."""
    return np.fromfile(path, dtype=np.int32, count=n, offset=header + 4 * start)


def subject_rows(df):
    """One row per subject of a shard, in file order: start row, length, statics, birth day."""
    import meds
    import polars as pl

    t = pl.col("time")
    return df.group_by("subject_id", maintain_order=True).agg(
        pl.col("row").first().alias("start"),
        pl.len().alias("length"),
        t.is_null().sum().alias("n_static"),
        t.filter(pl.col("code") == meds.birth_code).first().cast(pl.Date).cast(pl.Int32)
        .fill_null(-1).alias("birth_days"),
        t.drop_nulls().first().cast(pl.Date).cast(pl.Int32).alias("first_day"),
    )


def event_days(df, subj) -> np.ndarray:
    """Day of every row; static rows get the birth day (else the first event's day, else 0)."""
    import polars as pl

    static_day = (
        pl.when(pl.col("birth_days") != -1).then(pl.col("birth_days"))
        .otherwise(pl.col("first_day")).fill_null(0)
    )
    out = df.select("subject_id", "time").join(
        subj.select("subject_id", static_day.alias("static_day")), on="subject_id",
        how="left", maintain_order="left",
    )
    return out.select(
        pl.col("time").cast(pl.Date).cast(pl.Int32).fill_null(pl.col("static_day"))
    ).to_series().to_numpy().astype(np.int32)


def label_ends(lab, df, subj):
    """Labels of one shard with the shard-local ``subject_idx`` and ``end`` (the subject's
    events at or before the prediction time, static rows included)."""
    import polars as pl

    # Rows are sorted by (subject in file order, time; static rows first), so the key
    # (subject position, rank of time) is sorted too, and `end` is one binary search.
    # Ranks, not microseconds, so that the key fits in int64.
    t = df["time"].dt.epoch("us").to_numpy()  # (E,) float with NaN for static rows
    static = df["time"].is_null().to_numpy()
    times = np.unique(t[~static].astype(np.int64))
    rank = np.zeros(len(df), dtype=np.int64)
    rank[~static] = np.searchsorted(times, t[~static].astype(np.int64)) + 1  # static: 0
    subj_pos = np.repeat(np.arange(len(subj), dtype=np.int64), subj["length"].to_numpy())
    key = (subj_pos << 32) | rank  # (E,) sorted
    j = lab.join(subj.select("subject_id", "start", "subject_idx"), on="subject_id",
                 maintain_order="left")
    pt = j["prediction_time"].dt.epoch("us").to_numpy().astype(np.int64)
    pt_rank = np.searchsorted(times, pt, side="right")  # times <= pt, counting from 1
    pos = j["subject_idx"].to_numpy().astype(np.int64)
    end_row = np.searchsorted(key, (pos << 32) | pt_rank, side="right")
    return j.select(
        "subject_id", "prediction_time", pl.col("boolean_value").alias("label"), "subject_idx",
        pl.Series("end", end_row - j["start"].to_numpy().astype(np.int64), dtype=pl.Int32),
    )
