"""Read and validate a MEDS 0.4 dataset, one shard at a time.

Layout (the MEDS standard): ``DIR/data/**/*.parquet`` (sub-folders per split are common but not
required), ``DIR/metadata/subject_splits.parquet`` (the split of each subject: ``train``,
``tuning`` or ``held_out``), ``DIR/metadata/codes.parquet`` (code descriptions; real exports
often ship it empty) and optionally ``DIR/metadata/dataset.json``.

Rules checked beyond the ``meds`` package's column schemas: a subject's rows live in one file,
contiguous and sorted by time, static rows (null ``time``) first, times within the years
1800-2199; strings are UTF-8; split names are the three standard ones; every subject has a
split. Each broken rule raises one :class:`~claims_search.errors.ClaimsSearchError` line naming
the file, column and subject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import meds
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError

from claims_search.errors import ClaimsSearchError

log = logging.getLogger(__name__)

SPLITS = (meds.train_split, meds.tuning_split, meds.held_out_split)
DATA_COLUMNS = ("subject_id", "time", "code", "numeric_value")
# Times outside these years are ETL errors, not claims (a 9999-12-31 "open end" sentinel,
# seconds read as microseconds): ages, day numbers and label windows would be meaningless.
FIRST_YEAR, LAST_YEAR = 1800, 2199
_TIME_RANGE_US = (
    int((np.datetime64(f"{FIRST_YEAR}-01-01", "us") - np.datetime64(0, "us")).astype(np.int64)),
    int((np.datetime64(f"{LAST_YEAR + 1}-01-01", "us") - np.datetime64(0, "us")).astype(np.int64)),
)


@dataclass
class MedsDataset:
    """A MEDS dataset on disk: its shards, the subject splits and the known codes."""

    root: Path
    shards: list[Path]
    splits: pl.DataFrame  # subject_id int64 (sorted), split Enum(SPLITS)
    codes: set[str] | None  # None when codes.parquet is missing or empty

    def rel(self, path: Path) -> str:
        """``path`` for messages: under the dataset folder as the user gave it
        (``meds/data/train/0.parquet``), so a message says which dataset it is about."""
        return str(path)


@dataclass
class ValidationReport:
    """Aggregates of a validated dataset (no patient-level data)."""

    n_shards: int = 0
    n_subjects: int = 0
    n_events: int = 0
    n_static: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    missing_codes: int = 0  # distinct codes absent from codes.parquet
    codes_file_empty: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable paragraph."""
        split_s = ", ".join(f"{k} {v:,}" for k, v in self.splits.items())
        lines = [
            f"{plural(self.n_shards, 'shard')}, {plural(self.n_subjects, 'subject')}, "
            f"{plural(self.n_events, 'event')} ({self.n_static:,} static); splits: {split_s}"
        ]
        return "\n".join(lines)  # warnings go to summarize()'s ``warn``


