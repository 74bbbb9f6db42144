"""The recommended size: the cheapest trial indistinguishable from the best."""

import pytest

from claims_search.frontier import TrialRecord
from claims_search.recommend import recommend


def trial(tid, metric, cost, status="complete", baseline=False, low=None, high=None):
    """One ckd_incidence record; the interval defaults to ±0.02 around the metric."""
    return TrialRecord(
        trial_id=tid, task="ckd_incidence", status=status,
        params={} if baseline else {"model": {"width": 64, "depth": 2, "heads": 2}},
        n_params=1000, metric=metric,
        metric_low=metric - 0.02 if low is None else low, metric_high=metric + 0.02 if high is None else high,
        cost=cost, pretrain_cost=cost * 0.8, finetune_cost=cost * 0.2, is_baseline=baseline,
    )


# Bigger models help a little: the best (0.50) has the interval [0.46, 0.54].
LADDER = [
    trial("2M", 0.44, 100.0),
    trial("11M", 0.47, 400.0),
    trial("33M", 0.49, 1200.0),
    trial("101M", 0.50, 1600.0, low=0.46, high=0.54),
    trial("lgbm", 0.40, 5.0, baseline=True),
]


def test_within_the_best_interval_picks_the_cheapest_above_its_lower_bound():
    rec = recommend(LADDER, "ckd_incidence")
    assert rec.best.trial_id == "101M"
    assert rec.threshold == pytest.approx(0.46)
    assert rec.record.trial_id == "11M"  # 0.47 >= 0.46; 2M's 0.44 is not
    assert rec.largest.trial_id == "101M"
    assert rec.saved == pytest.approx(1200.0)
    assert rec.saved_factor == pytest.approx(4.0)  # the "fourfold waste" of the largest model


def test_a_tolerance_replaces_the_interval():
    assert recommend(LADDER, "ckd_incidence", tolerance=0.0).record.trial_id == "101M"
    assert recommend(LADDER, "ckd_incidence", tolerance=0.06).record.trial_id == "2M"
    with pytest.raises(ValueError):
        recommend(LADDER, "ckd_incidence", tolerance=-0.1)


def test_baseline_is_shown_but_never_recommended():
    rec = recommend(LADDER, "ckd_incidence", tolerance=0.2)
    assert rec.record.trial_id == "2M"  # not the cheaper baseline
    assert rec.baseline.trial_id == "lgbm" and rec.baseline_indistinguishable
    assert not recommend(LADDER, "ckd_incidence").baseline_indistinguishable


def test_pruned_trials_are_not_candidates_and_no_complete_trial_gives_none():
    records = LADDER + [trial("lucky", 0.99, 1.0, status="pruned")]
    assert recommend(records, "ckd_incidence").best.trial_id == "101M"
    assert recommend([trial("p", 0.5, 1.0, status="pruned"), LADDER[-1]], "ckd_incidence") is None


def test_single_trial_recommends_itself_with_nothing_saved():
    rec = recommend([trial("only", 0.3, 7.0)], "ckd_incidence")
    assert rec.record.trial_id == rec.best.trial_id == rec.largest.trial_id == "only"
    assert rec.saved == 0.0 and rec.saved_factor == 1.0


def test_ties_with_the_best_go_to_the_cheaper():
    records = [trial("dear", 0.5, 90.0, low=0.5, high=0.5), trial("cheap", 0.5, 30.0, low=0.5, high=0.5)]
    rec = recommend(records, "ckd_incidence")
    assert rec.best.trial_id == "cheap" and rec.record.trial_id == "cheap"


def test_summary_is_plain_json_with_no_patient_data():
    import json

    d = json.loads(json.dumps(recommend(LADDER, "ckd_incidence").to_dict()))
    assert d["recommended"]["trial_id"] == "11M"
    assert d["compute_saved_factor"] == pytest.approx(4.0)
    assert d["frontier_trial_ids"] == ["lgbm", "2M", "11M", "33M", "101M"]
