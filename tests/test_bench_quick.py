"""The benchmarks' quick modes run and report what they promise (structure only, never figures).

The figures themselves live in docs/benchmarks.md; timing belongs to bench/, not to tests.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# meds-torch-data lives in its own venv (see bench/mtd_yardstick.py). Its six subprocess stages
# cost ~35 s even on 300 patients (2-3 min on a loaded 2-core machine), so it runs only on request.
MTD = Path(os.environ.get("CLAIMS_SEARCH_MTD", "/work/mtd-venv/bin/MTD_preprocess"))
RUN_MTD = MTD.exists() and os.environ.get("CLAIMS_SEARCH_MTD_TEST") == "1"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_throughput_quick_reports_every_variant_and_ratio_spreads(tmp_path):
    out = tmp_path / "throughput.json"
    text = run("throughput_vs_bert.py", "--quick", "--sizes", "32x1", "--repeats", "2", "--batch-tokens", "600",
               "--json", str(out))
    assert "BERT grouped tok/s" in text and "packed / BERT padded" in text and "packed / BERT grouped" in text
    report = json.loads(out.read_text())
    assert report["variants"] == ["packed", "rows513", "padded", "bert", "grouped"]
    assert report["settings"]["repeats"] == 2 and report["settings"]["max_len"] == 128  # --quick's
    assert report["settings"]["attn_dropout"] == 0.0  # claims-search's default, given to BERT too
    # length grouping pads far less than one-patient-per-row padding
    assert report["real_fraction"]["grouped"] > report["real_fraction"]["bert"]
    # ... and so do our rows, as long as each grouped batch's longest patient (rounded up to 8)
    assert report["real_fraction"]["packed"] > report["real_fraction"]["bert"]
    (size,) = report["sizes"]
    assert size["size"] == "32x1" and all(len(v) == 2 for v in size["seconds"].values())
    for kind in ("rows513", "padded", "bert", "grouped"):
        for ratios in (size["ratio"], size["cpu_ratio"]):  # wall-time and CPU-time ratios
            assert ratios[kind]["min"] <= ratios[kind]["median"] <= ratios[kind]["max"]


def test_mtd_yardstick_measures_our_prepare(tmp_path):
    out = tmp_path / "yardstick.json"
    subprocess.run([str(ROOT / ".venv" / "bin" / "claims-search"), "synth", "--patients", "300",
                    "--out", str(tmp_path / "meds")], check=True, capture_output=True)
    text = run("mtd_yardstick.py", "--only", "ours", "--meds", str(tmp_path / "meds"),
               "--work", str(tmp_path / "work"), "--json", str(out))
    assert "| ours |" in text
    report = json.loads(out.read_text())
    assert report["subjects"] == 300 and report["events"] > 0
    (run_,) = report["runs"]["ours"]
    assert run_["wall_s"] > 0 and run_["peak_tree_rss_gib"] > 0 and run_["samples"] > 0
    assert report["outputs"]["ours"]["files"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not RUN_MTD, reason=f"needs MTD_preprocess at {MTD} and CLAIMS_SEARCH_MTD_TEST=1")
def test_mtd_yardstick_runs_meds_torch_data(tmp_path):
    out = tmp_path / "yardstick.json"
    subprocess.run([str(ROOT / ".venv" / "bin" / "claims-search"), "synth", "--patients", "300",
                    "--out", str(tmp_path / "meds")], check=True, capture_output=True)
    run("mtd_yardstick.py", "--only", "mtd", "--mtd", str(MTD), "--meds", str(tmp_path / "meds"),
        "--work", str(tmp_path / "work"), "--json", str(out))
    report = json.loads(out.read_text())
    assert report["outputs"]["mtd"]["tensor_files"] > 0


def test_attn_dropout_quick_pairs_both_settings_by_seed(tmp_path):
    def table(text: str) -> list[str]:  # synth and prepare print above it
        lines = text.strip().splitlines()
        return lines[next(i for i, line in enumerate(lines) if line.startswith("| figure")):]

    header, rule, *rows = table(run("attn_dropout.py", "--quick", "--out", str(tmp_path / "attn")))
    assert "attn 0, seed 0" in header and "attn 0.1, seed 0" in header and "attn 0.1 − 0" in header
    names = [r.split("|")[1].strip() for r in rows]
    assert "pretraining val loss" in names and "ckd_incidence auroc" in names
    assert "antihypertensive_start auprc" in names
    assert all(r.count("|") == rule.count("|") and "–" not in r.split("|")[2] for r in rows)
    # a rerun trains nothing: the units are cached
    again = run("attn_dropout.py", "--quick", "--out", str(tmp_path / "attn"), "--report-only")
    assert table(again) == [header, rule, *rows]


def test_recommend_time_quick_times_the_rule_with_and_without_more_seeds():
    text = run("recommend_time.py", "--quick")
    assert text.startswith("5 trials, 500 tuning samples;")
    assert re.search(r"1 seed\(s\): [\d.]+ s wall, [\d.]+ s CPU \(all threads; recommended t\d, agreement None\)", text)
    assert re.search(r"5 seed\(s\): [\d.]+ s wall, [\d.]+ s CPU \(all threads; recommended t\d, agreement [01]\.\d+\)",
                     text)
    assert re.search(r"peak RSS [\d.]+ GiB", text)
