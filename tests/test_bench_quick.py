"""The benchmarks' quick modes run and report what they promise (structure only, never figures).

The figures themselves live in docs/benchmarks.md; timing belongs to bench/, not to tests. Every
quick mode that reads data reads one tiny dataset (``bench/common.py``'s ``quick_data``), made
once here and lent to each script: ``--data``/``--meds`` where it takes them, else linked into
its ``--out`` where the script would make that very dataset itself.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
# meds-torch-data lives in its own venv (see bench/mtd_yardstick.py). Its six subprocess stages
# cost ~35 s even on 300 patients (2-3 min on a loaded 2-core machine), so it runs only on request.
MTD = Path(os.environ.get("CLAIMS_SEARCH_MTD", "/work/mtd-venv/bin/MTD_preprocess"))
RUN_MTD = MTD.exists() and os.environ.get("CLAIMS_SEARCH_MTD_TEST") == "1"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The quick modes' dataset (meds/ and prepared/), made once for this module."""
    folder = tmp_path_factory.mktemp("quick-data")
    common.quick_data(folder, quiet=True)
    return folder


def lend(tiny: Path, out: Path) -> Path:
    """``out`` holding links to the tiny dataset, where a quick mode would make it."""
    out.mkdir(parents=True)
    for name in ("meds", "prepared"):
        (out / name).symlink_to(tiny / name)
    return out


def table(text: str, first: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with ``| first``, rule line dropped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first}"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert set("".join(rows[1])) <= set("-:"), rows[1]  # the rule under the header
    return [rows[0], *rows[2:]]


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


def test_mtd_yardstick_measures_our_prepare(tmp_path, tiny):
    out = tmp_path / "yardstick.json"
    text = run("mtd_yardstick.py", "--quick", "--only", "ours", "--meds", str(tiny / "meds"),
               "--work", str(tmp_path / "work"), "--json", str(out))
    assert "| ours |" in text
    report = json.loads(out.read_text())
    assert report["subjects"] == common.QUICK_PATIENTS and report["events"] > 0
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


def test_attn_dropout_quick_pairs_both_settings_by_seed(tmp_path, tiny):
    def table(text: str) -> list[str]:  # synth and prepare print above it
        lines = text.strip().splitlines()
        return lines[next(i for i, line in enumerate(lines) if line.startswith("| figure")):]

    lend(tiny, tmp_path / "attn")
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


# ---- the quick modes added with bench/common.py: one test each, structure only


def test_crop_check_quick_splits_the_oracle_at_the_crop(tmp_path, tiny):
    text = run("crop_check.py", "--quick", "--data", str(lend(tiny, tmp_path / "crop")))
    header, *rows = table(text, "task")
    assert header == ["task", "labelled", "longer: samples (positives)", "oracle", "LightGBM", "recommended"]
    assert sorted(r[0] for r in rows) == ["antihypertensive_start", "ckd_incidence"]
    (result,) = [json.loads((tmp_path / "crop" / "crop_check.json").read_text())]
    assert all(t["fits"]["n"] + t["cut"]["n"] > 0 and "oracle" in t["fits"] for t in result)


def test_eval_time_quick_times_one_size():
    (line,) = run("eval_time.py", "--quick").splitlines()[1:]
    assert re.fullmatch(r"\s*300 samples: [\d.]+ s per evaluate \([\d.]+-[\d.]+, 1 calls, n_boot 1000\)", line)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_check_quick_refuses_without_cuda_too():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--quick"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert (done.stdout + done.stderr).strip().splitlines() == [
        "gpu_check: refused: no CUDA device visible to torch on this machine"]


def test_ladder_sim_quick_reports_sixteen_tasks(tmp_path):
    text = run("ladder_sim.py", "--quick", "--plot", str(tmp_path / "sim.png"))
    assert text.strip().endswith("agree with the grid's answer (16 tasks x 1 seeds)")
    header, *rows = table(text, "strategy")
    assert header == ["strategy", "flat", *(f"rung {i}" for i in range(6)), "all"]
    assert rows[0][0].startswith("product (Settings()") and (tmp_path / "sim.png").stat().st_size > 1000


def test_memory_check_quick_measures_one_case_and_cross_checks_it():
    text = run("memory_check.py", "--quick")
    header, *rows = table(text, "width x depth")
    assert [(r[0], r[5]) for r in rows] == [("64 x 2", "fp32"), ("64 x 2", "bf16")]
    assert re.search(r"^64x2, bf16 autocast, 4 full crops \(T=129\): saved for backward", text, re.M)


def test_oracle_ties_quick_tabulates_each_task(tiny):
    header, *rows = table(run("oracle_ties.py", "--quick", "--meds", str(tiny / "meds")), "task")
    assert header[-2:] == ["scikit-learn AUPRC", "expected AUPRC"]
    assert sorted(r[0] for r in rows) == ["antihypertensive_start", "ckd_incidence"]


def test_pipeline_quick_reports_every_stage_and_preset(tiny):
    text = run("pipeline.py", "--quick", "--data", str(tiny / "prepared"))
    for stage in ("A  draws", "B  a process builds", "R  receiving", "draws=patient", "draws=window"):
        assert stage in text
    assert text.count("at 45% MFU") == 2 and text.count("  101M ") == 2


def test_rule_error_quick_reports_both_tasks_and_refuses_a_full_run_in_its_folder(tmp_path, tiny):
    out = lend(tiny, tmp_path / "rule")
    text = run("rule_error.py", "--quick", "--out", str(out))
    assert text.count("### ") == 2 and "| paired, margin 0.01 | 15 (" in text
    summary = json.loads((out / "summary.json").read_text())
    assert {(s["task"], s["variant"]) for s in summary} == {
        (t, v) for t in ("ckd_incidence", "antihypertensive_start") for v in ("transformers", "with LightGBM")}
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    full = subprocess.run([sys.executable, str(ROOT / "bench" / "rule_error.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 2 and full.stdout == ""
    (line,) = full.stderr.strip().splitlines()
    assert line.startswith(f"rule_error: refused: {out} holds results made with other settings (")
    assert "quick: true -> false" in line and "patients: 300 -> 60000" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_search_efficiency_quick_replays_one_seed(tmp_path):
    from tests.test_ladder_sim import _table

    _table(tmp_path / "results" / "tiny")
    text = run("search_efficiency.py", "--quick", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "o"))
    assert text.strip().splitlines()[-1].endswith("(2 tasks x 1 seeds)")
    assert [r[0] for r in table(text, "strategy")[1:]] == ["default policy", "grid", "random order",
                                                            "product TPE (= shuffled queue)", "plain ascent"]
    assert json.loads((tmp_path / "o" / "settings.json").read_text())["seeds"] == 1


def test_synth_prepare_quick_measures_prepare(tmp_path, tiny):
    text = run("synth_prepare.py", "--quick", "--meds", str(tiny / "meds"), "--out", str(tmp_path / "sp"))
    result = json.loads(text[text.index("{"):])
    assert result["patients"] == common.QUICK_PATIENTS and result["prepare_s"] > 0 and "synth_wall_s" not in result


@pytest.mark.ray
def test_trial_time_quick_tabulates_one_trials_phases(tmp_path, tiny):
    text = run("trial_time.py", "--quick", "--out", str(lend(tiny, tmp_path / "tt")))
    assert text.startswith("1 complete trial(s)")
    phases = [r[0] for r in table(text, "phase")[1:]]
    assert {"pretrain", "finetune", "other"} <= set(phases)