def plural(n: int, word: str) -> str:
    """``1 shard``, ``3 shards``, ``1,000 events``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# Types that hold the same values as the schema's: polars writes large_string, many ETLs
# write float64 values. Accepted (and cast on read) rather than rejected.
_EQUIVALENT = {pa.string(): (pa.large_string(),), pa.float32(): (pa.float64(),)}


def check_schema(schema_cls, schema: pa.Schema, path: str) -> None:
    """Check a Parquet schema against a ``meds`` schema class; raise one line if it fails."""
    try:
        schema_cls.validate(schema)
    except SchemaValidationError as e:
        e.mistyped_cols = [
            (col, want, got)
            for col, want, got in (e.mistyped_cols or [])
            if got not in _EQUIVALENT.get(want, ())
        ]
        if e.missing_req_cols or e.mistyped_cols or e.disallowed_extra_cols:
            raise _schema_error(path, e) from None


def _schema_error(path: str, e: Exception) -> ClaimsSearchError:
    """Re-word a flexible_schema error as one line naming the file and columns."""
    parts = []
    for col in getattr(e, "missing_req_cols", None) or []:
        parts.append(f"column '{col}' is missing")
    for col, want, got in getattr(e, "mistyped_cols", None) or []:
        parts.append(f"column '{col}' has type {got}, expected {want}")
    for col in getattr(e, "nullability_none_err_cols", None) or []:
        parts.append(f"column '{col}' has null values")
    return ClaimsSearchError(f"{path}: " + ("; ".join(parts) or str(e)))


def open_dataset(root: str | Path) -> MedsDataset:
    """Find the shards and read the metadata of the MEDS dataset at ``root``."""
    root = Path(root)
    if not root.exists():
        raise ClaimsSearchError(f"{root}: no such folder")
    if not root.is_dir():
        raise ClaimsSearchError(f"{root}: is a file, not a MEDS dataset folder")
    data_dir = root / meds.data_subdirectory
    if not data_dir.is_dir():
        raise ClaimsSearchError(f"{root}: not a MEDS dataset: no {meds.data_subdirectory}/ folder"
                                f"{_layout_hint(root)}")
    shards = sorted(data_dir.rglob("*.parquet"))
    if not shards:
        raise ClaimsSearchError(f"{data_dir}: empty dataset: no *.parquet shards found")
    return MedsDataset(root, shards, _read_splits(root), _read_codes(root))


def _layout_hint(root: Path) -> str:
    """What ``root`` probably is, when it is not a MEDS dataset folder."""
    parent = root.resolve().parent
    if (parent / meds.data_subdirectory).resolve() == root.resolve() and (parent / "metadata").is_dir():
        return (f"; it looks like the {meds.data_subdirectory}/ folder of a dataset: "
                f"pass its parent, {root.parent}")
    if any(root.glob("*.parquet")):
        return (f"; it holds *.parquet files directly: a MEDS dataset keeps them under "
                f"{meds.data_subdirectory}/ with metadata/subject_splits.parquet beside it")
    return (f" (a MEDS dataset holds {meds.data_subdirectory}/**/*.parquet and "
            "metadata/subject_splits.parquet)")


def read_parquet(path: Path, name: str, columns=None) -> pa.Table:
    """``pq.read_table`` whose failures (not Parquet, truncated, corrupt pages, text that is not
    UTF-8) are one ClaimsSearchError line naming ``name``."""
    try:
        table = pq.read_table(path, columns=columns)
    # pyarrow raises several types for a bad file; a damaged footer can hold column names that
    # are not UTF-8 (UnicodeDecodeError, a ValueError), found by tests/test_properties.py
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ClaimsSearchError(f"{name}: not a readable Parquet file ({_first_line(e)})") from None
    for col in table.column_names:
        _check_utf8(table.column(col), name, col)
    return table


def _first_line(e: BaseException) -> str:
    """The first line of a pyarrow error, without the path it repeats."""
    import re

    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    first = lines[0] if lines else type(e).__name__
    return re.sub(r"^Could not open Parquet input source '.*?': ", "", first)


def _check_utf8(column: pa.ChunkedArray, name: str, col: str) -> None:
    """Parquet does not check that strings are UTF-8; polars would panic on them later."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return
    start = 0
    for chunk in column.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            values = chunk.view(pa.binary() if pa.types.is_string(chunk.type) else pa.large_binary())
            for i, v in enumerate(values.to_pylist()):
                try:
                    (v or b"").decode("utf-8")
                except UnicodeDecodeError:
                    raise ClaimsSearchError(
                        f"{name}: column '{col}': not valid UTF-8 text at row {start + i} "
                        f"({v[:40]!r}); MEDS strings are UTF-8") from None
            raise ClaimsSearchError(f"{name}: column '{col}': invalid string data") from None
        start += len(chunk)


def _read_schema(path: Path, name: str) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: see read_parquet
        raise ClaimsSearchError(f"{name}: not a readable Parquet file ({_first_line(e)})") from None


