"""The search's guard against half-finished trials, with real Optuna (no cluster needed)."""

import json

import optuna
import pytest
from ray import tune

from claims_search.search.driver import records_from_result
from claims_search.search.tune import GuardedOptunaSearch
from claims_search.search.space import load_space

METRICS = ["ckd_incidence/auprc", "antihypertensive_start/auprc", "cost"]


def _searcher():
    s = GuardedOptunaSearch(metric=METRICS, mode=["max", "max", "min"],
                            sampler=optuna.samplers.RandomSampler(seed=0))
    s.set_search_properties(None, None, {"lr": tune.loguniform(1e-4, 1e-2)})
    return s


def test_a_trial_stopped_after_pretraining_is_pruned_not_complete():
    s = _searcher()
    s.suggest("t1")
    # The last result a scheduler-stopped trial leaves: pretraining done, no task metrics.
    s.on_trial_complete("t1", {"status": "pretrained", "pretrain_val_loss": 3.2})
    (trial,) = s._ot_study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.values is None


def test_a_finished_trial_is_complete_with_every_objective():
    s = _searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", {"status": "complete", METRICS[0]: 0.31, METRICS[1]: 0.62, "cost": 40.0})
    (trial,) = s._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.values == [0.31, 0.62, 40.0]


def test_an_errored_trial_is_failed():
    s = _searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", None, error=True)
    assert s._ot_study.trials[0].state == optuna.trial.TrialState.FAIL


def _result(status="complete"):
    cost = {"wall_s": 10.0, "device_s": 10.0, "tokens": 1000, "flops": 1e9, "n_params": 5000,
            "peak_mem_bytes": 1, "device": "cpu", "n_devices": 1}
    task = {"metrics": {"auprc": 0.4, "auprc_low": 0.3, "auprc_high": 0.5, "auroc": 0.7, "n": 100, "positives": 20},
            "finetune_cost": {**cost, "device_s": 2.0}, "checkpoint": "/x/ckpt"}
    return {"status": status, "trial_config": json.dumps({"model": {"width": 32}}), "n_params": 5000,
            "pretrain_val_loss": 3.0, "pretrain_cost": json.dumps(cost),
            "tasks": json.dumps({"ckd_incidence": task, "antihypertensive_start": task}),
            "total_cost": json.dumps({**cost, "device_s": 14.0})}


def test_records_charge_pretraining_to_every_task():
    space = load_space("smoke")
    recs = records_from_result("t1", _result(), ["ckd_incidence", "antihypertensive_start"], space)
    assert [r.task for r in recs] == ["ckd_incidence", "antihypertensive_start"]
    assert all(r.cost == 12.0 and r.pretrain_cost == 10.0 and r.finetune_cost == 2.0 for r in recs)
    assert recs[0].metric == 0.4 and recs[0].metric_low == 0.3 and recs[0].usable


def test_records_of_a_pruned_trial_never_carry_a_metric():
    space = load_space("smoke")
    recs = records_from_result("t2", {**_result(), "status": "pretrained"}, ["ckd_incidence"], space)
    assert recs[0].status == "pruned" and recs[0].metric is None and not recs[0].usable


def test_a_result_the_outbox_lacks_is_recovered_from_the_trials_final_json(tmp_path):
    """A driver that died between a trial's end and its callback: --resume rebuilds the records."""
    from claims_search.search.driver import _recover_records
    from claims_search.tracking.tracker import Tracker

    space = load_space("smoke")
    trials = tmp_path / "trials"
    (trials / "t9").mkdir(parents=True)
    (trials / "t9" / "final.json").write_text(json.dumps(_result()))
    (trials / "t8").mkdir()  # a trial that never finished: nothing to recover
    tracker = Tracker("http://127.0.0.1:9", "recover", tmp_path / "outbox")  # MLflow away: records wait
    _recover_records(str(trials), space, tracker)
    recs = tracker.records()
    assert sorted((r.trial_id, r.task) for r in recs) == [("t9", "antihypertensive_start"), ("t9", "ckd_incidence")]
    assert all(r.status == "complete" for r in recs)


def test_resume_refuses_another_space_or_data(tmp_path):
    from claims_search.errors import ClaimsSearchError
    from claims_search.search.driver import _same_search

    space = load_space("smoke")
    _same_search(tmp_path, space, "/data/prepared", resume=False)
    _same_search(tmp_path, space, "/data/prepared", resume=True)  # the same: fine
    with pytest.raises(ClaimsSearchError, match="--data"):
        _same_search(tmp_path, space, "/data/other", resume=True)


def test_the_searcher_never_proposes_a_configuration_already_tried():
    """TPE on a two-point space: after both points, every proposal is a repeat, so the search
    ends instead of training a copy."""
    s = GuardedOptunaSearch(metric=METRICS, mode=["max", "max", "min"],
                            sampler=optuna.samplers.TPESampler(seed=0))
    s.set_search_properties(None, None, {"model": {"depth": tune.choice([1, 2])}})
    seen = []
    for i in range(2):
        seen.append(s.suggest(f"t{i}")["model"]["depth"])
        s.on_trial_complete(f"t{i}", {"status": "complete", METRICS[0]: 0.3, METRICS[1]: 0.6, "cost": 1.0 + i})
    assert sorted(seen) == [1, 2]
    from ray.tune.search import Searcher

    assert s.suggest("t2") == Searcher.FINISHED


def test_a_small_space_tries_each_configuration_once(tmp_path):
    from claims_search.search.driver import _no_repeats

    smoke = load_space("smoke")  # head_dim [8, 16] x depth 1..2: four configurations
    points = smoke.distinct_points()
    assert len(points) == 4 and len({json.dumps(p, sort_keys=True) for p in points}) == 4
    chosen, n = _no_repeats(smoke)  # random sampler, budget 3 < 4: three distinct ones
    assert n == 3 and len({json.dumps(p, sort_keys=True) for p in chosen}) == 3
    big = tmp_path / "big.yaml"
    big.write_text(smoke.path.read_text().replace("trials: 3", "trials: 10"))
    chosen, n = _no_repeats(load_space(big))
    assert n == 4 and len(chosen) == 4  # the budget is cut to what the space holds
