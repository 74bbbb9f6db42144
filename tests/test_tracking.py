"""MLflow tracking on a real SQLite store: layout, registry alias, and the outbox when the
server is away. No mocks: an unreachable server is a closed local port."""

import json
import socket
import time

import pytest

from claims_search import cli
from claims_search.results.frontier import TrialRecord
from claims_search.tracking.tracker import Tracker, load_records, registered_name

pytest.importorskip("mlflow")


def trial(tid, task, metric, cost, width=32, status="complete", baseline=False, checkpoint=None):
    return TrialRecord(
        trial_id=tid, task=task, status=status,
        params={"n_estimators": 100} if baseline else {
            "model": {"width": width, "depth": 2, "heads": 2, "ff_ratio": 4.0, "dropout": 0.0, "max_len": 64},
            "pretrain": {"lr": 1e-3, "steps": 30}, "finetune": {"lr": 1e-3, "steps": 30},
        },
        n_params=None if baseline else width * 1000, metric=metric,
        metric_low=None if metric is None else metric - 0.05,
        metric_high=None if metric is None else metric + 0.05,
        cost=cost, pretrain_cost=None if cost is None else cost * 0.7,
        finetune_cost=None if cost is None else cost * 0.3, is_baseline=baseline,
        checkpoint=checkpoint, extras={} if metric is None else {"auroc": 0.7, "total_cost": 99.0},
    )


def search_results(checkpoint):
    """Two tasks: on ckd the small model is as good as the big one; on antihypertensive not."""
    out = []
    for task, small, big in (("ckd_incidence", 0.41, 0.43), ("antihypertensive_start", 0.30, 0.45)):
        out += [
            trial("t0", task, small, 10.0, width=16, checkpoint=str(checkpoint)),
            trial("t1", task, big, 40.0, width=64, checkpoint=str(checkpoint)),
            trial("t2", task, None, None, width=128, status="pruned"),
            trial("baseline", task, 0.25, 1.0, baseline=True),
        ]
    return out


