"""bench/common.py: the settings guard on a bench script's --out, and its markdown tables."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import common  # noqa: E402

QUICK = {"quick": True, "patients": 300, "pretrain": {"steps": 10, "lr": 1e-3}}
FULL = {"quick": False, "patients": 20000, "pretrain": {"steps": 1000, "lr": 1e-3}}


def test_a_new_folder_records_its_settings_and_the_same_settings_pass(tmp_path):
    out = tmp_path / "bench"
    common.guard(out, QUICK, "demo_bench")
    assert json.loads((out / "settings.json").read_text()) == QUICK
    common.guard(out, QUICK, "demo_bench")  # a rerun with the same settings reuses the folder


def test_a_full_run_in_a_quick_folder_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    common.guard(out, QUICK, "demo_bench")
    before = (out / "settings.json").read_text()
    with pytest.raises(SystemExit) as stop:
        common.guard(out, FULL, "demo_bench")
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"demo_bench: refused: {out} holds results made with other settings (patients: 300 -> 20000; "
                    "pretrain.steps: 10 -> 1000; quick: true -> false); use another --out")
    assert (out / "settings.json").read_text() == before and [p.name for p in out.iterdir()] == ["settings.json"]


def test_a_folder_recorded_before_the_guard_knew_quick_holds_a_full_run(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({k: v for k, v in FULL.items() if k != "quick"}))
    common.guard(out, FULL, "demo_bench")  # the old study goes on
    with pytest.raises(SystemExit):
        common.guard(out, dict(FULL, quick=True), "demo_bench")


def test_tuples_and_the_lists_read_back_are_the_same_setting(tmp_path):
    common.guard(tmp_path / "b", {"ladder": ((16, 1, 2), (32, 1, 2))}, "demo_bench")
    common.guard(tmp_path / "b", {"ladder": ((16, 1, 2), (32, 1, 2))}, "demo_bench")
    assert common.differences({"a": 1}, {"b": 2}) == ["a: 1 -> unset", "b: unset -> 2"]


def test_a_table_has_its_header_its_rule_and_one_line_a_row():
    assert common.table(["size", "AUPRC"], [("w16d1h2", "0.412"), ("w32d1h2", 0.5)], "lr") == [
        "| size | AUPRC |", "|---|---:|", "| w16d1h2 | 0.412 |", "| w32d1h2 | 0.5 |"]
    assert common.table(["a", "b"], []) == ["| a | b |", "|---|---|"]  # rows printed as they come
