"""A chosen model predicts: registered in MLflow (a Transformer as a pyfunc, the LightGBM
baseline in MLflow's own flavour), `claims-search predict` and the pyfunc's `predict` give the
same per-patient predictions the trial kept, in the MEDS prediction schema, which
meds-evaluation (in its own virtual environment: `make meds-eval`) accepts and scores as
written. The output goes to a file, never to MLflow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from claims_search.runs import meds_predictions, predictions

from claims_search.tracking import packaging
from claims_search.metrics import evaluate
from tests.conftest import meds_eval
from claims_search.runs.baseline import baseline
from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.runs.training import pretrain_and_finetune

TASK = "antihypertensive_start"
PT = PretrainSettings(steps=4, warmup=1, batch_tokens=1024, log_every=2)
FT = FinetuneSettings(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)


MEDS_COLUMNS = ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                "predicted_boolean_probability"]


def align_with_prediction_schema(path: Path) -> str:
    """``meds_evaluation.schema.PredictionSchema.align`` on the file, in meds-evaluation's own
    venv; the file must already be in the aligned schema. Returns that schema as text."""
    code = ("import sys, pyarrow.parquet as pq; from meds_evaluation.schema import PredictionSchema; "
            "t = pq.read_table(sys.argv[1]); a = PredictionSchema.align(t); "
            "assert a.schema == t.schema, (a.schema, t.schema); print(a.schema)")
    res = subprocess.run([meds_eval("python"), "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def cli(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "claims_search.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def registered(recency_cache, tmp_path_factory):
    """Both kinds of model, registered in a real MLflow (SQLite) store as a search would."""
    from mlflow.tracking import MlflowClient

    work = tmp_path_factory.mktemp("registry")
    done = pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK], work / "trial", n_boot=50)
    baseline(recency_cache, TASK, work / "baseline", n_boot=50)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("predict")
    kept = {"transformer": done.finetunes[TASK].predictions["tuning"],
            "lightgbm": work / "baseline" / "predictions" / "tuning.parquet"}
    for kind, folder in (("transformer", done.finetunes[TASK].checkpoint), ("lightgbm", work / "baseline")):
        run = client.create_run(exp).info.run_id
        assert packaging.save_model(folder, work / f"model-{kind}") == kind
        client.log_artifacts(run, str(work / f"model-{kind}"), "model")
        client.create_registered_model(kind)
        v = client.create_model_version(kind, f"runs:/{run}/model", run_id=run).version
        client.set_registered_model_alias(kind, "recommended", v)
    return work, uri, kept


@pytest.fixture(scope="module")
def written(recency_cache, registered):
    """`claims-search predict` of each registered model on tuning: ``{kind: (result, file)}``."""
    work, uri, _ = registered
    out = {}
    for kind in ("transformer", "lightgbm"):
        res = cli("predict", "--model", f"models:/{kind}@recommended", "--data", str(recency_cache), "--task", TASK,
                  "--split", "tuning", "--out", f"{kind}.parquet", "--tracking-uri", uri, cwd=work)  # relative --out
        out[kind] = res, work / f"{kind}.parquet"
    return out


@pytest.mark.parametrize("kind", ["transformer", "lightgbm"])
def test_predict_writes_what_the_trial_kept(registered, written, kind):
    _, _, kept = registered
    res, out = written[kind]
    assert res.returncode == 0, res.stderr
    trial = predictions.read(kept[kind])
    threshold = meds_predictions.choose_threshold(trial["label"], trial["prob"])
    assert res.stdout.strip() == (
        f"40 predictions of {TASK}/tuning ({int(trial['label'].sum())} positive; predicted positive at "
        f"probability >= {threshold['value']:.4g}, the F1-maximising cut on tuning) -> {out.name}")
    table = pq.read_table(out)
    assert table.schema == meds_predictions.arrow_schema()  # int64, timestamp[us], bool, bool, float32
    got = table.to_pandas()
    assert list(got.columns) == MEDS_COLUMNS
    assert got["predicted_boolean_probability"].tolist() == trial["prob"].astype(np.float32).tolist()
    assert got["boolean_value"].tolist() == trial["label"].tolist()
    # The class follows the threshold kept with the model (chosen on tuning when it was trained).
    assert (got["predicted_boolean_value"] == (got["predicted_boolean_probability"] >= threshold["value"])).all()
    assert 0 < got["predicted_boolean_value"].sum() < len(got)


def test_the_threshold_is_kept_with_the_model(registered):
    work, _, _ = registered
    meta = json.loads(next((work / "trial").rglob("checkpoint/meta.json")).read_text())
    lgbm = json.loads((work / "model-lightgbm" / meds_predictions.THRESHOLD_FILE).read_text())
    for record in (meta["threshold"], lgbm):
        assert record["rule"] == "max_f1_on_tuning" and record["split"] == "tuning" and record["n"] == 40
        assert 0 < record["value"] < 1 and 0 < record["f1"] <= 1


def test_a_model_trained_before_thresholds_were_kept_gets_one_chosen_on_tuning(recency_cache, registered):
    import shutil

    work, _, kept = registered
    old = work / "old-baseline"
    shutil.copytree(work / "baseline", old)
    (old / meds_predictions.THRESHOLD_FILE).unlink()
    res = cli("predict", "--model", str(old), "--data", str(recency_cache), "--task", TASK, "--out", "old.parquet",
              cwd=work)
    assert res.returncode == 0, res.stderr
    assert "(chosen now on tuning: the model predates kept thresholds)" in res.stdout
    tuning = predictions.read(kept["lightgbm"])
    cut = meds_predictions.choose_threshold(tuning["label"], tuning["prob"])["value"]
    got = pd.read_parquet(work / "old.parquet")
    assert (got["predicted_boolean_value"] == (got["predicted_boolean_probability"] >= cut)).all()


def test_the_threshold_rule_on_a_literal_table():
    #         label  prob
    rows = [(True, 0.9), (False, 0.8), (True, 0.7), (False, 0.3), (False, 0.2), (True, 0.1)]
    y, p = zip(*rows)
    # cut 0.9: F1 2/4; 0.7: 4/6; 0.1: 6/9, a tie with 0.7: the higher cut wins (fewer flagged).
    got = meds_predictions.choose_threshold(y, p)
    assert got["value"] == pytest.approx(0.7) and got["f1"] == pytest.approx(2 / 3)
    assert meds_predictions.choose_threshold([False, False], [0.1, 0.9])["value"] == 0.5  # one class: no F1


@pytest.mark.parametrize("kind", ["transformer", "lightgbm"])
def test_meds_evaluation_accepts_and_scores_the_predictions_as_written(registered, written, kind, tmp_path):
    _, _, kept = registered
    res, out = written[kind]
    assert res.returncode == 0, res.stderr
    assert "predicted_boolean_probability: float" in align_with_prediction_schema(out)
    scored = subprocess.run([meds_eval("meds-evaluation-cli"), f"predictions_path={out}",
                             f"output_file={tmp_path / 'eval.json'}"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    theirs = json.loads((tmp_path / "eval.json").read_text())["samples_equally_weighted"]
    trial = predictions.read(kept[kind])
    ours = evaluate(trial["label"], trial["prob"], trial["subject_idx"], n_boot=10)
    assert theirs["roc_auc_score"] == pytest.approx(ours["auroc"], abs=1e-4)  # float32 vs float64 only
    assert {"f1_score", "binary_accuracy", "brier_score", "calibration_error"} <= set(theirs)


def test_the_registered_pyfunc_predicts_on_its_documented_input(recency_cache, registered, mlflow_uri):
    import mlflow.pyfunc

    work, uri, kept = registered
    mlflow_uri(uri)
    model = mlflow.pyfunc.load_model("models:/transformer@recommended")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["data", "task", "split"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == MEDS_COLUMNS
    got = model.predict(pd.DataFrame([{"data": str(recency_cache), "task": TASK, "split": "tuning"}]))
    assert list(got.columns) == MEDS_COLUMNS
    trial = predictions.read(kept["transformer"])
    assert got["predicted_boolean_probability"].tolist() == trial["prob"].astype(np.float32).tolist()
    # Written as a user would (pandas), the table is what meds-evaluation takes.
    got.to_parquet(work / "pyfunc.parquet", index=False)
    align_with_prediction_schema(work / "pyfunc.parquet")


def test_bad_requests_are_one_line_and_write_nothing(recency_cache, registered):
    work, uri, _ = registered
    (work / "taken.parquet").write_text("x")
    for args, expected in (
        (["--model", "models:/transformer@recommended", "--out", "taken.parquet"], "--out taken.parquet: exists"),
        (["--model", "models:/nope@recommended", "--out", "a.parquet"], "--model models:/nope@recommended: cannot be downloaded"),
        (["--model", str(work), "--out", "b.parquet"], "not a fine-tuned checkpoint or a baseline folder"),
    ):
        res = cli("predict", *args, "--data", str(recency_cache), "--task", TASK, "--tracking-uri", uri, cwd=work)
        assert res.returncode == 2 and expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (work / "a.parquet").exists() and not (work / "b.parquet").exists()
