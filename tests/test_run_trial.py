"""A whole trial's training (claims_search.runs.training.pretrain_and_finetune): pretrain once, fine-tune per task; on Ray
all phases share one Ray Train fit and a restarted worker group skips finished phases."""

import json
import logging
from pathlib import Path

import pytest

from claims_search.errors import ClaimsSearchError
from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.runs.training import finetune, pretrain, pretrain_and_finetune

TASK = "antihypertensive_start"
PT = PretrainSettings(steps=4, warmup=1, batch_tokens=1024, log_every=2)
FT = FinetuneSettings(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _keys(folder: Path, run: str) -> list[str]:
    return sorted(json.loads((folder / run / "result.json").read_text()))


@pytest.fixture(scope="module")
def separate(recency_cache, tmp_path_factory):
    """The reference: a pretraining and one fine-tuning from it, as two separate calls."""
    out = tmp_path_factory.mktemp("separate")
    pre = pretrain(recency_cache, "debug", PT, out / "pretrain")
    ft = finetune(recency_cache, TASK, "debug", FT, out / f"finetune-{TASK}", init_checkpoint=pre.checkpoint,
                  n_boot=50)
    return out, pre, ft


def test_in_process_trial_gives_what_separate_calls_give(recency_cache, separate, tmp_path):
    out, sep_pre, sep_ft = separate
    done = pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK], tmp_path, n_boot=50)
    pre, fts = done.pretrain, done.finetunes
    assert _files(tmp_path) == _files(out) == [
        "finetune-antihypertensive_start/checkpoint/meta.json", "finetune-antihypertensive_start/checkpoint/state.pt",
        "finetune-antihypertensive_start/predictions/tuning.parquet",
        "finetune-antihypertensive_start/result.json", "pretrain/checkpoint/meta.json",
        "pretrain/checkpoint/state.pt", "pretrain/result.json"]
    # Seeded and in one process: the same numbers, not just the same format.
    assert pre.val_loss == sep_pre.val_loss and pre.steps == 4
    assert fts[TASK].metrics == sep_ft.metrics
    assert fts[TASK].pretrain_cost == pre.cost != fts[TASK].cost  # costs kept apart


def test_the_tuning_predictions_are_kept_beside_the_checkpoint_and_give_its_metrics(separate, recency_cache):
    from claims_search.runs import predictions
    from claims_search.data.cache import Cache
    from claims_search.metrics import evaluate

    _, _, ft = separate
    df = predictions.read(ft.predictions["tuning"])
    labels = Cache.open(recency_cache).labels(TASK, "tuning")
    assert list(df["row"]) == list(range(len(labels)))  # every tuning sample, in label order
    assert list(df["label"]) == list(labels["label"])
    again = evaluate(df["label"], df["prob"], df["subject_idx"], n_boot=50, seed=FT.seed)
    assert again["auprc"] == ft.metrics["tuning"]["auprc"]


def test_from_scratch_pretrains_nothing(recency_cache, tmp_path):
    scratch = FinetuneSettings(**{**FT.to_dict(), "from_scratch": True})
    done = pretrain_and_finetune(recency_cache, "debug", PT, scratch, [TASK], tmp_path, n_boot=50)
    assert done.pretrain is None and done.finetunes[TASK].pretrain_cost is None
    assert not (tmp_path / "pretrain").exists()


def test_a_diverged_pretraining_skips_the_fine_tunings(recency_cache, tmp_path):
    done = pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK], tmp_path, n_boot=50, max_pretrain_loss=0.0)
    assert done.pretrain.val_loss > 0 and done.finetunes == {} and done.diverged
    assert _files(tmp_path) == ["pretrain/checkpoint/meta.json", "pretrain/checkpoint/state.pt",
                                "pretrain/result.json"]


def test_a_missing_task_fails_before_any_training(recency_cache, tmp_path):
    with pytest.raises(ClaimsSearchError, match="task 'ckd_incidence' is not in the cache"):
        pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK, "ckd_incidence"], tmp_path, workers=2)
    assert not tmp_path.joinpath("pretrain").exists() and not any(tmp_path.iterdir())


