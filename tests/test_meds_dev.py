"""The MEDS-DEV model entry (meds_dev/claims_search/): laid out as MEDS-DEV's models are
(model.yaml, README.md, requirements.txt), its commands run as MEDS-DEV runs them (mode=full:
unsupervised train, supervised train, supervised predict on held_out; each a bash script in its
own output folder, from another working folder, with the placeholders filled in), on the
synthetic data and a task handed over as MEDS-DEV hands labels over (a folder of Parquet shards
per split); meds-evaluation scores the predictions as written.

The runner below follows MEDS_DEV.models.model_commands and MEDS_DEV.utils.run_in_env of
MEDS-DEV 60b678c (2026-04-16). The `meds-dev` package itself is not used: it pins meds 0.3.3,
es-aces 0.6.1 and meds-evaluation 0.0.3 (the project needs meds >= 0.4, es-aces >= 0.7.3), finds
models only inside its own installed package, and builds each model's environment with uv from
requirements.txt, which needs the index (claims-search is not on it)."""

import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from claims_search.runs import meds_metrics
from tests.test_meds_metrics import meds_eval

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "meds_dev" / "claims_search"
PLACEHOLDERS = {"dataset_dir", "labels_dir", "output_dir", "model_initialization_dir", "model_dir", "split", "demo"}
SPLITS = ("train", "tuning", "held_out")


def model_yaml() -> dict:
    return yaml.safe_load((ENTRY / "model.yaml").read_text())


def test_the_entry_is_laid_out_as_meds_devs_models_are():
    assert {"model.yaml", "README.md", "requirements.txt"} <= {p.name for p in ENTRY.iterdir()}
    entry = model_yaml()
    meta = entry["metadata"]  # MEDS_DEV.utils.Metadata: a description, one contact at least, links
    assert isinstance(meta["description"], str) and meta["description"].strip()
    assert meta["contacts"] and all(isinstance(c["name"], str) for c in meta["contacts"])
    assert isinstance(meta.get("links", []), list)
    commands = entry["commands"]
    assert set(commands) == {"unsupervised", "supervised"}
    assert set(commands["unsupervised"]) == {"train"} and set(commands["supervised"]) == {"train", "predict"}
    used = {f for group in commands.values() for cmd in group.values()
            for _, f, _, _ in string.Formatter().parse(cmd) if f}
    assert used == PLACEHOLDERS, used
    assert not re.search(r"\$\{", (ENTRY / "model.yaml").read_text())  # no OmegaConf interpolation
    assert "claims-search" in (ENTRY / "requirements.txt").read_text()


def meds_dev_full_run(commands: dict, dataset_dir: Path, labels_dir: Path, output_dir: Path, dataset_name: str,
                      task_name: str, demo: bool):
    """``(command, output folder)`` in order, as MEDS_DEV.models.model_commands yields them for
    mode=full, dataset_type=full: every (run mode, dataset type) the model has, train before
    predict, unsupervised before supervised; each stage's output folder is the next one's
    model_initialization_dir; predict gets split=held_out."""
    kwargs = {"dataset_dir": str(dataset_dir), "model_dir": str(ENTRY), "demo": demo}
    for run_mode in ("train", "predict"):
        for dataset_type in ("unsupervised", "supervised"):
            cmd = (commands.get(dataset_type) or {}).get(run_mode)
            if not cmd:
                continue
            out = output_dir / dataset_name
            if dataset_type == "supervised":
                out = out / task_name
                kwargs["labels_dir"] = str(labels_dir)
            else:
                out = out / dataset_type
            out = out / run_mode
            kwargs["output_dir"] = str(out)
            if run_mode == "predict":
                kwargs["split"] = "held_out"
            else:
                kwargs.pop("split", None)
            yield cmd.format(**kwargs), out
            if run_mode != "predict":
                kwargs["model_initialization_dir"] = str(out)


