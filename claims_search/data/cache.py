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
      tasks/<task>.yaml    the ACES config the labels came from (none for a task given as a
                           MEDS label table: its manifest entry names the table, ``label_table``)
      value_bins.parquet   quantile cut points per numeric code (see claims_search/data/vocab.py)

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
        try:
            self.manifest = json.loads(manifest.read_text())
        except ValueError as e:  # cut short (a full disk, an interrupted copy) or not ours
            raise ClaimsSearchError(f"{manifest}: not valid JSON ({e}): prepare the cache again") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format_version") != FORMAT_VERSION:
            raise ClaimsSearchError(
                f"{manifest}: format_version "
                f"{self.manifest.get('format_version') if isinstance(self.manifest, dict) else None} is not "
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
        # What this Cache has handed out, for splits_read(): split names asked for (labels,
        # subject lists) and which subjects' events were read.
        self._splits_asked: set[str] = set()
        self._events_read = np.zeros(len(self.subjects), dtype=bool)

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

    def splits_read(self) -> list[str]:
        """The splits this Cache has served so far, sorted: those whose labels or subject list
        were asked for, and those of every subject whose events were read. Split names only
        (an aggregate): a run records it to show, for example, that nothing it did read
        ``held_out``."""
        read = set(self.subjects["split"].to_numpy()[self._events_read].tolist())
        return sorted(self._splits_asked | read)

    def subject_indices(self, split: str) -> np.ndarray:
        """Rows of ``subjects`` (subject_idx, int64) in ``split``."""
        self._splits_asked.add(split)
        return np.flatnonzero(self.subjects["split"].to_numpy() == split)

    def sequence(self, subject_idx: int, end: int | None = None, max_len: int | None = None):
        """``(tokens int32 (T,), days int32 (T,))`` of one subject, T <= max_len.

        The last ``max_len`` events among the subject's first ``end`` (default: all); the
        static tokens (sex ...) are kept in front when the history is cut, since they would
        otherwise vanish from long histories. ``max_len=None`` means the cache's max_len.
        """
        self._events_read[subject_idx] = True
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
        if split is None:
            self._splits_asked.update(df["split"].astype(str).unique().tolist())
        else:
            self._splits_asked.add(split)
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
    from claims_search.data.meds import plural

    return plural(n, word)


def write_cache(meds_root, out, tasks: list, settings: Settings, workers: int = 1,
                progress=None, warn=None, optional=()) -> dict:
    """Validate the MEDS dataset at ``meds_root``, extract ``tasks``' labels, tokenize, and
    write the cache to ``out`` atomically. Returns the manifest.

    Two streaming passes over the shards, each spread over ``workers`` processes (1: in this
    process; claims_search/data/cache_shards.py): (1) check each shard and sample its train values
    for the quantile bins; (2) tokenize into the arrays (shard-local ids, remapped once the
    train counts give the vocabulary), extract the labels with ACES, and write each shard's
    subjects and labels to part files, which are then concatenated one shard at a time.
    Memory is bounded by ``workers`` shards at a time plus a few bytes per subject and per
    sample, not by whole-dataset tables. ``tasks`` are :class:`claims_search.data.labels.Task`;
    ``progress(msg)`` is called per step and ``warn(line)`` per warning (default: the log).
    A task named in ``optional`` (the built-in tasks nobody asked for by name) that has one
    class only on this dataset is left out with a warning, and listed in the manifest's
    ``skipped_tasks``; any other such task is an error, and so is a cache left with no task.
    """
    import polars as pl

    from claims_search.data import meds
    from claims_search.atomic import atomic_dir
    from claims_search.data.cache_shards import (Workers, encode_shard, read_at, release_memory,
                                            scan_shard, write_at)
    from claims_search.data.vocab import Vocab, fit_bins

    say = progress or (lambda msg: log.info(msg))
    warn = warn or (lambda msg: log.warning(msg))
    meds_root, out = Path(meds_root), Path(out)
    digest = inputs_hash(meds_root, {t.name: t.text for t in tasks}, settings)
    ds = meds.open_dataset(meds_root)
    n = len(ds.shards)
    # One pool per pass: fresh workers for pass 2 do not carry what pass 1 left in their heaps.
    pool_args = (min(workers, n), meds_root, ds.shards, [t.source for t in tasks])
    with Workers(*pool_args) as pool:
        say(f"checking {meds.plural(n, 'shard')} and sampling train values "
            f"({meds.plural(pool.n, 'worker')})")
        scans, samples = [], {}  # samples: code -> [float32 arrays], 4 bytes a value
        for scan, sample in pool.imap(scan_shard, [(i,) for i in range(n)]):
            scans.append(scan)
            for code, values in sample.items():
                samples.setdefault(code, []).append(values)
    report = meds.summarize(ds, scans, settings.strict, warn)
    from claims_search.data.label_tables import check_against_data

    check_against_data(tasks, ds.shards)  # label tables: their subjects and times, on checked data
    codes = set().union(*(sc.codes for sc in scans))
    say(f"{meds.plural(report.n_subjects, 'subject')}, {meds.plural(report.n_events, 'event')} "
        f"in {meds.plural(n, 'shard')}")
    bins = fit_bins(samples, settings.n_bins)
    del samples
    starts = np.cumsum([0] + [sc.n_events for sc in scans])
    firsts = np.cumsum([0] + [len(sc.subjects) for sc in scans])
    del scans  # their subject ids: 8 bytes a subject, no longer needed
    release_memory()  # pass 1's samples and the cross-shard checks' arrays, for pass 2
    with atomic_dir(out) as tmp:
        for name in ("tokens.npy", "days.npy"):
            arr = np.lib.format.open_memmap(tmp / name, "w+", np.int32, (report.n_events,))
            header = arr.offset  # bytes before the data; the same for both files
            del arr
        (tmp / "parts").mkdir()
        say("tokenizing and extracting labels")
        with Workers(*pool_args) as pool:
            counts = [p["counts"] for p in pool.imap(encode_shard, [
                (i, int(starts[i]), int(firsts[i]), str(tmp), header, bins) for i in range(n)])]
        voc = Vocab.build(
            pl.concat(counts).group_by("token").agg(pl.col("count").sum()), settings.min_count)
        for i, c in enumerate(counts):  # shard-local ids -> vocabulary ids, shard by shard
            local = read_at(tmp / "tokens.npy", header, int(starts[i]), int(starts[i + 1] - starts[i]))
            write_at(tmp / "tokens.npy", header, int(starts[i]), voc.ids(c["token"])[local])
        voc.to_frame().write_parquet(tmp / "vocab.parquet")
        bins.write_parquet(tmp / "value_bins.parquet")
        summary, skipped = _write_tables(ds, tmp, tasks, n, say, warn, codes, set(optional))
        (tmp / "parts").rmdir()
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


def _write_tables(ds, tmp: Path, tasks: list, n: int, say, warn, codes: set[str],
                  optional: set[str]) -> tuple[dict, dict]:
    """subjects.parquet, labels/<task>.parquet and tasks/<task>.yaml from the ``n`` shards'
    part files; the tasks' summary and the optional tasks left out (name -> why)."""
    import polars as pl

    from claims_search.data import labels as task_labels
    from claims_search.data.cache_tables import Oracle, assemble_labels, concat_parts

    parts = tmp / "parts"
    concat_parts([parts / f"subjects-{i:06d}.parquet" for i in range(n)], tmp / "subjects.parquet")
    (tmp / "labels").mkdir()
    (tmp / "tasks").mkdir()
    summary, skipped = {}, {}
    for k, t in enumerate(tasks):
        files = [parts / f"labels{k}-{i:06d}.parquet" for i in range(n)]
        target = tmp / "labels" / f"{t.name}.parquet"
        lab = assemble_labels(files, Oracle(ds.root / "oracle" / f"{t.name}.parquet"), target)
        try:
            task_labels.check_both_classes(t, lab.select(pl.col("label").alias("boolean_value")),
                                           codes)
        except ClaimsSearchError as e:
            if t.name not in optional:
                raise
            target.unlink()
            skipped[t.name] = str(e).removeprefix(f"{t.source}: task '{t.name}' ")
            warn(left_out_warning(t.name, skipped[t.name]))
            continue
        if t.table is None:
            (tmp / "tasks" / f"{t.name}.yaml").write_text(t.text)
        per_split = lab.group_by(pl.col("split").cast(pl.String)).agg(
            pl.len().alias("n"), pl.col("label").sum().alias("positives"))
        summary[t.name] = {
            "splits": {r["split"]: {"n": r["n"], "positives": r["positives"]}
                       for r in per_split.sort("split").iter_rows(named=True)},
            "oracle": task_labels.oracle_scores(lab),
            **({"label_table": str(Path(t.source).resolve())} if t.table is not None else {}),
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