@pytest.mark.ray
def test_one_fit_on_two_workers_resumes_a_failed_fine_tuning_without_pretraining_again(
        recency_cache, separate, tmp_path, ray_local, caplog):
    out, _, _ = separate
    caplog.set_level(logging.INFO, logger="claims_search.runs.train_ray")
    # Both workers fail once right after the fine-tuning's checkpoint at step 4 (phase 1);
    # Ray Train restarts the worker group, which skips the finished pretraining (phase 0).
    done = pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK], tmp_path, workers=2, n_boot=50,
                                 checkpoint_every=2, ray_options={"fail_at": (1, 4), "max_failures": 1})
    pre, fts = done.pretrain, done.finetunes
    assert len(done.rank_nodes) == 2  # where every rank ran
    # It restarted inside the fine-tuning, from its checkpoint at step 4, or at step 2 when the
    # workers died before Ray Train's controller had collected the step-4 report (Ray's race,
    # seen once in a fresh-clone run): either way not from step 0, and not in the pretraining.
    ft = fts[TASK]
    assert ft.resumed_from_step in (2, 4) and ft.steps == 6
    assert f"the last worker group started at phase 1, step {ft.resumed_from_step}" in caplog.text
    assert (pre.resumed_from_step, pre.steps) == (0, 4)

    # The same outputs as separate calls, nothing left behind.
    assert _files(tmp_path) == _files(out)
    for run in ("pretrain", f"finetune-{TASK}"):
        assert _keys(tmp_path, run) == _keys(out, run)
    assert list(ft.metrics["tuning"]) == list(separate[2].metrics["tuning"])
    assert ft.metrics["tuning"]["n"] == 40
    saved = json.loads((tmp_path / f"finetune-{TASK}" / "result.json").read_text())
    assert saved["init"] == str((tmp_path / "pretrain" / "checkpoint").resolve())
    assert saved["workers"] == 2 and saved["step"] == 6

    # Costs per phase: pretraining charged once, apart; both phases on 2 devices.
    assert ft.pretrain_cost == pre.cost and saved["pretrain_cost"] == pre.cost.to_dict()
    assert pre.cost.n_devices == ft.cost.n_devices == 2
    assert ft.cost.device_s == pytest.approx(2 * ft.cost.wall_s)
    assert pre.cost.tokens > 0 and ft.cost.tokens > 0


def test_fine_tuning_keeps_its_best_step_judged_on_train_patients_only(recency_cache, separate):
    """Early stopping reads a patient-grouped carve-out of train: the tuning split stays clean."""
    from claims_search.model.batches import carve_out
    from claims_search.data.cache import Cache

    train = Cache.open(recency_cache).labels(TASK, "train")
    fit, stop = carve_out(train, FT.seed)
    assert set(train["subject_idx"].iloc[fit]).isdisjoint(train["subject_idx"].iloc[stop])
    assert 0 < train["label"].iloc[stop].sum() < len(stop)  # both classes to judge AUPRC on
    saved = json.loads((separate[0] / f"finetune-{TASK}" / "result.json").read_text())
    assert 1 <= saved["best_step"] <= saved["step"] == FT.steps


# A rate too small to move float32 weights: the carve-out AUPRC never beats its first value.
STILL = FinetuneSettings(steps=12, warmup=1, batch_tokens=1024, log_every=2, lr=1e-12, eval_every=1, patience=2)


def test_patience_counts_evaluations_since_the_best_and_a_tie_is_not_better():
    from claims_search.runs.worker import patience_stop

    curve = [[120, 0.30], [240, 0.35], [360, 0.35], [480, 0.34], [600, 0.36], [720, 0.33]]
    assert patience_stop(curve, 2) == 480  # 360 ties the best at 240, 480 is below it
    assert patience_stop(curve, 3) is None  # 600 beat the best before a third evaluation
    assert patience_stop(curve, 0) is None and patience_stop([], 2) is None  # off; no evaluation yet


def _stops_after_patience(saved: dict) -> None:
    assert saved["best_step"] == 1 and saved["step"] == 3  # evaluations at 1 (best), 2, 3: stop
    assert [s for s, _ in saved["carve_out_auprc"]] == [1, 2, 3]


def test_fine_tuning_stops_after_patience_evaluations_without_a_better_one(recency_cache, separate, tmp_path):
    ft = finetune(recency_cache, TASK, "debug", STILL, tmp_path / "ft", init_checkpoint=separate[1].checkpoint,
                  n_boot=50)
    _stops_after_patience(json.loads((tmp_path / "ft" / "result.json").read_text()))
    assert ft.steps == 3 and ft.metrics["tuning"]["n"] == 40  # scored as usual, at its best step
    # The curve of the run without patience: each step's AUPRC, the stopped run's a prefix of it.
    full = json.loads((separate[0] / f"finetune-{TASK}" / "result.json").read_text())["carve_out_auprc"]
    assert [s for s, _ in full] == list(range(FT.eval_interval, FT.steps + 1, FT.eval_interval))


@pytest.mark.ray
def test_on_two_workers_every_rank_stops_where_rank_0_decides(recency_cache, separate, tmp_path, ray_local):
    ft = finetune(recency_cache, TASK, "debug", STILL, tmp_path / "ft", init_checkpoint=separate[1].checkpoint,
                  n_boot=50, workers=2)
    saved = json.loads((tmp_path / "ft" / "result.json").read_text())
    _stops_after_patience(saved)
    assert saved["workers"] == 2 and ft.cost.n_devices == 2


def test_a_worker_killed_by_ray_s_memory_monitor_is_named_with_the_node_s_use():
    from claims_search.search.trial import failure_reason

    ray_says = ("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nray.exceptions.OutOfMemoryError: "
                "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.2, ID: ab12) "
                "was 22.71GB used / 23.47GB limit (0.967)\nRefer to the documentation on how to address the out of "
                "memory issue: https://docs.ray.io/...")
    reason = failure_reason(ray_says)
    assert reason.startswith("a Ray Train worker was killed by Ray's memory monitor") and "\n" not in reason
    assert "(22.71 of 23.47 GB)" in reason and "batch_tokens" in reason
