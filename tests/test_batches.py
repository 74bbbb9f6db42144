"""Packed batches, read from a real ``cache.Cache`` written from small literal patient tables."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from claims_search.model.batches import (CLS, IGNORE, MASK, grouped_batches, make_sequence, mask_sequence,
                                   pack, pretrain_batches, task_batches)
from claims_search.data.cache import FORMAT_VERSION, Cache
from claims_search.errors import ClaimsSearchError

CODES = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", "GENDER//F", "GENDER//M", "MEDS_BIRTH",
         "HC//SPECIFIC_CHECKUP", "DX//ICD10//I10", "DRUG//ATC//C09AA05", "DX//ICD10//N18.3",
         "PROC//JP//140000610", "DX_SUSPECTED//ICD10//E11"]

# Three patients' charts: subject, day (ISO date), code. Static rows (sex) sit at the birth day.
CHARTS = """
1 1960-04-01 GENDER//F
1 1960-04-01 MEDS_BIRTH
1 2019-05-10 HC//SPECIFIC_CHECKUP
1 2019-05-10 DX//ICD10//I10
1 2019-06-01 DRUG//ATC//C09AA05
1 2020-05-12 HC//SPECIFIC_CHECKUP
1 2020-09-01 DX//ICD10//N18.3
2 1975-01-20 GENDER//M
2 1975-01-20 MEDS_BIRTH
2 2020-02-02 DX_SUSPECTED//ICD10//E11
2 2020-02-02 PROC//JP//140000610
2 2021-03-03 HC//SPECIFIC_CHECKUP
3 1950-07-07 GENDER//F
3 1950-07-07 MEDS_BIRTH
3 2018-01-01 DX//ICD10//I10
"""
SPLITS = {1: "train", 2: "train", 3: "tuning"}
# Task samples: subject, prediction time, label.
SAMPLES = [(1, "2019-05-10", True), (1, "2020-05-12", False), (2, "2021-03-03", False),
           (3, "2018-06-01", True)]


def write_cache(root: Path, charts: list[tuple[int, str, str]], splits: dict[int, str],
                samples: list[tuple[int, str, bool]], codes: list[str], max_len: int = 16,
                task: str = "ckd_incidence") -> Cache:
    """Write a cache folder in the layout of docs/design.md and open it with the real Cache."""
    root.mkdir(parents=True, exist_ok=True)
    ids = {c: i for i, c in enumerate(codes)}
    ev = pd.DataFrame(charts, columns=["subject_id", "day", "code"])
    ev["days"] = (pd.to_datetime(ev["day"]) - pd.Timestamp("1970-01-01")).dt.days
    np.save(root / "tokens.npy", ev["code"].map(ids).to_numpy(np.int32))
    np.save(root / "days.npy", ev["days"].to_numpy(np.int32))
    rows, offset = [], 0
    for sid, group in ev.groupby("subject_id", sort=False):
        birth = group.loc[group["code"] == "MEDS_BIRTH", "days"]
        n_static = int(group["code"].str.startswith("GENDER").sum())
        rows.append((sid, splits[sid], offset, len(group), int(birth.iloc[0]) if len(birth) else -1, n_static))
        offset += len(group)
    subjects = pd.DataFrame(rows, columns=["subject_id", "split", "offset", "length", "birth_days", "n_static"])
    subjects = subjects.astype({"subject_id": "int64", "offset": "int64", "length": "int32",
                                "birth_days": "int32", "n_static": "int32"})
    subjects.to_parquet(root / "subjects.parquet")
    pd.DataFrame({"token_id": np.arange(len(codes), dtype=np.int32), "code": codes,
                  "count": np.ones(len(codes), dtype=np.int64)}).to_parquet(root / "vocab.parquet")
    lab = pd.DataFrame(samples, columns=["subject_id", "prediction_time", "label"])
    lab["prediction_time"] = pd.to_datetime(lab["prediction_time"]).astype("datetime64[us]")
    idx = {sid: i for i, sid in enumerate(subjects["subject_id"])}
    lab["subject_idx"] = lab["subject_id"].map(idx).astype("int32")
    lab["split"] = lab["subject_id"].map(splits)
    ptime_days = (lab["prediction_time"] - pd.Timestamp("1970-01-01")).dt.days
    lab["end"] = [int((ev.loc[ev["subject_id"] == s, "days"] <= d).sum())
                  for s, d in zip(lab["subject_id"], ptime_days)]
    lab["end"] = lab["end"].astype("int32")
    lab["true_prob"] = np.nan
    (root / "labels").mkdir(exist_ok=True)
    lab.to_parquet(root / "labels" / f"{task}.parquet")
    manifest = {"format_version": FORMAT_VERSION, "settings": {"max_len": max_len},
                "vocab_size": len(codes), "n_events": len(ev),
                "splits": subjects["split"].value_counts().to_dict(), "tasks": {task: {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Cache.open(root)


def parse_charts(text: str) -> list[tuple[int, str, str]]:
    return [(int(s), d, c) for s, d, c in (line.split() for line in text.strip().splitlines())]


@pytest.fixture
def cache(tmp_path) -> Cache:
    return write_cache(tmp_path / "prepared", parse_charts(CHARTS), SPLITS, SAMPLES, CODES)


def originals(batch) -> torch.Tensor:
    """Tokens before masking: the target where one was masked, else the token."""
    return torch.where(batch.targets >= 0, batch.targets, batch.tokens)


def sequences_of(batch) -> list[list[int]]:
    """Each sequence's original tokens (without [CLS]), in sequence order."""
    toks = originals(batch) if batch.targets is not None else batch.tokens
    return [toks[batch.seq == s].tolist()[1:] for s in range(batch.n_sequences)]


