"""`make demo`: the whole job end to end, and its closing story, which must be the benchmark's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from claims_search import demo

ROOT = Path(__file__).resolve().parents[1]


def _study_rows() -> dict[tuple[str, int], tuple[str, int, str]]:
    """(task, labelled) -> (recommended size, its non-embedding parameters, bootstrap seeds
    agreeing) from the committed report of the size-ladder study."""
    rows = {}
    for line in (ROOT / "docs" / "scaling_study.md").read_text().splitlines():
        m = re.match(r"\| (\w+) \| ([\d,]+) \| (w\d+d\d+h\d+) \| ([\d,]+) \|.* \| (\d of \d) \|$", line)
        if m:
            rows[(m[1], int(m[2].replace(",", "")))] = (m[3], int(m[4].replace(",", "")), m[5])
    return rows


def test_the_demo_tells_what_the_benchmark_found():
    rows = _study_rows()
    for task, (_, size, params) in demo.FOUND.items():
        assert rows[(task, demo.FOUND_LABELLED)][:2] == (size, params), task
    assert rows[("antihypertensive_start", demo.FEW_LABELLED)][2] != "5 of 5"  # "changed with the seed"
    largest = max((p, s) for s, p, _ in rows.values())[1]
    assert demo.FOUND_LARGEST == largest
    # The study's two shapes: the medication task smaller than the largest, the disease task the largest.
    assert demo.FOUND["antihypertensive_start"][1] != largest == demo.FOUND["ckd_incidence"][1]
    story = "\n".join(demo.found_story())
    assert "antihypertensive_start (medication): w24d2h2" in story and "saturates small" in story
    assert "ckd_incidence (disease): w64d4h4" in story and "wants more" in story


@pytest.mark.ray
@pytest.mark.slow
def test_the_demo_runs_from_another_folder_and_ends_with_its_figures_and_the_benchmark_s(tmp_path):
    # The demo's own flow on small data and the smoke space (the demo space takes minutes).
    r = subprocess.run([sys.executable, "-m", "claims_search.demo", "--dir", "demo", "--patients", "600",
                        "--space", "smoke"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    reached = out[out.index("What the models reached"):]
    for task in demo.FOUND:
        assert re.search(rf"  {task}: w\d+ d\d h\d [01]\.\d{{3}} .*; LightGBM [01]\.\d{{3}}", reached), task
    assert "\n".join(demo.found_story()) in out
    assert (tmp_path / "demo" / "mlflow.db").is_file()
    assert "recommend --experiment demo --tracking-uri sqlite:///" in out
