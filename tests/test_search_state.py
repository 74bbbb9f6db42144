"""The search driver's state (outbox, search.json, Optuna study) survives losing the head's
disk: mirrored to storage, restored from there. Storage here is fsspec's in-memory filesystem,
which claims-search opens like any object store."""

import sqlite3
import uuid

import pytest

from claims_search import storage
from claims_search.search.state import SearchState


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    monkeypatch.setenv("CLAIMS_SEARCH_STATE_DIR", str(tmp_path / "head"))
    return f"memory://bucket-{uuid.uuid4().hex[:8]}/runs"


def _study(db):
    con = sqlite3.connect(db)
    con.execute("create table trials (id integer, state text)")
    con.executemany("insert into trials values (?, ?)", [(0, "COMPLETE"), (1, "COMPLETE")])
    con.commit()
    return con  # left open, as Optuna holds it during a search


def test_a_local_storage_keeps_the_state_in_place(tmp_path):
    state = SearchState.for_search(str(tmp_path / "runs"), "s1")
    assert state.local == tmp_path / "runs" / "s1" and state.mirror is None
    assert state.restore() == [] and not state.started()


def test_a_head_that_lost_its_disk_gets_its_state_back_from_storage(bucket, tmp_path):
    state = SearchState.for_search(bucket, "s1")
    assert state.local == tmp_path / "head" / "s1" and state.mirror == f"{bucket}/s1/state"
    state.outbox.mkdir(parents=True)
    (state.local / "search.json").write_text('{"space": "abc"}')
    (state.outbox / "outbox.jsonl").write_text('{"key": "trial/a/1"}\n')
    con = _study(state.optuna_db)
    state.push()
    con.close()

    import shutil

    shutil.rmtree(state.local)  # the head pod restarted
    assert state.started()  # storage still says this search exists
    assert sorted(state.restore()) == ["optuna.db", "outbox/outbox.jsonl", "search.json"]
    assert (state.local / "search.json").read_text() == '{"space": "abc"}'
    rows = sqlite3.connect(state.optuna_db).execute("select state from trials").fetchall()
    assert rows == [("COMPLETE",), ("COMPLETE",)]


def test_restore_never_overwrites_newer_local_files(bucket):
    state = SearchState.for_search(bucket, "s2")
    state.local.mkdir(parents=True)
    (state.local / "search.json").write_text("old")
    state.push()
    (state.local / "search.json").write_text("new")
    assert state.restore() == []
    assert (state.local / "search.json").read_text() == "new"


def test_s3_endpoint_setting_wins_over_the_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-generic:1")
    assert storage.s3_endpoint() == "http://aws-generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://aws-s3:2")
    assert storage.s3_endpoint() == "http://aws-s3:2"
    monkeypatch.setenv("CLAIMS_SEARCH_S3_ENDPOINT", "http://minio:9000/")
    assert storage.s3_endpoint() == "http://minio:9000"
    fs, inner = storage.filesystem("s3://bucket/runs/x")
    assert type(fs).__name__ == "S3FileSystem" and inner == "bucket/runs/x"
    path, ray_fs = storage.ray_storage("s3://bucket/runs/x")
    assert (path, type(ray_fs).__name__) == ("bucket/runs/x", "S3FileSystem")  # Ray gets the endpoint


def test_a_malformed_endpoint_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("CLAIMS_SEARCH_S3_ENDPOINT", "minio:9000")
    from claims_search.errors import ClaimsSearchError

    with pytest.raises(ClaimsSearchError, match="CLAIMS_SEARCH_S3_ENDPOINT='minio:9000': expected http"):
        storage.filesystem("s3://bucket/x")
