"""Properties, whatever the data (hypothesis): the MEDS validator accepts a dataset exactly when
it keeps the rules and fails only with ClaimsSearchError; labels follow their windows, never
look past the prediction time for who is a sample, are deterministic, and the cache's model
input for a label ends at its prediction time.

Each property is checked against a small independent re-statement of the rule, written here
in plain Python. Runs are bounded (``max_examples``) so the file takes well under a minute.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from claims_search.data import labels, meds
from claims_search.errors import ClaimsSearchError

# database=None: no .hypothesis/ folder in the checkout; a failure prints its example.
# derandomize: the same examples on every run, so a suite run's verdict is reproducible (a
# random byte pattern once failed in a full run only); widen the search by hand with
# `--hypothesis-seed` when hunting for new cases.
BOUNDED = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])
LABELS = settings(max_examples=25, deadline=None, database=None, derandomize=True)


def _scratch():
    """A fresh folder per example (hypothesis reruns the test body; tmp_path is per test)."""
    return tempfile.TemporaryDirectory(prefix="claims-props-")


# ---- the MEDS validator ----------------------------------------------------------------------

IN_RANGE = [None, dt.datetime(1950, 1, 1), dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, 12),
            dt.datetime(2021, 6, 30)]
OUT_OF_RANGE = [dt.datetime(1799, 12, 31), dt.datetime(2200, 1, 1), dt.datetime(9999, 12, 31)]
SPLIT_NAMES = ["train", "tuning", "held_out", "validation"]

row = st.tuples(
    st.one_of(st.integers(1, 4), st.none()),                    # subject_id (rarely null)
    st.sampled_from(IN_RANGE + OUT_OF_RANGE),                    # time
    st.one_of(st.sampled_from(["GENDER//F", "DX//ICD10//N18.3", "HC//SBP"]), st.none()),
    st.integers(0, 2),                                           # shard
)
splits_rows = st.lists(st.tuples(st.integers(1, 4), st.sampled_from(SPLIT_NAMES)), max_size=6)


def _sorted_rows(rows):
    """Mostly keep the rules: group by subject, sort by time (nulls first), keep file order."""
    return sorted(rows, key=lambda r: (r[0] or 0, r[1] is not None, r[1] or dt.datetime.min))


def keeps_the_rules(shards: dict[int, list], split_rows: list) -> bool:
    """The MEDS rules claims_search checks, stated plainly (the oracle)."""
    all_rows = [r for rows in shards.values() for r in rows]
    if not all_rows:
        return False
    if any(sid is None or code is None for sid, _, code in all_rows):
        return False
    lo, hi = dt.datetime(meds.FIRST_YEAR, 1, 1), dt.datetime(meds.LAST_YEAR + 1, 1, 1)
    if any(t is not None and not lo <= t < hi for _, t, _ in all_rows):
        return False
    home: dict[int, int] = {}
    for shard, rows in shards.items():
        seen_blocks = []
        for sid, _, _ in rows:
            if not seen_blocks or seen_blocks[-1] != sid:
                seen_blocks.append(sid)
        if len(seen_blocks) != len(set(seen_blocks)):
            return False  # a subject's rows are not contiguous
        for sid in seen_blocks:
            if home.setdefault(sid, shard) != shard:
                return False  # a subject in two files
        for sid in seen_blocks:
            times = [t for s, t, _ in rows if s == sid]
            keys = [(t is not None, t or dt.datetime.min) for t in times]
            if keys != sorted(keys):
                return False
    ids = [sid for sid, _ in split_rows]
    if len(ids) != len(set(ids)) or any(s not in meds.SPLITS for _, s in split_rows):
        return False
    return set(home) <= set(ids)


def write_raw(root: Path, shards: dict[int, list], split_rows: list) -> None:
    """Write the shards and splits exactly as given (broken on purpose, where they are)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    for shard, rows in shards.items():
        pq.write_table(pa.table({
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([None] * len(rows), pa.float32()),
        }), root / "data" / f"{shard}.parquet")
    pq.write_table(pa.table({"subject_id": pa.array([r[0] for r in split_rows], pa.int64()),
                             "split": pa.array([r[1] for r in split_rows], pa.string())}),
                   root / "metadata" / "subject_splits.parquet")


