"""Where a trial's time goes: the phase table a trial records and the line a search prints."""

from __future__ import annotations

import pytest

from claims_search.search.driver import SearchResult, time_shares
from claims_search.runs.training import phase_timings


def _outcome(loop_s: float, eval_s: float, cache_s: float) -> dict:
    return {"cost": {"wall_s": loop_s}, "eval_s": eval_s, "cache_s": cache_s}


def test_a_fit_is_split_into_start_up_cache_loops_evaluation_and_the_rest():
    outcomes = {"pretrain": _outcome(30.0, 2.0, 1.5), "finetune_ckd": _outcome(10.0, 3.0, 0.5),
                "finetune_med": None}  # skipped: pretraining diverged
    t = phase_timings(4.0, 60.0, {"scheduling_wait": 1.0, "worker_start": 5.0}, outcomes)
    assert t == pytest.approx({"setup": 4.0, "scheduling_wait": 1.0, "worker_start": 5.0, "cache": 2.0,
                               "pretrain": 30.0, "finetune_ckd": 10.0, "eval": 5.0, "fit_other": 7.0})


def test_the_rest_of_a_fit_is_never_negative():
    t = phase_timings(0.0, 10.0, {"scheduling_wait": 0.0, "worker_start": 3.0}, {"pretrain": _outcome(9.0, 0, 0)})
    assert t["fit_other"] == 0.0


def test_shares_pool_the_fine_tunings_and_name_what_no_phase_accounts_for():
    trials = [{"time_pretrain_s": 50.0, "time_finetune_a_s": 10.0, "time_finetune_b_s": 10.0,
               "time_worker_start_s": 10.0, "trial_wall_s": 100.0, "train_loop_s": 70.0}]
    shares = time_shares(trials, 100.0)
    assert shares == pytest.approx({"pretrain": 0.5, "finetune": 0.2, "worker_start": 0.1, "other": 0.2})
    line = SearchResult({}, 1, 0, 0, time_shares=shares).time_line()
    assert line == "trial wall time: pretrain 50%, finetune 20%, other 20%, worker start 10%"


def test_untimed_trials_print_no_time_line():
    assert time_shares([{"trial_wall_s": 5.0}], 5.0) == {}
    assert SearchResult({}, 0, 0, 0).time_line() is None