def test_make_sequence_reads_like_the_chart():
    # Born 1960-04-01 (day -3562): a checkup and I10 on one day, a drug three weeks later.
    days = np.array([18390, 18390, 18413])  # 2020-05-08, 2020-05-08, 2020-05-31
    s = make_sequence(np.array([7, 8, 9]), days, birth_days=-3562, ref_day=18413)
    assert s.tokens.tolist() == [CLS, 7, 8, 9]
    assert s.ages.tolist() == [61, 61, 61, 61]  # 60 full years, stored +1 (0 = unknown)
    assert s.months.tolist() == [0, 0, 0, 0]  # 23 days before the reference day: month 0
    assert s.visits.tolist() == [0, 1, 1, 2]  # same day, same visit
    unknown = make_sequence(np.array([7]), np.array([100]), birth_days=-1, ref_day=400)
    assert unknown.ages.tolist() == [0, 0] and unknown.months.tolist() == [0, 10]


def test_masking_follows_the_80_10_10_recipe():
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 1000, 20_000)
    s = mask_sequence(make_sequence(tokens, np.arange(20_000), -1, 20_000), rng, 0.15, 1000)
    chosen = s.targets >= 0
    assert not chosen[0]  # [CLS] is never masked
    assert chosen.mean() == pytest.approx(0.15, abs=0.01)
    assert (s.targets[chosen] == np.r_[CLS, tokens][chosen]).all()
    became_mask = (s.tokens[chosen] == MASK).mean()
    kept = (s.tokens[chosen] == s.targets[chosen]).mean()
    assert became_mask == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1, abs=0.02)
    one = mask_sequence(make_sequence(np.array([9]), np.array([5]), -1, 5), rng, 0.01, 1000)
    assert one.targets.tolist() == [IGNORE, 9]  # at least one masked per sequence


def test_pack_fills_rows_first_fit_decreasing_and_keeps_sequence_order():
    lengths = [10, 3, 7, 5, 1]  # with [CLS]: 11, 4, 8, 6, 2 positions
    seqs = [make_sequence(np.full(n, 4 + i), np.arange(n), -1, n) for i, n in enumerate(lengths)]
    batch = pack(seqs, row_len=16)
    assert batch.tokens.shape == (2, 16)  # longest first: 11 + 4 | 8 + 6 + 2
    assert batch.n_tokens == sum(lengths) + 5 and (batch.seq >= 0).sum() == batch.n_tokens
    flat = batch.tokens.reshape(-1)
    assert (flat[batch.cls_index] == CLS).all()
    assert sequences_of(batch) == [[4 + i] * n for i, n in enumerate(lengths)]
    assert not batch.unpacked


