"""The tokenized cache: what `prepare` writes is what `Cache` reads back."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import polars as pl
import pytest

from claims_search.data import cache, labels, meds
from claims_search.cli import main
from claims_search.errors import ClaimsSearchError

CHECKUP, SBP, CKD, ARB = "HC//SPECIFIC_CHECKUP", "HC//SBP", "DX//ICD10//N18.3", "DRUG//ATC//C09CA01"


def chart(sid: int, sbp: float, *later) -> list[tuple]:
    """A patient born 1960 with a checkup (blood pressure ``sbp``) on 2020-04-01, then ``later``."""
    return [
        (sid, None, "GENDER//F" if sid % 2 else "GENDER//M"),
        (sid, "1960-01-01", "MEDS_BIRTH"),
        (sid, "2020-04-01", CHECKUP),
        (sid, "2020-04-01", SBP, sbp),
        *[(sid, t, code) for t, code in later],
    ]


@pytest.fixture
def claims(tmp_path):
    """12 train patients (1: CKD later, 2: ARB later), one tuning, one held out."""
    train = [chart(1, 100, ("2020-06-01", "DX//ICD10//I10"), ("2020-10-01", CKD))]
    train += [chart(2, 210, ("2020-05-01", ARB))]
    train += [chart(3, 130, ("2021-01-01", "DX//ICD10//I10"))]
    train += [chart(i, 100 + 10 * i) for i in range(4, 13)]
    rows = [r for c in train for r in c]
    other = chart(13, 150, ("2020-05-01", "DX//ICD10//Z99"), ("2020-06-01", ARB)) + chart(14, 120)
    splits = {i: "train" for i in range(1, 13)} | {13: "tuning", 14: "held_out"}
    return meds.write_dataset(tmp_path / "meds", {"0": rows, "1": other}, splits)


def prepare(meds_root, out, workers=1, **kw):
    tasks = [labels.load_task(t) for t in labels.BUILTIN_TASKS]
    return cache.write_cache(meds_root, out, tasks, cache.Settings(**kw), workers=workers,
                             progress=lambda m: None)


def days(iso: str) -> int:
    return (date.fromisoformat(iso) - date(1970, 1, 1)).days


def decode(c, tokens) -> list[str]:
    return c.vocab["code"].to_numpy()[tokens].tolist()


def test_sequences_round_trip_with_days_and_static_tokens(claims, tmp_path):
    prepare(claims, tmp_path / "prep", min_count=2)
    c = cache.Cache.open(tmp_path / "prep")
    assert c.vocab_size == len(c.vocab) and c.max_len == 512
    assert c.tasks == ["antihypertensive_start", "ckd_incidence"]
    first = c.subjects.iloc[0]
    assert (first.subject_id, first.split, first.length, first.n_static) == (1, "train", 6, 1)
    assert first.birth_days == days("1960-01-01")
    tokens, d = c.sequence(0)
    assert decode(c, tokens) == ["GENDER//F", "MEDS_BIRTH", CHECKUP, "HC//SBP//Q1",
                                 "DX//ICD10//I10", "[UNK]"]  # one CKD in train: below min_count
    # the static row takes the birth day
    assert d.tolist() == [days("1960-01-01")] * 2 + [days("2020-04-01")] * 2 + [
        days("2020-06-01"), days("2020-10-01")]


def test_labels_end_at_the_prediction_time(claims, tmp_path):
    prepare(claims, tmp_path / "prep", min_count=2)
    c = cache.Cache.open(tmp_path / "prep")
    ckd = c.labels("ckd_incidence")
    assert len(ckd) == 14 and ckd["label"].sum() == 1
    row = ckd[ckd.subject_id == 1].iloc[0]
    # gender, birth, checkup and the same-day SBP are at or before the prediction time
    assert (row.label, row.split, row.subject_idx, row.end) == (True, "train", 0, 4)
    tokens, _ = c.sequence(int(row.subject_idx), end=int(row.end))
    assert decode(c, tokens)[-2:] == [CHECKUP, "HC//SBP//Q1"]
    tuning = c.labels("antihypertensive_start", split="tuning")
    assert tuning[["subject_id", "label"]].values.tolist() == [[13, True]]
    assert c.subject_indices("held_out").tolist() == [13]
    assert ckd["true_prob"].isna().all()


def test_truncation_keeps_static_tokens_and_the_last_events(claims, tmp_path):
    prepare(claims, tmp_path / "prep", min_count=2, max_len=3)
    c = cache.Cache.open(tmp_path / "prep")
    tokens, d = c.sequence(0, end=4)  # (3,), (3,)
    assert decode(c, tokens) == ["GENDER//F", CHECKUP, "HC//SBP//Q1"]
    assert d.tolist() == [days("1960-01-01"), days("2020-04-01"), days("2020-04-01")]
    assert len(c.sequence(0, max_len=512)[0]) == 6
    assert decode(c, c.sequence(0, max_len=1)[0]) == ["GENDER//F"]


def test_vocabulary_cut_off_unknown_bucket_and_value_bins(claims, tmp_path):
    prepare(claims, tmp_path / "prep", min_count=2)
    c = cache.Cache.open(tmp_path / "prep")
    vocab = c.vocab["code"].tolist()
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[MASK]"]
    assert c.vocab["token_id"].tolist() == list(range(len(vocab)))
    counts = c.vocab["count"].tolist()[4:]
    assert counts == sorted(counts, reverse=True) and min(counts) >= 2
    # 12 train values in five quantile bins; the raw code never appears
    assert {f"HC//SBP//Q{k}" for k in range(1, 6)} <= set(vocab) and SBP not in vocab
    assert CKD not in vocab and "DX//ICD10//Z99" not in vocab  # rare / tuning only -> [UNK]
    tokens, _ = c.sequence(int(c.subject_indices("tuning")[0]))
    # train values 100, 130, 140, 150 ... 210, 210, 220: cut points 142, 164, 186, 208
    assert decode(c, tokens)[3:5] == ["HC//SBP//Q2", "[UNK]"]  # 150; Z99 never seen in train
    assert decode(c, c.sequence(1)[0])[3] == "HC//SBP//Q5"  # 210


def test_second_prepare_is_a_no_op_and_changes_rebuild(claims, tmp_path, capsys):
    out = tmp_path / "prep"
    args = ["prepare", "--meds", str(claims), "--out", str(out), "--workers", "1", "--min-count", "2"]
    assert main(args) == 0
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp

    # a changed setting rebuilds
    assert main(args[:-1] + ["3"]) == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["min_count"] == 3
    # a changed input rebuilds
    shard = claims / "data" / "1.parquet"
    df = pl.read_parquet(shard)
    meds.write_dataset(claims, {"1": df.filter(pl.col("subject_id") != 14)}, {
        i: "train" for i in range(1, 13)} | {13: "tuning", 14: "held_out"})
    before = json.loads((out / "manifest.json").read_text())["inputs_hash"]
    assert main(args[:-1] + ["3"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs_hash"] != before and m["splits"]["held_out"] == 0


def test_manifest_records_oracle_scores(claims, tmp_path):
    (claims / "oracle").mkdir()
    pl.DataFrame({
        "subject_id": list(range(1, 15)),
        "prediction_time": pl.Series([date(2020, 4, 1)] * 14).cast(pl.Datetime("us")),
        "probability": [0.9] + [0.1] * 13, "label": [True] + [False] * 13,
    }).write_parquet(claims / "oracle" / "ckd_incidence.parquet")
    m = prepare(claims, tmp_path / "prep", min_count=2)
    oracle = m["tasks"]["ckd_incidence"]["oracle"]
    assert oracle["auroc"] == 1.0 and oracle["n"] == 14
    assert oracle["splits"]["tuning"]["auroc"] is None  # one class there
    assert m["tasks"]["antihypertensive_start"]["oracle"] is None
    assert m["tasks"]["ckd_incidence"]["splits"]["train"] == {"n": 12, "positives": 1}
    got = cache.Cache.open(tmp_path / "prep").labels("ckd_incidence")
    assert np.allclose(got.sort_values("subject_id")["true_prob"], [0.9] + [0.1] * 13)


def test_the_cache_records_which_splits_it_served(claims, tmp_path):
    """Split names only: what a run records to show that it never read held_out."""
    prepare(claims, tmp_path / "prep")
    c = cache.Cache.open(tmp_path / "prep")
    assert c.splits_read() == []  # opening reads the manifest, vocabulary and subject table only
    c.labels("ckd_incidence", "train")
    assert c.splits_read() == ["train"]
    held_out = int(np.flatnonzero(c.subjects["split"].to_numpy() == "held_out")[0])
    c.sequence(held_out)  # one held-out patient's events
    assert c.splits_read() == ["held_out", "train"]
    c.subject_indices("tuning")
    assert c.splits_read() == ["held_out", "train", "tuning"]
    other = cache.Cache.open(tmp_path / "prep")  # each Cache keeps its own record
    other.labels("ckd_incidence")  # every split's labels
    assert other.splits_read() == ["held_out", "train", "tuning"]


def test_arrays_are_memory_mapped(claims, tmp_path):
    m = prepare(claims, tmp_path / "prep")
    c = cache.Cache.open(tmp_path / "prep")
    assert isinstance(c.tokens, np.memmap) and c.tokens.dtype == np.int32
    assert len(c.tokens) == len(c.days) == m["n_events"] == c.subjects["length"].sum()


def test_two_worker_processes_write_the_same_cache(tmp_path):
    # Five shards over two worker processes: the same cache as one process.
    charts = [chart(i, 100 + 10 * i, ("2020-06-01", "DX//ICD10//I10"), ("2020-10-01", CKD)) if i % 3 == 0
              else chart(i, 100 + 10 * i, ("2020-05-01", ARB)) if i % 3 == 1
              else chart(i, 100 + 10 * i) for i in range(1, 21)]
    shards = {str(k): [r for c in charts[4 * k: 4 * k + 4] for r in c] for k in range(4)}
    shards["4"] = chart(21, 150, ("2020-06-01", "DX//ICD10//I10"), ("2020-10-01", CKD)) + chart(22, 120)
    splits = {i: "train" for i in range(1, 17)} | {i: "tuning" for i in range(17, 21)} | {21: "tuning", 22: "held_out"}
    claims = meds.write_dataset(tmp_path / "meds5", shards, splits)
    one = prepare(claims, tmp_path / "one", min_count=2)
    two = prepare(claims, tmp_path / "two", min_count=2, workers=2)
    assert one == two
    for name in ("tokens.npy", "days.npy"):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name))
    for name in ("vocab.parquet", "subjects.parquet", "labels/ckd_incidence.parquet"):
        assert pl.read_parquet(tmp_path / "one" / name).equals(pl.read_parquet(tmp_path / "two" / name))


def test_split_warnings_flag_evaluation_splits_with_fewer_than_30_of_a_class():
    ok = {"n": 400, "positives": 40}
    assert cache.split_warnings("t", {"train": {"n": 50, "positives": 2}, "tuning": ok,
                                      "held_out": ok}) == []  # train may be small
    got = cache.split_warnings("t", {"train": ok, "tuning": {"n": 210, "positives": 12},
                                     "held_out": {"n": 200, "positives": 185}})
    assert got == [
        "task t: split tuning has only 12 positives (of 210 samples; 30 or more advised): its 95 % "
        "AUROC/AUPRC intervals will be wide, most sizes will look indistinguishable and the "
        "recommendation will lean to the cheapest; use more patients",
        "task t: split held_out has only 15 negatives (of 200 samples; 30 or more advised): its 95 % "
        "AUROC/AUPRC intervals will be wide, most sizes will look indistinguishable and the "
        "recommendation will lean to the cheapest; use more patients",
    ]
    assert all("\n" not in x for x in got)
    assert cache.split_warnings("t", {"train": ok, "tuning": {"n": 30, "positives": 30},
                                      "held_out": ok})[0].startswith(
        "task t: split tuning has one class only (30 samples, 30 positive)")


def test_prepare_warns_through_its_callback_and_records_left_out_tasks(claims, tmp_path):
    warned = []
    tasks = [labels.load_task(t) for t in labels.BUILTIN_TASKS]
    m = cache.write_cache(claims, tmp_path / "out", tasks, cache.Settings(min_count=1),
                          progress=lambda m: None, warn=warned.append)
    assert m["skipped_tasks"] == {}
    assert sorted(m["tasks"]) == sorted(labels.BUILTIN_TASKS)
    # The codes file is empty: one warning from the MEDS checks, naming it.
    assert [w for w in warned if not w.startswith("task ")] == [
        f"{claims / 'metadata' / 'codes.parquet'}: missing or empty: 9 codes undescribed "
        "(an error with --strict)"]
    # tuning and held-out hold one patient each here: every evaluation split is flagged.
    task_lines = [w for w in warned if w.startswith("task ")]
    assert {w.split(": split ")[1].split(" ")[0] for w in task_lines} == {"tuning", "held_out"}
    assert all("\n" not in w for w in warned)


def test_a_meds_folder_given_as_the_cache_says_what_to_run(claims):
    with pytest.raises(ClaimsSearchError, match=rf"{claims}: a MEDS dataset, not a prepared cache: "
                       r"run `claims-search prepare --meds .* --out PREPARED`"):
        cache.Cache.open(claims)


def test_shard_by_shard_cache_equals_a_whole_dataset_computation(tmp_path):
    """prepare works one shard at a time (ids remapped per shard, tables from part files,
    oracle attached per part); here everything is recomputed on the whole dataset at once,
    the way prepare did before it streamed (2026-12-02), and must agree row for row."""
    from claims_search.data.synth import generate
    from claims_search.data.vocab import Vocab, fit_bins, token_strings

    root = tmp_path / "meds"
    generate(root, 240, seed=5, workers=1, shard_size=60)  # 4 blocks x 3 splits: up to 12 shards
    m = prepare(root, tmp_path / "prep", min_count=3)
    c = cache.Cache.open(tmp_path / "prep")
    ds = meds.open_dataset(root)
    assert len(ds.shards) >= 10  # a block may lack a split
    df = pl.concat([meds.read_shard(ds, s) for s in ds.shards])  # in prepare's shard order
    split = df.join(ds.splits, on="subject_id", how="left", maintain_order="left")["split"]
    train = df.filter(split == "train")
    bins = fit_bins(train.select("code", "numeric_value").drop_nans().drop_nulls(), 5)
    assert bins.equals(pl.read_parquet(tmp_path / "prep" / "value_bins.parquet"))
    counts = token_strings(train, bins).value_counts(name="count").rename({"token": "token"})
    voc = Vocab.build(counts.with_columns(pl.col("count").cast(pl.Int64)), 3)
    assert c.vocab["code"].tolist() == voc.tokens and c.vocab["count"].tolist() == voc.counts
    assert np.array_equal(c.tokens, voc.ids(token_strings(df, bins)))
    subjects = df.group_by("subject_id", maintain_order=True).len()
    assert c.subjects["subject_id"].tolist() == subjects["subject_id"].to_list()
    assert c.subjects["offset"].tolist() == np.r_[0, np.cumsum(subjects["len"])[:-1]].tolist()
    for t in [labels.load_task(x) for x in labels.BUILTIN_TASKS]:
        want = labels.attach_oracle(pl.concat([labels.extract_shard(t, s, slice_subjects=None)
                                               for s in ds.shards]),
                                    root / "oracle" / f"{t.name}.parquet")
        got = pl.from_pandas(c.labels(t.name))
        assert m["tasks"][t.name]["splits"]["train"]["n"] > 0
        key = ["subject_id", "prediction_time"]
        assert got.select(*key, pl.col("label").alias("boolean_value"), "true_prob").sort(key).equals(
            want.select(*key, "boolean_value", "true_prob").sort(key))
        assert got["true_prob"].null_count() == 0  # the generator's oracle covers every sample
        # subject_idx is the subject's row; end counts its events at or before the time
        at = c.subjects["subject_id"].to_numpy()[got["subject_idx"].to_numpy()]
        assert (at == got["subject_id"].to_numpy()).all()
        ev = df.select("subject_id", "time").join(got.select(*key, "end"), on="subject_id")
        ends = ev.group_by(key).agg(
            (pl.col("time").is_null() | (pl.col("time") <= pl.col("prediction_time"))).sum()
            .cast(pl.Int32).alias("end"))
        assert got.select(*key, "end").sort(key).equals(ends.sort(key))
        order = got.select("subject_idx", "prediction_time")
        assert order.equals(order.sort(["subject_idx", "prediction_time"]))


ANY_EVENT_TASK = (  # rows matching no predicate count here: ACES gets every row of the shard
    "predicates:\n  checkup: {code: HC//SPECIFIC_CHECKUP}\n"
    "  ckd: {code: {regex: '^DX//ICD10//N18'}}\n"
    "trigger: checkup\nwindows:\n"
    "  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true,"
    " index_timestamp: end, has: {_ANY_EVENT: '(20, None)'}}\n"
    "  target: {start: input.end, end: start + 365d, start_inclusive: false,"
    " end_inclusive: true, label: ckd}\n")


def test_labels_extracted_in_slices_of_subjects_equal_the_whole_shard(tmp_path):
    """extract_shard runs ACES on slices of a shard's subjects (2026-12-02, to bound its
    memory); the labels must be those of one run on the whole shard, whatever the slice size."""
    from claims_search.data.synth import generate

    root = tmp_path / "meds"
    generate(root, 300, seed=3, workers=1, shard_size=300)
    ds = meds.open_dataset(root)
    shard = max(ds.shards, key=lambda s: pl.read_parquet(s, columns=["subject_id"])
                ["subject_id"].n_unique())
    (tmp_path / "any.yaml").write_text(ANY_EVENT_TASK)
    tasks = [labels.load_task(x) for x in labels.BUILTIN_TASKS]
    tasks.append(labels.load_task(tmp_path / "any.yaml"))
    assert labels._rows_outside_predicates_matter(tasks[-1].config)  # the pyarrow path
    key = ["subject_id", "prediction_time"]
    for t in tasks:
        whole = labels.extract_shard(t, shard, slice_subjects=None).sort(key)
        assert len(whole) > 20 and 0 < whole["boolean_value"].sum() < len(whole)
        df = pl.read_parquet(shard, columns=["subject_id", "time", "code", "numeric_value"])
        for n in (1, 7, 50, 10_000):
            assert labels.extract_shard(t, shard, slice_subjects=n).sort(key).equals(whole)
            assert labels.extract_shard(t, shard, df, slice_subjects=n).sort(key).equals(whole)


def test_label_extraction_leaves_no_table_for_the_garbage_collector(tmp_path):
    """A reference cycle through ACES's frames kept a shard's rows alive until Python's next
    full collection, and a worker's memory crept up shard after shard (2026-12-02)."""
    import gc

    from claims_search.data.synth import generate

    root = tmp_path / "meds"
    generate(root, 60, seed=3, workers=1, shard_size=60)
    shard = meds.open_dataset(root).shards[0]
    df = pl.read_parquet(shard, columns=["subject_id", "time", "code", "numeric_value"])
    task = labels.load_task("ckd_incidence")
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for n in (None, 10):
            labels.extract_shard(task, shard, df, slice_subjects=n)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage
                if isinstance(o, (pl.DataFrame, pl.Series)) or type(o).__name__ == "frame"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()
    assert left == []