def _read_splits(root: Path) -> pl.DataFrame:
    """Every subject's split: ``subject_id`` int64, sorted, and ``split`` (an Enum of
    :data:`SPLITS`; null where the file gives none, which :func:`_check_splits` reports).

    Read and checked with pyarrow and numpy (9 bytes a subject), not as a polars string table:
    the allocators keep what such temporaries used, and at 2.3 M subjects that held ~190 MiB
    of ``prepare``'s main process for the whole run (2026-12-02).
    """
    path = root / meds.subject_splits_filepath
    if not path.exists():
        raise ClaimsSearchError(f"{path}: file missing: every subject needs a split")
    table = read_parquet(path, str(path))
    check_schema(meds.SubjectSplitSchema, table.schema, str(path))
    if table.column("subject_id").null_count:
        raise ClaimsSearchError(f"{path}: column 'subject_id': null value")
    ids = np.array(table.column("subject_id").to_numpy(), dtype=np.int64)  # a copy
    split = table.column("split").cast(pa.string()).combine_chunks().dictionary_encode()
    del table
    names = split.dictionary.to_pylist()
    known = np.array([SPLITS.index(x) if x in SPLITS else 255 for x in names] + [254], np.uint8)
    index = split.indices.fill_null(len(names)).to_numpy(zero_copy_only=False)
    code = known[index]  # 0-2: SPLITS; 254: null (no split); 255: an unknown name
    del split
    pa.default_memory_pool().release_unused()
    unknown = np.flatnonzero(code == 255)
    if len(unknown):
        raise ClaimsSearchError(
            f"{path}: column 'split': unknown split name {names[index[unknown[0]]]!r} "
            f"({len(unknown)} rows); expected one of {', '.join(SPLITS)}"
        )
    del index
    order = np.argsort(ids, kind="stable")
    ids, code = ids[order], code[order]
    twice = ids[1:][ids[1:] == ids[:-1]]
    if len(twice):  # name the first subject, in file order, listed more than once
        row = int(order[np.isin(ids, twice)].min())
        raise ClaimsSearchError(
            f"{path}: column 'subject_id': subject {int(ids[order == row][0])} has more than "
            "one split"
        )
    del order
    split_s = pl.from_arrow(pa.DictionaryArray.from_arrays(
        pa.array(code, mask=code > 2, type=pa.uint8()), pa.array(SPLITS, pa.string())))
    return pl.DataFrame({"subject_id": ids, "split": split_s.cast(pl.Enum(list(SPLITS)))})


def _read_codes(root: Path) -> set[str] | None:
    path = root / meds.code_metadata_filepath
    if not path.exists():
        return None
    table = read_parquet(path, str(path))
    check_schema(meds.CodeMetadataSchema, table.schema, str(path))
    codes = set(table.column("code").drop_null().to_pylist())
    return codes or None


def read_shard(ds: MedsDataset, path: Path, columns=DATA_COLUMNS) -> pl.DataFrame:
    """Read one shard's ``columns`` after checking them against ``meds.DataSchema``.

    ``numeric_value`` is added as nulls when the shard has no such column (the schema allows it).
    """
    name = ds.rel(path)
    schema = _read_schema(path, name)
    check_schema(meds.DataSchema, schema, name)
    present = [c for c in columns if c in schema.names]
    df = pl.from_arrow(read_parquet(path, name, columns=present))
    if "numeric_value" in columns:
        if "numeric_value" in present:
            df = df.with_columns(pl.col("numeric_value").cast(pl.Float32))
        else:
            df = df.with_columns(pl.lit(None, dtype=pl.Float32).alias("numeric_value"))
    if "subject_id" in present and df["subject_id"].null_count():
        row = int(df["subject_id"].is_null().arg_max())
        raise ClaimsSearchError(f"{name}: column 'subject_id': null value at row {row}")
    if "code" in present and df["code"].null_count():
        row = int(df["code"].is_null().arg_max())
        raise ClaimsSearchError(f"{name}: column 'code': null value at row {row}")
    return df


def check_order(name: str, df: pl.DataFrame) -> np.ndarray:
    """Check that subjects are contiguous and sorted by time (nulls first), within the years
    ``FIRST_YEAR``-``LAST_YEAR``; return their ids.

    ``df`` holds one shard's ``subject_id`` and ``time`` columns. Returns the subject ids in
    file order.
    """
    sid = df["subject_id"].to_numpy()
    # Time as int64 microseconds; static rows (null) sort before everything.
    t = df["time"].dt.epoch("us").fill_null(np.iinfo(np.int64).min).to_numpy()
    if len(sid) == 0:
        return sid
    change = np.flatnonzero(sid[1:] != sid[:-1]) + 1
    subjects = sid[np.r_[0, change]]
    if len(np.unique(subjects)) != len(subjects):
        u, counts = np.unique(subjects, return_counts=True)
        raise ClaimsSearchError(
            f"{name}: column 'subject_id': rows of subject {u[counts > 1][0]} are not contiguous"
        )
    timed = t != np.iinfo(np.int64).min
    out = np.flatnonzero(timed & ((t < _TIME_RANGE_US[0]) | (t >= _TIME_RANGE_US[1])))
    if len(out):
        row = int(out[0])
        raise ClaimsSearchError(
            f"{name}: column 'time': {np.datetime64(int(t[row]), 'us')} for subject {sid[row]} "
            f"(row {row}) is outside the years {FIRST_YEAR}-{LAST_YEAR}; a placeholder date or "
            "a unit mix-up in the export?"
        )
    same = np.ones(len(sid), dtype=bool)
    same[change] = False
    same[0] = False
    back = np.flatnonzero(same & (t < np.r_[t[0], t[:-1]]))
    if len(back):
        row = int(back[0])
        raise ClaimsSearchError(
            f"{name}: column 'time': not sorted for subject {sid[row]} (row {row}); "
            "MEDS needs each subject's rows sorted by time, static rows (null time) first"
        )
    return subjects


