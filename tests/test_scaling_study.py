"""`bench/scaling_study.py --quick` and `bench/search_efficiency.py` on its output, end to end:
the reports' structure, not their figures.

The whole study (hours) runs on the development machine; this proves that its pipeline works on
a fresh clone: data with the complexity family, the ladder, the labelled subsets, LightGBM, the
paired-rule recommendation, the report and its plots, and that a rerun reuses every unit.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_study_writes_every_table_and_a_rerun_trains_nothing(tmp_path):
    out, report = tmp_path / "study", tmp_path / "docs" / "scaling.md"
    report.parent.mkdir()
    cmd = [sys.executable, str(ROOT / "bench" / "scaling_study.py"), "--quick", "--out", str(out),
           "--report", str(report)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((out / "report.json").read_text())
    tables = data["tables"]
    assert {t["task"] for t in tables} == {"antihypertensive_start", "complexity_k3"}
    for t in tables:
        assert t["complete"] and t["n_labelled"] == 300
        assert [r["size"] for r in t["rows"]] == ["w16d1h2", "w32d1h2"]
        assert t["rows"][0]["non_embedding"] < t["rows"][1]["non_embedding"]
        for r in t["rows"]:
            for init in ("pre", "scratch"):
                m = r[init]["held_out"]
                assert 0 <= m["auprc_low"] <= m["auprc"] <= m["auprc_high"] <= 1
            assert r["pre"]["cost"] > 0 and r["scratch"]["cost"] > 0
        assert t["recommended"] in {"w16d1h2", "w32d1h2"} and 0 < t["oracle"]["held_out"]["auroc"] <= 1
        assert t["lightgbm"]["metrics"]["held_out"]["n"] > 0
    text = report.read_text()
    assert "| task | labelled | recommended |" in text and "complexity_k3, 300 labelled patients" in text
    for png in ("scaling_metric_vs_size.png", "scaling_recommended_vs_k.png"):
        assert (report.parent / png).stat().st_size > 1000
    assert "subject" not in text  # aggregates only

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "every unit done" in again.stdout
    assert "fine-tune" not in again.stdout and "pretrain w" not in again.stdout  # nothing retrained

    eff = subprocess.run([sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--study", str(out),
                          "--seeds", "2", "--report", str(report.with_name("eff.md"))],
                         capture_output=True, text=True, timeout=300)
    assert eff.returncode == 0, eff.stderr[-3000:]
    summary = json.loads((out / "search_efficiency.json").read_text())["summary"]
    assert set(summary) == {"antihypertensive_start/n300", "complexity_k3/n300"}
    for strategies in summary.values():
        floor = strategies.pop("floor_share")  # what training the grid's answer costs
        assert set(strategies) == {"grid", "default", "random", "ascend", "ascend+patience"}
        assert 0 < floor <= 1
        # every strategy that trains fully gets there no cheaper than the floor
        assert all(v["median_share"] >= floor for k, v in strategies.items() if v["hits"] and k != "ascend+patience")
        assert strategies["grid"]["runs"] == 1 and strategies["random"]["runs"] == 2
        assert strategies["grid"]["hits"] == 1  # the grid always reaches its own answer
        assert all(0 < s["median_spent_share"] <= 1 for s in strategies.values())
    assert (report.parent / "eff_hv.png").stat().st_size > 1000

    crop = subprocess.run([sys.executable, str(ROOT / "bench" / "crop_check.py"), "--study", str(out),
                           "--report", str(report.with_name("crop.md"))], capture_output=True, text=True, timeout=300)
    assert crop.returncode == 0, crop.stderr[-3000:]
    for t, c in zip(tables, json.loads((out / "crop_check.json").read_text())):
        # every held-out sample is on one side of the crop, and the three models are scored on both
        assert c["fits"]["n"] + c["cut"]["n"] == t["lightgbm"]["metrics"]["held_out"]["n"]
        assert {"oracle", "lightgbm", "recommended"} <= set(c["fits"])
    assert "| task | labelled | longer: samples (positives) |" in report.with_name("crop.md").read_text()


def test_patience_stop_is_where_a_run_would_have_ended_without_a_better_evaluation():
    sys.path.insert(0, str(ROOT / "bench"))
    from search_efficiency import patience_stop

    curve = [[120, 0.50], [240, 0.55], [360, 0.55], [480, 0.54], [600, 0.60]]  # a tie is not better
    assert patience_stop(curve, 1200, 2) == 480
    assert patience_stop(curve, 1200, 3) == 1200  # the best at 600 came first: the run goes on
    assert patience_stop(curve, 1200, 0) == patience_stop([], 1200, 2) == 1200  # off, or no curve kept


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_study_without_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling_study.py"), "--gpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == ["scaling_study: --gpu: no CUDA device is visible to torch"]
    assert not out.exists()
