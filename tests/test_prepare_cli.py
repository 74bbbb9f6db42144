"""`claims-search validate` and `claims-search prepare` as a user runs them: exit codes, one-line
errors, and no half-written output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from claims_search import meds
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
