"""Precomputed MEDS label tables as tasks (``prepare --labels DIR``), beside ACES configs.

A label table is the MEDS label schema (``meds.LabelSchema``): ``subject_id`` int64,
``prediction_time`` timestamp[us], ``boolean_value`` bool, one row per sample; other columns
(ACES writes null ``integer_value`` ... ``categorical_value``) are ignored. ``DIR`` holds one
task per ``NAME.parquet`` file, or per ``NAME/`` folder of Parquet files (a sharded table, as
MEDS-DEV hands labels over): the task is named ``NAME``. Once prepared, such a task is like an
ACES one: its samples' split is their subject's in ``metadata/subject_splits.parquet``, and the
cache, the search and ``predict`` know it by name.

Checks, one line per problem, before anything is written: on the table alone (:func:`load`):
missing columns, wrong types, null values, duplicate rows (the same subject and prediction
time); against the data (:func:`check_against_data`, after the data's own checks): a subject the
data does not have, a prediction time after the subject's last event (the label would be about
data the subject does not have).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl

from claims_search.errors import ClaimsSearchError

COLUMNS = ("subject_id", "prediction_time", "boolean_value")
NAME = re.compile(r"[A-Za-z0-9_.-]+")  # what a search space accepts as a task name


def is_table_source(source: str | Path) -> bool:
    """Whether a task's ``source`` is a label table (a .parquet file or a folder), not an ACES file."""
    p = Path(source)
    return p.suffix == ".parquet" or p.is_dir()


def find(labels_dir: str | Path) -> list[Path]:
    """The label tables of ``labels_dir``: its ``*.parquet`` files and its sub-folders, by name."""
    root = Path(labels_dir)
    if not root.is_dir():
        raise ClaimsSearchError(f"--labels {labels_dir}: {'not a folder' if root.exists() else 'no such folder'}")
    found = sorted(p for p in root.iterdir() if (p.is_dir() or p.suffix == ".parquet") and not p.name.startswith("."))
    if not found:
        raise ClaimsSearchError(f"--labels {labels_dir}: no label table (a NAME.parquet file or a NAME/ folder "
                                "of Parquet files, in the MEDS label schema)")
    return found


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(source.rglob("*.parquet"))
        if not files:
            raise ClaimsSearchError(f"{source}: a label-table folder with no .parquet file")
        return files
    return [source]


def load(source: str | Path):
    """The task a label table defines (:class:`claims_search.data.labels.Task`, with ``config`` None
    and ``table`` its rows), after the checks on the table alone."""
    from claims_search.data.task import Task

    source = Path(source)
    name = source.stem if source.suffix == ".parquet" else source.name
    if not NAME.fullmatch(name):
        raise ClaimsSearchError(f"{source}: {name!r} is not a task name (letters, digits, '_', '-', '.'); rename it")
    files = _files(source)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(source) if source.is_dir() else f.name}\0".encode())
        digest.update(f.read_bytes())
    table = read(source, files)
    text = f"MEDS label table {source.name}, sha256 {digest.hexdigest()}\n"  # what the cache's hash sees
    return Task(name, str(source), text, None, table)


def read(source: Path, files: list[Path]) -> pl.DataFrame:
    """The three label columns of ``files``, checked and cast to the label schema."""
    import pyarrow.parquet as pq

    parts = []
    for f in files:
        where = f if len(files) == 1 else f"{source}/{f.relative_to(source)}"
        try:
            schema = pq.read_schema(f)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a non-Parquet file
            raise ClaimsSearchError(f"{where}: not a Parquet file ({str(e).splitlines()[0]})") from None
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise ClaimsSearchError(f"{where}: missing column(s) {', '.join(missing)}; a MEDS label table has "
                                    "subject_id int64, prediction_time timestamp[us], boolean_value bool")
        df = pl.read_parquet(f, columns=list(COLUMNS))
        problems = _type_problems(df)
        if problems:
            raise ClaimsSearchError("\n".join(f"{where}: {p}" for p in problems))
        parts.append(df.select(pl.col("subject_id").cast(pl.Int64),
                               pl.col("prediction_time").cast(pl.Datetime("us")), "boolean_value"))
    table = pl.concat(parts)
    problems = [f"{source}: {p}" for p in _row_problems(table)]
    if problems:
        raise ClaimsSearchError("\n".join(problems))
    return table


def _type_problems(df: pl.DataFrame) -> list[str]:
    out = []
    sid, pt, bv = (df.schema[c] for c in COLUMNS)
    if not sid.is_integer():
        out.append(f"subject_id is {sid}, not an integer (int64)")
    if not isinstance(pt, pl.Datetime):
        out.append(f"prediction_time is {pt}, not a timestamp (timestamp[us])")
    elif pt.time_zone is not None:
        out.append(f"prediction_time has time zone {pt.time_zone}; MEDS times have none (timestamp[us])")
    if bv != pl.Boolean:
        out.append(f"boolean_value is {bv}, not bool")
    return out


def _row_problems(table: pl.DataFrame) -> list[str]:
    out = []
    for c in COLUMNS:
        n = table[c].null_count()
        if n:
            first = table.with_row_index().filter(pl.col(c).is_null())["index"][0]
            out.append(f"{c} is null in {n:,} row(s) (first: row {first})")
    dup = table.filter(pl.struct("subject_id", "prediction_time").is_duplicated())
    if len(dup):
        r = dup.row(0, named=True)
        out.append(f"{len(dup):,} duplicate rows (the same subject_id and prediction_time; first: subject "
                   f"{r['subject_id']} at {r['prediction_time']})")
    return out


def check_against_data(tasks: list, shards: list[Path]) -> None:
    """Every label-table task's subjects are in the data, and no prediction time is after its
    subject's last event. One line per problem; raises when there is any."""
    tables = [t for t in tasks if getattr(t, "table", None) is not None]
    if not tables:
        return
    last = (pl.scan_parquet([str(s) for s in shards]).select("subject_id", "time")
            .group_by("subject_id").agg(pl.col("time").max().alias("last")).collect())
    problems = []
    for t in tables:
        j = t.table.join(last, on="subject_id", how="left")
        absent = j.filter(pl.col("last").is_null() & ~pl.col("subject_id").is_in(last["subject_id"].implode()))
        if len(absent):
            ids = absent["subject_id"].unique(maintain_order=True)
            problems.append(f"{t.source}: {len(ids):,} subject(s) not in the data (first: subject {ids[0]})")
        late = j.filter(pl.col("last").is_null() & pl.col("subject_id").is_in(last["subject_id"].implode())
                        | (pl.col("prediction_time") > pl.col("last")))
        if len(late):
            r = late.row(0, named=True)
            last_seen = f"last event {r['last']}" if r["last"] is not None else "no timed event"
            problems.append(f"{t.source}: {len(late):,} prediction time(s) after the subject's last event "
                            f"(first: subject {r['subject_id']} at {r['prediction_time']}, {last_seen})")
    if problems:
        raise ClaimsSearchError("\n".join(problems))


def shard_labels(task, shard: Path, df: pl.DataFrame | None = None) -> pl.DataFrame:
    """The label table's rows of the subjects of one MEDS shard (``df``: its rows, if read)."""
    ids = (df if df is not None else pl.read_parquet(shard, columns=["subject_id"]))["subject_id"].unique()
    return task.table.filter(pl.col("subject_id").is_in(ids.implode()))
