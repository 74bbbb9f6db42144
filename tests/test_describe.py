"""What `claims-search recommend` prints, for every kind of outcome, on literal trial records.

Each task's predictions come from one small seeded synthetic tuning split (1,500 patients, one
or two checkups each): every model scores the same samples from the same underlying risk plus
its own errors. Models that share their errors are highly correlated, as sizes of one
architecture are. The records' metrics and intervals are written out as literals (AUPRC with
its patient bootstrap, as the search records it); a test checks they match the predictions.
The three outputs shown in docs/search.md are checked against it word for word.
"""

import re
from pathlib import Path

import numpy as np
import pytest

from claims_search.runs import predictions as pr
from claims_search.commands.recommend import describe
from claims_search.results.frontier import TrialRecord
from claims_search.results.recommend import recommend

DOCS = Path(__file__).resolve().parent.parent / "docs" / "search.md"


def tuning_split(patients=1500, seed=0):
    """Patients with 1-2 samples each: (patient of each sample, true risk, label, 6 error terms)."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(patients), rng.integers(1, 3, patients))
    n = len(subject)
    risk = rng.normal(size=patients)[subject] + 0.5 * rng.normal(size=n)
    label = rng.random(n) < 1 / (1 + np.exp(-(2 * risk - 2.5)))
    return subject, risk, label, rng.normal(size=(6, n))


SUBJECT, RISK, LABEL, E = tuning_split()

# Each model's score on the logit scale: the risk plus errors. Shared errors = correlated models.
SCORES = {
    # ckd_incidence saturates: the mid and large sizes differ only by a little private noise.
    "ckd_incidence": {
        "s": RISK + 0.9 * E[0] + 0.9 * E[1], "m": RISK + 0.9 * E[0] + 0.1 * E[2],
        "l": RISK + 0.9 * E[0] + 0.1 * E[3], "lgbm": RISK + 1.5 * E[4],
    },
    # antihypertensive_start improves with every size: each drops one error term.
    "antihypertensive_start": {
        "s": RISK + 0.5 * E[0] + 0.8 * E[1] + 0.8 * E[2], "m": RISK + 0.5 * E[0] + 0.8 * E[1],
        "l": RISK + 0.5 * E[0], "lgbm": RISK + 1.5 * E[4], "lgbm_good": RISK + 0.5 * E[0] + 0.1 * E[5],
        "lgbm_close": RISK + 0.5 * E[0] + 0.25 * E[5],  # a little worse than l, on the same patients
    },
}


def predictions(record):
    """The loader `recommend` is handed: the record's task and trial pick its scores."""
    score = SCORES[record.task][record.trial_id]
    return pr.frame(np.arange(len(SUBJECT)), SUBJECT, LABEL, 1 / (1 + np.exp(-score)))


def size(tid, task, auprc, low, high, cost, width):
    """One complete Transformer trial; pretraining is 80 % of its cost."""
    return TrialRecord(
        trial_id=tid, task=task, status="complete",
        params={"model": {"width": width, "depth": 4, "heads": 4}}, n_params=48 * width * width,
        metric=auprc, metric_low=low, metric_high=high, cost=cost,
        pretrain_cost=0.8 * cost, finetune_cost=0.2 * cost, predictions=f"runs/{task}/{tid}.parquet",
    )


def lightgbm(tid, task, auprc, low, high, cost=6.0):
    """The LightGBM baseline of a task."""
    return TrialRecord(
        trial_id=tid, task=task, status="complete", params={"n_estimators": 300}, n_params=None,
        metric=auprc, metric_low=low, metric_high=high, cost=cost, pretrain_cost=0.0, finetune_cost=cost,
        is_baseline=True, predictions=f"runs/{task}/{tid}.parquet",
    )


CKD = [
    size("s", "ckd_incidence", 0.4430, 0.392, 0.492, cost=120.0, width=64),
    size("m", "ckd_incidence", 0.5327, 0.481, 0.584, cost=480.0, width=128),
    size("l", "ckd_incidence", 0.5336, 0.483, 0.587, cost=1920.0, width=256),
    lightgbm("lgbm", "ckd_incidence", 0.4279, 0.378, 0.481),
]
HT = "antihypertensive_start"
IMPROVING = [
    size("s", HT, 0.4242, 0.373, 0.475, cost=120.0, width=64),
    size("m", HT, 0.5024, 0.449, 0.552, cost=480.0, width=128),
    size("l", HT, 0.6362, 0.585, 0.687, cost=1920.0, width=256),
    lightgbm("lgbm", HT, 0.4279, 0.378, 0.481),
]
GOOD_BASELINE = IMPROVING[:3] + [lightgbm("lgbm_good", HT, 0.6322, 0.579, 0.683)]
CLOSE_BASELINE = IMPROVING[:3] + [lightgbm("lgbm_close", HT, 0.6205, 0.567, 0.669)]


