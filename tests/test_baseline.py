"""The LightGBM baseline (claims_search.runs.baseline): recent-window code counts -> trees, per task."""

import json
from datetime import datetime, timedelta

import numpy as np
import pytest

from claims_search.data.cache import Cache
from claims_search.errors import ClaimsSearchError
from tests.conftest import CHECKUP



def test_recency_features_win_where_only_recency_separates(recency_cache, tmp_path):
    from claims_search.runs.baseline import baseline

    result = baseline(recency_cache, "antihypertensive_start", tmp_path / "run",
                      eval_splits=("tuning", "held_out"), num_threads=1, n_boot=100)
    assert set(result.metrics) == {"tuning", "held_out"}
    # Whole-history counts are identical between the groups: only a window can separate them.
    assert result.metrics["tuning"]["auroc"] > 0.8
    share = result.info["gain_share"]
    recent = share["365d"] + share["91d"] + share["30d"]
    assert recent > 0.8 and recent > share["all"]
    assert any(f.endswith("DX//ICD10//I10") and not f.startswith("all:") for f in result.info["top_features"])

    assert result.cost.flops is None  # trees: no meaningful FLOP count
    assert result.cost.wall_s > 0 and result.cost.tokens > 0 and result.cost.n_params > 0

    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["metrics"]["tuning"]["n"] == 40
    assert saved["cost"]["flops"] is None
    assert "subject" not in (tmp_path / "run" / "result.json").read_text()  # aggregates only


def test_count_features_use_only_events_at_or_before_the_prediction_time(recency_cache):
    from claims_search.runs.baseline import WINDOWS, count_features

    cache = Cache.open(recency_cache)
    labels = cache.labels("antihypertensive_start", "train").head(4)
    X, names = count_features(cache, labels)
    assert X.shape == (4, len(WINDOWS) * cache.vocab_size + 4) and len(names) == X.shape[1]
    col = {n: i for i, n in enumerate(names)}
    drug = "DRUG//ATC//C09CA01"
    if f"all:{drug}" in col:  # the drug comes after the checkup: never counted
        assert X[:, col[f"all:{drug}"]].sum() == 0
    i10 = X[:, col["all:DX//ICD10//I10"]].toarray().ravel()
    i10_30d = X[:, col["30d:DX//ICD10//I10"]].toarray().ravel()
    assert (i10 == 1).all()
    # Even rows are "recent" patients (diagnosis 20 days before), odd rows "old" ones.
    subjects = cache.subjects["subject_id"].to_numpy()[labels["subject_idx"]]
    assert list(i10_30d) == [1.0 if s % 2 == 0 else 0.0 for s in subjects]
    age = X[:, col["age_years"]].toarray().ravel()
    assert np.allclose(age, 59.4, atol=0.1)


def test_unknown_task_fails_before_training(recency_cache, tmp_path):
    from claims_search.runs.baseline import baseline

    with pytest.raises(ClaimsSearchError, match="ckd_incidence"):
        baseline(recency_cache, "ckd_incidence", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_prints_metrics_with_intervals_and_cost(recency_cache, tmp_path, capsys):
    from claims_search.cli import main

    rc = main(["baseline", "--data", str(recency_cache), "--task", "antihypertensive_start",
               "--out", str(tmp_path / "cli"), "--threads", "1", "--bootstrap", "50"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "tuning" in out and "AUROC" in out and "[" in out and "flops n/a" in out
    assert (tmp_path / "cli" / "result.json").exists() and (tmp_path / "cli" / "model.txt").exists()