@dataclass
class ShardScan:
    """What one shard contributes to the dataset checks (no rows kept)."""

    name: str
    subjects: np.ndarray  # int64, in file order
    n_events: int
    n_static: int
    codes: set[str]
    columns: dict[str, str] = field(default_factory=dict)  # name -> type (equivalents merged)


def _canonical_type(t: pa.DataType) -> str:
    """The type's name, with the accepted equivalents (large_string, float64) merged."""
    for want, same in _EQUIVALENT.items():
        if t in same:
            return str(want)
    return str(t)


def scan_shard(ds: MedsDataset, path: Path, df: pl.DataFrame | None = None) -> ShardScan:
    """Check one shard's columns, ids and order; ``df`` if already read (subject_id, time, code)."""
    name = ds.rel(path)
    if df is None:
        df = read_shard(ds, path, ("subject_id", "time", "code"))
    subjects = check_order(name, df)
    codes = set(df["code"].unique().to_list())
    columns = {f.name: _canonical_type(f.type) for f in _read_schema(path, name)}
    return ShardScan(name, subjects, len(df), df["time"].null_count(), codes, columns)


def _schema_difference(scans: list[ShardScan]) -> str | None:
    """One line naming a shard whose columns differ from the most common ones, or None."""
    keys = [tuple(sorted(s.columns.items())) for s in scans]
    if len(set(keys)) < 2:
        return None
    common = max(set(keys), key=lambda k: (keys.count(k), -keys.index(k)))
    ref = scans[keys.index(common)]
    odd = [s for s, k in zip(scans, keys) if k != common]
    first = odd[0]
    diff = [f"no '{c}' column" for c in ref.columns if c not in first.columns]
    diff += [f"extra column '{c}'" for c in first.columns if c not in ref.columns]
    diff += [f"column '{c}' is {first.columns[c]}, not {ref.columns[c]}"
             for c in ref.columns if c in first.columns and first.columns[c] != ref.columns[c]]
    more = (f"; {plural(len(odd) - 1, 'other shard')} "
            f"{'differs' if len(odd) == 2 else 'differ'} too" if len(odd) > 1 else "")
    return (f"{first.name}: columns differ from the other shards' (e.g. {ref.name}): "
            f"{', '.join(diff)}{more}")


def summarize(ds: MedsDataset, scans: list[ShardScan], strict: bool = False,
              warn=None) -> ValidationReport:
    """The checks across shards (same columns, subjects in one file, splits, codes) and the
    report.

    Shards whose columns differ from the others' (e.g. one without ``numeric_value``), and
    codes absent from ``codes.parquet`` (or an empty codes file), are warnings, or errors
    when ``strict``. ``warn(line)`` receives each warning (default: this module's logger).
    """
    rep = ValidationReport(n_shards=len(scans), codes_file_empty=ds.codes is None)
    differ = _schema_difference(scans)
    if differ:
        if strict:
            raise ClaimsSearchError(differ)
        rep.warnings.append(f"{differ} (an error with --strict)")
    rep.n_events = sum(s.n_events for s in scans)
    rep.n_static = sum(s.n_static for s in scans)
    if rep.n_events == 0:
        raise ClaimsSearchError(f"{ds.root / meds.data_subdirectory}: empty dataset: no rows")
    ids = np.concatenate([s.subjects for s in scans])
    shard_of = np.repeat(np.arange(len(scans)), [len(s.subjects) for s in scans])
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        subject = uniq[counts > 1][0]
        where = [scans[i].name for i in shard_of[ids == subject]]
        raise ClaimsSearchError(
            f"{where[1]}: column 'subject_id': subject {subject} also has rows in {where[0]}; "
            "MEDS keeps each subject in one file"
        )
    rep.n_subjects = len(uniq)
    _check_splits(ds, uniq, rep)
    all_codes = set().union(*(s.codes for s in scans))
    codes_file = ds.root / meds.code_metadata_filepath
    if ds.codes is None:
        msg = (f"{codes_file}: missing or empty: {plural(len(all_codes), 'code')} undescribed "
               "(an error with --strict)")
        if strict:
            raise ClaimsSearchError(msg.removesuffix(" (an error with --strict)"))
        rep.missing_codes = len(all_codes)
        rep.warnings.append(msg)
    else:
        if strict:
            for s in scans:
                missing = s.codes - ds.codes
                if missing:
                    raise ClaimsSearchError(
                        f"{s.name}: column 'code': {len(missing)} codes absent from "
                        f"{codes_file} (e.g. {sorted(missing)[0]!r})"
                    )
        rep.missing_codes = len(all_codes - ds.codes)
        if rep.missing_codes:
            rep.warnings.append(
                f"{codes_file}: {plural(rep.missing_codes, 'code')} of the data not described "
                "there (an error with --strict)"
            )
    for w in rep.warnings:
        (warn or log.warning)(w)
    return rep


