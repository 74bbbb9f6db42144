"""The Pareto frontier on hand-made trial records: higher metric and lower cost win."""

import pytest

from claims_search.results.frontier import (
    TrialRecord, default_reference, hypervolume, pareto_front, saturation_point, still_improving,
)


def trial(tid, metric, cost, status="complete", task="ckd_incidence", baseline=False, low=None, high=None):
    """One record; the interval defaults to ±0.02 around the metric."""
    return TrialRecord(
        trial_id=tid, task=task, status=status,
        params={} if baseline else {"model": {"width": 64, "depth": 2, "heads": 2}},
        n_params=1000, metric=metric,
        metric_low=low if low is not None else (None if metric is None else metric - 0.02),
        metric_high=high if high is not None else (None if metric is None else metric + 0.02),
        cost=cost, pretrain_cost=None if cost is None else cost * 0.8,
        finetune_cost=None if cost is None else cost * 0.2, is_baseline=baseline,
    )


def ids(records):
    return [r.trial_id for r in records]


def test_front_keeps_only_non_dominated_sorted_by_cost():
    records = [
        trial("big", 0.50, 400.0),
        trial("small", 0.40, 10.0),
        trial("wasteful", 0.39, 200.0),  # dearer and worse than "small"
        trial("mid", 0.48, 100.0),
    ]
    assert ids(pareto_front(records, "ckd_incidence")) == ["small", "mid", "big"]


def test_single_trial_is_its_own_front():
    assert ids(pareto_front([trial("only", 0.3, 5.0)], "ckd_incidence")) == ["only"]


def test_pruned_and_failed_trials_never_enter_even_if_they_look_best():
    records = [
        trial("done", 0.40, 100.0),
        trial("stopped", 0.90, 1.0, status="pruned"),
        trial("crashed", None, None, status="failed"),
    ]
    assert ids(pareto_front(records, "ckd_incidence")) == ["done"]


def test_exact_duplicates_keep_one_whatever_the_input_order():
    a, b = trial("b", 0.45, 50.0), trial("a", 0.45, 50.0)
    assert ids(pareto_front([a, b], "ckd_incidence")) == ["a"]
    assert ids(pareto_front([b, a], "ckd_incidence")) == ["a"]


def test_ties_on_one_axis_are_dominated():
    records = [
        trial("same-cost-worse", 0.40, 50.0),
        trial("same-cost-better", 0.45, 50.0),
        trial("same-metric-dearer", 0.45, 80.0),
    ]
    assert ids(pareto_front(records, "ckd_incidence")) == ["same-cost-better"]


def test_baseline_takes_part_and_other_tasks_are_ignored():
    records = [
        trial("lgbm", 0.35, 2.0, baseline=True),
        trial("t1", 0.34, 30.0),  # worse than the cheaper baseline: off the front
        trial("t2", 0.42, 60.0),
        trial("t3", 0.99, 1.0, task="antihypertensive_start"),
    ]
    assert ids(pareto_front(records, "ckd_incidence")) == ["lgbm", "t2"]


def test_hypervolume_of_one_point_is_a_rectangle_in_metric_by_decades():
    # metric 0.8 - 0.5 = 0.3 above the reference, cost 10 -> 1000 = 2 decades: 0.6
    assert hypervolume([trial("p", 0.8, 10.0)], (0.5, 1000.0)) == pytest.approx(0.6)


def test_hypervolume_of_a_staircase_adds_strips_and_ignores_points_past_the_reference():
    front = [trial("a", 0.6, 1.0), trial("b", 0.7, 10.0), trial("c", 0.9, 5000.0)]
    # a: 0.1 over 3 decades (1 -> 1000); b adds 0.1 over 2 decades; c is dearer than the reference
    assert hypervolume(front, (0.5, 1000.0)) == pytest.approx(0.3 + 0.2)
    assert hypervolume([], (0.5, 1000.0)) == 0.0


def test_default_reference_depends_on_costs_not_on_the_front():
    records = [trial("a", 0.6, 1.0), trial("b", 0.2, 30.0)]
    assert default_reference(records, "ckd_incidence") == (0.0, 300.0)


def test_saturation_is_where_doubling_compute_stops_paying():
    front = [
        trial("1x", 0.30, 10.0),
        trial("2x", 0.40, 20.0),  # +0.10 per doubling
        trial("4x", 0.402, 40.0),  # +0.002 per doubling: saturated at 2x
        trial("8x", 0.404, 80.0),
    ]
    assert saturation_point(front, min_gain_per_doubling=0.005).trial_id == "2x"
    assert not still_improving(front, min_gain_per_doubling=0.005)
    # The largest size tried never saturates: nothing bigger was tried to show it.
    assert saturation_point(front[:2], min_gain_per_doubling=0.005) is None
    assert still_improving(front[:2], min_gain_per_doubling=0.005)
    assert saturation_point([]) is None and not still_improving(front[:1])


def test_saturation_and_improvement_follow_the_rule_they_are_given():
    sizes = [trial("s", 0.30, 10.0), trial("m", 0.35, 40.0), trial("l", 0.36, 160.0),
             trial("lgbm", 0.90, 1.0, baseline=True)]  # the baseline has no size: ignored
    # A rule under which "m" and "l" are as good as each other, and both beat "s".
    same = {("m", "l"), ("l", "m")}

    def as_good(x, y):
        return (x.trial_id, y.trial_id) in same

    def better(y, x):
        return not as_good(x, y)

    assert saturation_point(sizes, as_good=as_good).trial_id == "m"
    assert not still_improving(sizes, better=better)
    assert saturation_point(sizes, as_good=lambda x, y: False) is None  # every larger one is better
    assert still_improving(sizes, better=lambda y, x: True)


def test_record_round_trips_through_a_plain_dict():
    r = trial("x", 0.5, 3.0)
    assert TrialRecord.from_dict({**r.to_dict(), "unknown_future_field": 1}) == r
    with pytest.raises(ValueError):
        trial("y", 0.5, 3.0, status="running")
