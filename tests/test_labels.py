"""Labels of the built-in ACES tasks, checked against labels computed by hand.

Prediction time = the checkup's timestamp, inclusive: an outcome at the checkup itself counts
as history (so the checkup is excluded as "already has it"), the target window is
(checkup, checkup + 365 d] for CKD and (checkup, checkup + 90 d] for antihypertensives.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from claims_search.data import labels, meds
from claims_search.errors import ClaimsSearchError

CHECKUP = "HC//SPECIFIC_CHECKUP"
CKD = "DX//ICD10//N18.3"


def extract(tmp_path, task, rows):
    """Write ``rows`` as a one-shard MEDS dataset and return the task's labels as tuples."""
    subjects = sorted({r[0] for r in rows})
    meds.write_dataset(tmp_path / "meds", {"train/0": rows}, {s: "train" for s in subjects})
    ds = meds.open_dataset(tmp_path / "meds")
    got = labels.extract(labels.load_task(task), ds.shards)
    return sorted(
        (r["subject_id"], r["prediction_time"].strftime("%Y-%m-%d"), r["boolean_value"])
        for r in got.iter_rows(named=True)
    )


def test_ckd_incidence_by_hand(tmp_path):
    rows = [
        # 1: CKD on the checkup day itself: history (prediction time is inclusive) -> excluded
        (1, None, "GENDER//M"), (1, "2020-01-01", CHECKUP), (1, "2020-01-01", CKD),
        # 2: CKD at exactly +365 d (2020 is a leap year): inside, the window end is inclusive
        (2, "2020-01-01", CHECKUP), (2, "2020-12-31", CKD),
        # 3: CKD one day later, +366 d: outside -> negative
        (3, "2020-01-01", CHECKUP), (3, "2021-01-01", CKD),
        # 4: CKD before the checkup: not incident -> excluded
        (4, "2019-06-01", CKD), (4, "2020-01-01", CHECKUP),
        # 5: three checkups; CKD in between: negative, positive, then excluded
        (5, None, "GENDER//F"), (5, "1955-04-01", "MEDS_BIRTH"),
        (5, "2018-05-01", CHECKUP), (5, "2019-05-01", CHECKUP), (5, "2020-03-01", CKD),
        (5, "2020-05-01", CHECKUP),
        # 6: a suspected (疑い) CKD diagnosis is not a confirmed one -> negative
        (6, "2020-01-01", CHECKUP), (6, "2020-02-01", "DX_SUSPECTED//ICD10//N18.3"),
        # 7: no checkup -> no sample
        (7, "2020-01-01", CKD),
    ]
    assert extract(tmp_path, "ckd_incidence", rows) == [
        (2, "2020-01-01", True),
        (3, "2020-01-01", False),
        (5, "2018-05-01", False),
        (5, "2019-05-01", True),
        (6, "2020-01-01", False),
    ]


def test_antihypertensive_start_by_hand(tmp_path):
    arb, diuretic, statin = "DRUG//ATC//C09CA01", "DRUG//ATC//C03CA01", "DRUG//ATC//C10AA05"
    rows = [
        (1, "2021-04-01", CHECKUP), (1, "2021-04-01", arb),        # same time: excluded
        (2, "2021-04-01", CHECKUP), (2, "2021-06-30", diuretic),   # +90 d: inside
        (3, "2021-04-01", CHECKUP), (3, "2021-07-01", arb),        # +91 d: outside
        (4, "2020-01-01", arb), (4, "2021-04-01", CHECKUP),        # prior prescription
        (5, "2021-04-01", CHECKUP), (5, "2021-04-02", statin),     # not an antihypertensive
        (6, "2020-04-01", CHECKUP), (6, "2021-04-01", CHECKUP), (6, "2021-05-01", arb),
    ]
    assert extract(tmp_path, "antihypertensive_start", rows) == [
        (2, "2021-04-01", True),
        (3, "2021-04-01", False),
        (5, "2021-04-01", False),
        (6, "2020-04-01", False),
        (6, "2021-04-01", True),
    ]


