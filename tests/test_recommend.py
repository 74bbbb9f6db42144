"""The recommended size: the cheapest trial indistinguishable from the best."""

import pytest

from claims_search.results.frontier import TrialRecord
from claims_search.results.recommend import recommend


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


# ---- the paired rule, on hand-made predictions ----------------------------------------------
import logging  # noqa: E402

import numpy as np  # noqa: E402

from claims_search.runs import predictions as pr  # noqa: E402
from claims_search.commands.recommend import describe  # noqa: E402
from claims_search.results.recommend import RESOLUTION  # noqa: E402

# 30 patients, one tuning sample each, in model A's order (highest score first): each positive
# sits right below a negative. B is A with every positive moved one place further down: the two
# agree on almost every patient, and B is slightly worse on every positive.
LABELS = np.array([0, 1] * 10 + [0] * 10, dtype=bool)
PROB_A = np.linspace(0.95, 0.05, 30)
PROB_B = np.where(LABELS, np.roll(PROB_A, -1) - 0.001, PROB_A)


def preds(prob, labels=LABELS):
    """A trial's predictions table: one row per patient."""
    n = len(labels)
    return pr.frame(np.arange(n), np.arange(n), labels, prob)


def auroc_trial(tid, metric, low, high, cost, baseline=False):
    """A record scored by AUROC with its own bootstrap interval (from metrics.evaluate)."""
    return trial(tid, metric, cost, baseline=baseline, low=low, high=high)


# A: AUROC 0.725 [0.540, 0.888]; B: 0.675 [0.489, 0.851] (each model's own interval).
A = auroc_trial("A", 0.725, 0.540, 0.888, cost=400.0)
B = auroc_trial("B", 0.675, 0.489, 0.851, cost=100.0)
PAIRED = {"A": preds(PROB_A), "B": preds(PROB_B)}


def test_paired_and_unpaired_rules_disagree_on_correlated_models():
    # Unpaired: B's 0.675 is above A's own lower bound 0.540, so B "is as good" and is cheaper.
    unpaired = recommend([A, B], "ckd_incidence", metric="auroc")
    assert unpaired.record.trial_id == "B" and unpaired.rule == "unpaired"
    # Paired: on the same patients B loses to A in nearly every replicate: A - B = 0.050,
    # 95% CI [0.012, 0.091], which excludes 0. The best, A, is recommended.
    paired = recommend([A, B], "ckd_incidence", PAIRED, metric="auroc")
    assert paired.record.trial_id == "A" and paired.rule == "paired"
    (b,) = paired.comparisons
    assert (b.trial_id, b.rule, b.qualifies) == ("B", "paired", False)
    assert b.diff == pytest.approx(0.05)
    assert 0 < b.low < b.high < 0.1 and b.width < 0.3 * (B.metric_high - B.metric_low)
    assert paired.difference is None  # the record is the best: nothing to report against it


def test_a_cheaper_model_worse_on_a_single_patient_is_indistinguishable():
    # Like A, except its first positive drops below one negative: AUROC 0.720 vs 0.725. The
    # replicates that do not draw both patients differ by 0, so the interval starts at 0.
    one_off = PROB_A.copy()
    one_off[1] = PROB_A[2] - 0.001
    near = auroc_trial("near", 0.720, 0.535, 0.885, cost=100.0)
    both = {"A": preds(PROB_A), "near": preds(one_off)}
    rec = recommend([A, near], "ckd_incidence", both, metric="auroc", margin=0.05)
    assert rec.record.trial_id == "near" and rec.rule == "paired" and rec.choice == "transformer"
    assert rec.difference.diff == pytest.approx(0.005) and rec.difference.low == 0.0
    assert rec.difference.high < 0.05 and rec.saved_factor == pytest.approx(4.0)
    # Without a margin "indistinguishable" holds too, but the interval (0.03 wide on 30
    # patients) is wider than 2 x RESOLUTION: that is no evidence, so the best is kept.
    rec = recommend([A, near], "ckd_incidence", both, metric="auroc")
    assert rec.comparisons[0].verdict == "too wide" and not rec.comparisons[0].qualifies
    assert rec.underpowered and rec.record.trial_id == "A"


def test_a_margin_asks_for_non_inferiority_within_it():
    # A - B: upper end 0.091. Within 0.1: B qualifies; within 0.05 it does not.
    wide = recommend([A, B], "ckd_incidence", PAIRED, metric="auroc", margin=0.1)
    assert wide.record.trial_id == "B" and wide.rule == "paired" and wide.margin == 0.1
    assert wide.difference.high < 0.1 and not wide.underpowered
    assert recommend([A, B], "ckd_incidence", PAIRED, metric="auroc", margin=0.05).record.trial_id == "A"