def test_layout_parent_per_task_children_tagged_artifacts_and_registry(tmp_path, checkpoint, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "smoke-search", tmp_path / "outbox", metric="auprc", cost="device_seconds")
    for r in search_results(checkpoint):
        tracker.log_trial(r, sync=False)
    recs = tracker.publish()
    assert tracker.pending() == []
    assert recs["ckd_incidence"].record.trial_id == "t0"  # 0.41 >= 0.43 - 0.05
    assert recs["antihypertensive_start"].record.trial_id == "t1"

    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("smoke-search")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = {r.data.tags["claims_search.task"]: r for r in runs if r.data.tags["claims_search.role"] == "parent"}
    assert set(parents) == {"ckd_incidence", "antihypertensive_start"}
    children = [r for r in runs if r.data.tags["claims_search.role"] == "trial"]
    assert len(children) == 8
    for c in children:
        task = c.data.tags["claims_search.task"]
        assert c.data.tags["mlflow.parentRunId"] == parents[task].info.run_id
        assert c.data.tags["pareto"] in ("true", "false") and c.data.tags["recommended"] in ("true", "false")
    by = {(c.data.tags["claims_search.task"], c.data.tags["trial_id"]): c for c in children}
    small = by["ckd_incidence", "t0"]
    assert small.data.tags["recommended"] == "true" and small.data.tags["pareto"] == "true"
    assert small.data.params["width"] == "16" and small.data.params["n_params"] == "16000"
    assert small.data.params["pretrain.lr"] == "0.001"
    assert small.data.metrics["auprc"] == pytest.approx(0.41)
    assert small.data.metrics["auprc_low"] == pytest.approx(0.36)
    assert small.data.metrics["cost"] == pytest.approx(10.0) and small.data.metrics["pretrain_cost"] == pytest.approx(7.0)
    pruned = by["ckd_incidence", "t2"]
    assert pruned.data.tags["status"] == "pruned" and pruned.data.tags["pareto"] == "false"
    assert pruned.info.status == "KILLED"
    assert by["ckd_incidence", "baseline"].data.tags["pareto"] == "true"

    artifacts = {a.path for a in client.list_artifacts(parents["ckd_incidence"].info.run_id)}
    assert {"frontier.csv", "frontier.json", "frontier.png", "frontier.html", "recommendation.json"} <= artifacts
    assert parents["ckd_incidence"].data.metrics["compute_saved_factor"] == pytest.approx(4.0)

    version = client.get_model_version_by_alias(registered_name("smoke-search", "ckd_incidence"), "recommended")
    assert version.tags["trial_id"] == "t0" and version.run_id == small.info.run_id

    # Reading back: the same records, and the CLI's recommendation from them.
    assert load_records(uri, "smoke-search") == sorted(search_results(checkpoint), key=lambda r: (r.task, r.trial_id))
    assert cli.main(["recommend", "--experiment", "smoke-search", "--tracking-uri", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ckd_incidence"]["recommended"]["trial_id"] == "t0"
    assert out["ckd_incidence"]["compute_saved_factor"] == pytest.approx(4.0)


def test_recommend_shows_the_held_out_confirmation_the_search_recorded(tmp_path, checkpoint, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "confirmed", tmp_path / "outbox", metric="auprc", cost="device_seconds")
    for r in search_results(checkpoint):
        tracker.log_trial(r, sync=False)
    tracker.publish()
    # As the search confirms: ckd's choice scored on held-out; antihypertensive's never was.
    scores = {"auprc": 0.40, "auprc_low": 0.35, "auprc_high": 0.46, "n": 812}
    tracker.log_confirmation("ckd_incidence", "held_out", {
        "recommended": {"trial_id": "t0", "metrics": scores},
        "best": {"trial_id": "t1", "metrics": {**scores, "auprc": 0.42}},
        "baseline": {"trial_id": "baseline", "error": "held_out: one class only"}})
    tracker.sync()

    assert cli.main(["recommend", "--experiment", "confirmed", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "    recommended AUPRC 0.400 [0.350, 0.460]  (n=812, trial t0)" in text
    assert "    best        AUPRC 0.420 [0.350, 0.460]  (n=812, trial t1)" in text
    assert "    baseline    trial baseline: not scored: held_out: one class only" in text
    assert text.count("  held-out confirmation: none recorded (the search stopped before it, or its models "
                      "were lost)") == 1  # antihypertensive_start
    assert cli.main(["recommend", "--experiment", "confirmed", "--tracking-uri", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ckd_incidence"]["held_out"]["recommended"] == {"trial_id": "t0", "metrics": scores}
    assert out["antihypertensive_start"]["held_out"] is None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_outbox_keeps_results_while_the_server_is_away_and_delivers_once(tmp_path, checkpoint):
    from mlflow.tracking import MlflowClient

    outbox = tmp_path / "outbox"
    away = Tracker(f"http://127.0.0.1:{closed_port()}", "resilient", outbox)
    start = time.monotonic()
    for r in search_results(checkpoint)[:4]:
        away.log_trial(r)  # must neither raise nor hang on MLflow's retries
    away.publish()
    assert time.monotonic() - start < 30
    assert len(away.pending()) == 6  # 4 trials, the settings and the summary

    # The server is back (here: the embedded SQLite store); the next sync delivers everything.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    back = Tracker(uri, "resilient", outbox)
    assert back.sync() == 0
    client = MlflowClient(uri, uri)
    exp_id = client.get_experiment_by_name("resilient").experiment_id

    def count():
        return len(client.search_runs([exp_id], max_results=100))

    assert count() == 5  # one parent + four children
    assert back.sync() == 0 and count() == 5
    # A result logged again (a resumed search) updates its run instead of adding one.
    back.log_trial(search_results(checkpoint)[0])
    back.log_trial(trial("t0", "ckd_incidence", 0.42, 10.0, width=16))
    assert count() == 5
    assert {r.metric for r in load_records(uri, "resilient") if r.trial_id == "t0"} == {0.42}


def test_frontier_and_recommend_fail_when_no_transformer_completed(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "all-failed", tmp_path / "outbox", metric="auprc", cost="device_seconds")
    for r in (trial("t0", "ckd_incidence", None, None, status="failed"),
              trial("t1", "ckd_incidence", None, None, status="pruned"),
              trial("baseline", "ckd_incidence", 0.25, 1.0, baseline=True)):
        tracker.log_trial(r, sync=False)
    tracker.publish()
    assert cli.main(["recommend", "--experiment", "all-failed", "--tracking-uri", uri]) == 1
    assert "no complete Transformer trial to recommend from (0 complete, 1 failed, 1 pruned)" in capsys.readouterr().out
    assert cli.main(["frontier", "--experiment", "all-failed", "--tracking-uri", uri]) == 1
    assert "0 complete, 1 failed, 1 pruned Transformer trials" in " ".join(capsys.readouterr().out.split())


def test_trials_lists_each_failure_with_its_reason(tmp_path, capsys):
    import dataclasses

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "with-failures", tmp_path / "outbox", metric="auprc", cost="device_seconds")
    failed = dataclasses.replace(trial("t9", "ckd_incidence", None, None, status="failed"),
                                 tags={"reason": "RuntimeError: CUDA out of memory"})
    for r in (trial("t0", "ckd_incidence", 0.4, 10.0), failed):
        tracker.log_trial(r, sync=False)
    tracker.publish()
    assert cli.main(["trials", "--experiment", "with-failures", "--tracking-uri", uri, "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert "t9" in out and "RuntimeError: CUDA out of memory" in out and "t0" not in out and "1 row(s)" in out