def test_rows_of_one_sequence_each_are_not_padded_and_need_no_mask():
    crop = [make_sequence(np.full(512, 4), np.arange(512), -1, 512) for _ in range(3)]  # 513 positions
    full = pack(crop, row_len=513)
    assert full.tokens.shape == (3, 513) and full.unpacked  # not rounded up to 520
    alone = pack(crop[:1] + [make_sequence(np.full(5, 4), np.arange(5), -1, 5)], row_len=513)
    assert alone.tokens.shape == (2, 520) and not alone.unpacked  # unequal rows: padded, masked


def test_masked_positions_are_computed_in_the_pack():
    rng = np.random.default_rng(0)
    seqs = [mask_sequence(make_sequence(np.full(n, 9), np.arange(n), -1, n), rng, 0.3, 50) for n in (20, 7, 12)]
    batch = pack(seqs, row_len=32)
    assert batch.masked_index.tolist() == torch.nonzero(batch.targets.reshape(-1) >= 0).reshape(-1).tolist()
    assert (batch.masked_targets == 9).all()
    for part, _ in batch.split(2):  # each part gets its own, in its own flat positions
        assert torch.equal(part.targets.reshape(-1)[part.masked_index], part.masked_targets)


@pytest.mark.parametrize("draws", ["patient", "window"])
def test_pretrain_batches_cover_the_split_once_per_epoch(cache, draws):
    batches = list(pretrain_batches(cache, "train", batch_tokens=17, max_len=16, seed=3, draws=draws))
    seen = sorted(s for b in batches for s in sequences_of(b))
    expected = sorted(cache.sequence(i)[0].tolist() for i in cache.subject_indices("train"))
    assert seen == expected
    assert all(b.n_tokens <= 17 and b.targets is not None for b in batches)


@pytest.mark.parametrize("draws", ["patient", "window"])
def test_pretrain_batches_crop_long_patients_to_max_len(cache, draws):
    (batch,) = pretrain_batches(cache, "train", batch_tokens=64, max_len=4, seed=0, draws=draws)
    for s in sequences_of(batch):
        assert len(s) == 4
    # Patient 1 keeps its sex in front of a 3-event window of its history.
    assert any(s[0] == CODES.index("GENDER//F") for s in sequences_of(batch))


