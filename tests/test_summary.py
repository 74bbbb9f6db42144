"""A finished search's per-task summary (claims_search.results.summary), and what Tracker.publish
records of it: trial predictions read from their files, a lost file only a warning."""

import json
import logging

import numpy as np
import pytest

from claims_search.runs import predictions as pr
from claims_search.results.frontier import TrialRecord
from claims_search.results.summary import SummarySettings, load_predictions, summarize
from claims_search.tracking.tracker import Tracker

# 30 patients in model "big"'s order: each positive right below a negative. "small" moves every
# positive one place down: slightly but consistently worse on the same patients.
LABELS = np.array([0, 1] * 10 + [0] * 10, dtype=bool)
BIG = np.linspace(0.95, 0.05, 30)
SMALL = np.where(LABELS, np.roll(BIG, -1) - 0.001, BIG)


def trial(tid, auroc, low, high, cost, predictions=None, status="complete", baseline=False):
    """One ckd_incidence record scored by AUROC, with its own bootstrap interval."""
    return TrialRecord(
        trial_id=tid, task="ckd_incidence", status=status,
        params={} if baseline else {"model": {"width": 64 if tid == "small" else 256, "depth": 2, "heads": 2}},
        n_params=None if baseline else 250_000 if tid == "small" else 4_000_000, metric=auroc, metric_low=low, metric_high=high, cost=cost,
        pretrain_cost=cost, finetune_cost=0.0, is_baseline=baseline, predictions=predictions,
    )


@pytest.fixture
def records(tmp_path):
    """Two sizes whose predictions are kept as files, and one pruned trial."""
    def kept(name, prob):
        return pr.write(pr.frame(np.arange(30), np.arange(30), LABELS, prob), tmp_path / "runs" / f"{name}.parquet")

    return [
        trial("big", 0.725, 0.540, 0.888, 400.0, kept("big", BIG)),
        trial("small", 0.675, 0.489, 0.851, 100.0, kept("small", SMALL)),
        trial("stopped", None, None, None, None, status="pruned"),
    ]


SETTINGS = SummarySettings(metric="auroc", cost="device_seconds", n_boot=500)


def test_summary_reads_the_kept_predictions_and_writes_the_artifacts(records, tmp_path):
    out = summarize(records, None, SETTINGS, tmp_path / "artifacts")
    s = out["ckd_incidence"]
    # Paired, "small" is consistently worse on the same patients: the best is recommended.
    assert s.recommendation.rule == "paired" and s.recommendation.record.trial_id == "big"
    assert [r.trial_id for r in s.front] == ["small", "big"]
    assert (s.n_trials, s.n_failed, s.n_pruned) == (3, 0, 1)
    assert s.hypervolume > 0 and s.reference == (0.0, 4000.0)
    files = {p.name for p in s.artifacts.iterdir()}
    assert {"frontier.csv", "frontier.json", "recommendation.json", "frontier.png", "frontier.html"} <= files
    saved = json.loads((s.artifacts / "recommendation.json").read_text())
    assert saved["rule"] == "paired" and saved["comparisons"][0]["trial_id"] == "small"
    # Aggregates only: no patient-level values travel in the artifacts.
    assert "subject_idx" not in (s.artifacts / "recommendation.json").read_text()


def test_a_lost_predictions_file_is_a_warning_and_the_unpaired_rule(records, tmp_path, caplog):
    (tmp_path / "runs" / "small.parquet").unlink()
    with caplog.at_level(logging.WARNING):
        rec = summarize(records, None, SETTINGS)["ckd_incidence"].recommendation
    assert "ckd_incidence/small" in caplog.text and "judged by the unpaired rule" in caplog.text
    assert rec.rule == "unpaired" and rec.record.trial_id == "small"  # today's rule: 0.675 >= 0.540
    assert load_predictions(records[2]) is None  # no file at all: nothing to read, no warning needed


def test_without_predictions_every_task_is_judged_unpaired(records):
    rec = summarize(records, None, SETTINGS, predictions=None)["ckd_incidence"].recommendation
    assert rec.rule == "unpaired"


def test_publish_records_what_it_is_handed(records, tmp_path):
    summaries = summarize(records, None, SummarySettings(metric="auroc", margin=0.1, n_boot=500), tmp_path / "art")
    tracker = Tracker("http://127.0.0.1:9", "never-sent", tmp_path / "outbox", metric="auroc")
    recs = tracker.publish(summaries, sync=False)
    assert recs["ckd_incidence"].record.trial_id == "small"  # within margin 0.1 of the best
    entries = {e["key"]: e["payload"] for e in tracker.pending()}
    assert entries["settings"] == {"tolerance": None, "margin": 0.1, "min_gain_per_doubling": 0.005, "reference": None,
                                   "stability_seeds": 4, "prices": None}
    s = entries["summary/ckd_incidence"]
    assert (s["recommended"], s["rule"], s["choice"], s["underpowered"]) == ("small", "paired", "transformer", False)
    assert s["difference"]["trial_id"] == "small" and s["difference"]["high"] < 0.1
    assert s["pareto"] == ["small", "big"] and s["artifacts"] == str(tmp_path / "art" / "ckd_incidence")


