"""A local MLflow store cut off mid-migration opens again through the tracker.

``tests/data/mlflow_store_cut_mid_migration.db.gz`` is a real one: MLflow 3.17 creating a fresh
SQLite store, SIGKILLed 0.1 s in (``MlflowClient(tracking_uri=...).search_experiments()`` in a
subprocess), which left ``_alembic_tmp_tags`` behind. CI saw the same after a search whose Ray
instance was killed while its first results went to MLflow (tests/test_search.py's resume test)."""

import gzip
import sqlite3

import pytest

from claims_search.tracking.sqlite_store import SCRATCH, finish_cut_migration, path_of
from claims_search.tracking.tracker import _client
from pathlib import Path

CUT = Path(__file__).resolve().parent / "data" / "mlflow_store_cut_mid_migration.db.gz"


@pytest.fixture
def cut_store(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(gzip.decompress(CUT.read_bytes()))
    return f"sqlite:///{db}"


def test_mlflow_alone_refuses_a_store_cut_mid_migration(cut_store):
    from mlflow.tracking import MlflowClient

    with pytest.raises(Exception, match="_alembic_tmp_tags already exists"):
        MlflowClient(tracking_uri=cut_store).search_experiments()


def test_the_tracker_finishes_the_cut_step_and_the_store_works(cut_store, caplog):
    from mlflow.tracking import MlflowClient

    client = _client(cut_store)
    run = client.create_run(client.create_experiment("after-the-cut"))
    client.set_tag(run.info.run_id, "k", "v")  # the table the cut migration was rebuilding
    assert "finished it" in caplog.text
    # Anyone else (the MLflow UI, a user's script) opens it too, now.
    assert MlflowClient(tracking_uri=cut_store).get_run(run.info.run_id).data.tags["k"] == "v"


def test_a_scratch_table_whose_original_is_gone_takes_its_name_back(tmp_path):
    db = tmp_path / "s.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_params (key TEXT, value TEXT)")
    con.execute("INSERT INTO _alembic_tmp_params VALUES ('lr', '0.001')")
    con.commit()
    con.close()
    assert finish_cut_migration(f"sqlite:///{db}") == ["params"]
    con = sqlite3.connect(db)
    assert con.execute("SELECT key, value FROM params").fetchall() == [("lr", "0.001")]
    assert finish_cut_migration(f"sqlite:///{db}") == []  # nothing left to do


def test_only_local_sqlite_files_are_touched():
    assert path_of("http://head:5000") is None and path_of("sqlite:///:memory:") is None
    assert str(path_of("sqlite:////tmp/x/mlflow.db")) == "/tmp/x/mlflow.db"
    assert finish_cut_migration("postgresql://db/mlflow") == []


def test_a_search_builds_its_local_store_before_any_trial(tmp_path):
    from claims_search.tracking.tracker import Tracker

    db = tmp_path / "mlflow.db"
    Tracker(f"sqlite:///{db}", "early", tmp_path / "outbox").open_store()
    con = sqlite3.connect(db)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()  # migrated, at a head
    assert not con.execute(f"SELECT name FROM sqlite_master WHERE name LIKE '{SCRATCH}%'").fetchall()