def test_labels_follow_the_meds_label_schema(tmp_path):
    rows = [(1, "2020-01-01", CHECKUP), (1, "2020-02-01", CKD), (2, "2020-01-01", CHECKUP)]
    meds.write_dataset(tmp_path / "m", {"0": rows}, {1: "train", 2: "train"})
    got = labels.extract(labels.load_task("ckd_incidence"), meds.open_dataset(tmp_path / "m").shards)
    assert got.schema == pl.Schema(labels.LABEL_SCHEMA)
    assert got["prediction_time"].to_list() == [datetime(2020, 1, 1)] * 2


def test_a_users_task_file_is_accepted(tmp_path):
    task = tmp_path / "diabetes_drug.yaml"
    task.write_text(
        "predicates:\n  checkup: {code: HC//SPECIFIC_CHECKUP}\n"
        "  metformin: {code: DRUG//ATC//A10BA02}\n"
        "trigger: checkup\n"
        "windows:\n"
        "  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true,"
        " index_timestamp: end}\n"
        "  target: {start: input.end, end: start + 30d, start_inclusive: false,"
        " end_inclusive: true, label: metformin}\n"
    )
    rows = [(1, "2020-01-01", CHECKUP), (1, "2020-01-15", "DRUG//ATC//A10BA02"),
            (2, "2020-01-01", CHECKUP)]
    assert extract(tmp_path, task, rows) == [(1, "2020-01-01", True), (2, "2020-01-01", False)]


def test_unknown_task_name_names_it():
    with pytest.raises(ClaimsSearchError, match="no_such_task: no such task file"):
        labels.load_task("no_such_task")


def test_task_with_unknown_predicate_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = labels.task_path("ckd_incidence").read_text().replace("label: ckd", "label: kidney")
    bad.write_text(text)
    with pytest.raises(ClaimsSearchError, match=r"bad\.yaml: invalid ACES task config") as e:
        labels.load_task(bad)
    assert "\n" not in str(e.value)


def test_task_with_malformed_window_names_the_file(tmp_path):
    bad = tmp_path / "window.yaml"
    # The end must be relative to the window's own start, not to the trigger.
    text = labels.task_path("ckd_incidence").read_text().replace(
        "end: start + 365d", "end: trigger + 365d")
    bad.write_text(text)
    with pytest.raises(ClaimsSearchError, match=r"window\.yaml: invalid ACES task config"):
        labels.load_task(bad)


def test_task_without_positive_labels_is_an_error(tmp_path):
    rows = [(1, "2020-01-01", CHECKUP), (2, "2020-01-01", CHECKUP)]
    with pytest.raises(ClaimsSearchError, match="ckd_incidence.yaml: task 'ckd_incidence' has no positive"):
        extract(tmp_path, "ckd_incidence", rows)


def test_task_without_negative_labels_is_an_error(tmp_path):
    rows = [(1, "2020-01-01", CHECKUP), (1, "2020-02-01", CKD)]
    with pytest.raises(ClaimsSearchError, match="has no negative labels"):
        extract(tmp_path, "ckd_incidence", rows)


def test_oracle_probabilities_are_joined_and_scored(tmp_path):
    got = pl.DataFrame({
        "subject_id": [1, 2, 3, 4],
        "prediction_time": [datetime(2020, 1, 1)] * 4,
        "label": [True, False, True, False],
        "split": ["train", "train", "tuning", "tuning"],
    })
    oracle = tmp_path / "ckd_incidence.parquet"
    pl.DataFrame({
        "subject_id": [1, 2, 3], "prediction_time": [datetime(2020, 1, 1)] * 3,
        "probability": [0.9, 0.2, 0.1], "label": [True, False, True],
    }).write_parquet(oracle)
    joined = labels.attach_oracle(got, oracle)
    assert joined["true_prob"].to_list() == [0.9, 0.2, 0.1, None]
    scores = labels.oracle_scores(joined)
    assert scores["auroc"] == 0.5 and scores["n"] == 3  # 0.9 > 0.2 but 0.1 < 0.2
    assert scores["splits"]["train"]["auroc"] == 1.0
    assert scores["splits"]["tuning"]["auroc"] is None  # one class only
    assert labels.attach_oracle(got, tmp_path / "none.parquet")["true_prob"].null_count() == 4