def validate(root: str | Path, strict: bool = False, warn=None) -> ValidationReport:
    """Validate the whole MEDS dataset at ``root``, streaming shard by shard; ``warn(line)``
    receives each warning (default: this module's logger)."""
    ds = open_dataset(root)
    return summarize(ds, [scan_shard(ds, p) for p in ds.shards], strict, warn)


def _check_splits(ds: MedsDataset, subjects: np.ndarray, rep: ValidationReport) -> None:
    """Every subject in the data has a split; count subjects per split.

    ``subjects``: the distinct subject ids of the data, sorted; ``ds.splits`` is sorted by
    subject id (see :func:`_read_splits`). Binary searches, no join: nothing per subject is
    left behind in the allocators.
    """
    ids = ds.splits["subject_id"].to_numpy()
    code = ds.splits["split"].to_physical().fill_null(255).to_numpy()
    pos = np.minimum(np.searchsorted(ids, subjects), max(len(ids) - 1, 0))
    if len(ids):
        have = code[pos].astype(np.int64)
        have[ids[pos] != subjects] = 255
    else:
        have = np.full(len(subjects), 255, np.int64)
    nosplit = np.flatnonzero(have == 255)
    if len(nosplit):
        raise ClaimsSearchError(
            f"{ds.root / meds.subject_splits_filepath}: column 'subject_id': subject "
            f"{subjects[nosplit[0]]} has data but no split ({len(nosplit)} such subjects)"
        )
    counts = np.bincount(have, minlength=len(SPLITS))
    rep.splits = {s: int(counts[i]) for i, s in enumerate(SPLITS)}


def events_frame(rows: list[tuple]) -> pl.DataFrame:
    """A MEDS data table from literal rows ``(subject_id, time, code[, numeric_value])``.

    ``time`` is a ``datetime``, an ISO string (``"2020-01-31"``) or None for static rows.
    """
    import datetime as dt

    def when(t):
        return dt.datetime.fromisoformat(t) if isinstance(t, str) else t

    return pl.DataFrame(
        {
            "subject_id": [r[0] for r in rows],
            "time": [when(r[1]) for r in rows],
            "code": [r[2] for r in rows],
            "numeric_value": [float(r[3]) if len(r) > 3 and r[3] is not None else None
                              for r in rows],
        },
        schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
                "numeric_value": pl.Float32},
    )


def write_dataset(
    root: str | Path,
    shards: dict[str, pl.DataFrame | list[tuple]],
    splits: dict[int, str],
    codes: list[str] | None = None,
) -> Path:
    """Write a small MEDS dataset (tests, examples): ``shards`` maps a shard name to its rows.

    A shard is literal rows (see :func:`events_frame`) or a DataFrame with ``subject_id``,
    ``time``, ``code`` (and maybe ``numeric_value``), cast to the MEDS types where present and
    otherwise written as given, so tests can write broken inputs on purpose.
    """
    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    casts = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
             "numeric_value": pl.Float32}
    for name, df in shards.items():
        if isinstance(df, list):
            df = events_frame(df)
        path = root / meds.data_subdirectory / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        df = df.with_columns([pl.col(c).cast(t) for c, t in casts.items() if c in df.columns])
        pq.write_table(_plain_strings(df.to_arrow()), path)
    pq.write_table(
        pa.table({"subject_id": pa.array(list(splits), pa.int64()),
                  "split": pa.array(list(splits.values()), pa.string())}),
        root / meds.subject_splits_filepath,
    )
    pq.write_table(
        pa.table({"code": pa.array(codes or [], pa.string()),
                  "description": pa.array([None] * len(codes or []), pa.string())}),
        root / meds.code_metadata_filepath,
    )
    return root


def _plain_strings(table: pa.Table) -> pa.Table:
    """Polars writes large_string; MEDS says string."""
    fields = [pa.field(f.name, pa.string()) if f.type == pa.large_string() else f
              for f in table.schema]
    return table.cast(pa.schema(fields))
