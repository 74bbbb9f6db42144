"""Single training runs (claims_search.runs.training): pretrain, fine-tune, resume, bad input."""

import json
import shutil

import pytest

from claims_search.errors import ClaimsSearchError
from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.metrics import METRIC_KEYS
from claims_search.runs.training import finetune, pretrain, read_meta


TINY_PT = dict(steps=6, warmup=1, batch_tokens=1024, log_every=2)
TINY_FT = dict(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)


@pytest.fixture(scope="module")
def pretrained(recency_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pt"
    return pretrain(recency_cache, "debug", PretrainSettings(**TINY_PT), out)


def test_pretrain_writes_checkpoint_loss_and_cost(pretrained):
    assert pretrained.steps == 6 and pretrained.val_loss > 0
    meta = read_meta(pretrained.checkpoint)
    assert meta["kind"] == "pretrain" and meta["size"]["width"] == 32 and meta["vocab"]["size"] == 11
    result = json.loads((pretrained.checkpoint.parent / "result.json").read_text())
    assert result["cost"]["tokens"] == pretrained.cost.tokens > 0
    assert pretrained.cost.flops > 0 and pretrained.cost.n_devices == 1
    assert not pretrained.checkpoint.parent.with_name("pt.partial").exists()
    assert pretrained.splits_read == ("train", "tuning")  # trained on train, validation loss on tuning
    assert result["splits_read"] == ["train", "tuning"]


def test_finetune_from_checkpoint_keeps_costs_apart(recency_cache, pretrained, tmp_path):
    result = finetune(recency_cache, "antihypertensive_start", None, FinetuneSettings(**TINY_FT),
                      tmp_path / "ft", init_checkpoint=pretrained.checkpoint.parent,
                      eval_splits=("tuning", "held_out"), n_boot=100)
    assert set(result.metrics) == {"tuning", "held_out"}
    assert list(result.metrics["tuning"]) == list(METRIC_KEYS)
    assert result.metrics["held_out"]["n"] == 40
    assert result.splits_read == ("held_out", "train", "tuning")  # asked to evaluate on held_out: recorded
    assert result.pretrain_cost == pretrained.cost  # charged once, apart from fine-tuning
    assert result.cost.tokens > 0 and result.cost != pretrained.cost
    saved = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert saved["metrics"]["tuning"]["auroc"] == result.metrics["tuning"]["auroc"]
    assert "subject_id" not in json.dumps(saved)


def test_interrupted_run_resumes_and_continues_the_step_count(recency_cache, tmp_path):
    seen = []

    def stop_at_6(step, metrics):
        seen.append(step)
        if step == 6:
            raise KeyboardInterrupt  # killed at step 6, before its checkpoint: the last is step 4

    settings = PretrainSettings(**{**TINY_PT, "steps": 8})
    with pytest.raises(KeyboardInterrupt):
        pretrain(recency_cache, "debug", settings, tmp_path / "pt", checkpoint_every=2, on_report=stop_at_6)
    assert not (tmp_path / "pt").exists()  # nothing half-written in OUT
    assert (tmp_path / "pt.partial" / "state.pt").exists()

    again = pretrain(recency_cache, "debug", settings, tmp_path / "pt", checkpoint_every=2,
                     on_report=lambda step, m: seen.append(step))
    assert (again.resumed_from_step, again.steps) == (4, 8)
    assert seen == [2, 4, 6, 6, 8]  # steps 1-4 were not trained twice
    # A finished run is continued, not redone, when asked for more steps.
    longer = pretrain(recency_cache, "debug", PretrainSettings(**{**TINY_PT, "steps": 10}), tmp_path / "pt")
    assert (longer.resumed_from_step, longer.steps) == (8, 10)
    assert longer.cost.tokens > again.cost.tokens


def _no_training(step, metrics):
    raise AssertionError("training started")


@pytest.mark.parametrize(
    "size, message",
    [
        ({"width": 30, "depth": 1, "heads": 4}, "heads .4. must divide width .30."),
        ({"width": 32, "depth": 1, "heads": 2, "max_len": 128}, "prepared for up to 64 events"),
    ],
    ids=["heads-do-not-divide-width", "max-len-longer-than-cache"],
)
def test_bad_size_fails_before_training(recency_cache, tmp_path, size, message):
    with pytest.raises(ClaimsSearchError, match=message):
        pretrain(recency_cache, size, PretrainSettings(**TINY_PT), tmp_path / "pt", on_report=_no_training)
    assert not (tmp_path / "pt").exists() and not (tmp_path / "pt.partial").exists()


def test_missing_task_fails_before_training(recency_cache, tmp_path):
    with pytest.raises(ClaimsSearchError, match="task 'ckd_incidence' is not in the cache"):
        finetune(recency_cache, "ckd_incidence", "debug", FinetuneSettings(**TINY_FT), tmp_path / "ft",
                 on_report=_no_training)
    assert not (tmp_path / "ft").exists()


def test_checkpoint_from_another_vocabulary_or_size_fails_before_training(recency_cache, pretrained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(pretrained.checkpoint, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "vocab": {"size": 5000, "hash": "0123456789abcdef"}}))
    with pytest.raises(ClaimsSearchError, match="another vocabulary"):
        finetune(recency_cache, "antihypertensive_start", None, FinetuneSettings(**TINY_FT), tmp_path / "ft",
                 init_checkpoint=other, on_report=_no_training)
    with pytest.raises(ClaimsSearchError, match="size: the checkpoint is"):
        finetune(recency_cache, "antihypertensive_start", {"width": 64, "depth": 2, "heads": 2, "max_len": 64},
                 FinetuneSettings(**TINY_FT), tmp_path / "ft", init_checkpoint=pretrained.checkpoint,
                 on_report=_no_training)
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_debug_model_beats_chance_on_both_builtin_tasks(tmp_path):
    """Synthetic claims -> prepare -> pretrain debug -> fine-tune each built-in task, on CPU."""
    from claims_search.data.cache import Settings, write_cache
    from claims_search.data.labels import BUILTIN_TASKS, load_task
    from claims_search.data.synth import generate

    generate(tmp_path / "meds", 3000, 0, workers=1)
    prepared = tmp_path / "prepared"
    write_cache(tmp_path / "meds", prepared, [load_task(t) for t in BUILTIN_TASKS], Settings(max_len=64))
    pt = pretrain(prepared, "debug", PretrainSettings(steps=200, warmup=20, batch_tokens=4096, lr=2e-3),
                  tmp_path / "pt")
    assert pt.val_loss < 4.5  # a uniform guess over the ~240 codes scores ~5.5
    for task in BUILTIN_TASKS:
        ft = finetune(prepared, task, None, FinetuneSettings(steps=150, warmup=15, batch_tokens=4096, lr=2e-3),
                      tmp_path / f"ft-{task}", init_checkpoint=pt.checkpoint, n_boot=200)
        m = ft.metrics["tuning"]
        # Measured (seed 0, 2 threads): ckd 0.68 [0.56, 0.80], antihypertensive 0.75 [0.66, 0.86].
        assert m["auroc_low"] > 0.5, f"{task}: {m}"


