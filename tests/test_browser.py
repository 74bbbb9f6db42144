"""The MLflow UI, checked in a real browser: a search's parent run, its trial runs and the
frontier picture, as a user opening the tracking server would see them.

A real ``mlflow server`` (SQLite, local artifacts) is filled through ``claims_search.tracking.tracker``
with one task's two trials; headless Debian Chromium (Playwright, no browser download) loads the
experiment's runs table and the parent run's artifact page. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.cluster_harness"]  # mlflow_server, chromium, artifacts_dir
pytestmark = pytest.mark.browser

EXPERIMENT = "browser-check"
RENDER_MS = 60_000  # the single-page app renders in ~5 s; a loaded 2-core CI box is slower


def trial(trial_id: str, width: int, depth: int, auprc: float, cost_s: float):
    """One finished trial of ``ckd_incidence`` (aggregates only, as a search records it)."""
    from claims_search.results.frontier import TrialRecord

    return TrialRecord(
        trial_id=trial_id, task="ckd_incidence", status="complete",
        params={"model": {"width": width, "depth": depth, "heads": 2},
                "pretrain": {"lr": 1e-3, "steps": 30}, "finetune": {"lr": 1e-3, "steps": 30}},
        n_params=12 * width * width * depth, metric=auprc, metric_low=auprc - 0.02,
        metric_high=auprc + 0.02, cost=cost_s, pretrain_cost=0.7 * cost_s, finetune_cost=0.3 * cost_s,
    )


@pytest.fixture(scope="module")
def search_runs(mlflow_server, tmp_path_factory):
    """``(experiment id, parent run id)`` after tracking two trials and publishing the frontier."""
    from mlflow import MlflowClient

    from claims_search.tracking.tracker import Tracker

    tracker = Tracker(mlflow_server.url, EXPERIMENT, tmp_path_factory.mktemp("outbox"))
    tracker.log_trial(trial("t1", 32, 2, 0.30, 10.0), sync=False)
    tracker.log_trial(trial("t2", 64, 4, 0.34, 40.0), sync=False)
    tracker.publish(sync=True)
    assert tracker.pending() == []  # everything reached the server

    client = MlflowClient(mlflow_server.url)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id])
    parent = next(r for r in runs if r.info.run_name == "ckd_incidence")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert "frontier.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    return exp_id, parent.info.run_id


def test_the_runs_page_shows_the_task_run_and_its_trials(chromium, mlflow_server, search_runs, artifacts_dir):
    exp_id, _ = search_runs
    page = chromium.new_page()
    # The runs table itself: MLflow 3.17 otherwise opens a GenAI overview of the experiment.
    page.goto(f"{mlflow_server.url}/#/experiments/{exp_id}/runs")
    page.get_by_text("ckd_incidence", exact=True).first.wait_for(timeout=RENDER_MS)
    assert page.get_by_text("3 matching runs").is_visible()

    # Expand the parent (the button left of its name) to show its trial runs.
    row = page.locator('[role="row"]', has_text="ckd_incidence").first
    row.locator('[col-id="attributes.`Run Name`"] button').first.click()
    for name in ("ckd_incidence/w32-d2-h2", "ckd_incidence/w64-d4-h2"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=RENDER_MS)
    page.screenshot(path=artifacts_dir / "mlflow-runs.png", full_page=True)
    page.close()


def test_the_parent_run_shows_the_frontier_picture(chromium, mlflow_server, search_runs, artifacts_dir):
    exp_id, parent_id = search_runs
    page = chromium.new_page()
    page.goto(f"{mlflow_server.url}/#/experiments/{exp_id}/runs/{parent_id}/artifacts/frontier.png")
    page.get_by_text("frontier.html", exact=True).first.wait_for(timeout=RENDER_MS)  # the file list
    # The preview is an <img> loaded from the server: wait until it has really decoded.
    page.wait_for_function(
        "() => [...document.images].some(i => i.complete && i.naturalWidth > 200 && i.src.startsWith('blob:'))",
        timeout=RENDER_MS,
    )
    width = page.evaluate("() => Math.max(...[...document.images].filter(i => i.src.startsWith('blob:')).map(i => i.naturalWidth))")
    assert width > 200  # a rendered plot, not a broken-image icon
    page.screenshot(path=artifacts_dir / "mlflow-frontier.png", full_page=True)
    page.close()


def test_the_link_claims_search_prints_opens_the_runs_not_a_genai_overview(chromium, mlflow_server, search_runs,
                                                                            artifacts_dir):
    """The experiment's own page as claims-search links it: MLflow 3's model-training view (its
    default is a GenAI overview of traces), the experiment tagged as custom model development."""
    from mlflow import MlflowClient

    from claims_search.tracking.tracker import experiment_url

    exp_id, _ = search_runs
    assert MlflowClient(mlflow_server.url).get_experiment(exp_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    page = chromium.new_page()
    page.goto(experiment_url(mlflow_server.url, EXPERIMENT))
    page.get_by_text("ckd_incidence", exact=True).first.wait_for(timeout=RENDER_MS)
    assert page.get_by_text("3 matching runs").is_visible()
    page.screenshot(path=artifacts_dir / "mlflow-experiment-home.png", full_page=True)
    page.close()