def _average_precision_over_every_order_of_ties(y: list[int], p: list[float]):
    """Brute force, exact: rank the samples by score in every order their ties allow, take
    the average precision of each strict ranking (the mean over positives of the precision at
    the positive's rank), and average over those orders, each equally likely."""
    from fractions import Fraction
    from itertools import permutations, product

    blocks = [[i for i in range(len(p)) if p[i] == score] for score in sorted(set(p), reverse=True)]
    per_order = []
    for orders in product(*(permutations(b) for b in blocks)):
        ranking = [i for block in orders for i in block]
        hits, ap = 0, Fraction(0)
        for rank, i in enumerate(ranking, start=1):
            if y[i]:
                hits += 1
                ap += Fraction(hits, rank)
        per_order.append(ap / sum(y))
    return sum(per_order) / len(per_order), len(per_order)


def test_the_oracle_auprc_is_the_average_over_every_order_of_its_ties():
    """The medication task's true probability takes few values, so the oracle's scores tie; its
    AUPRC is the average precision in expectation over the orders of those ties (3! x 2! x 3! =
    72 here), not scikit-learn's, which scores each tied block at its end."""
    from sklearn.metrics import average_precision_score

    y = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    p = [0.9, 0.9, 0.9, 0.6, 0.6, 0.2, 0.2, 0.2, 0.7, 0.1]
    split = ["train"] * 8 + ["tuning"] * 2
    joined = pl.DataFrame({"label": [bool(v) for v in y], "true_prob": p, "split": split})
    exact, n_orders = _average_precision_over_every_order_of_ties(y, p)
    assert n_orders == 72
    scores = labels.oracle_scores(joined)
    assert scores["auprc"] == pytest.approx(float(exact), abs=1e-12)
    assert scores["auprc"] > average_precision_score(y, p) + 0.01  # the block ends score lower
    train, _ = _average_precision_over_every_order_of_ties(y[:8], p[:8])
    assert scores["splits"]["train"]["auprc"] == pytest.approx(float(train), abs=1e-12)
    assert scores["splits"]["tuning"]["auprc"] == 1.0  # its one positive ranks first: no tie to average


def test_running_aces_on_matching_rows_only_gives_the_same_labels(tmp_path):
    """extract_shard hands ACES only the rows its predicates match; the labels must not change."""
    from aces import predicates, query
    from omegaconf import DictConfig

    rows = [(1, None, "GENDER//F"), (1, "1950-01-01", "MEDS_BIRTH")]
    for sid in range(1, 9):
        rows += [] if sid == 1 else [(sid, None, "GENDER//M")]
        for year in (2018, 2019, 2020):
            rows += [(sid, f"{year}-0{sid % 9 + 1}-01", "PROC//JP//160000410"),
                     (sid, f"{year}-04-01", CHECKUP), (sid, f"{year}-04-01", "HC//SBP", 120 + sid)]
        if sid % 3 == 0:
            rows.append((sid, "2020-08-01", CKD))
        if sid % 2 == 0:
            rows.append((sid, "2019-06-15", "DRUG//ATC//C08CA01"))
    rows.sort(key=lambda r: (r[0], r[1] or ""))
    meds.write_dataset(tmp_path / "m", {"0": rows}, {s: "train" for s in range(1, 9)})
    shard = tmp_path / "m" / "data" / "0.parquet"
    for name in labels.BUILTIN_TASKS:
        task = labels.load_task(name)
        assert not labels._rows_outside_predicates_matter(task.config)
        full = query.query(task.config, predicates.get_predicates_df(
            task.config, DictConfig({"path": str(shard), "standard": "meds"})))
        want = sorted(zip(full["subject_id"], full["index_timestamp"], full["label"] > 0))
        got = labels.extract_shard(task, shard)
        assert sorted(zip(got["subject_id"], got["prediction_time"], got["boolean_value"])) == want
        assert len(want) > 5


def test_tasks_using_any_event_read_every_row(tmp_path):
    task = tmp_path / "any.yaml"
    task.write_text(
        "predicates:\n  checkup: {code: HC//SPECIFIC_CHECKUP}\n  ckd: {code: DX//ICD10//N18.3}\n"
        "trigger: checkup\nwindows:\n"
        "  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true,"
        " index_timestamp: end, has: {_ANY_EVENT: '(3, None)'}}\n"
        "  target: {start: input.end, end: start + 365d, start_inclusive: false,"
        " end_inclusive: true, label: ckd}\n"
    )
    assert labels._rows_outside_predicates_matter(labels.load_task(task).config)


