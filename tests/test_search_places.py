"""One search's places (``search/places.py``): the paths the driver builds on storage, whether
the search exists, the one-line refusals, and its state opened and mirrored. Plain Python:
storage is a temporary folder or fsspec's in-memory filesystem."""

import uuid

import pytest

from claims_search.errors import ClaimsSearchError
from claims_search.search.places import SearchPlaces


def test_the_paths_of_a_search_on_local_storage(tmp_path):
    p = SearchPlaces.of(str(tmp_path / "runs"), "s1")
    root = tmp_path / "runs" / "s1"
    assert p.root == str(root) and p.local == root and p.mirror is None
    assert p.baseline == str(root / "baseline") and p.trials == str(root / "trials")
    assert p.outbox == root / "outbox" and p.optuna_db == root / "optuna.db"
    # A search's own experiment lives in tune/<experiment>; a legacy one's experiment is tune/ itself.
    assert p.tune_root("tune-1a2b3c4d") == str(root / "tune")
    assert p.tune_root("tune") == str(root)
    assert p.tune_storage("tune-1a2b3c4d", multi_node=False) == (str(root / "tune"), None)
    with pytest.raises(ClaimsSearchError, match="a local path on a multi-node cluster"):
        p.tune_storage("tune-1a2b3c4d", multi_node=True)


def test_the_paths_of_a_search_on_a_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("CLAIMS_SEARCH_STATE_DIR", str(tmp_path / "head"))
    p = SearchPlaces.of("s3://bucket/runs/", "s1")
    assert p.root == "s3://bucket/runs/s1" and p.trials == "s3://bucket/runs/s1/trials"
    assert p.baseline == "s3://bucket/runs/s1/baseline" and p.tune_root("tune-x") == "s3://bucket/runs/s1/tune"
    assert p.mirror == "s3://bucket/runs/s1/state" and p.local == tmp_path / "head" / "s1"


def test_a_new_search_starts_and_an_existing_one_only_resumes(tmp_path):
    p = SearchPlaces.of(str(tmp_path / "runs"), "s1")
    assert not p.started()
    p.check_resume(False)  # new: fine
    with pytest.raises(ClaimsSearchError) as e:
        p.check_resume(True)
    assert str(e.value) == f"{tmp_path / 'runs' / 's1'}: nothing to resume for search 's1'"

    (tmp_path / "runs" / "s1" / "tune").mkdir(parents=True)  # Tune's folder alone says it exists
    assert p.started()
    p.check_resume(True)
    with pytest.raises(ClaimsSearchError) as e:
        p.check_resume(False)
    assert str(e.value) == (f"{tmp_path / 'runs' / 's1'}: a search named 's1' exists; pass --resume to finish it "
                            f"or choose another --name")


def test_the_state_is_opened_mirrored_and_restored_through_the_places(monkeypatch, tmp_path):
    monkeypatch.setenv("CLAIMS_SEARCH_STATE_DIR", str(tmp_path / "head"))
    bucket = f"memory://bucket-{uuid.uuid4().hex[:8]}/runs"
    p = SearchPlaces.of(bucket, "s1")
    assert p.open(resume=False) == [] and p.local.is_dir()
    (p.local / "search.json").write_text('{"space": "abc"}')
    p.push()
    assert p.started()  # the mirror says so

    import shutil

    shutil.rmtree(p.local)  # the head lost its disk
    assert p.open(resume=False) == []  # a new start restores nothing
    assert p.open(resume=True) == ["search.json"]
    assert (p.local / "search.json").read_text() == '{"space": "abc"}'
