"""The tokenized cache: ``write_cache`` builds it from MEDS + tasks, ``Cache`` reads it.

Layout (docs/design.md)::

    PREPARED/
      manifest.json        format_version, inputs_hash, settings, vocab_size, n_events,
                           splits {name: n_subjects}, tasks {name: {splits, oracle}}
      vocab.parquet        token_id int32, code string, count int64
      tokens.npy           int32 [E]  token id of every event, subjects concatenated
      days.npy             int32 [E]  event day (days since 1970-01-01)
      subjects.parquet     subject_id int64, split string, offset int64, length int32,
                           birth_days int32 (-1 if unknown), n_static int32
      labels/<task>.parquet  subject_id, prediction_time, label, split, subject_idx, end,
                           true_prob
      tasks/<task>.yaml    the ACES config the labels came from
      value_bins.parquet   quantile cut points per numeric code (see claims_search/vocab.py)

A subject's events are its static rows first (null time in MEDS; their day is the birth day,
or the first event's day when the birth date is unknown), then its timed rows in time order.
``end`` of a label = number of the subject's events at or before ``prediction_time``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from claims_search.errors import ClaimsSearchError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """Settings of one prepared cache; any change rebuilds it."""

    max_len: int = 512
    min_count: int = 5
    n_bins: int = 5
    strict: bool = False


class Cache:
    """Read-only view of a prepared cache; token arrays are memory-mapped, not loaded."""

    def __init__(self, path: str | os.PathLike):
        import pandas as pd

        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            if (self.path / "data").is_dir() and (self.path / "metadata").is_dir():
                raise ClaimsSearchError(
                    f"{self.path}: a MEDS dataset, not a prepared cache: run `claims-search "
                    f"prepare --meds {self.path} --out PREPARED` and pass PREPARED")
            raise ClaimsSearchError(f"{manifest}: missing: run `claims-search prepare` first")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ClaimsSearchError(
                f"{manifest}: format_version {self.manifest.get('format_version')} is not "
                f"{FORMAT_VERSION}: prepare the cache again"
            )
        self.vocab = pd.read_parquet(self.path / "vocab.parquet")
        self.subjects = pd.read_parquet(self.path / "subjects.parquet")
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")  # (E,) int32
        self.days = np.load(self.path / "days.npy", mmap_mode="r")  # (E,) int32
        self._offset = self.subjects["offset"].to_numpy()
        self._length = self.subjects["length"].to_numpy()
        self._n_static = (self.subjects["n_static"].to_numpy() if "n_static" in self.subjects
                          else np.zeros(len(self.subjects), dtype=np.int32))
        self._labels: dict = {}

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Cache":
        """Open the cache at ``path``."""
        return cls(path)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return int(self.manifest["vocab_size"])

    @property
    def max_len(self) -> int:
        """The ``--max-len`` the cache was prepared with."""
        return int(self.manifest["settings"]["max_len"])

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks with labels in this cache."""
        return sorted(self.manifest["tasks"])

    def subject_indices(self, split: str) -> np.ndarray:
        """Rows of ``subjects`` (subject_idx, int64) in ``split``."""
        return np.flatnonzero(self.subjects["split"].to_numpy() == split)

    def sequence(self, subject_idx: int, end: int | None = None, max_len: int | None = None):
        """``(tokens int32 (T,), days int32 (T,))`` of one subject, T <= max_len.

        The last ``max_len`` events among the subject's first ``end`` (default: all); the
        static tokens (sex ...) are kept in front when the history is cut, since they would
        otherwise vanish from long histories. ``max_len=None`` means the cache's max_len.
        """
        off = int(self._offset[subject_idx])
        n = int(self._length[subject_idx]) if end is None else min(int(end), int(self._length[subject_idx]))
        max_len = self.max_len if max_len is None else int(max_len)
        if n <= max_len:
            sl = slice(off, off + n)
            return np.asarray(self.tokens[sl]), np.asarray(self.days[sl])
        n_static = min(int(self._n_static[subject_idx]), n, max_len)
        keep = np.r_[off : off + n_static, off + n - (max_len - n_static) : off + n]
        return np.asarray(self.tokens[keep]), np.asarray(self.days[keep])

    def labels(self, task: str, split: str | None = None):
        """The labels of ``task`` (pandas DataFrame), optionally one split only."""
        import pandas as pd

        if task not in self.manifest["tasks"]:
            raise ClaimsSearchError(
                f"{self.path}: task {task!r} not in the cache (has: {', '.join(self.tasks)})"
            )
        if task not in self._labels:
            self._labels[task] = pd.read_parquet(self.path / "labels" / f"{task}.parquet")
        df = self._labels[task]
        if split is not None:
            df = df[df["split"] == split].reset_index(drop=True)
        return df


