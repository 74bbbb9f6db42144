"""Frontier pictures: a PNG and an HTML that opens offline, one point per trial."""

import re

from claims_search.results.frontier import TrialRecord
from claims_search.results.plots import write_plots
from claims_search.results.recommend import recommend


def trial(tid, metric, cost, width=64, baseline=False, status="complete"):
    return TrialRecord(
        trial_id=tid, task="ckd_incidence", status=status,
        params={} if baseline else {"model": {"width": width, "depth": 2, "heads": 2}},
        n_params=None if baseline else width * 1000, metric=metric,
        metric_low=metric - 0.03, metric_high=metric + 0.03,
        cost=cost, pretrain_cost=cost, finetune_cost=0.0, is_baseline=baseline,
    )


RECORDS = [
    trial("a", 0.30, 20.0, width=32),
    trial("b", 0.38, 80.0, width=64),
    trial("c", 0.39, 300.0, width=128),
    trial("lgbm", 0.33, 2.0, baseline=True),
    trial("p", 0.10, 5.0, status="pruned"),
]


def test_png_and_offline_html_show_trials_frontier_recommendation_and_baseline(tmp_path):
    rec = recommend(RECORDS, "ckd_incidence")
    png, html = write_plots(tmp_path, RECORDS, "ckd_incidence", rec, metric="auprc", cost="device_seconds")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = html.read_text()
    assert len(text) > 1_000_000  # plotly.js embedded: works without a network
    assert not re.search(r'<script[^>]+src="https?:', text)
    for name in ("Pareto frontier", "recommended", "baseline (LightGBM)", "trial b: w64 d2 h2"):
        assert name in text
    assert "trial p:" not in text  # a pruned trial is not plotted as a result


def test_plots_of_a_task_with_no_complete_trial_still_write(tmp_path):
    png, html = write_plots(tmp_path, [trial("p", 0.1, 5.0, status="pruned")], "ckd_incidence")
    assert png.exists() and html.exists()