def test_an_answer_on_a_knife_edge_says_how_many_bootstrap_seeds_agree_with_it():
    # A - B's upper end is 0.0909 with seeds 0 and 1, 0.0917 with seed 2, 0.0945 and 0.0928 with
    # seeds 3 and 4: at margin 0.1 every seed lets B qualify; at 0.092 seeds 0, 1 and 2 do and
    # seeds 3 and 4 keep A.
    clear = recommend([A, B], "ckd_incidence", PAIRED, metric="auroc", margin=0.1, stability_seeds=4)
    assert clear.record.trial_id == "B" and (clear.agreement, clear.agreement_seeds) == (1.0, 5)
    assert ("  bootstrap-seed stability (the same predictions resampled, not a replication): the same answer "
            "under 5 of 5 seeds") in describe(clear, "auroc", "device_seconds")
    edge = recommend([A, B], "ckd_incidence", PAIRED, metric="auroc", margin=0.092, stability_seeds=4)
    assert edge.record.trial_id == "B" and edge.agreement == pytest.approx(0.6)
    assert edge.to_dict()["agreement"] == pytest.approx(0.6)
    assert any("3 of 5 seeds: the answer is on a knife-edge" in line
               for line in describe(edge, "auroc", "device_seconds"))
    # Not asked for, or nothing paired to redraw: no claim.
    assert recommend([A, B], "ckd_incidence", PAIRED, metric="auroc").agreement is None
    assert recommend([A, B], "ckd_incidence", metric="auroc", stability_seeds=4).agreement is None


def test_intervals_wider_than_twice_the_margin_are_underpowered_and_keep_the_best():
    # The interval of A - B is 0.079 wide: at margin 0.03 it cannot separate "as good" from
    # "0.03 worse" (0.079 > 2 x 0.03).
    rec = recommend([A, B], "ckd_incidence", PAIRED, metric="auroc", margin=0.03)
    assert rec.underpowered and rec.record.trial_id == "A" and rec.comparisons[0].verdict == "too wide"
    assert rec.reason == ("1 of 1 cheaper size(s) have paired 95% intervals wider than 2 x 0.03 (width 0.079): "
                          "the split cannot tell them from the best")
    assert rec.saturation is None and not rec.still_improving  # no claim about size either


# 12 patients, 4 positives; three models that rank them very differently.
TINY = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0], dtype=bool)
TINY_PROBS = {
    "small": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.03, 0.01],  # AUPRC 0.582
    "mid": [0.2, 0.9, 0.1, 0.8, 0.3, 0.7, 0.95, 0.4, 0.5, 0.6, 0.05, 0.02],  # 0.678
    "large": [0.5, 0.6, 0.3, 0.9, 0.1, 0.2, 0.8, 0.4, 0.7, 0.35, 0.15, 0.05],  # 0.793
}
TINY_TRIALS = [trial("small", 0.582, 100.0, low=0.167, high=1.0), trial("mid", 0.678, 200.0, low=0.236, high=1.0),
               trial("large", 0.793, 400.0, low=0.320, high=1.0)]


def test_without_a_margin_every_size_qualifying_on_wide_intervals_is_underpowered():
    tiny = {t: preds(p, TINY) for t, p in TINY_PROBS.items()}
    rec = recommend(TINY_TRIALS, "ckd_incidence", tiny)
    # Both cheaper sizes are "indistinguishable" from the best, but only because the intervals
    # are ~0.6-1.1 wide, far over 2 x RESOLUTION: keep the best, say why.
    assert all(c.low <= 0 and c.verdict == "too wide" and not c.qualifies for c in rec.comparisons)
    assert rec.underpowered and rec.record.trial_id == "large" and rec.rule == "paired"
    assert f"2 x {RESOLUTION:g}" in rec.reason
    # Today's unpaired rule would have recommended the smallest.
    assert recommend(TINY_TRIALS, "ckd_incidence").record.trial_id == "small"


def test_lightgbm_as_good_and_cheaper_is_recommended_plainly():
    lgbm = auroc_trial("lgbm", 0.725, 0.540, 0.888, cost=5.0, baseline=True)
    rec = recommend([A, B, lgbm], "ckd_incidence", {**PAIRED, "lgbm": preds(PROB_A)}, metric="auroc")
    assert rec.choice == "baseline" and rec.record.trial_id == "lgbm" and rec.best.trial_id == "A"
    assert rec.rule == "paired" and rec.difference.trial_id == "lgbm" and rec.baseline_indistinguishable
    # A baseline that loses to the best on the same patients stays beside the recommendation.
    worse = auroc_trial("lgbm", 0.675, 0.489, 0.851, cost=5.0, baseline=True)
    rec = recommend([A, B, worse], "ckd_incidence", {**PAIRED, "lgbm": preds(PROB_B)}, metric="auroc")
    assert rec.choice == "transformer" and rec.record.trial_id == "A"
    assert rec.baseline_comparison.low > 0 and not rec.baseline_indistinguishable


