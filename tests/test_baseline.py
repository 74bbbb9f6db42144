"""The LightGBM baseline (claims_search.baseline): recent-window code counts -> trees, per task."""

import json
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from claims_search.cache import Cache, Settings, write_cache
from claims_search.errors import ClaimsSearchError
from claims_search.labels import load_task
from claims_search.meds import write_dataset

CHECKUP = datetime(2024, 6, 1)

# Two kinds of patient with the same codes, the same counts and the same checkup; only *when*
# the hypertension diagnosis came differs. The synthetic world's guideline rule: a recent
# diagnosis -> an antihypertensive within 90 days of the checkup.
#                 days before the checkup, code
RECENT_HT = [(400, "DX//ICD10//E11"), (20, "DX//ICD10//I10"), (0, "HC//SPECIFIC_CHECKUP")]
OLD_HT = [(400, "DX//ICD10//I10"), (20, "DX//ICD10//E11"), (0, "HC//SPECIFIC_CHECKUP")]
STARTS_DRUG = [(-30, "DRUG//ATC//C09CA01")]  # 30 days *after* the checkup


def _patient(subject_id: int, chart, noise: int) -> list[dict]:
    rows = [{"subject_id": subject_id, "time": None, "code": "GENDER//F"},
            {"subject_id": subject_id, "time": datetime(1965, 1, 1), "code": "MEDS_BIRTH"}]
    # A few background visits so histories are not identical.
    for k in range(noise):
        rows.append({"subject_id": subject_id, "time": CHECKUP - timedelta(days=700 - 37 * k),
                     "code": "DX//ICD10//J06"})
    for days_before, code in chart:
        rows.append({"subject_id": subject_id, "time": CHECKUP - timedelta(days=days_before), "code": code})
    return sorted(rows, key=lambda r: (r["time"] is not None, r["time"] or datetime.min))


@pytest.fixture(scope="module")
def recency_cache(tmp_path_factory):
    """240 patients: recent diagnosis -> drug for 90 % of them, old diagnosis -> drug for 10 %."""
    rng = np.random.default_rng(0)
    rows, splits = [], {}
    for sid in range(240):
        recent = sid % 2 == 0
        treated = rng.random() < (0.9 if recent else 0.1)
        chart = (RECENT_HT if recent else OLD_HT) + (STARTS_DRUG if treated else [])
        rows += _patient(sid, chart, noise=int(rng.integers(0, 4)))
        splits[sid] = "train" if sid < 160 else "tuning" if sid < 200 else "held_out"
    root = tmp_path_factory.mktemp("meds")
    write_dataset(root, {"train/0": pl.DataFrame(rows)}, splits)
    out = tmp_path_factory.mktemp("prep") / "prepared"
    write_cache(root, out, [load_task("antihypertensive_start")], Settings(max_len=64, min_count=1))
    return out


def test_recency_features_win_where_only_recency_separates(recency_cache, tmp_path):
    from claims_search.baseline import baseline

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
    from claims_search.baseline import WINDOWS, count_features

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
    from claims_search.baseline import baseline

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
