"""A smoke search submitted to a real multi-node Ray cluster (`ray start`: a head with no trial
CPUs + two worker nodes), tracked by a real `mlflow server`; then the MLflow UI of that search in
headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TASKS = ["ckd_incidence", "antihypertensive_start"]
NAME = "cluster-smoke"


def cli(*argv: str, env: dict, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "claims_search.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def submitted(ray_cluster, mlflow_server, prepared, tmp_path_factory):
    storage = tmp_path_factory.mktemp("cluster-runs")
    # All nodes of this test cluster share one disk: tell claims-search the path is shared.
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--wait", "--tracking-uri", mlflow_server.url,
              "--storage-path", str(storage), "--env", "CLAIMS_SEARCH_SHARED_FS=1", "--",
              "search", "--space", "smoke", "--data", str(prepared), "--name", NAME, "--no-progress",
              env=ray_cluster.client_env())
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return storage, out


def test_the_job_succeeds_and_names_its_experiment(submitted):
    _, out = submitted
    assert NAME in out.stdout
    assert "succeeded" in out.stdout


def test_trials_ran_on_worker_nodes_not_the_head(submitted, ray_cluster):
    storage, _ = submitted
    results = list((storage / NAME / "tune").glob("*/result.json"))
    assert len(results) == 3
    nodes = {json.loads(line)["node_id"] for f in results for line in f.read_text().splitlines() if line.strip()}
    head = _head_node_id(ray_cluster)
    assert nodes and head not in nodes


def _head_node_id(ray_cluster) -> str:
    """The head's node id, asked of the cluster itself (a tiny driver script)."""
    code = ("import ray, json; ray.init(address='%s'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if 'node:__internal_head__' in n['Resources']]))"
            % ray_cluster.gcs_address)
    out = subprocess.run([sys.executable, "-c", code], env=ray_cluster.client_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (head,) = json.loads(out.stdout.strip().splitlines()[-1])
    return head


def test_mlflow_server_holds_the_frontier_and_the_recommended_models(submitted, mlflow_server):
    from mlflow.tracking import MlflowClient

    from claims_search.tracking import registered_name

    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = {r.data.tags["claims_search.task"]: r for r in runs if r.data.tags.get("claims_search.role") == "parent"}
    assert sorted(parents) == sorted(TASKS)
    for task, parent in parents.items():
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 4  # three trials + the baseline
        assert all(c.data.tags.get("pareto") in ("true", "false") for c in children)
        assert {"frontier.png", "frontier.html", "frontier.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert client.get_model_version_by_alias(registered_name(NAME, task), "recommended").version


@pytest.mark.browser
def test_the_mlflow_ui_shows_the_trials_and_the_frontier_picture(submitted, mlflow_server, chromium, artifacts_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(NAME)
    parent = next(r for r in client.search_runs([exp.experiment_id])
                  if r.data.tags.get("claims_search.task") == "ckd_incidence"
                  and r.data.tags.get("claims_search.role") == "parent")
    page = chromium.new_page()
    page.goto(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs")
    page.get_by_text("ckd_incidence", exact=True).first.wait_for(timeout=60_000)
    # Expand the task's parent run: its trial runs (named "<task>/w..-d..-h..") appear under it.
    row = page.locator('[role="row"]', has_text="ckd_incidence").first
    row.locator('[col-id="attributes.`Run Name`"] button').first.click()
    trials = page.get_by_text(re.compile(r"^ckd_incidence/w\d+-d\d+-h\d+$"))
    trials.first.wait_for(timeout=60_000)
    assert trials.count() == 3
    page.screenshot(path=str(artifacts_dir / "cluster-search-runs.png"), full_page=True)
    page.goto(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/frontier.png")
    page.get_by_text("frontier.html", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_function(  # the preview <img> has really decoded: a plot, not a broken icon
        "() => [...document.images].some(i => i.complete && i.naturalWidth > 200 && i.src.startsWith('blob:'))",
        timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "cluster-search-frontier.png"), full_page=True)
    page.close()
