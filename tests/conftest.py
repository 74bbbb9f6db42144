"""Shared fixtures. Tests read as examples: fixture patients are small literal tables; the
bigger fixtures below are a small synthetic claims dataset and its prepared cache, made once
per test session through the real CLI."""

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from claims_search.data.cache import Settings, write_cache
from claims_search.data.labels import load_task
from claims_search.data.meds import write_dataset

pytest_plugins = ["tests.cluster_harness"]  # real multi-node Ray, mlflow server, headless Chromium

from claims_search.cli import main as cli

# `make test` runs the suite on pytest-xdist workers. Session fixtures that start servers (a
# multi-node Ray cluster, MLflow, S3, Chromium) would start once per worker, and two copies of
# the cluster tests would kill each other's searches: every module using one runs on one worker.
SHARED_SERVERS = {"ray_cluster", "mlflow_server", "s3_server", "chromium"}
SERVER_MODULES = {"tests/test_browser.py", "tests/test_cluster_search.py", "tests/test_jobs.py",
                  "tests/test_outbox.py"}


def pytest_collection_modifyitems(config, items):
    """Check ``SERVER_MODULES`` against the fixtures the modules use, then order the modules by
    expected length, longest first (the server modules, then modules with Ray or slow tests,
    then the rest), so that no long module starts last on a worker. A module's tests keep their
    order."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(_module(item), []).append(item)
    using = {m for m, its in modules.items() if any(SHARED_SERVERS & set(i.fixturenames) for i in its)}
    if using - SERVER_MODULES:
        raise pytest.UsageError(f"tests/conftest.py: add {sorted(using - SERVER_MODULES)} to SERVER_MODULES "
                                f"(they use {sorted(SHARED_SERVERS)})")
    heavy = {m for m, its in modules.items()
             if any(i.get_closest_marker("slow") or i.get_closest_marker("ray") for i in its)}
    items.sort(key=lambda i: 0 if _module(i) in SERVER_MODULES else 1 if _module(i) in heavy else 2)


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown to a run without it
def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker (their module fixtures run once), and the server modules all to
    one. (xdist's own ``--dist loadgroup`` marks do not reach its scheduler under pytest 9.2.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "servers" if module in SERVER_MODULES else module

    return ByModule(config, log)


def _module(item) -> str:
    return item.nodeid.split("::")[0]


@pytest.fixture
def ray_local():
    """A small Ray instance of this test's own (address="local": never someone else's cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_meds(tmp_path_factory):
    """2,000 synthetic patients as MEDS (seeded: the same data every run). Their ids are 7-digit
    (7000001...) so that a privacy scan can look for every one of them without false hits."""
    out = tmp_path_factory.mktemp("synthetic") / "meds"
    assert cli(["synth", "--patients", "2000", "--seed", "7", "--out", str(out), "--workers", "1",
                "--first-id", "7000000"]) == 0
    return out


@pytest.fixture(scope="session")
def prepared(synthetic_meds, tmp_path_factory):
    """The tokenized cache of `synthetic_meds` with both built-in tasks."""
    out = tmp_path_factory.mktemp("prepared") / "cache"
    assert cli(["prepare", "--meds", str(synthetic_meds), "--out", str(out), "--max-len", "128",
                "--workers", "1"]) == 0
    return out


CHECKUP = datetime(2024, 6, 1)

# Two kinds of patient with the same codes, the same counts and the same checkup; only *when*
# the hypertension diagnosis came differs. The synthetic world's guideline rule: a recent
# diagnosis -> an antihypertensive within 90 days of the checkup.
#                 days before the checkup, code
RECENT_HT = [(400, "DX//ICD10//E11"), (20, "DX//ICD10//I10"), (0, "HC//SPECIFIC_CHECKUP")]
OLD_HT = [(400, "DX//ICD10//I10"), (20, "DX//ICD10//E11"), (0, "HC//SPECIFIC_CHECKUP")]
STARTS_DRUG = [(-30, "DRUG//ATC//C09CA01")]  # 30 days *after* the checkup


def _patient(subject_id: int, chart, noise: int) -> list[dict]:
    rows = [{"subject_id": subject_id, "time": None, "code": "GENDER//F"},
            {"subject_id": subject_id, "time": datetime(1965, 1, 1), "code": "MEDS_BIRTH"}]
    # A few background visits so histories are not identical.
    for k in range(noise):
        rows.append({"subject_id": subject_id, "time": CHECKUP - timedelta(days=700 - 37 * k),
                     "code": "DX//ICD10//J06"})
    for days_before, code in chart:
        rows.append({"subject_id": subject_id, "time": CHECKUP - timedelta(days=days_before), "code": code})
    return sorted(rows, key=lambda r: (r["time"] is not None, r["time"] or datetime.min))


@pytest.fixture(scope="session")
def recency_cache(tmp_path_factory):
    """240 patients: recent diagnosis -> drug for 90 % of them, old diagnosis -> drug for 10 %."""
    rng = np.random.default_rng(0)
    rows, splits = [], {}
    for sid in range(240):
        recent = sid % 2 == 0
        treated = rng.random() < (0.9 if recent else 0.1)
        chart = (RECENT_HT if recent else OLD_HT) + (STARTS_DRUG if treated else [])
        rows += _patient(sid, chart, noise=int(rng.integers(0, 4)))
        splits[sid] = "train" if sid < 160 else "tuning" if sid < 200 else "held_out"
    root = tmp_path_factory.mktemp("meds")
    write_dataset(root, {"train/0": pl.DataFrame(rows)}, splits)
    out = tmp_path_factory.mktemp("prep") / "prepared"
    write_cache(root, out, [load_task("antihypertensive_start")], Settings(max_len=64, min_count=1))
    return out


@pytest.fixture
def mlflow_uri():
    """``use(uri)`` points this process's MLflow (tracking and registry) at ``uri`` for one test;
    the environment MLflow writes it to is restored after, so later tests and their
    subprocesses do not inherit it."""
    import os

    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}

    def use(uri: str) -> None:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

    yield use
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None unsets it
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def meds_eval(tool: str) -> str:
    """A program of the meds-evaluation venv (``make meds-eval``); `make test` requires it, a
    hand-run pytest without it skips."""
    venv = Path(os.environ.get("MEDS_EVAL_VENV") or Path(__file__).resolve().parents[1] / ".venv-meds-eval")
    path = venv / "bin" / tool
    if not path.exists():
        why = f"{path} is missing: run `make meds-eval` (meds-evaluation 0.0.6 in its own venv)"
        if os.environ.get("CLAIMS_SEARCH_REQUIRE_MEDS_EVAL"):
            pytest.fail(why)
        pytest.skip(why)
    return str(path)


@pytest.fixture
def checkpoint(tmp_path):
    """A fine-tuned checkpoint folder as training writes it: meta.json and state.pt (here
    stand-ins: registration packages the folder, it does not load it)."""
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "meta.json").write_text(json.dumps({"kind": "finetune", "size": {"width": 16, "depth": 2, "heads": 2}}))
    (ck / "state.pt").write_bytes(b"\0" * 64)
    return ck