def run_in_env(cmd: str, out: Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """MEDS_DEV.utils.run_in_env: the command as a bash script in its output folder (set -e),
    the model's environment first on PATH, a .done file on success."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "cmd.sh"
    script.write_text("\n".join(["#!/bin/bash", "set -e", cmd]))
    venv_bin = str(Path(sys.executable).parent)  # the model's environment: this test's
    env = {**os.environ, **(env or {}), "VIRTUAL_ENV": str(Path(venv_bin).parent),
           "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(script.resolve())], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, f"{cmd}\nSTDOUT:\n{res.stdout[-3000:]}\nSTDERR:\n{res.stderr[-3000:]}"
    (out / ".done").touch()
    return res


@pytest.fixture(scope="module")
def task_labels(prepared, tmp_path_factory) -> Path:
    """ckd_incidence's labels as MEDS-DEV's task extraction leaves them: the MEDS label schema,
    one folder per task with a Parquet shard per split (``held_out/0.parquet``, ...)."""
    root = tmp_path_factory.mktemp("meds_dev") / "task_labels" / "ckd"
    labels = pl.read_parquet(prepared / "labels" / "ckd_incidence.parquet")
    for split in SPLITS:
        (root / split).mkdir(parents=True)
        labels.filter(pl.col("split") == split).select(
            "subject_id", "prediction_time", pl.col("label").alias("boolean_value")).write_parquet(root / split / "0.parquet")
    return root


@pytest.mark.slow  # 47 s to 129 s on two shared cores
def test_meds_dev_runs_every_command_and_meds_evaluation_scores_the_predictions(synthetic_meds, task_labels,
                                                                              tmp_path):
    elsewhere = tmp_path / "elsewhere"  # MEDS-DEV's working folder: neither this repository nor an output
    elsewhere.mkdir()
    output_dir = tmp_path / "experiment"
    steps = list(meds_dev_full_run(model_yaml()["commands"], synthetic_meds, task_labels, output_dir,
                                   "synthetic", "ckd", demo=True))
    assert [out.relative_to(output_dir).as_posix() for _, out in steps] == [
        "synthetic/unsupervised/train", "synthetic/ckd/train", "synthetic/ckd/predict"]
    for cmd, out in steps:
        assert not re.search(r"\{\w+\}", cmd), cmd
        run_in_env(cmd, out, elsewhere)
    assert not any(elsewhere.iterdir())  # nothing written where it ran

    unsup, train, predict = (out for _, out in steps)
    state = json.loads((unsup / "claims_search_meds_dev.json").read_text())
    assert state["size"] == {"preset": "debug", "source": "demo"}
    # The supervised stage pretrained nothing: it fine-tuned the unsupervised stage's model on
    # a cache of the same vocabulary.
    assert json.loads((train / "finetune" / "result.json").read_text())["init"].startswith(str(unsup / "pretrain"))
    assert (unsup / "prepared" / "vocab.parquet").read_bytes() == (train / "prepared" / "vocab.parquet").read_bytes()

    # What MEDS-DEV's test asks of a model, then what its evaluation runs.
    written = sorted(predict.rglob("*.parquet"))
    assert written == [predict / "predictions.parquet"]
    got = pl.read_parquet(written[0])
    held_out = pl.read_parquet(task_labels / "held_out" / "0.parquet")
    assert got.columns == ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                           "predicted_boolean_probability"]
    assert got.select("subject_id", "prediction_time", "boolean_value").sort(
        "subject_id", "prediction_time").equals(held_out.sort("subject_id", "prediction_time"))
    res = subprocess.run([meds_eval("meds-evaluation-cli"), f"predictions_path={predict}/**/*.parquet",
                          f"output_file={tmp_path / 'evaluation' / 'results.json'}"],
                         capture_output=True, text=True, timeout=300, cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-3000:]
    theirs = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    for weighting in meds_metrics.WEIGHTINGS.values():
        assert {"roc_auc_score", "average_precision_score", "brier_score", "calibration_error", "f1_score",
                "binary_accuracy"} <= set(theirs[weighting])
        assert 0 <= theirs[weighting]["roc_auc_score"] <= 1
    ours = meds_metrics.evaluate_table(got.to_pandas())
    assert {w: {k: theirs[w][k] for k in meds_metrics.FIGURES} for w in theirs} == ours


def test_unsupervised_train_pretrains_the_size_a_search_recommended(synthetic_meds, tmp_path, capsys):
    """Outside demo mode the size is $CLAIMS_SEARCH_SIZE's or the recommendation's in a
    `recommend --json` file ($CLAIMS_SEARCH_RECOMMENDATION)."""
    pytest.importorskip("mlflow")
    from claims_search import cli
    from claims_search.tracking.tracker import Tracker
    from tests.test_tracking import search_results

    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "meta.json").write_text(json.dumps({"kind": "finetune", "size": {"width": 16, "depth": 2, "heads": 2}}))
    (ck / "state.pt").write_bytes(b"\0" * 64)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "for-meds-dev", tmp_path / "outbox", metric="auprc", cost="device_seconds")
    for r in search_results(ck):
        tracker.log_trial(r, sync=False)
    tracker.publish()
    capsys.readouterr()
    assert cli.main(["recommend", "--experiment", "for-meds-dev", "--tracking-uri", uri, "--json"]) == 0
    rec = tmp_path / "recommendation.json"
    rec.write_text(capsys.readouterr().out)
    want = json.loads(rec.read_text())["ckd_incidence"]["recommended"]["model"]
    assert want["width"] == 16  # the small model, as good as the big one on ckd

    cmd = model_yaml()["commands"]["unsupervised"]["train"]
    out = tmp_path / "unsupervised" / "train"
    env = {"CLAIMS_SEARCH_RECOMMENDATION": str(rec), "CLAIMS_SEARCH_RECOMMENDATION_TASK": "ckd_incidence",
           "CLAIMS_SEARCH_PRETRAIN_STEPS": "3"}
    run_in_env(cmd.format(dataset_dir=synthetic_meds, output_dir=out, model_dir=ENTRY, demo=False), out,
               tmp_path, env)
    size = json.loads((out / "pretrain" / "result.json").read_text())["size"]
    assert {k: size[k] for k in ("width", "depth", "heads", "max_len")} == {
        k: want[k] for k in ("width", "depth", "heads", "max_len")}
    assert json.loads((out / "claims_search_meds_dev.json").read_text())["size"]["trial_id"] == "t0"

    # Several tasks in the file and none named: one line saying so, nothing trained.
    env.pop("CLAIMS_SEARCH_RECOMMENDATION_TASK")
    other = tmp_path / "unnamed"
    other.mkdir()
    res = subprocess.run([sys.executable, str(ENTRY / "run.py"), "pretrain", "--dataset-dir", str(synthetic_meds),
                          "--output-dir", str(other), "--demo", "False"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "name one with CLAIMS_SEARCH_RECOMMENDATION_TASK" in res.stderr
    assert not (other / "pretrain").exists()
