"""The complexity family (``synth --complexity-tasks``): labels agree with ACES through
`claims-search prepare`, turning it on changes nothing else, and the knob moves the planted risk
away from what windowed counts can express.

One dataset of 1,500 patients (3 shards) with the family, one without, per module.
"""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from claims_search.cli import main
from claims_search.data.synth import generate
from claims_search.data.synth.complexity import OUTCOME_CODES, SEQ_DAYS, TASKS

FAMILY_DIR = Path(__file__).resolve().parents[1] / "claims_search" / "data" / "tasks" / "complexity"


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("complexity")
    on = generate(root / "on", 1500, seed=7, workers=1, shard_size=500, complexity=True)
    generate(root / "off", 1500, seed=7, workers=1, shard_size=500)
    return root / "on", root / "off", on


def _events(root: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in sorted(root.glob("data/*/*.parquet"))])


def test_every_family_task_has_a_task_file_outcome_code_and_oracle(both):
    on, _, summary = both
    assert sorted(p.stem for p in FAMILY_DIR.glob("*.yaml")) == list(TASKS)
    codes = set(pl.read_parquet(on / "metadata" / "codes.parquet")["code"])
    used = set(_events(on)["code"].unique())
    for task in TASKS:
        assert OUTCOME_CODES[task] in codes and OUTCOME_CODES[task] in used, task
        assert OUTCOME_CODES[task] in (FAMILY_DIR / f"{task}.yaml").read_text()
        oracle = pl.read_parquet(on / "oracle" / f"{task}.parquet")
        assert oracle.height == summary["tasks"][task]["samples"] > 1000
        # Calibrated on the pilot for a 15 % prevalence and an oracle AUROC of 0.85.
        assert 0.10 < oracle["label"].mean() < 0.22, task
        assert 0.78 < summary["tasks"][task]["oracle_auroc"] < 0.92, task
    meta = json.loads((on / "metadata" / "dataset.json").read_text())["claims_search_synth"]
    assert meta["complexity_tasks"] is True and meta["tasks"][2:] == list(TASKS)


def test_prepare_labels_of_the_family_equal_the_generators_draws(both, tmp_path):
    """ACES (through `claims-search prepare --task FILE --only-tasks`) finds exactly the
    oracle's prediction times, with the labels the generator drew."""
    on, _, _ = both
    tasks = [arg for t in TASKS for arg in ("--task", str(FAMILY_DIR / f"{t}.yaml"))]
    assert main(["prepare", "--meds", str(on), "--out", str(tmp_path / "prep"), "--only-tasks",
                 "--workers", "1", *tasks]) == 0
    for task in TASKS:
        aces = pl.read_parquet(tmp_path / "prep" / "labels" / f"{task}.parquet")
        oracle = pl.read_parquet(on / "oracle" / f"{task}.parquet")
        joined = aces.join(oracle, on=["subject_id", "prediction_time"], how="full",
                           suffix="_oracle")
        assert joined["label"].null_count() == 0, f"{task}: oracle rows ACES did not produce"
        assert joined["label_oracle"].null_count() == 0, f"{task}: ACES rows without an oracle row"
        assert (joined["label"] == joined["label_oracle"]).all(), task
        assert (joined["true_prob"] == joined["probability"]).all(), task


def test_turning_the_family_on_changes_nothing_else(both):
    on, off, _ = both
    family = list(OUTCOME_CODES.values())
    a = _events(on).filter(~pl.col("code").is_in(family))
    assert a.equals(_events(off))
    for task in ("ckd_incidence", "antihypertensive_start"):
        assert pl.read_parquet(on / "oracle" / f"{task}.parquet").equals(
            pl.read_parquet(off / "oracle" / f"{task}.parquet"))
    codes_on = pl.read_parquet(on / "metadata" / "codes.parquet")
    codes_off = pl.read_parquet(off / "metadata" / "codes.parquet")
    assert codes_on.head(codes_off.height).equals(codes_off)
    assert codes_on["code"].tail(len(family)).to_list() == family
    assert (on / "metadata" / "subject_splits.parquet").read_bytes() == \
        (off / "metadata" / "subject_splits.parquet").read_bytes()