def printed(records, task, **kw):
    """The lines `claims-search recommend` prints for ``task`` (with its bootstrap seeds)."""
    from claims_search.results.summary import SummarySettings

    kw.setdefault("stability_seeds", SummarySettings().stability_seeds)
    rec = recommend(records, task, predictions, **kw)
    return rec, describe(rec, "auprc", "device_seconds")


def test_the_literal_records_are_what_the_predictions_give():
    from claims_search.metrics import bootstrap_replicates, percentile_interval

    for r in CKD + IMPROVING + GOOD_BASELINE + CLOSE_BASELINE:
        p = predictions(r)
        points, reps = bootstrap_replicates(p["label"], [p["prob"]], p["subject_idx"], "auprc")
        low, high = percentile_interval(reps[0])
        assert (r.metric, r.metric_low, r.metric_high) == pytest.approx((points[0], low, high), abs=6e-4)


def test_a_task_that_saturates():
    rec, lines = printed(CKD, "ckd_incidence")
    assert rec.record.trial_id == "m" and rec.saturation.trial_id == "m" and not rec.still_improving
    assert lines[0] == "ckd_incidence: recommended w128 d4 h4, 0.79M params (trial m), the cheapest size that qualifies"
    assert lines[3] == "  cheaper sizes, each on its own evidence:"
    assert lines[4].startswith("    paired rule (1500 patients): best - w64 d4 h4 = 0.0906, 95% CI [")
    assert lines[4].endswith("excludes 0: worse than the best")
    assert lines[5].startswith("    paired rule (1500 patients): best - w128 d4 h4 = 0.0008, 95% CI [")
    assert lines[5].endswith("contains 0, width <= 2 x 0.01: indistinguishable from the best")
    # Saturation is a tuning verdict, and says so when nothing on held-out bears it out.
    assert "  on tuning, saturates at w128 d4 h4 (cost 480): no larger trial is better under the paired rule" in lines
    assert "    held-out: not confirmed (no held-out scores of this size and the best); a tuning verdict only" in lines
    assert lines[-1].startswith("  baseline (LightGBM) AUPRC 0.4279") and "worse than the best Transformer" in lines[-1]
    assert not any("still improving" in line or "non-inferior" in line for line in lines)


def test_a_task_that_still_improves():
    rec, lines = printed(IMPROVING, HT)
    assert rec.record.trial_id == rec.best.trial_id == "l" and rec.saturation is None and rec.still_improving
    assert lines[0] == f"{HT}: recommended w256 d4 h4, 3.15M params (trial l), the best trial"
    assert [ln.endswith("excludes 0: worse than the best") for ln in lines[3:5]] == [True, True]
    assert ("  still improving at the largest size tried (w256 d4 h4): it is better than every smaller size "
            "under the paired rule") in lines
    assert not any("saturates" in line or "saves" in line for line in lines)


def test_lightgbm_as_good_as_the_best_transformer_and_cheaper_is_the_recommendation():
    rec, lines = printed(GOOD_BASELINE, HT)
    assert rec.choice == "baseline" and rec.record.trial_id == "lgbm_good"
    assert lines[0] == (f"{HT}: recommended LightGBM (trial lgbm_good): indistinguishable from the best "
                        "Transformer, at a lower cost")
    assert lines[3].startswith("  paired rule (1500 patients): best - LightGBM = 0.0040")
    assert lines[3].endswith("contains 0, width <= 2 x 0.01: indistinguishable from the best")
    assert "more pretraining" not in "\n".join(lines)


def test_lightgbm_within_the_margin_but_significantly_worse_is_called_just_that():
    # best - LightGBM = 0.0157 [0.0023, 0.0315]: within the margin 0.035, and worse beyond doubt.
    rec, lines = printed(CLOSE_BASELINE, HT, margin=0.035)
    c = rec.difference
    assert rec.choice == "baseline" and 0 < c.low and c.high < 0.035
    assert lines[0] == (f"{HT}: recommended LightGBM (trial lgbm_close): within 0.035 of the best Transformer "
                        f"(best - LightGBM = {c.diff:.4f} [{c.low:.4f}, {c.high:.4f}]), though significantly worse, "
                        "at a lower cost")
    assert "at least as good" not in "\n".join(lines)


def test_non_inferior_is_said_only_with_a_margin():
    for records, task in ((CKD, "ckd_incidence"), (IMPROVING, HT), (GOOD_BASELINE, HT)):
        assert "non-inferior" not in "\n".join(printed(records, task)[1])
    assert "non-inferior within 0.02" in "\n".join(printed(CKD, "ckd_incidence", margin=0.02)[1])