@BOUNDED
@given(rows=st.lists(row, max_size=12), sort=st.booleans(), split_rows=splits_rows,
       all_split=st.booleans())
def test_the_validator_accepts_a_dataset_exactly_when_it_keeps_the_rules(rows, sort, split_rows,
                                                                         all_split):
    if sort:  # otherwise nearly every dataset breaks a rule: make the valid ones common too
        rows = _sorted_rows(rows)
    if all_split:
        split_rows = [(s, "train") for s in sorted({r[0] for r in rows if r[0] is not None})]
    shards: dict[int, list] = {}
    for sid, t, code, shard in rows:
        shards.setdefault(shard, []).append((sid, t, code))
    with _scratch() as tmp:
        write_raw(Path(tmp) / "meds", shards, split_rows)
        try:
            report = meds.validate(Path(tmp) / "meds", warn=lambda line: None)
            accepted = True
        except ClaimsSearchError as e:
            assert "\n" not in str(e)
            accepted = False
    assert accepted == keeps_the_rules(shards, split_rows)
    if accepted:
        assert report.n_events == len(rows)


@BOUNDED
@given(cuts=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4),
       truncate=st.one_of(st.none(), st.floats(0, 1)))
@example(cuts=[(0.375, 128)], truncate=None)  # a footer column name that is not UTF-8 (found in CI-like run)
def test_a_damaged_shard_is_read_or_refused_in_one_line_never_a_crash(cuts, truncate):
    rows = [(1, None, "GENDER//F"), (1, "2020-04-01", "HC//SPECIFIC_CHECKUP"),
            (1, "2020-09-01", "DX//ICD10//N18.3"), (2, "2021-01-01", "HC//SBP", 140.0)]
    with _scratch() as tmp:
        root = meds.write_dataset(Path(tmp) / "meds", {"0": rows}, {1: "train", 2: "tuning"})
        shard = root / "data" / "0.parquet"
        data = bytearray(shard.read_bytes())
        for where, value in cuts:  # overwrite bytes anywhere: pages, header, footer
            data[min(int(where * len(data)), len(data) - 1)] = value
        if truncate is not None:
            data = data[: int(truncate * len(data))]
        shard.write_bytes(bytes(data))
        try:
            meds.validate(root, warn=lambda line: None)
        except ClaimsSearchError as e:
            assert "\n" not in str(e)


# ---- label windows ---------------------------------------------------------------------------

CHECKUP = "HC//SPECIFIC_CHECKUP"
START = dt.datetime(2019, 1, 1)
# Days that sit on the window edges (0, 90, 365 days after a checkup at day 100 or 200) are
# drawn often, the rest at random.
DAYS = st.one_of(st.sampled_from([0, 100, 190, 191, 200, 290, 291, 465, 466, 565, 566]),
                 st.integers(0, 800))
CODES = [CHECKUP, "DX//ICD10//N18.3", "DX//ICD10//N18", "DX//ICD10//I10", "DRUG//ATC//C09CA01",
         "DRUG//ATC//C10AA01"]
events = st.lists(st.tuples(DAYS, st.sampled_from(CODES)), max_size=8)
patients = st.lists(events, min_size=1, max_size=4)

# The two built-in tasks as (label/exclusion code regex, target window length in days).
WINDOWS = {"ckd_incidence": (r"^DX//ICD10//N18", 365),
           "antihypertensive_start": (r"^DRUG//ATC//C0[23789]", 90)}


def chart_rows(charts: list[list[tuple[int, str]]]) -> list[tuple]:
    """MEDS rows of generated charts: sex, then the events in time order."""
    rows = []
    for sid, chart in enumerate(charts, start=1):
        rows.append((sid, None, "GENDER//F"))
        rows += [(sid, START + dt.timedelta(days=d), code) for d, code in sorted(chart)]
    return rows


