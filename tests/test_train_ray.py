"""Training runs on Ray Train workers (claims_search.runs.train_ray): DDP on CPU, resume after failure."""

import json

import pytest

from claims_search.model.loop import FinetuneSettings
from claims_search.runs.training import finetune


SETTINGS = FinetuneSettings(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)


@pytest.mark.ray
def test_two_workers_give_the_same_result_format_and_resume_after_a_failure(recency_cache, tmp_path, ray_local):
    task = "antihypertensive_start"
    local = finetune(recency_cache, task, "debug", SETTINGS, tmp_path / "local", n_boot=50)
    # Both workers fail once right after the checkpoint at step 4; Ray Train restarts them and
    # they continue from that checkpoint.
    on_ray = finetune(recency_cache, task, "debug", SETTINGS, tmp_path / "ray", n_boot=50, workers=2,
                      checkpoint_every=2, ray_options={"fail_at_step": 4, "max_failures": 1})

    assert on_ray.metrics.keys() == local.metrics.keys()
    assert list(on_ray.metrics["tuning"]) == list(local.metrics["tuning"])
    assert on_ray.metrics["tuning"]["n"] == local.metrics["tuning"]["n"] == 40
    # From the step-4 checkpoint, or the step-2 one when the workers died before Ray Train's
    # controller collected the step-4 report (Ray's race): a resume either way, not a restart.
    assert on_ray.resumed_from_step in (2, 4) and on_ray.steps == 6

    # Cost across workers: device-seconds = wall x 2; tokens summed over both ranks, including
    # the segment before the failure (each rank reads its own budget of tokens per step).
    assert on_ray.cost.n_devices == 2
    assert on_ray.cost.device_s == pytest.approx(2 * on_ray.cost.wall_s)
    assert on_ray.cost.tokens > 1.5 * local.cost.tokens

    saved = json.loads((tmp_path / "ray" / "result.json").read_text())
    assert saved["workers"] == 2 and saved["step"] == 6
    assert (tmp_path / "ray" / "checkpoint" / "state.pt").exists()
    assert not (tmp_path / "ray.partial").exists()


@pytest.mark.ray
def test_a_gpu_out_of_memory_is_reported_as_such_and_not_retried(recency_cache, tmp_path, ray_local):
    from claims_search.errors import ClaimsSearchError
    from claims_search.model.loop import PretrainSettings
    from claims_search.model.sizes import PRESETS
    from claims_search.runs.train_ray import run_phases
    from claims_search.runs.training import _pretrain_job
    from claims_search.data.cache import Cache

    cache = Cache.open(recency_cache)
    job, _ = _pretrain_job(cache, recency_cache, PRESETS["debug"], PretrainSettings(steps=4, warmup=1, batch_tokens=512))
    # Any other error makes Ray Train restart the worker group (max_failures=2) from the step-2
    # checkpoint, and a restored run is never failed again (fail_at): a retry would succeed.
    # The run failing is the proof that the out-of-memory error was not retried.
    with pytest.raises(ClaimsSearchError) as e:
        run_phases([{"job": job}], tmp_path / "run", workers=1, checkpoint_every=2, max_failures=2,
                   fail_at=(0, 2, "cuda_oom"))
    assert str(e.value).startswith("CUDA out of memory: the training step does not fit the GPU")
    assert "not retried" in str(e.value)