def test_fine_tuning_and_lightgbm_learn_from_the_subset_only(recency_cache, tmp_path, monkeypatch):
    """``train_patients=80`` of the 160 train patients: fine-tuning and LightGBM learn from those
    80 patients' samples and no others (the few-labels regime). Checked twice for fine-tuning:
    the count the run records, and the train samples its batches actually drew (fitting and the
    early-stopping carve-out), seen by spying on ``batches.task_batches``."""
    from claims_search.model import batches as B
    from claims_search.runs.baseline import baseline
    from claims_search.runs.worker import open_cache

    with pytest.raises(ClaimsSearchError, match="train_patients must be >= 1"):
        FinetuneSettings(train_patients=0)
    train = open_cache(recency_cache).labels("antihypertensive_start", "train")
    assert train["subject_idx"].nunique() == len(train) == 160  # one sample per patient here

    drawn = set()  # train samples (rows of `train`) in any batch the fine-tuning built
    real = B.task_batches

    def spy(cache, task, split, **kw):
        for batch in real(cache, task, split, **kw):
            if split == "train":
                drawn.update(batch.sample_index.tolist())
            yield batch

    monkeypatch.setattr(B, "task_batches", spy)
    # 6 steps of 1,024 tokens draw every one of the 80 short histories.
    ft = finetune(recency_cache, "antihypertensive_start", "debug",
                  FinetuneSettings(**TINY_FT, train_patients=80), tmp_path / "ft", n_boot=50)
    assert ft.trained_on == {"samples": 80, "patients": 80} and ft.steps == 6
    assert len(drawn) == 80
    saved = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert saved["settings"]["train_patients"] == 80 and saved["trained_on"] == ft.trained_on
    assert saved["splits_read"] == ["train", "tuning"]  # evaluated on tuning; held_out never read

    lgbm = baseline(recency_cache, "antihypertensive_start", tmp_path / "lgbm", num_threads=1, n_boot=50,
                    train_patients=80)
    assert lgbm.trained_on == {"samples": 80, "patients": 80}
    assert json.loads((tmp_path / "lgbm" / "result.json").read_text())["trained_on"] == lgbm.trained_on
    # Without train_patients, LightGBM learns from all 160.
    assert baseline(recency_cache, "antihypertensive_start", num_threads=1, n_boot=50).trained_on["samples"] == 160


def test_the_search_policy_stops_a_pretraining_at_its_rung(recency_cache):
    """A pretraining with rungs asks at each (rank 0, in-process here) and ends where told."""
    from claims_search.data.cache import Cache
    from claims_search.model.sizes import ModelSize
    from claims_search.runs.training import _pretrain_job
    from claims_search.runs.worker import execute

    job, _ = _pretrain_job(Cache.open(recency_cache), recency_cache, ModelSize.from_name("debug"),
                           PretrainSettings(**{**TINY_PT, "steps": 8}))
    asked = []

    def ask(fraction, loss):  # the policy: go on at 1/4, stop at 1/2
        asked.append((fraction, loss))
        return fraction < 0.5, f"rung {fraction}: said so"

    out = execute({**job, "rungs": [0.25, 0.5]}, ask_rung=ask)
    assert [f for f, _ in asked] == [0.25, 0.5] and all(loss > 0 for _, loss in asked)
    assert out["step"] == 4  # half of 8 steps: stopped at the second rung
    assert out["rungs"] == {"losses": {"0.25": asked[0][1], "0.5": asked[1][1]}, "stopped_at": 0.5,
                            "reason": "rung 0.5: said so"}


def test_a_gpu_worker_draws_windows_in_its_spare_cpus_and_a_cpu_keeps_the_patient_stream():
    from claims_search.runs.worker import pretrain_loader

    assert pretrain_loader("cuda", 2) == {"draws": "window", "workers": 2}
    assert pretrain_loader("cpu", 2) == {"draws": "patient", "workers": 0}  # results on CPU unchanged