def expected_labels(charts, regex: str, days: int) -> set[tuple]:
    """The built-in tasks' windows by hand: a sample at every checkup time with no matching code
    at or before it; positive when one follows within ``days`` (after it, up to and including)."""
    out = set()
    for sid, chart in enumerate(charts, start=1):
        hits = [START + dt.timedelta(days=d) for d, c in chart if re.search(regex, c)]
        for t in {START + dt.timedelta(days=d) for d, c in chart if c == CHECKUP}:
            if any(h <= t for h in hits):
                continue
            out.add((sid, t, any(t < h <= t + dt.timedelta(days=days) for h in hits)))
    return out


def extract(task_name: str, rows: list[tuple], folder: Path) -> pl.DataFrame:
    root = meds.write_dataset(folder, {"0": rows}, {s: "train" for s in {r[0] for r in rows}})
    return labels.extract_shard(labels.load_task(task_name), root / "data" / "0.parquet")


def as_set(df: pl.DataFrame) -> set[tuple]:
    return set(zip(df["subject_id"].to_list(), df["prediction_time"].to_list(),
                   df["boolean_value"].to_list()))


@pytest.mark.parametrize("task_name", list(WINDOWS))
@LABELS
@given(charts=patients)
def test_labels_follow_the_windows_and_are_deterministic(task_name, charts):
    rows = chart_rows(charts)
    with _scratch() as tmp:
        got = extract(task_name, rows, Path(tmp) / "a")
        again = extract(task_name, rows, Path(tmp) / "b")
    assert got.equals(again)  # same data, same labels, same order
    assert as_set(got) == expected_labels(charts, *WINDOWS[task_name])
    assert len(got) == len(as_set(got))  # one sample per subject and prediction time


@LABELS
@given(charts=patients, cut=DAYS)
def test_who_is_a_sample_never_depends_on_events_after_the_prediction_time(charts, cut):
    """Drop every event after day ``cut``: the samples up to ``cut`` stay the same samples."""
    task = "ckd_incidence"
    cutoff = START + dt.timedelta(days=cut)
    past = [[(d, c) for d, c in chart if START + dt.timedelta(days=d) <= cutoff] for chart in charts]
    with _scratch() as tmp:
        full = extract(task, chart_rows(charts), Path(tmp) / "full")
        cut_off = extract(task, chart_rows(past), Path(tmp) / "past")
    before = {(s, t) for s, t, _ in as_set(full) if t <= cutoff}
    assert before == {(s, t) for s, t, _ in as_set(cut_off)}


@settings(LABELS, max_examples=10)
@given(charts=st.lists(events, min_size=2, max_size=4))
def test_the_model_input_of_a_label_ends_at_its_prediction_time(charts):
    """In the prepared cache, the events a label's sequence holds are all at or before its
    prediction time (the day of the last one is not after it)."""
    import numpy as np

    from claims_search.data.cache import Cache, Settings, write_cache

    # Both classes are needed for the cache to keep the task: add one of each.
    charts = charts + [[(100, CHECKUP), (200, "DX//ICD10//N18.3")], [(100, CHECKUP)]]
    rows = chart_rows(charts)
    with _scratch() as tmp:
        root = meds.write_dataset(Path(tmp) / "m", {"0": rows},
                                  {s: "train" for s in {r[0] for r in rows}})
        write_cache(root, Path(tmp) / "c", [labels.load_task("ckd_incidence")],
                    Settings(max_len=4, min_count=1), warn=lambda line: None,
                    progress=lambda line: None)
        cache = Cache.open(Path(tmp) / "c")
        labs = cache.labels("ckd_incidence")
        assert len(labs) == len(expected_labels(charts, *WINDOWS["ckd_incidence"]))
        epoch = np.datetime64("1970-01-01", "D")
        for r in labs.itertuples():
            tokens, days = cache.sequence(r.subject_idx, r.end)
            limit = (np.datetime64(r.prediction_time, "D") - epoch).astype(int)
            assert len(tokens) >= 1 and (days <= limit).all()
        shutil.rmtree(Path(tmp) / "c")
