"""bench/ladder_sim.py and bench/search_efficiency.py's table replay, on a few ladders (seconds):
the default policy finds a clear answer, spends less than the grid on flat ladders, and replays a
unit table written in the documented format."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import ladder_sim as L  # noqa: E402
import search_efficiency as E  # noqa: E402
from claims_search.search.policy import Settings  # noqa: E402


def test_the_policy_declares_the_grids_answer_on_a_clear_ladder():
    """Size 2 gains 5 δ over size 1, every larger size nothing: both say size 2, the policy for less."""
    base = L.make_task(0, "rung2")
    truth = np.array([0.40, 0.45, 0.50, 0.50, 0.50, 0.50])
    task = dataclasses.replace(base, truth=truth, se_diff=0.001)
    for seed in range(3):
        lad = L.ladder(task, seed)
        grid = E.strategy(lad, "grid", 0, Settings())
        out = E.run_policy(lad, Settings())
        assert grid.answer == out.answer == {"t": "s2"}
        assert out.spent < 0.5 * lad.grid_cost
        assert out.line.startswith("stopped:")


def test_on_flat_ladders_the_policy_spends_less_than_the_grid():
    """Noise can make a flat ladder look as if it rose (then a size is trained), never on most."""
    tasks = [L.make_task(i, "flat") for i in range(8)]
    shares = [E.run_policy(lad := L.ladder(t, 0), Settings()).spent / lad.grid_cost for t in tasks]
    assert float(np.median(shares)) < 0.3 and sum(s < 1 for s in shares) >= 6


def test_ladder_sim_reports_every_rung_and_the_closing_line(tmp_path):
    md, png = tmp_path / "sim.md", tmp_path / "sim.png"
    assert L.main(["--tasks", "16", "--seeds", "1", "--product-only", "--report", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert "| flat | rung 0 | rung 1 | rung 2 | rung 3 | rung 4 | rung 5 | all |" in text
    assert text.strip().splitlines()[-1].startswith("default policy: median ")
    assert text.strip().endswith("agree with the grid's answer (16 tasks x 1 seeds)")
    assert png.stat().st_size > 1000


def test_the_variants_are_settings_only_and_the_first_is_the_products():
    first, *rest = L.VARIANTS.values()
    assert first == Settings() and all(isinstance(v, Settings) for v in rest)
    assert len(set(L.VARIANTS.values())) == len(L.VARIANTS)  # no two rows measure the same settings


def test_the_reading_states_the_targets_each_setting_meets(tmp_path):
    md = tmp_path / "sim.md"
    assert L.main(["--tasks", "16", "--seeds", "1", "--report", str(md)]) == 0
    text = md.read_text()
    assert "## Reading" in text and "what `claims_search.search.policy.Settings()` holds" in text
    reading = text[text.index("**Which targets each setting meets**"):text.index("**Every target at once**")]
    assert reading.count("\n  - ") == len(L.VARIANTS)


def _table(folder: Path, with_predictions: bool = False) -> None:
    """A study of 3 sizes x 2 tasks x 1 labelled size whose answer is the middle size on both."""
    rng = np.random.default_rng(0)
    sizes = [("w16d2h2", 6144, 1e12, 3.4), ("w32d3h4", 36864, 3e12, 3.0), ("w64d4h4", 196608, 9e12, 2.99)]
    tuning = {"w16d2h2": 0.50, "w32d3h4": 0.60, "w64d4h4": 0.601}
    doc = {"format": "claims-search-units/1", "study": "tiny", "metric": "auprc", "sizes": [], "units": [],
           "paired_se": {"a/2000": 0.002, "b/2000": 0.002}}
    for key, n, flops, end in sizes:
        curve = [[f, end + 0.4 * (1 - f)] for f in (0.0625, 0.125, 0.25, 0.5, 1.0)]
        doc["sizes"].append({"key": key, "n_params": n, "pretrain": {"steps": 4000, "flops": flops, "val_loss": curve}})
        for task in ("a", "b"):
            unit = {"size": key, "task": task, "n_labelled": 2000, "finetune": {"steps": 1200, "flops": flops / 10},
                    "tuning": tuning[key], "held_out": tuning[key] - 0.01}
            if with_predictions:
                n_rows = 400
                label = rng.random(n_rows) < 0.3
                strength = {"w16d2h2": 0.5, "w32d3h4": 3.0, "w64d4h4": 3.0}[key]
                prob = 1 / (1 + np.exp(-(strength * (label - 0.5) + rng.normal(0, 1, n_rows))))
                path = f"predictions/{key}.{task}.2000.parquet"
                (folder / "predictions").mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"row": np.arange(n_rows), "subject_idx": np.arange(n_rows).astype("int32"),
                              "label": label, "prob": prob}).to_parquet(folder / path, index=False)
                unit["predictions"] = path
            doc["units"].append(unit)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "units.json").write_text(json.dumps(doc))


def test_a_unit_table_replays_with_search_efficiency(tmp_path):
    _table(tmp_path / "results" / "tiny")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--results",
                          str(tmp_path / "results"), "--out", str(out), "--seeds", "2", "--warmup", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == ("default policy: median 38 % of the grid's compute to its declared "
                                                   "answer; 100 % agree with the grid's answer (2 tasks x 2 seeds)")
    rows = json.loads((out / "search_efficiency.json").read_text())["rows"]
    assert {r["answer"] for r in rows["policy"]} == {r["grid"] for r in rows["policy"]} == {"w32d3h4"}
    assert all(r["share"] == 1 for r in rows["grid"])
    # the policy stopped the largest size at its first rung: it paid an eighth of its pretraining
    assert rows["policy"][0]["stopped"] == {"w64d4h4": 0.125}


def test_a_table_with_predictions_is_judged_by_the_product_rule(tmp_path):
    _table(tmp_path / "tiny", with_predictions=True)
    (lad,) = E.load_tables(tmp_path / "tiny" / "units.json", delta=0.01)
    assert lad.keys == ["w16d2h2", "w32d3h4", "w64d4h4"] and lad.tasks == ["a", "b"]
    assert lad.rung_loss("w32d3h4", 0.2) == (3.0 + 0.4 * (1 - 0.125), 0.2)  # the last evaluation at or before
    pick = lad.pick(["w16d2h2", "w32d3h4"], "a")
    assert pick.key == "w32d3h4" and pick.noise > 0  # recommend() on the predictions: the weak size is worse


def test_no_tables_is_one_line_and_exit_zero(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--results",
                          str(tmp_path / "none"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and len(run.stdout.strip().splitlines()) == 1
    assert "no unit tables are committed" in run.stdout