def inputs_hash(meds_root: Path, task_texts: dict[str, str], settings: Settings) -> str:
    """Hash of the MEDS files (path, size, mtime), the task files' text and the settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "settings": settings.__dict__}, sort_keys=True).encode())
    for sub in ("data", "metadata", "oracle"):
        for p in sorted((meds_root / sub).rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(meds_root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for name in sorted(task_texts):
        h.update(f"task {name}\0{task_texts[name]}\n".encode())
    return h.hexdigest()


def is_up_to_date(out: Path, digest: str) -> bool:
    """True when ``out`` holds a cache built from inputs with this ``digest``."""
    manifest = out / "manifest.json"
    if not manifest.exists():
        return False
    try:
        m = json.loads(manifest.read_text())
    except ValueError:
        return False
    return m.get("inputs_hash") == digest and m.get("format_version") == FORMAT_VERSION


MIN_EVAL_CLASS = 30  # fewer positives (or negatives) in tuning/held_out: wide intervals
EVAL_SPLITS = ("tuning", "held_out")


def split_warnings(name: str, splits: dict) -> list[str]:
    """One plain line per split of task ``name`` that cannot be scored well.

    ``splits`` is the manifest's ``{split: {"n", "positives"}}``. A split with one class only is
    flagged (any split); the tuning and held-out splits also when absent or when their rarer
    class has fewer than :data:`MIN_EVAL_CLASS` samples, since the bootstrap intervals of AUROC
    and AUPRC are then wide.
    """
    out = []
    order = ("train", *EVAL_SPLITS)
    for split in sorted(set(splits) | set(EVAL_SPLITS),
                        key=lambda x: (order.index(x) if x in order else len(order), x)):
        c = splits.get(split)
        if c is None or c["n"] == 0:
            if split in EVAL_SPLITS:
                out.append(f"task {name}: split {split} has no samples: nothing to evaluate "
                           "the task on there")
            continue
        pos, n = int(c["positives"]), int(c["n"])
        rare, kind = min((pos, "positive"), (n - pos, "negative"))
        if rare == 0:
            out.append(f"task {name}: split {split} has one class only ({_plural(n, 'sample')}, "
                       f"{pos:,} positive): AUROC and AUPRC are undefined there")
        elif split in EVAL_SPLITS and rare < MIN_EVAL_CLASS:
            out.append(f"task {name}: split {split} has only {rare} {kind}"
                       f"{'' if rare == 1 else 's'} (of {_plural(n, 'sample')}; {MIN_EVAL_CLASS} or more "
                       "advised): its 95 % AUROC/AUPRC intervals will be wide, most sizes will "
                       "look indistinguishable and the recommendation will lean to the cheapest; "
                       "use more patients")
    return out


def left_out_warning(name: str, why: str) -> str:
    """The line saying an optional built-in task was left out, and why."""
    return f"built-in task {name} left out: it {why} (--task {name} makes that an error)"


def _plural(n: int, word: str) -> str:
    from claims_search.meds import plural

    return plural(n, word)


def write_cache(meds_root, out, tasks: list, settings: Settings, workers: int = 1,
                progress=None, warn=None, optional=()) -> dict:
    """Validate the MEDS dataset at ``meds_root``, extract ``tasks``' labels, tokenize, and
    write the cache to ``out`` atomically. Returns the manifest.

    Two streaming passes over the shards, each spread over ``workers`` processes (1: in this
    process): (1) check each shard and sample its train values for the quantile bins;
    (2) tokenize into the memory-mapped arrays (shard-local ids, remapped once the train
    counts give the vocabulary) and extract the labels with ACES. Memory is bounded by
    ``workers`` shards at a time. ``tasks`` are :class:`claims_search.labels.Task`;
    ``progress(msg)`` is called per step and ``warn(line)`` per warning (default: the log).
    A task named in ``optional`` (the built-in tasks nobody asked for by name) that has one
    class only on this dataset is left out with a warning, and listed in the manifest's
    ``skipped_tasks``; any other such task is an error, and so is a cache left with no task.
    """
    import polars as pl

    from claims_search import meds
    from claims_search.atomic import atomic_dir
    from claims_search.vocab import Vocab, fit_bins

    say = progress or (lambda msg: log.info(msg))
    warn = warn or (lambda msg: log.warning(msg))
    meds_root, out = Path(meds_root), Path(out)
    digest = inputs_hash(meds_root, {t.name: t.text for t in tasks}, settings)
    ds = meds.open_dataset(meds_root)
    n = len(ds.shards)
    with _Workers(min(workers, n), meds_root, [t.source for t in tasks]) as pool:
        say(f"checking {meds.plural(n, 'shard')} and sampling train values "
            f"({meds.plural(pool.n, 'worker')})")
        scans = pool.map(_scan_shard, [(i,) for i in range(n)])
        report = meds.summarize(ds, [sc for sc, _ in scans], settings.strict, warn)
        codes = set().union(*(sc.codes for sc, _ in scans))
        say(f"{meds.plural(report.n_subjects, 'subject')}, {meds.plural(report.n_events, 'event')} "
            f"in {meds.plural(n, 'shard')}")
        bins = fit_bins(pl.concat([sample for _, sample in scans]), settings.n_bins)
        starts = np.cumsum([0] + [sc.n_events for sc, _ in scans])
        with atomic_dir(out) as tmp:
            np.lib.format.open_memmap(tmp / "tokens.npy", "w+", np.int32, (report.n_events,))
            np.lib.format.open_memmap(tmp / "days.npy", "w+", np.int32, (report.n_events,))
            say("tokenizing and extracting labels")
            parts = pool.map(_encode_shard, [(i, int(starts[i]), str(tmp), bins) for i in range(n)])
            voc = Vocab.build(
                pl.concat([p["counts"] for p in parts]).group_by("token").agg(pl.col("count").sum()),
                settings.min_count,
            )
            tokens = np.load(tmp / "tokens.npy", mmap_mode="r+")  # (E,) shard-local ids
            for i, p in enumerate(parts):  # shard-local ids -> vocabulary ids
                local_to_id = voc.ids(p["counts"]["token"])
                tokens[starts[i] : starts[i + 1]] = local_to_id[tokens[starts[i] : starts[i + 1]]]
            tokens.flush()
            del tokens
            voc.to_frame().write_parquet(tmp / "vocab.parquet")
            bins.write_parquet(tmp / "value_bins.parquet")
            summary, skipped = _write_tables(ds, tmp, tasks, parts, say, warn, codes, set(optional))
            manifest = {
                "format_version": FORMAT_VERSION,
                "inputs_hash": digest,
                "meds": str(meds_root.resolve()),
                "settings": settings.__dict__,
                "vocab_size": len(voc),
                "n_events": report.n_events,
                "n_subjects": report.n_subjects,
                "splits": report.splits,
                "missing_codes": report.missing_codes,
                "tasks": summary,
                "skipped_tasks": skipped,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_tables(ds, tmp: Path, tasks: list, parts: list[dict], say, warn, codes: set[str],
                  optional: set[str]) -> tuple[dict, dict]:
    """subjects.parquet, labels/<task>.parquet and tasks/<task>.yaml; the tasks' summary and
    the optional tasks left out (name -> why)."""
    import polars as pl

    from claims_search import labels as task_labels

    firsts = np.cumsum([0] + [len(p["subjects"]) for p in parts])
    subj = pl.concat([
        p["subjects"].with_columns((pl.col("subject_idx") + int(firsts[i])).cast(pl.Int32))
        for i, p in enumerate(parts)
    ]).join(ds.splits, on="subject_id", how="left", maintain_order="left")
    subj.select(
        "subject_id", "split", "offset", pl.col("length").cast(pl.Int32),
        "birth_days", pl.col("n_static").cast(pl.Int32),
    ).write_parquet(tmp / "subjects.parquet")
    (tmp / "labels").mkdir()
    (tmp / "tasks").mkdir()
    summary, skipped = {}, {}
    for t in tasks:
        lab = pl.concat([
            p["labels"][t.name].with_columns((pl.col("subject_idx") + int(firsts[i])).cast(pl.Int32))
            for i, p in enumerate(parts)
        ])
        try:
            task_labels.check_both_classes(t, lab.rename({"label": "boolean_value"}), codes)
        except ClaimsSearchError as e:
            if t.name not in optional:
                raise
            skipped[t.name] = str(e).removeprefix(f"{t.source}: task '{t.name}' ")
            warn(left_out_warning(t.name, skipped[t.name]))
            continue
        lab = lab.join(subj.select("subject_idx", "split"), on="subject_idx", how="left")
        lab = task_labels.attach_oracle(lab, ds.root / "oracle" / f"{t.name}.parquet")
        lab = lab.select(
            "subject_id", "prediction_time", "label", "split", "subject_idx", "end", "true_prob"
        ).sort(["subject_idx", "prediction_time"])
        lab.write_parquet(tmp / "labels" / f"{t.name}.parquet")
        (tmp / "tasks" / f"{t.name}.yaml").write_text(t.text)
        per_split = lab.group_by("split").agg(
            pl.len().alias("n"), pl.col("label").sum().alias("positives"))
        summary[t.name] = {
            "splits": {r["split"]: {"n": r["n"], "positives": r["positives"]}
                       for r in per_split.sort("split").iter_rows(named=True)},
            "oracle": task_labels.oracle_scores(lab),
        }
        say(f"task {t.name}: {len(lab):,} samples, {int(lab['label'].sum()):,} positive")
        for line in split_warnings(t.name, summary[t.name]["splits"]):
            warn(line)
    if not summary:
        first, why = next(iter(skipped.items()))
        others = [k for k in skipped if k != first]
        raise ClaimsSearchError(
            f"{ds.root}: no task has both classes on this dataset (built-in {first} "
            f"{why.split('; ')[0]}{'; likewise ' + ', '.join(others) if others else ''}); "
            "these tasks expect the synthetic world's codes: pass your own with --task FILE.yaml")
    return summary, skipped


class _Workers:
    """A process pool over shards (spawned, one polars thread pool each), or this process."""

    def __init__(self, n: int, meds_root: Path, task_sources: list[str]):
        self.n = max(1, int(n))
        self.args = (str(meds_root), task_sources)
        self.pool = None

    def __enter__(self):
        if self.n == 1:
            _init_worker(*self.args)
            return self
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # Read by polars when each worker imports it; workers may start late, so the variable
        # stays set until the pool is shut down.
        self.old_threads = os.environ.get("POLARS_MAX_THREADS")
        os.environ["POLARS_MAX_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.n))
        self.pool = ProcessPoolExecutor(
            self.n, mp_context=mp.get_context("spawn"),
            initializer=_init_worker, initargs=self.args,
        )
        return self

    def map(self, fn, args: list[tuple]) -> list:
        """``[fn(*a) for a in args]``, in order, over the workers."""
        if self.pool is None:
            return [fn(*a) for a in args]
        return list(self.pool.map(fn, *zip(*args))) if args else []

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            if self.old_threads is None:
                os.environ.pop("POLARS_MAX_THREADS", None)
            else:
                os.environ["POLARS_MAX_THREADS"] = self.old_threads
        _STATE.clear()


_STATE: dict = {}  # per worker process: the dataset, the tasks, the train subjects


def _init_worker(meds_root: str, task_sources: list[str]) -> None:
    import polars as pl

    from claims_search import labels, meds

    ds = meds.open_dataset(meds_root)
    _STATE["ds"] = ds
    _STATE["tasks"] = [labels.load_task(s) for s in task_sources]
    _STATE["train"] = ds.splits.filter(pl.col("split") == meds.SPLITS[0])["subject_id"].implode()


def _scan_shard(i: int):
    """Pass 1 on shard ``i``: its checks and a sample of its train numeric values."""
    import polars as pl

    from claims_search import meds
    from claims_search.vocab import numeric_sample

    ds = _STATE["ds"]
    df = meds.read_shard(ds, ds.shards[i])
    scan = meds.scan_shard(ds, ds.shards[i], df)
    train = df.filter(pl.col("subject_id").is_in(_STATE["train"]))
    return scan, numeric_sample(train, seed=i)


def _encode_shard(i: int, start: int, tmp: str, bins) -> dict:
    """Pass 2 on shard ``i``: shard-local token ids and days into the arrays from ``start``;
    returns its subjects, its token strings with train counts, and its labels per task."""
    import polars as pl

    from claims_search import labels as task_labels
    from claims_search import meds
    from claims_search.vocab import token_strings

    ds = _STATE["ds"]
    path = ds.shards[i]
    df = meds.read_shard(ds, path).with_row_index("row")
    subj = _subject_rows(df).with_columns(
        pl.int_range(pl.len()).cast(pl.Int32).alias("subject_idx"),
        (pl.col("start").cast(pl.Int64) + start).alias("offset"),
    )
    toks = token_strings(df, bins)
    uniq = toks.unique().sort()
    local = toks.cast(pl.Enum(uniq.to_list())).to_physical().to_numpy().astype(np.int32)
    train = df["subject_id"].is_in(_STATE["train"]).to_numpy()
    counts = np.bincount(local[train], minlength=len(uniq))
    end = start + len(df)
    tokens = np.load(Path(tmp) / "tokens.npy", mmap_mode="r+")
    tokens[start:end] = local
    tokens.flush()
    days = np.load(Path(tmp) / "days.npy", mmap_mode="r+")
    days[start:end] = _event_days(df, subj)
    days.flush()
    del tokens, days
    found = {
        t.name: _label_ends(task_labels.extract_shard(t, path, df), df, subj)
        for t in _STATE["tasks"]
    }
    return {
        "subjects": subj.drop("start", "first_day"),
        "counts": pl.DataFrame({"token": uniq, "count": counts.astype(np.int64)}),
        "labels": found,
    }


def _subject_rows(df):
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


def _event_days(df, subj) -> np.ndarray:
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


def _label_ends(lab, df, subj):
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