@pytest.mark.parametrize("draws", ["patient", "window"])
def test_pretrain_batches_are_deterministic_and_shard_disjointly(cache, draws):
    def stream(**kw):
        return [(b.tokens.tolist(), b.targets.tolist())
                for b in pretrain_batches(cache, "train", batch_tokens=17, max_len=16, draws=draws, **kw)]

    assert stream(seed=1, epoch=0) == stream(seed=1, epoch=0)
    assert stream(seed=1, epoch=0) != stream(seed=1, epoch=1)
    shards = [[s for b in pretrain_batches(cache, "train", batch_tokens=17, max_len=16, rank=r, world_size=2,
                                           draws=draws) for s in sequences_of(b)] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 1 and shards[0] != shards[1]


def many_patients(root: Path, n: int = 80, seed: int = 0) -> Cache:
    """``n`` patients of 1 to 40 events (some with a sex row, some without a birth date), on
    few distinct days so that visits repeat; max_len 16, so long histories are cropped."""
    rng = np.random.default_rng(seed)
    charts = []
    for sid in range(1, n + 1):
        if sid % 3:
            charts += [(sid, "1950-01-01", "GENDER//F"), (sid, "1950-01-01", "MEDS_BIRTH")]
        day = np.datetime64("2015-01-01") + int(rng.integers(0, 900))
        for _ in range(int(rng.integers(1, 40))):
            charts.append((sid, str(day), CODES[int(rng.integers(7, len(CODES)))]))
            day += int(rng.integers(0, 3)) * int(rng.integers(1, 200))
    splits = {sid: "train" for sid in range(1, n + 1)}
    return write_cache(root, charts, splits, [(1, "2030-01-01", True)], CODES, max_len=16)


def test_patient_draws_build_the_batches_patient_by_patient_recipe_would(tmp_path):
    """pretrain_batches builds each window at once in numpy; with draws="patient" its batches
    are, position for position, those of the per-patient recipe below (crop, make_sequence,
    mask_sequence, grouped_batches), drawn from one generator in the same order."""
    cache = many_patients(tmp_path)
    seed, epoch, max_len, budget = 4, 1, 16, 60

    def recipe():
        lengths = cache.subjects["length"].to_numpy()
        order = np.random.default_rng([seed, epoch]).permutation(cache.subject_indices("train"))
        rng = np.random.default_rng([seed, epoch, 0, 1])
        for i in order:
            n = int(lengths[i])
            end = int(rng.integers(max_len, n + 1)) if n > max_len else None
            tokens, days = cache.sequence(int(i), end=end, max_len=max_len)
            yield mask_sequence(make_sequence(tokens, days, int(cache.subjects["birth_days"][i]), int(days[-1])),
                                rng, 0.15, cache.vocab_size)

    expected = list(grouped_batches(recipe(), budget, max_len + 1, np.random.default_rng([seed, epoch, 0, 2])))
    got = list(pretrain_batches(cache, "train", batch_tokens=budget, max_len=max_len, seed=seed, epoch=epoch))
    assert len(got) == len(expected) > 10
    for a, b in zip(got, expected):
        for f in ("tokens", "ages", "months", "visits", "seq", "targets", "cls_index"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_the_stream_does_not_depend_on_the_worker_processes_that_build_it(tmp_path):
    from claims_search.model.batches import shutdown_workers

    cache = many_patients(tmp_path, n=120)
    try:
        for draws in ("patient", "window"):
            here, there = (list(pretrain_batches(cache, "train", batch_tokens=60, max_len=16, seed=2, draws=draws,
                                                 workers=w)) for w in (0, 1))
            assert len(here) == len(there) > 10
            for a, b in zip(here, there):
                for f in ("tokens", "ages", "months", "visits", "seq", "targets", "masked_index"):
                    assert torch.equal(getattr(a, f), getattr(b, f)), (draws, f)
    finally:
        shutdown_workers()


def test_window_draws_follow_the_masking_recipe(tmp_path):
    cache = many_patients(tmp_path, n=200)
    here = list(pretrain_batches(cache, "train", batch_tokens=60, max_len=16, seed=2, draws="window"))
    targets = torch.cat([b.targets.reshape(-1) for b in here])
    real = sum(b.n_tokens for b in here) - sum(b.n_sequences for b in here)  # events, [CLS] excluded
    assert 0.12 < float((targets >= 0).sum()) / real < 0.2  # about mask_prob = 0.15
    for b in here:  # at least one masked event per sequence
        assert torch.bincount(b.seq.reshape(-1)[b.masked_index], minlength=b.n_sequences).min() >= 1


def test_batches_are_grouped_by_length_with_rows_as_long_as_their_longest_patient():
    """Like transformers' `group_by_length`: sorted by length, cut at the real-token budget (40
    here), each batch packed into rows as long as its longest sequence rounded up to 8 (exactly
    as long when each row is one sequence and they are all as long), not row_len (65); a batch
    keeps the stream's order."""
    lengths = [5, 31, 3, 28, 4, 30, 6]
    stream = [make_sequence(np.full(n - 1, 4), np.arange(n - 1), 0, n) for n in lengths]  # [CLS] + n - 1
    batches = list(grouped_batches(iter(stream), batch_tokens=40, row_len=65))
    lengths_in = lambda b: b.seq[b.seq >= 0].bincount().tolist()  # noqa: E731  (in sequence order)
    assert [(lengths_in(b), b.tokens.shape[1]) for b in batches] == [
        ([31], 31), ([30], 30), ([5, 28, 6], 32), ([3, 4], 8)]  # 5 came before 28 and 6 in the stream
    shuffled = grouped_batches(iter(stream), batch_tokens=40, row_len=65, rng=np.random.default_rng(0))
    assert sorted(b.n_tokens for b in shuffled) == sorted(b.n_tokens for b in batches)


def test_task_batches_end_at_the_prediction_time_with_labels_and_sample_index(cache):
    labels = cache.labels("ckd_incidence", "train")
    (batch,) = task_batches(cache, "ckd_incidence", "train", batch_tokens=64, max_len=16)
    assert batch.targets is None
    assert batch.sample_index.tolist() == [0, 1, 2]
    assert batch.labels.tolist() == labels["label"].astype(float).tolist()
    # Sample 0 (patient 1 at the 2019-05-10 checkup): sex, birth, checkup, I10; not the drug.
    assert sequences_of(batch)[0] == [CODES.index(c) for c in
                                      ["GENDER//F", "MEDS_BIRTH", "HC//SPECIFIC_CHECKUP", "DX//ICD10//I10"]]
    # The [CLS] of a sample sits at its prediction day: age 59 at 2019-05-10 -> bucket 60.
    assert batch.ages.reshape(-1)[batch.cls_index[0]] == 60


def test_task_batches_shuffle_only_when_asked(cache):
    order = lambda **kw: [i for b in task_batches(cache, "ckd_incidence", "train", batch_tokens=6,  # noqa: E731
                                                  max_len=5, **kw) for i in b.sample_index.tolist()]
    assert order() == order() and sorted(order()) == [0, 1, 2]  # the same every time
    assert sorted(order(shuffle=True, seed=4)) == [0, 1, 2]


def test_bad_lengths_are_reported_before_any_batch(cache):
    with pytest.raises(ClaimsSearchError, match="max_len 32 is longer than the cache was built for"):
        pretrain_batches(cache, "train", batch_tokens=100, max_len=32)
    with pytest.raises(ClaimsSearchError, match="batch_tokens .8. must hold one full sequence"):
        task_batches(cache, "ckd_incidence", "train", batch_tokens=8, max_len=16)
    with pytest.raises(ClaimsSearchError, match="task 'nope' not in the cache"):
        task_batches(cache, "nope", "train", batch_tokens=100)


def test_batches_from_a_cache_prepared_from_meds(tmp_path):
    """End to end: literal MEDS charts -> `prepare`'s write_cache -> packed batches."""
    from claims_search.data import cache as cache_module
    from claims_search.data import labels, meds

    def chart(sid, *later):  # born 1960, a checkup on 2020-04-01, then ``later``
        return [(sid, None, "GENDER//F"), (sid, "1960-01-01", "MEDS_BIRTH"),
                (sid, "2020-04-01", "HC//SPECIFIC_CHECKUP"),
                *[(sid, t, code) for t, code in later]]

    rows = chart(1, ("2020-06-01", "DX//ICD10//I10"), ("2020-10-01", "DX//ICD10//N18.3"))
    rows += chart(2, ("2020-05-01", "DRUG//ATC//C09CA01"))
    rows += [r for i in range(3, 9) for r in chart(i, ("2021-01-01", "DX//ICD10//I10"))]
    root = meds.write_dataset(tmp_path / "meds", {"0": rows}, {i: "train" for i in range(1, 9)})
    tasks = [labels.load_task(t) for t in labels.BUILTIN_TASKS]
    cache_module.write_cache(root, tmp_path / "prep", tasks, cache_module.Settings(min_count=1, max_len=8),
                             progress=lambda m: None)
    cache = Cache.open(tmp_path / "prep")

    pre = list(pretrain_batches(cache, "train", batch_tokens=20, seed=0))
    assert sum(b.n_sequences for b in pre) == 8 and all(b.n_tokens <= 20 for b in pre)
    seen = sorted(s for b in pre for s in sequences_of(b))
    assert seen == sorted(cache.sequence(i)[0].tolist() for i in range(8))

    lab = cache.labels("ckd_incidence", "train")
    (batch,) = task_batches(cache, "ckd_incidence", "train", batch_tokens=200)
    assert batch.sample_index.tolist() == list(range(len(lab)))
    for k, got in enumerate(sequences_of(batch)):
        expected, _ = cache.sequence(int(lab["subject_idx"][k]), end=int(lab["end"][k]))
        assert got == expected.tolist()
    assert batch.labels.sum() == lab["label"].sum() == 1


def test_labelled_rows_keeps_whole_patients_and_is_reproducible():
    from claims_search.model.batches import labelled_rows

    labels = pd.DataFrame({"subject_idx": [0, 0, 1, 2, 2, 2, 3, 4]})
    rows = labelled_rows(labels, 2, seed=0)
    patients = set(labels["subject_idx"].iloc[rows])
    assert len(patients) == 2
    assert list(rows) == [i for i, s in enumerate(labels["subject_idx"]) if s in patients]  # every row of each
    assert list(rows) == list(labelled_rows(labels, 2, seed=0))
    assert list(labelled_rows(labels, None, seed=0)) == list(labelled_rows(labels, 9, seed=0)) == list(range(8))
