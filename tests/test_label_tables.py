"""Precomputed MEDS label tables as tasks (`prepare --labels DIR`): the labels ACES made for
ckd_incidence, handed over as a plain label table under another name (one file, and a folder of
shards), give the cache the same samples, split by metadata/subject_splits.parquet; the task
then trains and predicts like an ACES one. Bad tables: one line per problem (more cases in
tests/bad_inputs/labels_*.yaml)."""

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from claims_search.data import label_tables
from claims_search.data.cache import Cache
from claims_search.cli import main
from claims_search.errors import ClaimsSearchError
from claims_search.data.labels import task_path

SAME = ["subject_id", "prediction_time", "label", "split", "subject_idx", "end"]


@pytest.fixture(scope="module")
def from_tables(synthetic_meds, prepared, tmp_path_factory):
    """The ACES labels of ckd_incidence as MEDS label tables (extra null columns as ACES writes
    them), prepared with --labels only: ``labels/ckd_table.parquet`` and ``labels/ckd_shards/``."""
    work = tmp_path_factory.mktemp("label_tables")
    aces = pl.read_parquet(prepared / "labels" / "ckd_incidence.parquet")
    table = aces.select("subject_id", "prediction_time", pl.col("label").alias("boolean_value"),
                        pl.lit(None, pl.Int64).alias("integer_value")).sample(fraction=1.0, shuffle=True, seed=0)
    (work / "labels" / "ckd_shards").mkdir(parents=True)
    table.write_parquet(work / "labels" / "ckd_table.parquet")
    for i in range(3):  # shards of subjects, as MEDS-DEV hands labels over
        table.filter(pl.col("subject_id") % 3 == i).write_parquet(work / "labels" / "ckd_shards" / f"{i}.parquet")
    out = work / "prepared"
    assert main(["prepare", "--meds", str(synthetic_meds), "--out", str(out), "--labels", str(work / "labels"),
                 "--only-tasks", "--max-len", "128", "--workers", "1"]) == 0
    return work, out


def test_a_label_table_gives_the_same_samples_as_the_aces_task_it_came_from(prepared, from_tables):
    _, out = from_tables
    aces, cache = Cache(prepared), Cache(out)
    assert cache.tasks == ["ckd_shards", "ckd_table"]
    want = aces.labels("ckd_incidence")[SAME]
    for task in cache.tasks:
        got = cache.labels(task)[SAME]
        assert got.equals(want), task
        assert cache.manifest["tasks"][task]["splits"] == aces.manifest["tasks"]["ckd_incidence"]["splits"]
        assert cache.manifest["tasks"][task]["label_table"].endswith(task if task == "ckd_shards" else f"{task}.parquet")
    assert not (out / "tasks" / "ckd_table.yaml").exists()  # no ACES config behind it


def test_a_label_table_task_trains_and_predicts_like_an_aces_one(from_tables, capsys):
    work, out = from_tables
    assert main(["baseline", "--data", str(out), "--task", "ckd_table", "--out", str(work / "lgbm")]) == 0
    assert main(["predict", "--model", str(work / "lgbm"), "--data", str(out), "--task", "ckd_table",
                 "--out", str(work / "held_out.parquet")]) == 0
    got = pl.read_parquet(work / "held_out.parquet")
    want = Cache(out).labels("ckd_table", "held_out")
    assert got["subject_id"].to_list() == want["subject_id"].tolist()
    assert got["boolean_value"].to_list() == want["label"].tolist()
    assert json.loads((work / "lgbm" / "result.json").read_text())["metrics"]["tuning"]["n"] > 0


def test_prepare_again_with_the_same_tables_does_nothing_and_a_changed_table_rebuilds(synthetic_meds, from_tables,
                                                                                     capsys):
    work, out = from_tables
    argv = ["prepare", "--meds", str(synthetic_meds), "--out", str(out), "--labels", str(work / "labels"),
            "--only-tasks", "--max-len", "128", "--workers", "1"]
    capsys.readouterr()
    assert main(argv) == 0 and "up to date" in capsys.readouterr().out
    path = work / "labels" / "ckd_table.parquet"
    pl.read_parquet(path).head(-1).write_parquet(path)  # one sample fewer
    assert main(argv) == 0 and "up to date" not in capsys.readouterr().out
    assert len(Cache(out).labels("ckd_table")) == len(Cache(out).labels("ckd_shards")) - 1


def test_each_problem_of_a_table_is_its_own_line(tmp_path):
    #                    subject_id  prediction_time          boolean_value
    rows = {"subject_id": [1, 1, 2, None],
            "prediction_time": [datetime(2020, 4, 1)] * 4,
            "boolean_value": [True, True, None, False]}
    pl.DataFrame(rows).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(ClaimsSearchError) as e:
        label_tables.load(tmp_path / "t.parquet")
    lines = str(e.value).splitlines()
    assert lines == [f"{tmp_path}/t.parquet: subject_id is null in 1 row(s) (first: row 3)",
                     f"{tmp_path}/t.parquet: boolean_value is null in 1 row(s) (first: row 2)",
                     f"{tmp_path}/t.parquet: 2 duplicate rows (the same subject_id and prediction_time; "
                     "first: subject 1 at 2020-04-01 00:00:00)"]


def test_a_label_table_and_a_task_file_of_one_name_are_refused(synthetic_meds, tmp_path, capsys):
    (tmp_path / "labels").mkdir()
    pl.DataFrame({"subject_id": [7000001], "prediction_time": [datetime(2020, 1, 1)], "boolean_value": [True]}
                 ).write_parquet(tmp_path / "labels" / "my_task.parquet")
    (tmp_path / "my_task.yaml").write_text(task_path("ckd_incidence").read_text())
    code = main(["prepare", "--meds", str(synthetic_meds), "--out", str(tmp_path / "out"), "--labels",
                 str(tmp_path / "labels"), "--task", str(tmp_path / "my_task.yaml"), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "are both named 'my_task'" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_runs_on_a_task_given_only_as_a_label_table(from_tables):
    """The issue's "done when": a search (real local Ray, one trial) on the label-table task,
    which `predict` then reads back from the registry like any other."""
    import subprocess
    import sys

    import yaml

    from claims_search.tracking.tracker import registered_name
    from tests.test_search import RaySandbox, search_cmd

    work, out = from_tables
    space = yaml.safe_load((Path(__file__).parents[1] / "search_spaces" / "smoke.yaml").read_text())
    space.update(name="labels", tasks=["ckd_table"], baseline=False)
    space["budget"].update(trials=1, concurrency=1)
    (work / "labels.yaml").write_text(yaml.safe_dump(space))
    box = RaySandbox()
    try:
        proc = box.run(search_cmd(out, work, "from-labels", work / "labels.yaml"))
    finally:
        box.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ckd_table" in proc.stdout
    got = subprocess.run([sys.executable, "-m", "claims_search.cli", "predict", "--model",
                          f"models:/{registered_name('from-labels', 'ckd_table')}@recommended", "--data", str(out), "--task", "ckd_table",
                          "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--out", str(work / "search.parquet")],
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    assert len(pl.read_parquet(work / "search.parquet")) == len(Cache(out).labels("ckd_table", "held_out"))
