"""MEDS validation: a good dataset passes; each kind of bad input is one line naming the file
and column (and the subject or row where it helps)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from claims_search.data import meds
from claims_search.errors import ClaimsSearchError

# Two patients as a claims chart: static sex row first, birth, a checkup with a value.
ALICE = [
    (1, None, "GENDER//F"),
    (1, "1960-05-01", "MEDS_BIRTH"),
    (1, "2020-04-01", "HC//SPECIFIC_CHECKUP"),
    (1, "2020-04-01", "HC//SBP", 152.0),
    (1, "2020-05-01", "DX//ICD10//I10"),
]
BOB = [
    (2, None, "GENDER//M"),
    (2, "1970-01-15", "MEDS_BIRTH"),
    (2, "2021-06-01", "DRUG//ATC//C09CA01"),
]
CODES = ["GENDER//F", "GENDER//M", "MEDS_BIRTH", "HC//SPECIFIC_CHECKUP", "HC//SBP",
         "DX//ICD10//I10", "DRUG//ATC//C09CA01"]


def write(tmp_path, shards=None, splits=None, codes=CODES):
    shards = {"train/0": ALICE, "tuning/0": BOB} if shards is None else shards
    splits = {1: "train", 2: "tuning"} if splits is None else splits
    return meds.write_dataset(tmp_path / "meds", shards, splits, codes)


def fails(root, match, strict=False):
    with pytest.raises(ClaimsSearchError, match=match) as e:
        meds.validate(root, strict=strict)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_good_dataset_passes_with_counts(tmp_path):
    rep = meds.validate(write(tmp_path), strict=True)
    assert (rep.n_shards, rep.n_subjects, rep.n_events, rep.n_static) == (2, 2, 8, 2)
    assert rep.splits == {"train": 1, "tuning": 1, "held_out": 0}
    assert rep.missing_codes == 0 and rep.warnings == []


def test_shard_names_need_no_split_prefix(tmp_path):
    root = write(tmp_path, shards={"0": ALICE + BOB})
    assert meds.validate(root).splits["tuning"] == 1


def test_an_empty_codes_file_is_a_warning_that_counts(tmp_path, caplog):
    root = write(tmp_path, codes=[])
    with caplog.at_level(logging.WARNING):
        rep = meds.validate(root)
    assert rep.missing_codes == 7
    assert "7 codes undescribed" in caplog.text


def test_codes_absent_from_codes_parquet_are_an_error_under_strict(tmp_path):
    root = write(tmp_path, codes=CODES[:-1])
    assert meds.validate(root).missing_codes == 1
    fails(root, r"tuning/0\.parquet: column 'code': 1 codes absent .*DRUG//ATC//C09CA01",
          strict=True)


def test_empty_codes_file_is_an_error_under_strict(tmp_path):
    fails(write(tmp_path, codes=[]), r"codes\.parquet: .*missing or empty", strict=True)


def test_missing_column(tmp_path):
    root = write(tmp_path)
    pq.write_table(pa.table({"subject_id": pa.array([3], pa.int64()),
                             "time": pa.array([None], pa.timestamp("us"))}),
                   root / "data" / "train" / "0.parquet")
    fails(root, r"train/0\.parquet: column 'code' is missing")


def test_mistyped_column(tmp_path):
    root = write(tmp_path)
    pq.write_table(pa.table({"subject_id": pa.array(["1"], pa.string()),
                             "time": pa.array([None], pa.timestamp("us")),
                             "code": pa.array(["GENDER//F"])}),
                   root / "data" / "train" / "0.parquet")
    fails(root, r"train/0\.parquet: column 'subject_id' has type string, expected int64")


def test_time_in_nanoseconds_is_mistyped(tmp_path):
    root = write(tmp_path)
    pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64()),
                             "time": pa.array([0], pa.timestamp("ns")),
                             "code": pa.array(["X"])}),
                   root / "data" / "train" / "0.parquet")
    fails(root, r"column 'time' has type timestamp\[ns\], expected timestamp\[us\]")


def test_null_subject_id(tmp_path):
    root = write(tmp_path)
    pq.write_table(pa.table({"subject_id": pa.array([1, None], pa.int64()),
                             "time": pa.array([None, None], pa.timestamp("us")),
                             "code": pa.array(["GENDER//F", "X"])}),
                   root / "data" / "train" / "0.parquet")
    fails(root, r"train/0\.parquet: column 'subject_id': null value at row 1")


def test_unsorted_times(tmp_path):
    swapped = [ALICE[0], ALICE[1], ALICE[4], ALICE[2], ALICE[3]]
    fails(write(tmp_path, shards={"train/0": swapped, "tuning/0": BOB}),
          r"train/0\.parquet: column 'time': not sorted for subject 1 \(row 3\)")


def test_static_rows_come_first(tmp_path):
    late_static = ALICE[1:] + [ALICE[0]]
    fails(write(tmp_path, shards={"train/0": late_static, "tuning/0": BOB}),
          r"column 'time': not sorted for subject 1")


def test_subject_rows_not_contiguous(tmp_path):
    mixed = ALICE[:2] + BOB + ALICE[2:]
    fails(write(tmp_path, shards={"0": mixed}),
          r"0\.parquet: column 'subject_id': rows of subject 1 are not contiguous")


def test_subject_split_across_files(tmp_path):
    msg = fails(write(tmp_path, shards={"train/0": ALICE[:3], "train/1": ALICE[3:] + BOB}),
                r"column 'subject_id': subject 1 also has rows in")
    assert "train/1.parquet" in msg and "train/0.parquet" in msg


def test_unknown_split_name(tmp_path):
    fails(write(tmp_path, splits={1: "train", 2: "validation"}),
          r"subject_splits\.parquet: column 'split': unknown split name 'validation'")


def test_subject_without_split(tmp_path):
    fails(write(tmp_path, splits={1: "train"}),
          r"subject_splits\.parquet: column 'subject_id': subject 2 has data but no split")


def test_empty_dataset_without_shards(tmp_path):
    (tmp_path / "meds" / "data").mkdir(parents=True)
    fails(tmp_path / "meds", r"data: empty dataset")


def test_empty_dataset_with_empty_shards(tmp_path):
    fails(write(tmp_path, shards={"0": []}, splits={}), r"data: empty dataset: no rows")


def test_not_a_parquet_file(tmp_path):
    root = write(tmp_path)
    (root / "data" / "train" / "0.parquet").write_text("subject_id,time,code\n")
    fails(root, r"train/0\.parquet: not a readable Parquet file")


def test_messages_name_the_dataset_folder_not_paths_inside_it(tmp_path):
    swapped = [ALICE[0], ALICE[1], ALICE[4], ALICE[2], ALICE[3]]
    root = write(tmp_path, shards={"train/0": swapped, "tuning/0": BOB})
    msg = fails(root, r"not sorted for subject 1")
    assert msg.startswith(f"{root}/data/train/0.parquet: ")


def test_a_folder_without_data_is_not_a_meds_dataset(tmp_path):
    root = write(tmp_path)
    msg = fails(root / "data", r"not a MEDS dataset: no data/ folder")
    assert msg.startswith(f"{root / 'data'}: ") and "pass its parent" in msg and str(root) in msg
    other = tmp_path / "notes"
    other.mkdir()
    assert "empty dataset" not in fails(other, r"notes: not a MEDS dataset")
    fails(tmp_path / "absent", r"absent: no such folder")


def test_shards_with_different_columns_are_a_warning_or_an_error_under_strict(tmp_path):
    root = write(tmp_path, shards={"train/0": ALICE, "train/1": [(3, None, "GENDER//F")],
                                   "tuning/0": BOB}, splits={1: "train", 2: "tuning", 3: "train"})
    bob = root / "data" / "tuning" / "0.parquet"
    pq.write_table(pq.read_table(bob).drop(["numeric_value"]), bob)
    seen = []
    rep = meds.validate(root, warn=seen.append)
    assert rep.n_events == 9  # readable: the missing values are nulls
    assert seen == [rep.warnings[0]]
    assert seen[0].startswith(f"{bob}: columns differ from the other shards' (e.g. {root}/data/")
    assert "no 'numeric_value' column" in seen[0] and "--strict" in seen[0]
    fails(root, r"tuning/0\.parquet: columns differ .*no 'numeric_value' column", strict=True)


def test_equivalent_types_are_not_a_schema_difference(tmp_path):
    root = write(tmp_path)
    bob = root / "data" / "tuning" / "0.parquet"
    t = pq.read_table(bob)
    pq.write_table(t.cast(pa.schema([pa.field("code", pa.large_string()) if f.name == "code" else
                                     pa.field("numeric_value", pa.float64()) if f.name == "numeric_value"
                                     else f for f in t.schema])), bob)
    assert meds.validate(root, strict=True).warnings == []


def test_the_summary_says_shard_or_shards(tmp_path):
    assert meds.validate(write(tmp_path, shards={"0": ALICE + BOB})).summary().startswith(
        "1 shard, 2 subjects, 8 events")
    assert meds.validate(write(tmp_path / "b")).summary().startswith("2 shards, 2 subjects")
