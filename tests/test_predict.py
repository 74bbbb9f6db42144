"""A chosen model predicts: registered in MLflow (a Transformer as a pyfunc, the LightGBM
baseline in MLflow's own flavour), `claims-search predict` and the pyfunc's `predict` give the
same per-patient predictions the trial kept. The output goes to a file, never to MLflow."""

import subprocess
import sys

import pandas as pd
import pytest

from claims_search import packaging, predictions
from claims_search.baseline import baseline
from claims_search.loop import FinetuneSettings, PretrainSettings
from claims_search.training import pretrain_and_finetune

TASK = "antihypertensive_start"
PT = PretrainSettings(steps=4, warmup=1, batch_tokens=1024, log_every=2)
FT = FinetuneSettings(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)


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


@pytest.mark.parametrize("kind", ["transformer", "lightgbm"])
def test_predict_writes_what_the_trial_kept(recency_cache, registered, kind):
    work, uri, kept = registered
    out = work / f"{kind}.parquet"
    res = cli("predict", "--model", f"models:/{kind}@recommended", "--data", str(recency_cache), "--task", TASK,
              "--split", "tuning", "--out", out.name, "--tracking-uri", uri, cwd=work)  # relative --out
    assert res.returncode == 0, res.stderr
    positives = int(predictions.read(kept[kind])["label"].sum())
    assert res.stdout.strip() == f"40 predictions of {TASK}/tuning ({positives} positive) -> {out.name}"
    got = pd.read_parquet(out)
    assert list(got.columns) == ["subject_id", "prediction_time", "label", "prob"]
    assert got["prob"].tolist() == predictions.read(kept[kind])["prob"].tolist()


def test_the_registered_pyfunc_predicts_on_its_documented_input(recency_cache, registered, mlflow_uri):
    import mlflow.pyfunc

    work, uri, kept = registered
    mlflow_uri(uri)
    model = mlflow.pyfunc.load_model("models:/transformer@recommended")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["data", "task", "split"]
    got = model.predict(pd.DataFrame([{"data": str(recency_cache), "task": TASK, "split": "tuning"}]))
    assert list(got.columns) == ["subject_id", "prediction_time", "prob"]
    assert got["prob"].tolist() == predictions.read(kept["transformer"])["prob"].tolist()


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
