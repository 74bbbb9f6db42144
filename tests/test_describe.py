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

from claims_search import predictions as pr
from claims_search.commands.recommend import describe
from claims_search.frontier import TrialRecord
from claims_search.recommend import recommend

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
    size("s", "ckd_incidence", 0.4430, 0.395, 0.496, cost=120.0, width=64),
    size("m", "ckd_incidence", 0.5327, 0.484, 0.592, cost=480.0, width=128),
    size("l", "ckd_incidence", 0.5336, 0.485, 0.592, cost=1920.0, width=256),
    lightgbm("lgbm", "ckd_incidence", 0.4279, 0.377, 0.481),
]
HT = "antihypertensive_start"
IMPROVING = [
    size("s", HT, 0.4242, 0.378, 0.478, cost=120.0, width=64),
    size("m", HT, 0.5024, 0.453, 0.555, cost=480.0, width=128),
    size("l", HT, 0.6362, 0.588, 0.690, cost=1920.0, width=256),
    lightgbm("lgbm", HT, 0.4279, 0.377, 0.481),
]
GOOD_BASELINE = IMPROVING[:3] + [lightgbm("lgbm_good", HT, 0.6322, 0.585, 0.688)]


def printed(records, task, **kw):
    """The lines `claims-search recommend` prints for ``task`` (with its bootstrap seeds)."""
    from claims_search.summary import SummarySettings

    kw.setdefault("stability_seeds", SummarySettings().stability_seeds)
    rec = recommend(records, task, predictions, **kw)
    return rec, describe(rec, "auprc", "device_seconds")


def test_the_literal_records_are_what_the_predictions_give():
    from claims_search.metrics import bootstrap_replicates, percentile_interval

    for r in CKD + IMPROVING + GOOD_BASELINE:
        p = predictions(r)
        points, reps = bootstrap_replicates(p["label"], [p["prob"]], p["subject_idx"], "auprc")
        low, high = percentile_interval(reps[0])
        assert (r.metric, r.metric_low, r.metric_high) == pytest.approx((points[0], low, high), abs=6e-4)


def test_a_task_that_saturates():
    rec, lines = printed(CKD, "ckd_incidence")
    assert rec.record.trial_id == "m" and rec.saturation.trial_id == "m" and not rec.still_improving
    assert lines[0] == "ckd_incidence: recommended w128 d4 h4, 0.79M params (trial m)"
    assert lines[2].startswith("  paired rule (1500 patients): best - recommended = 0.0008, 95% CI [")
    assert lines[2].endswith("contains 0")
    assert "  saturates at w128 d4 h4 (cost 480): no larger trial is better under the paired rule" in lines
    assert lines[-1].startswith("  baseline (LightGBM) AUPRC 0.4279") and "worse than the best Transformer" in lines[-1]
    assert not any("still improving" in line or "bigger did help" in line for line in lines)


def test_a_task_that_still_improves():
    rec, lines = printed(IMPROVING, HT)
    assert rec.record.trial_id == rec.best.trial_id == "l" and rec.saturation is None and rec.still_improving
    assert lines[0] == f"{HT}: recommended w256 d4 h4, 3.15M params (trial l), the best trial"
    assert lines[2].startswith("  no cheaper size qualifies under the paired rule; closest w128 d4 h4")
    assert ("  still improving at the largest size tried (w256 d4 h4): it is better than every smaller size "
            "under the paired rule") in lines
    assert not any("saturates" in line or "saves" in line for line in lines)


def test_lightgbm_as_good_as_the_best_transformer_and_cheaper_is_the_recommendation():
    rec, lines = printed(GOOD_BASELINE, HT)
    assert rec.choice == "baseline" and rec.record.trial_id == "lgbm_good"
    assert lines[0] == (f"{HT}: recommended LightGBM (trial lgbm_good): at least as good as the best "
                        "Transformer, at a lower cost")
    assert lines[3].startswith("  paired rule (1500 patients): best - LightGBM = 0.0040") and lines[3].endswith("contains 0")
    assert "more pretraining" not in "\n".join(lines)


def test_a_margin_is_named_in_the_rule_line():
    rec, lines = printed(CKD, "ckd_incidence", margin=0.02)
    assert rec.record.trial_id == "m" and rec.margin == 0.02
    assert re.fullmatch(r"  paired rule \(1500 patients\): best - recommended = 0\.0008, .*: upper end < margin 0\.02",
                        lines[2])


def test_an_underpowered_split_keeps_the_best_and_says_why():
    # At margin 0.005 the paired intervals (about 0.05 wide for the small size) cannot tell
    # sizes apart: no recommendation of the smallest, no saturation claim.
    rec, lines = printed(CKD, "ckd_incidence", margin=0.005)
    assert rec.underpowered and rec.record.trial_id == "l"
    assert re.fullmatch(r"ckd_incidence: the tuning split is too small to tell these sizes apart at margin 0\.005 "
                        r"\(interval width 0\.\d{4}\); not recommending the smallest by default", lines[0])
    assert lines[1] == "  keeping the best trial w256 d4 h4, 3.15M params (trial l)"
    assert lines[3].startswith("  why: median paired 95% interval width")
    assert not any("saturates" in line or "still improving" in line for line in lines)


def test_records_without_predictions_use_the_unpaired_rule_and_say_so():
    rec = recommend(CKD, "ckd_incidence")  # no predictions handed: old records
    lines = describe(rec, "auprc", "device_seconds")
    assert rec.rule == "unpaired" and rec.record.trial_id == "m"
    assert lines[2] == "  unpaired rule (no per-sample predictions): within the best's 95% interval: >= 0.4850"
    assert lines[5] == ("  saturates at w128 d4 h4 (cost 480): no larger trial is better by 0.005 or more per "
                        "doubling of cost (no per-sample predictions)")


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