def test_trials_without_predictions_fall_back_to_the_unpaired_rule(caplog):
    # B's file is gone: the loader fails, B is judged by the unpaired rule and recommended.
    def load(record):
        if record.trial_id == "B":
            raise FileNotFoundError("runs/B/predictions.parquet")
        return PAIRED[record.trial_id]

    with caplog.at_level(logging.WARNING):
        rec = recommend([A, B], "ckd_incidence", load, metric="auroc")
    assert "ckd_incidence/B: predictions unreadable" in caplog.text
    assert rec.record.trial_id == "B" and rec.rule == "unpaired"
    assert rec.comparisons[0].rule == "unpaired" and rec.comparisons[0].low is None
    assert recommend([A, B], "ckd_incidence", PAIRED, metric="auroc", tolerance=0.06).rule == "paired"
    assert recommend([A, B], "ckd_incidence", {"A": PAIRED["A"]}, metric="auroc", tolerance=0.06).rule == "tolerance"


def test_predictions_on_other_rows_are_not_paired(caplog):
    shifted = preds(PROB_B).assign(row=lambda d: d["row"] + 100)
    with caplog.at_level(logging.WARNING):
        rec = recommend([A, B], "ckd_incidence", {"A": PAIRED["A"], "B": shifted}, metric="auroc")
    assert "rows, patients or labels differ" in caplog.text
    assert rec.comparisons[0].rule == "unpaired"


def test_row_order_does_not_matter():
    backwards = PAIRED["B"].iloc[::-1]
    rec = recommend([A, B], "ckd_incidence", {"A": PAIRED["A"], "B": backwards}, metric="auroc")
    assert rec.comparisons[0].rule == "paired" and rec.comparisons[0].diff == pytest.approx(0.05)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="margin"):
        recommend(LADDER, "ckd_incidence", margin=1.0)
    with pytest.raises(ValueError, match="tolerance"):
        recommend(LADDER, "ckd_incidence", tolerance=2)
    with pytest.raises(TypeError, match="keyword"):
        recommend(LADDER, "ckd_incidence", 0.01)  # the old positional tolerance