def test_oracle_attached_part_by_part_matches_attach_oracle(tmp_path):
    from claims_search.data.cache_tables import Oracle

    t = pl.Series([date(2020, 1, 1), date(2020, 2, 1), date(2020, 3, 1)]).cast(pl.Datetime("us"))
    path = tmp_path / "oracle.parquet"
    pl.DataFrame({  # subject 7 twice at the same time (the first row wins), 9 not labelled
        "subject_id": [9, 7, 3, 7, 3], "prediction_time": [t[0], t[1], t[0], t[1], t[2]],
        "probability": [0.9, 0.2, 0.3, 0.8, 0.4], "label": [True] * 5,
    }).write_parquet(path)
    lab = pl.DataFrame({"subject_id": [3, 3, 7, 5], "prediction_time": [t[2], t[1], t[1], t[0]],
                        "label": [True, False, True, False]})
    oracle = Oracle(path)
    got = pl.concat([oracle.attach(lab[:2]), oracle.attach(lab[2:])])
    assert got["true_prob"].to_list() == [0.4, None, 0.2, None]
    assert got.equals(labels.attach_oracle(lab, path))
    assert Oracle(tmp_path / "none.parquet").attach(lab)["true_prob"].null_count() == 4


def test_value_bins_from_per_shard_arrays_equal_those_of_one_table():
    from claims_search.data.vocab import fit_bins, sample_values

    rng = np.random.default_rng(0)
    df = pl.DataFrame({"code": rng.choice(["A", "B", "C"], 500),
                       "numeric_value": rng.normal(size=500).astype(np.float32)})
    df = df.filter(~((pl.col("code") == "C") & (pl.int_range(pl.len()) > 20)))  # C: few values
    halves = [sample_values(df[:250]), sample_values(df[250:])]
    merged = {k: [h[k] for h in halves if k in h] for k in ("A", "B", "C")}
    assert fit_bins(merged, 5).equals(fit_bins(df, 5))
    assert fit_bins(merged, 5)["code"].to_list() == ["A", "B", "C"][: len(fit_bins(df, 5))]
