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


def _size_rows(task: str, labelled: int) -> dict[str, tuple[float, float]]:
    """size -> (tuning, held-out) metric of the pretrained models, from the report's table for
    ``task`` at ``labelled`` labelled patients."""
    text = (ROOT / "docs" / "scaling_study.md").read_text()
    section = text[text.index(f"**{task}, {labelled:,} labelled patients**"):]
    section = section[:section.index("\n\n**")] if "\n\n**" in section else section
    return {m[1]: (float(m[2]), float(m[3]))
            for m in re.finditer(r"^\| (w\d+d\d+h\d+) \| [\d,]+ \| ([01]\.\d{3}) \[[^]]*\] \| ([01]\.\d{3}) \[",
                                 section, re.M)}


def _underpowered(task: str, labelled: int) -> bool:
    """Whether the report's verdict for ``task`` at ``labelled`` was "too small to tell"."""
    text = (ROOT / "docs" / "scaling_study.md").read_text()
    (header,) = [ln for ln in text.splitlines() if ln.startswith(f"**{task}, {labelled:,} labelled patients**")]
    return header.endswith("(underpowered)")


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
    assert "antihypertensive_start (medication): w24d2h2" in story and "ckd_incidence (disease): w64d4h4" in story
    assert "no margin" in story  # the study's rule had none: "cannot be told apart", not "non-inferior"
    # The medication verdict is a tuning verdict that held-out did not confirm: the story says so and
    # quotes the report's held-out figures, and the report bears it out (a larger size ahead on held-out).
    med = _size_rows("antihypertensive_start", demo.FOUND_LABELLED)
    small = demo.FOUND["antihypertensive_start"][1]
    best_tuning = max(med, key=lambda s: med[s][0])
    assert f"best size there ({best_tuning})" in story
    assert "held-out did not confirm it" in story
    assert story.count("saturates") == story.count("not that the medication task saturates")  # only denied
    above = [s for s in med if s != small and med[s][0] >= med[small][0]]  # the sizes above it on tuning
    assert above and all(med[s][1] > med[small][1] for s in above)  # ... are all above it on held-out
    for size, (_, held_out) in med.items():
        if med[size][0] >= med[small][0]:  # the recommended size and every size above it on tuning
            assert f"{size} {held_out:.3f}" in story, size
    # A "too small to tell" verdict in the report must read as one in the story, never as sizes told apart.
    lines = dict(zip(demo.FOUND, demo.found_story()[1:]))
    for task in demo.FOUND:
        too_small = _underpowered(task, demo.FOUND_LABELLED)
        assert ("too small" in lines[task]) == too_small, task
        assert not (too_small and "told every smaller size apart" in lines[task]), task
    ckd = _size_rows("ckd_incidence", demo.FOUND_LABELLED)
    assert max(ckd, key=lambda s: ckd[s][1]) == demo.FOUND_LARGEST  # "held-out agreed"
    assert f"{demo.FOUND_LARGEST} {ckd[demo.FOUND_LARGEST][1]:.3f}, the highest" in story


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
