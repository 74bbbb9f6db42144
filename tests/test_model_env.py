"""A registered model carries its environment: its requirements.txt pins what it needs at predict
time, released on a package index (not claims-search itself, which is on none), and the pyfunc
carries the project's code in its own folder (``code/claims_search``). A fresh virtual
environment made from that requirements.txt alone loads it and predicts what this one does.

The fresh environment is installed from the package index pip is configured with (PyPI, a
mirror): the test needs one, as anyone restoring the model does. torch is pinned without its
local label (``torch==2.13.0``): where pip offers the CPU wheel (this machine's find-links) it
takes it, else PyPI's CUDA build, multi-GB (packaging.requirements says why). pip's cache serves
repeated runs; the environment (1.8 GB here with the CPU torch) is removed after the test.
Measured 2026-12-08 on 2 cores, pip's cache warm: the test 88 s (the install about 70 s, predicting
5 s), 192 s with the machine under others' load."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest
import yaml

from claims_search.tracking import packaging
from claims_search.runs.baseline import baseline
from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.runs.training import pretrain_and_finetune

TASK = "antihypertensive_start"
PT = PretrainSettings(steps=4, warmup=1, batch_tokens=1024, log_every=2)
FT = FinetuneSettings(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)
REQUEST = [{"task": TASK, "split": "tuning"}]  # 40 samples of the recency cache

# Run in the fresh environment (python -I: neither the working directory nor PYTHON* variables
# on sys.path): claims_search must come from the model folder, and predicting must not import Ray.
PREDICT = """
import importlib.util, json, sys
assert importlib.util.find_spec("claims_search") is None, "claims_search is installed here"
import mlflow.pyfunc, pandas as pd
model_dir, data, out = sys.argv[1:]
request = pd.DataFrame([{"data": data, **r} for r in json.loads(%r)])
mlflow.pyfunc.load_model(model_dir).predict(request).to_parquet(out, index=False)
import claims_search, torch
print(json.dumps({"claims_search": claims_search.__file__, "torch": torch.__version__,
                  "ray": sorted(m for m in sys.modules if m.split(".")[0] == "ray")}))
""" % json.dumps(REQUEST)


@pytest.fixture(scope="module")
def saved(recency_cache, tmp_path_factory):
    """A fine-tuned checkpoint and a LightGBM baseline, each saved as the MLflow model a search
    registers (``packaging.save_model``): ``work/transformer``, ``work/lightgbm``."""
    work = tmp_path_factory.mktemp("model-env")
    done = pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK], work / "trial", n_boot=50)
    assert packaging.save_model(done.finetunes[TASK].checkpoint, work / "transformer") == "transformer"
    baseline(recency_cache, TASK, work / "baseline", n_boot=50)
    assert packaging.save_model(work / "baseline", work / "lightgbm") == "lightgbm"
    return work


def pinned(name: str) -> str:
    return f"{name}=={version(name).split('+')[0]}"


@pytest.mark.parametrize("kind, packages", [("transformer", ["mlflow", "torch", "numpy", "pandas", "pyarrow"]),
                                            ("lightgbm", ["mlflow", "lightgbm", "numpy", "pandas"])])
def test_the_requirements_are_the_installed_releases(saved, kind, packages):
    reqs = (saved / kind / "requirements.txt").read_text().split()
    assert reqs == [pinned(p) for p in packages]
    assert not any("+" in r for r in reqs)  # torch 2.13.0+cpu is pinned as torch==2.13.0
    assert not any(r.startswith("claims-search") for r in reqs)  # on no package index


def test_the_pyfunc_carries_the_project_code(saved):
    model = saved / "transformer"
    conf = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]
    assert conf["code"] == "code"
    code = model / "code" / "claims_search"
    package = Path(packaging.__file__).parents[1]  # claims_search/
    for module in ("__init__.py", "runs/scoring.py", "runs/worker.py", "data/cache.py", "model/model.py",
                   "runs/meds_predictions.py", "tracking/pyfunc_model.py"):
        assert (code / module).read_bytes() == (package / module).read_bytes()
    assert not list(code.rglob("__pycache__"))


@pytest.mark.slow
def test_a_fresh_environment_from_the_requirements_alone_predicts_the_same(saved, recency_cache, tmp_path,
                                                                           monkeypatch):
    import mlflow.pyfunc

    model = saved / "transformer"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        python = str(venv / "bin" / "python")
        # pip as configured on this machine (its index, find-links and cache), nothing else.
        res = subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(model / "requirements.txt")],
                             capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
        assert res.returncode == 0, ("pip could not install the model's requirements.txt (this test needs a "
                                     "package index, as restoring a model does):\n" + res.stderr[-3000:])
        res = subprocess.run([python, "-I", "-c", PREDICT, str(model), str(recency_cache), str(tmp_path / "fresh.parquet")],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    there = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(there["claims_search"]).is_relative_to(model / "code" / "claims_search")
    assert there["torch"].split("+")[0] == version("torch").split("+")[0]
    assert there["ray"] == []

    monkeypatch.setattr(sys, "path", list(sys.path))  # loading puts the model's code/ first on it
    request = pd.DataFrame([{"data": str(recency_cache), **r} for r in REQUEST])
    here = mlflow.pyfunc.load_model(str(model)).predict(request)
    fresh = pd.read_parquet(tmp_path / "fresh.parquet")
    assert len(fresh) == 40
    pd.testing.assert_frame_equal(fresh, here, check_exact=False, rtol=0, atol=1e-6)