def test_settings_come_from_a_space():
    from claims_search.search.space import load_space

    space = load_space("smoke")
    s = SummarySettings.from_space(space)
    assert (s.metric, s.cost, s.tolerance) == (space.metric, space.cost, space.recommend.tolerance)
    assert s.margin == getattr(space.recommend, "margin", None)


def test_recommend_command_reads_each_trial_s_kept_predictions(records, tmp_path, capsys):
    pytest.importorskip("mlflow")
    from claims_search import cli

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "paired", tmp_path / "outbox", metric="auroc")
    for r in records:
        tracker.log_trial(r, sync=False)
    tracker.publish(summarize(tracker.records(), None, SETTINGS, tmp_path / "outbox" / "artifacts"))
    assert tracker.pending() == []
    assert cli.main(["recommend", "--experiment", "paired", "--tracking-uri", uri]) == 0
    default = capsys.readouterr().out
    assert cli.main(["recommend", "--experiment", "paired", "--tracking-uri", uri, "--margin", "0.1"]) == 0
    within = capsys.readouterr().out
    assert default.startswith("ckd_incidence: recommended w256 d2 h2, 4.00M params (trial big), the best trial")
    assert within.startswith("ckd_incidence: recommended w64 d2 h2, 0.25M params (trial small)")
    assert "paired rule (30 patients): best - w64 d2 h2 = 0.0500" in within and "upper end < margin 0.1" in within


def test_a_frontier_mixing_device_kinds_says_so():
    import dataclasses

    from claims_search.results.plots import mixed_devices_note
    from claims_search.search.driver import device_kind

    assert device_kind("cpu (x86_64, 2 threads)") == "cpu"
    assert device_kind("NVIDIA H200 + NVIDIA H200") == "NVIDIA H200"
    cpu = TrialRecord("a", "t", "complete", {}, 1, 0.5, 0.4, 0.6, 10.0, 5.0, 5.0, tags={"device": "cpu"})
    gpu = dataclasses.replace(cpu, trial_id="b", tags={"device": "NVIDIA H200"})
    assert mixed_devices_note([cpu]) == ""
    assert mixed_devices_note([cpu, gpu]) == " (mixed devices: NVIDIA H200, cpu; costs not comparable)"


def test_costs_measured_on_different_devices_are_priced_onto_one_axis():
    """100 H100-seconds and 300 CPU-core-seconds are not the same unit: priced per kind (an
    H100-hour 4 GPU-hour equivalents, a core-hour 0.05), LightGBM is the far cheaper model and
    joins the frontier, which raw seconds would have denied it."""
    import dataclasses

    from claims_search.commands.recommend import describe
    from claims_search.results.frontier import pareto_front
    from claims_search.results.plots import mixed_devices_note
    from claims_search.results.prices import UNIT, on_one_axis, price_of

    gpu = dataclasses.replace(trial("big", 0.725, 0.540, 0.888, 100.0), tags={"device": "NVIDIA H100 80GB HBM3"})
    cpu = dataclasses.replace(trial("lgbm", 0.70, 0.52, 0.86, 300.0, baseline=True), tags={"device": "cpu"})
    assert [r.trial_id for r in pareto_front([gpu, cpu], "ckd_incidence")] == ["big"]  # raw: 100 < 300
    priced, unit = on_one_axis([gpu, cpu], "ckd_incidence", "device_seconds", {"H100": 4.0, "cpu": 0.05})
    assert unit == UNIT and price_of("NVIDIA H100 80GB HBM3", {"H100": 4.0, "H": 9.0}) == 4.0  # the longest key
    assert [r.cost for r in priced] == pytest.approx([100 * 4.0 / 3600, 300 * 0.05 / 3600])
    assert [r.trial_id for r in pareto_front(priced, "ckd_incidence")] == ["lgbm", "big"]
    # One kind, or a measure that is not device-seconds: left as they are.
    assert on_one_axis([gpu], "ckd_incidence", "device_seconds")[1] == "device_seconds"
    assert on_one_axis([gpu, cpu], "ckd_incidence", "flops")[0] == [gpu, cpu]
    # The summary prices before it compares, and names the unit where costs are shown.
    out = summarize([gpu, cpu], None, SummarySettings(metric="auroc"), predictions=None)["ckd_incidence"]
    assert [r.trial_id for r in out.front] == ["lgbm", "big"]
    assert out.recommendation.cost_unit == UNIT
    assert "gpu_hour_equivalents" in describe(out.recommendation, "auroc", "device_seconds")[1]
    assert mixed_devices_note([gpu, cpu], UNIT) == " (devices priced per kind: NVIDIA H100 80GB HBM3, cpu)"