def test_the_knob_moves_the_risk_away_from_windowed_counts(both):
    """How much of each task's true logit a linear model on log counts of every diagnosis in the
    last 365 days explains: all of it at k = 0 (the logit is such a model), less at each k."""
    on, _, _ = both
    ev = _events(on).filter(pl.col("code").str.starts_with("DX//ICD10//"))
    r2 = []
    for task in TASKS:
        oracle = pl.read_parquet(on / "oracle" / f"{task}.parquet")
        recent = (oracle.select("subject_id", "prediction_time").join(ev, on="subject_id")
                  .filter((pl.col("time") <= pl.col("prediction_time"))
                          & (pl.col("time") > pl.col("prediction_time") - pl.duration(days=365)))
                  .pivot(on="code", index=["subject_id", "prediction_time"], values="time",
                         aggregate_function="len"))
        x = oracle.join(recent, on=["subject_id", "prediction_time"], how="left").fill_null(0)
        X = np.log1p(x.drop(oracle.columns).to_numpy().astype(float))
        X = np.column_stack([X, np.ones(len(X))])
        p = np.clip(x["probability"].to_numpy(), 1e-9, 1 - 1e-9)  # a few logits are beyond 20
        y = np.log(p / (1 - p))
        resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        r2.append(1 - resid.var() / y.var())
    assert r2[0] > 0.99, r2
    assert r2[0] > r2[1] > r2[2] > r2[3], r2
    print("R2 of the logit on 365-day log counts, k = 0..3:", np.round(r2, 3))
    assert r2[3] < 0.5, r2


def test_a_then_b_within_six_months_on_literal_charts():
    """The order-and-timing pattern of S: first A, then first B within 180 days."""
    from claims_search.data.synth.complexity import Family, History, K
    from claims_search.data.synth.people import INF

    #             first A  first B
    charts = [(100, 250),        # B 150 days after A: the pattern
              (100, 100 + SEQ_DAYS),  # exactly 180 days: still the pattern
              (100, 400),        # B too late
              (250, 100),        # B before A
              (100, INF)]        # no B (yet)
    first = np.full((len(charts), 1, K), INF, dtype=np.int64)
    first[:, 0, 0], first[:, 0, 1] = zip(*charts)
    zeros = np.zeros(first.shape, np.float32)
    h = History(cnt365=zeros, burden=zeros, far=zeros, years=zeros, first=first)
    fam = Family(lin=np.arange(8), pairs=np.array([[0, 1]]), seq=np.array([[0, 1], [1, 0]]),
                 order=np.array([[0, 1]]), common=np.arange(2))
    f = fam.features(h)
    assert f["S"][:, 0, 0].tolist() == [1, 1, 0, 0, 0]
    assert f["S"][:, 0, 1].tolist() == [0, 0, 0, 1, 0]  # the reverse pattern: B, then A
    assert f["T"][:, 0, 0].tolist() == [1, 1, 1, -1, 0]  # which came first (T's order term)


def test_cli_option_turns_the_family_on(tmp_path, capsys):
    out = tmp_path / "meds"
    assert main(["synth", "--patients", "200", "--seed", "1", "--out", str(out), "--workers", "1",
                 "--complexity-tasks"]) == 0
    printed = capsys.readouterr().out
    assert all(task in printed for task in TASKS)
    assert sorted(p.stem for p in (out / "oracle").glob("complexity_*.parquet")) == list(TASKS)


def test_the_family_is_prepared_by_name_but_never_implied():
    from claims_search.data.labels import BUILTIN_TASKS, task_path

    assert task_path("complexity_k3").parent.name == "complexity"
    assert not any(t.startswith("complexity") for t in BUILTIN_TASKS)