README_FLOW_STYLE = """\
predicates:
  checkup: {code: HC//SPECIFIC_CHECKUP}
  ckd:     {code: {regex: "^DX//ICD10//N18"}}
trigger: checkup
windows:
  input:
    start: null
    end: trigger
    start_inclusive: true
    end_inclusive: true
    has: {ckd: (None, 0)}      # YAML flow style: split at the comma
    index_timestamp: end
  target:
    start: input.end
    end: start + 365d
    start_inclusive: false
    end_inclusive: true
    label: ckd
"""


def test_a_constraint_split_by_yaml_flow_style_gets_a_one_line_hint(tmp_path):
    bad = tmp_path / "flow.yaml"
    bad.write_text(README_FLOW_STYLE)
    with pytest.raises(ClaimsSearchError) as e:
        labels.load_task(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bad}: windows.input.has: the constraint 'ckd: (None, 0)' was split")
    assert "flow style" in msg and 'has: {ckd: "(None, 0)"}' in msg and "block style" in msg
    # Both fixes load.
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text(README_FLOW_STYLE.replace("{ckd: (None, 0)}", '{ckd: "(None, 0)"}'))
    block = tmp_path / "block.yaml"
    block.write_text(README_FLOW_STYLE.replace("has: {ckd: (None, 0)}", "has:\n      ckd: (None, 0)"))
    for ok in (quoted, block):
        assert labels.load_task(ok).config.windows["input"].has == {"ckd": (None, 0)}


DIABETES_TASK = """\
predicates:
  checkup:
    code: HC//SPECIFIC_CHECKUP
  diabetes:
    code: DX//ICD10//E11
trigger: checkup
windows:
  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true, index_timestamp: end}
  target: {start: input.end, end: start + 365d, start_inclusive: false, end_inclusive: true, label: diabetes}
"""


def test_no_positives_names_the_predicate_that_matched_nothing_and_the_closest_codes(tmp_path):
    task = tmp_path / "diabetes.yaml"
    task.write_text(DIABETES_TASK)
    rows = [(1, "2020-01-01", CHECKUP), (1, "2020-03-01", "DX//ICD10//E11.9"),
            (2, "2020-01-01", CHECKUP), (2, "2020-02-01", "DX//ICD10//E78.5")]
    with pytest.raises(ClaimsSearchError) as e:
        extract(tmp_path, task, rows)
    msg = str(e.value)
    assert "\n" not in msg
    assert "task 'diabetes' has no positive labels (2 samples)" in msg
    assert "predicate 'diabetes' (code DX//ICD10//E11) matches no event" in msg
    assert "closest codes present: DX//ICD10//E11.9" in msg
    assert 'regex: "^DX//ICD10//E11"' in msg
    # With the regex the same data has a positive and a negative.
    task.write_text(DIABETES_TASK.replace("code: DX//ICD10//E11", 'code: {regex: "^DX//ICD10//E11"}'))
    assert extract(tmp_path / "again", task, rows) == [(1, "2020-01-01", True), (2, "2020-01-01", False)]


def test_no_samples_names_an_unmatched_trigger_with_similar_codes(tmp_path):
    task = tmp_path / "typo.yaml"
    task.write_text(DIABETES_TASK.replace("HC//SPECIFIC_CHECKUP", "HC//SPECIFIC_CHECK_UP"))
    with pytest.raises(ClaimsSearchError, match=r"\(0 samples\).*predicate 'checkup' "
                       r"\(code HC//SPECIFIC_CHECK_UP\) matches no event.*HC//SPECIFIC_CHECKUP"):
        extract(tmp_path, task, [(1, "2020-01-01", CHECKUP), (1, "2020-03-01", "DX//ICD10//E11")])


def test_a_predicate_that_matches_but_never_in_the_window_gets_no_hint(tmp_path):
    rows = [(1, "2020-01-01", CHECKUP), (2, "2020-01-01", CHECKUP), (3, "2010-01-01", CKD)]
    with pytest.raises(ClaimsSearchError) as e:
        extract(tmp_path, "ckd_incidence", rows)
    assert str(e.value).endswith("has no positive labels (2 samples) on this dataset")
