"""`claims-search validate` and `claims-search prepare` as a user runs them: exit codes, one-line
errors, and no half-written output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from claims_search.data import meds
from claims_search.cli import main

CHECKUP = "HC//SPECIFIC_CHECKUP"


@pytest.fixture
def claims(tmp_path):
    """Two train patients: one CKD within a year of the checkup, one not."""
    rows = [
        (1, None, "GENDER//F"), (1, "2020-04-01", CHECKUP), (1, "2020-09-01", "DX//ICD10//N18.2"),
        (2, None, "GENDER//M"), (2, "2020-04-01", CHECKUP), (2, "2020-05-01", "DRUG//ATC//C08CA01"),
        (3, None, "GENDER//M"), (3, "2020-04-01", CHECKUP),
    ]
    return meds.write_dataset(tmp_path / "meds", {"0": rows}, {1: "train", 2: "train", 3: "tuning"})


def test_prepare_succeeds_then_is_up_to_date(claims, tmp_path, capsys):
    args = ["prepare", "--meds", str(claims), "--out", str(tmp_path / "out"), "--workers", "1",
            "--min-count", "1"]
    assert main(args) == 0
    assert "ckd_incidence: train 2 (1 pos), tuning 1 (0 pos)" in capsys.readouterr().out
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out


def test_bad_input_is_one_line_exit_2_and_no_output(claims, tmp_path, capsys):
    (claims / "metadata" / "subject_splits.parquet").unlink()
    meds.write_dataset(claims, {}, {1: "train", 2: "dev", 3: "tuning"})
    out = tmp_path / "out"
    assert main(["prepare", "--meds", str(claims), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("claims-search prepare: error: ")
    assert "subject_splits.parquet: column 'split': unknown split name 'dev'" in err
    assert not out.exists() and list(tmp_path.glob(".out.tmp-*")) == []


def test_a_task_with_one_class_fails_after_starting_and_leaves_nothing(claims, tmp_path, capsys):
    task = tmp_path / "never.yaml"
    task.write_text(
        "predicates:\n  checkup: {code: HC//SPECIFIC_CHECKUP}\n  death: {code: MEDS_DEATH}\n"
        "trigger: checkup\nwindows:\n"
        "  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true,"
        " index_timestamp: end}\n"
        "  target: {start: input.end, end: start + 30d, start_inclusive: false,"
        " end_inclusive: true, label: death}\n"
    )
    out = tmp_path / "out"
    assert main(["prepare", "--meds", str(claims), "--out", str(out), "--task", str(task),
                 "--workers", "1"]) == 2
    assert "never.yaml: task 'never' has no positive labels" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".out.tmp-*")) == []


def test_validate_strict_and_not(claims, capsys):
    assert main(["validate", str(claims)]) == 0
    assert "3 subjects, 8 events" in capsys.readouterr().out
    assert main(["validate", str(claims), "--strict"]) == 2
    assert "codes.parquet" in capsys.readouterr().err


def test_unknown_task_is_exit_2(claims, tmp_path, capsys):
    assert main(["prepare", "--meds", str(claims), "--out", str(tmp_path / "o"),
                 "--task", "nope"]) == 2
    assert "nope: no such task file or built-in task" in capsys.readouterr().err


def test_help_of_the_console_script():
    got = subprocess.run([sys.executable, "-m", "claims_search.cli", "prepare", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--max-len" in got.stdout and "quantile tokens" in got.stdout


def test_prepare_refuses_to_replace_a_folder_that_is_not_a_cache(claims, tmp_path, capsys):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    assert main(["prepare", "--meds", str(claims), "--out", str(precious), "--workers", "1"]) == 2
    assert "is not a prepared cache" in capsys.readouterr().err
    assert (precious / "todo.txt").read_text() == "keep me"


METFORMIN_TASK = (
    "predicates:\n  checkup: {code: HC//SPECIFIC_CHECKUP}\n  ccb: {code: DRUG//ATC//C08CA01}\n"
    "trigger: checkup\nwindows:\n"
    "  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true,"
    " index_timestamp: end}\n"
    "  target: {start: input.end, end: start + 90d, start_inclusive: false,"
    " end_inclusive: true, label: ccb}\n"
)


def tasks_of(out):
    import json

    return sorted(json.loads((out / "manifest.json").read_text())["tasks"])


def test_a_task_file_adds_to_the_built_in_tasks_and_only_tasks_restricts(claims, tmp_path, capsys):
    mine = tmp_path / "ccb_start.yaml"
    mine.write_text(METFORMIN_TASK)
    base = ["prepare", "--meds", str(claims), "--workers", "1", "--min-count", "1"]
    assert main(base + ["--out", str(tmp_path / "all"), "--task", str(mine)]) == 0
    assert tasks_of(tmp_path / "all") == ["antihypertensive_start", "ccb_start", "ckd_incidence"]
    assert main(base + ["--out", str(tmp_path / "mine"), "--task", str(mine), "--only-tasks"]) == 0
    assert tasks_of(tmp_path / "mine") == ["ccb_start"]
    # A built-in name given twice, or with the defaults, is prepared once.
    assert main(base + ["--out", str(tmp_path / "one"), "--task", "ckd_incidence",
                        "--task", "ckd_incidence", "--only-tasks"]) == 0
    assert tasks_of(tmp_path / "one") == ["ckd_incidence"]
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "none"), "--only-tasks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only-tasks: give the tasks to prepare with --task" in err
    assert not (tmp_path / "none").exists()


def test_on_other_data_an_unnamed_built_in_task_is_left_out_with_a_warning(tmp_path, capsys):
    """Data without the synthetic world's CKD codes: ckd_incidence has no positives."""
    rows = [(1, "2020-04-01", CHECKUP), (1, "2020-05-01", "DRUG//ATC//C08CA01"),
            (2, "2020-04-01", CHECKUP), (3, "2020-04-01", CHECKUP)]
    root = meds.write_dataset(tmp_path / "meds", {"0": rows}, {1: "train", 2: "train", 3: "tuning"})
    mine = tmp_path / "ccb_start.yaml"
    mine.write_text(METFORMIN_TASK)
    out = tmp_path / "out"
    assert main(["prepare", "--meds", str(root), "--out", str(out), "--workers", "1",
                 "--min-count", "1", "--task", str(mine)]) == 0
    assert tasks_of(out) == ["antihypertensive_start", "ccb_start"]
    err = capsys.readouterr().err
    left_out = [x for x in err.splitlines() if "left out" in x]
    assert left_out == [
        "claims-search prepare: warning: built-in task ckd_incidence left out: it has no positive "
        "labels (3 samples) on this dataset; predicate 'ckd' (code regex ^DX//ICD10//N18) matches "
        "no event in the data (--task ckd_incidence makes that an error)"]
    # Up to date: nothing is redone, and the warning still stands.
    assert main(["prepare", "--meds", str(root), "--out", str(out), "--workers", "1",
                 "--min-count", "1", "--task", str(mine)]) == 0
    again = capsys.readouterr()
    assert "up to date" in again.out and left_out[0] in again.err.splitlines()
    # Named, the same task is an error; and a cache with no task left is one too.
    assert main(["prepare", "--meds", str(root), "--out", str(tmp_path / "o2"), "--workers", "1",
                 "--task", "ckd_incidence"]) == 2
    assert "task 'ckd_incidence' has no positive labels" in capsys.readouterr().err
    no_ckd = meds.write_dataset(tmp_path / "m2", {"0": [(1, "2020-04-01", CHECKUP)]}, {1: "train"})
    assert main(["prepare", "--meds", str(no_ckd), "--out", str(tmp_path / "o3"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"claims-search prepare: error: {no_ckd}: no task has both classes")
    assert "--task FILE.yaml" in err and not (tmp_path / "o3").exists()


def test_a_folder_that_is_not_meds_is_named_so(tmp_path, capsys):
    notmeds = tmp_path / "notmeds"
    notmeds.mkdir()
    out = tmp_path / "out"
    assert main(["prepare", "--meds", str(notmeds), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{notmeds}: not a MEDS dataset: no data/ folder" in err
    assert "empty dataset" not in err and not out.exists()


def test_validate_the_data_folder_by_mistake(claims, capsys):
    assert main(["validate", str(claims / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{claims / 'data'}: not a MEDS dataset" in err and f"pass its parent, {claims}" in err


def test_validate_warns_about_shards_with_other_columns_and_strict_fails(claims, tmp_path, capsys):
    import pyarrow.parquet as pq

    other = [(4, None, "GENDER//F"), (4, "2020-04-01", CHECKUP)]
    meds.write_dataset(claims, {"1": other}, {1: "train", 2: "train", 3: "tuning", 4: "train"})
    one = claims / "data" / "1.parquet"
    pq.write_table(pq.read_table(one).drop(["numeric_value"]), one)
    assert main(["validate", str(claims)]) == 0
    got = capsys.readouterr()
    assert "2 shards, 4 subjects" in got.out
    assert got.err.splitlines()[0] + "\n" == (f"claims-search validate: warning: {one}: columns differ from the other shards' "
                       f"(e.g. {claims / 'data' / '0.parquet'}): no 'numeric_value' column "
                       "(an error with --strict)\n")
    assert main(["validate", str(claims), "--strict"]) == 2
    assert "no 'numeric_value' column" in capsys.readouterr().err


def test_small_evaluation_splits_get_a_plain_warning_and_again_when_up_to_date(claims, tmp_path, capsys):
    args = ["prepare", "--meds", str(claims), "--out", str(tmp_path / "out"), "--workers", "1",
            "--min-count", "1", "--task", "ckd_incidence", "--only-tasks"]
    for _ in range(2):
        assert main(args) == 0
        err = capsys.readouterr().err.splitlines()
        assert ("claims-search prepare: warning: task ckd_incidence: split tuning has one class only "
                "(1 sample, 0 positive): AUROC and AUPRC are undefined there") in err
        assert ("claims-search prepare: warning: task ckd_incidence: split held_out has no samples: "
                "nothing to evaluate the task on there") in err


def test_a_task_file_named_like_a_built_in_task_replaces_it(claims, tmp_path, capsys):
    from claims_search.data import labels

    mine = tmp_path / "ckd_incidence.yaml"
    mine.write_text(labels.task_path("ckd_incidence").read_text().replace("365d", "300d"))
    out = tmp_path / "out"
    assert main(["prepare", "--meds", str(claims), "--out", str(out), "--workers", "1",
                 "--min-count", "1", "--task", str(mine)]) == 0
    assert f"task ckd_incidence: from {mine}, in place of the built-in task" in capsys.readouterr().out
    assert tasks_of(out) == ["antihypertensive_start", "ckd_incidence"]
    assert "300d" in (out / "tasks" / "ckd_incidence.yaml").read_text()