@pytest.mark.parametrize("flag, value", [("--margin", "1"), ("--margin", "-0.01"), ("--tolerance", "2")])
def test_recommend_command_refuses_a_margin_outside_0_1_in_one_line(flag, value, capsys):
    from claims_search import cli

    assert cli.main(["recommend", "--experiment", "any", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"claims-search recommend: error: {flag} must be in [0, 1), got {float(value)}"


def test_recommend_command_refuses_negative_stability_seeds_in_one_line(capsys):
    from claims_search import cli

    assert cli.main(["recommend", "--experiment", "any", "--stability-seeds", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "claims-search recommend: error: --stability-seeds must be in 0..100, got -1"


def test_an_underpowered_split_still_shows_a_baseline_that_is_clearly_better():
    # LightGBM ranks every positive first (AUROC 1.0): better than A beyond doubt, even on a
    # split too small to separate the Transformer sizes at margin 0.03.
    perfect = np.where(LABELS, 0.99, 0.01)
    lgbm = auroc_trial("lgbm", 1.0, 1.0, 1.0, cost=5.0, baseline=True)
    rec = recommend([A, B, lgbm], "ckd_incidence", {**PAIRED, "lgbm": preds(perfect)}, metric="auroc", margin=0.03)
    assert rec.underpowered and rec.choice == "baseline" and rec.record.trial_id == "lgbm"
    assert rec.baseline_comparison.high < 0


def test_unusable_predictions_are_judged_unpaired_never_raised(caplog):
    one_class = preds(PROB_A, labels=np.zeros(30, dtype=bool))  # AUROC undefined on it
    with caplog.at_level(logging.WARNING):
        rec = recommend([A, B], "ckd_incidence", {"A": one_class, "B": one_class}, metric="auroc")
        assert rec.rule == "unpaired" and "only one class" in caplog.text
        text = PAIRED["B"].assign(prob=PAIRED["B"]["prob"].map(lambda p: f"{p:.2f}?"))
        rec = recommend([A, B], "ckd_incidence", {"A": PAIRED["A"], "B": text}, metric="auroc")
        assert rec.comparisons[0].rule == "unpaired" and "unusable values" in caplog.text
        rec = recommend([A, B], "ckd_incidence", {"A": PAIRED["A"].drop(columns="prob")}, metric="auroc")
        assert rec.rule == "unpaired" and "lack ['prob']" in caplog.text


def test_a_baseline_clearly_better_than_every_size_is_recommended_even_when_it_costs_more():
    """Measured in bench/rule_error.py: LightGBM far better on held-out, a few device-seconds
    dearer than the cheapest Transformer. Recommending a size that is significantly worse than
    the baseline to save those seconds would be wrong."""
    perfect = np.where(LABELS, 0.99, 0.01)
    lgbm = auroc_trial("lgbm", 1.0, 1.0, 1.0, cost=500.0, baseline=True)  # dearer than A and B
    rec = recommend([A, B, lgbm], "ckd_incidence", {**PAIRED, "lgbm": preds(perfect)}, metric="auroc")
    assert rec.choice == "baseline" and rec.record.trial_id == "lgbm"
    assert rec.baseline_comparison.high < 0
    lines = describe(rec, "auroc", "device_seconds")
    assert lines[0].endswith("better than the best Transformer, at a higher cost, but every size is worse")
    (rule,) = [ln for ln in lines if ln.startswith("  paired rule (")]
    assert rule.endswith("below 0: LightGBM is better")  # the interval's own words, not "contains 0"


def test_a_baseline_that_scores_best_and_costs_less_needs_nothing_more_to_win():
    """Measured in bench/rule_error.py: LightGBM a little above the best Transformer on the tuning
    split and cheaper, but not by a margin the paired interval could certify. It is the best
    model and the cheaper one: it is recommended, whatever the margin."""
    lgbm = auroc_trial("lgbm", 0.73, 0.55, 0.89, cost=5.0, baseline=True)  # A's predictions, scored 0.73
    for margin in (None, 0.01):
        rec = recommend([A, B, lgbm], "ckd_incidence", {**PAIRED, "lgbm": preds(PROB_A)}, metric="auroc",
                        margin=margin)
        assert rec.choice == "baseline" and rec.record.trial_id == "lgbm", margin


# ---- each size on its own evidence (issue: one size's verdict must not depend on another's) ----
ONE_OFF = PROB_A.copy()
ONE_OFF[1] = PROB_A[2] - 0.001  # A with one positive dropped below one negative
NEAR = auroc_trial("near", 0.720, 0.535, 0.885, cost=100.0)
NOISE = 1 - PROB_A  # clearly worse: A's ranking upside down (AUROC 0.275)
NO_SIGNAL = auroc_trial("noise", 0.275, 0.11, 0.46, cost=50.0)
# A with noise on the logit scale: two sizes near A on the point, on intervals ~0.2-0.27 wide.
WOBBLY = {f"wobbly{s}": PROB_A + np.random.default_rng(s).normal(0, 0.25, 30) for s in (0, 1)}
WOBBLY_TRIALS = [auroc_trial("wobbly0", 0.71, 0.5, 0.9, cost=20.0), auroc_trial("wobbly1", 0.72, 0.5, 0.9, cost=30.0)]
ALL = {"A": preds(PROB_A), "near": preds(ONE_OFF), "noise": preds(NOISE), **{k: preds(v) for k, v in WOBBLY.items()}}


def test_a_clearly_worse_size_never_changes_another_sizes_verdict_or_the_pick():
    pair = recommend([A, NEAR], "ckd_incidence", ALL, metric="auroc")
    trio = recommend([A, NEAR, NO_SIGNAL], "ckd_incidence", ALL, metric="auroc")
    noise, near = trio.comparisons  # cheapest first
    assert noise.verdict == "worse" and noise.low > 0  # told apart from the best
    # near: the interval [0, 0.03] contains 0 but is wider than 2 x RESOLUTION: too wide to tell.
    assert pair.comparisons[0].verdict == near.verdict == "too wide"
    assert pair.record.trial_id == trio.record.trial_id == "A"
    assert pair.underpowered and trio.underpowered and "1 of 2 cheaper size(s)" in trio.reason


def test_with_a_margin_a_size_shown_within_it_is_kept_whatever_the_other_sizes_intervals():
    rec = recommend([A, NEAR, *WOBBLY_TRIALS], "ckd_incidence", ALL, metric="auroc", margin=0.05)
    verdicts = {c.trial_id: c.verdict for c in rec.comparisons}
    assert verdicts == {"wobbly0": "too wide", "wobbly1": "too wide", "near": "qualifies"}
    assert rec.record.trial_id == "near" and not rec.underpowered
    assert rec.difference.high < 0.05
    lines = describe(rec, "auroc", "device_seconds")
    # Each cheaper size says why, in its own line.
    assert sum("too wide to show within 0.05 or not" in ln for ln in lines) == 2
    assert sum("upper end < margin 0.05: non-inferior within 0.05" in ln for ln in lines) == 1