def held_out(rec_auprc, best_auprc, recommended="m", best="l"):
    """The held-out confirmation as the search records it (aggregates only)."""
    def role(trial, x):
        return {"trial_id": trial, "metrics": {"auprc": x, "auprc_low": x - 0.05, "auprc_high": x + 0.05, "n": 900}}
    return {"recommended": role(recommended, rec_auprc), "best": role(best, best_auprc)}


def test_saturation_says_whether_held_out_bears_it_out():
    rec, _ = printed(CKD, "ckd_incidence")
    agrees = describe(rec, "auprc", "device_seconds", held_out(0.531, 0.536))
    assert "    held-out agrees: AUPRC 0.531 against the best's 0.536 (within 0.01)" in agrees
    disagrees = describe(rec, "auprc", "device_seconds", held_out(0.620, 0.651))
    assert "    held-out does NOT confirm it: AUPRC 0.620 against the best's 0.651 (more than 0.01 below)" in disagrees
    # The held-out figures close the description, as the search printed them.
    assert disagrees[-2:] == ["    recommended AUPRC 0.620 [0.570, 0.670]  (n=900, trial m)",
                              "    best        AUPRC 0.651 [0.601, 0.701]  (n=900, trial l)"]
    assert describe(rec, "auprc", "device_seconds", {})[-1] == (
        "  held-out confirmation: none recorded (the search stopped before it, or its models were lost)")


def test_a_margin_is_named_in_the_rule_line():
    rec, lines = printed(CKD, "ckd_incidence", margin=0.02)
    assert rec.record.trial_id == "m" and rec.margin == 0.02
    assert re.fullmatch(r"    paired rule \(1500 patients\): best - w128 d4 h4 = 0\.0008, .*: upper end < margin 0\.02: "
                        r"non-inferior within 0\.02", lines[5])


def test_an_underpowered_split_keeps_the_best_and_says_why():
    # At margin 0.005 the mid size's interval (0.0129 wide) cannot tell it from the best: no
    # recommendation of a cheaper size, no saturation claim. The small size is told apart.
    rec, lines = printed(CKD, "ckd_incidence", margin=0.005)
    assert rec.underpowered and rec.record.trial_id == "l"
    assert lines[0] == ("ckd_incidence: the tuning split is too small to tell the cheaper sizes from the best; "
                        "keeping the best trial w256 d4 h4, 3.15M params (trial l), not the smallest by default")
    assert lines[2] == ("  why: 1 of 2 cheaper size(s) have paired 95% intervals wider than 2 x 0.005 (width 0.0129): "
                        "the split cannot tell them from the best")
    assert lines[4].endswith("lower end >= margin 0.005: worse by more than 0.005")
    assert lines[5].endswith("width > 2 x margin 0.005: too wide to show within 0.005 or not")
    assert not any("saturates" in line or "still improving" in line for line in lines)


def test_records_without_predictions_use_the_unpaired_rule_and_say_so():
    rec = recommend(CKD, "ckd_incidence")  # no predictions handed: old records
    lines = describe(rec, "auprc", "device_seconds")
    assert rec.rule == "unpaired" and rec.record.trial_id == "m"
    assert lines[4:6] == [
        "    w64 d4 h4: unpaired rule (no per-sample predictions): 0.4430 < the best's 95% lower end 0.4830: "
        "does not qualify",
        "    w128 d4 h4: unpaired rule (no per-sample predictions): 0.5327 >= the best's 95% lower end 0.4830: "
        "qualifies"]
    assert ("  on tuning, saturates at w128 d4 h4 (cost 480): no larger trial is better by 0.005 or more per "
            "doubling of cost (no per-sample predictions)") in lines


def test_the_cheapest_being_the_best_is_never_called_a_win_for_size():
    cheapest_best = [CKD[1], size("big", "ckd_incidence", 0.50, 0.45, 0.55, cost=1920.0, width=256)]
    rec = recommend(cheapest_best, "ckd_incidence")
    lines = describe(rec, "auprc", "device_seconds")
    assert rec.record.trial_id == "m" == rec.largest.trial_id
    assert "  it is also the cheapest size tried" in lines
    assert not any("bigger" in line or "still improving" in line for line in lines)


@pytest.mark.parametrize("records, task", [(GOOD_BASELINE, HT), (CKD, "ckd_incidence"), (IMPROVING, HT)])
def test_docs_show_the_real_output(records, task):
    _, lines = printed(records, task)
    assert "\n".join(lines) in DOCS.read_text()
