"""The ladder policy live: a four-size space searched by the policy and, with the same seeds, as
a grid. The policy must stop before training every size fully, say why in one line, show the
stopped sizes as pruned trials with their rung in MLflow, and declare the grid's answer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_search import RaySandbox, search_cmd

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LADDER = Path(__file__).parent / "spaces" / "ladder.yaml"


def _answers(work: Path, name: str) -> dict[str, str]:
    """Each task's recommended size (``w16d1h2``...), read back from MLflow by `recommend --json`."""
    from claims_search.model.sizes import size_key

    out = subprocess.run([sys.executable, "-m", "claims_search.cli", "recommend", "--experiment", name,
                          "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return {task: size_key(rec["recommended"]["model"]) for task, rec in json.loads(out).items()}


def test_the_policy_stops_early_and_declares_the_grids_answer(prepared, tmp_path):
    from claims_search.tracking.tracker import load_records

    grid = tmp_path / "grid.yaml"
    space = yaml.safe_load(LADDER.read_text())
    space["sampler"] = {"kind": "grid"}
    grid.write_text(yaml.safe_dump(space))
    box = RaySandbox()
    try:
        ladder = box.run(search_cmd(prepared, tmp_path, "ladder", LADDER))
        assert ladder.returncode == 0, ladder.stdout[-3000:] + ladder.stderr[-3000:]
        full = box.run(search_cmd(prepared, tmp_path, "grid", grid))
        assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    finally:
        box.close()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = {r.trial_id for r in load_records(uri, "ladder") if r.status == "complete"}
    assert len({r.trial_id for r in load_records(uri, "grid") if r.status == "complete"}) == 4
    assert len(trained) < 4, "the policy trained every size fully"
    assert "stopped: " in ladder.stdout  # the one line that says why it ended
    for r in load_records(uri, "ladder"):
        if r.status == "pruned":  # stopped at a rung: where and why are on the trial
            assert float(r.tags["rung"]) in (0.25, 0.5) and "δ = 0.6" in r.tags["reason"]
            assert r.metric is None and r.pretrain_cost > 0
    assert _answers(tmp_path, "ladder") == _answers(tmp_path, "grid")
