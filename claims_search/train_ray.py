"""Ray Train edge of a training run: the same job as ``training.execute``, in TorchTrainer workers.

Ray Train V2: each worker runs ``training.execute`` with its rank; ``prepare_model`` wraps the
model in DistributedDataParallel (gloo on CPU, NCCL on GPU; the loop autocasts to bf16 on
CUDA). Every rank calls ``ray.train.report`` at the same steps (it is a barrier); rank 0
attaches the loop's ``state_dict`` as a checkpoint, persisted under ``storage``. With
``FailureConfig(max_failures)`` Ray restarts failed workers and ``ray.train.get_checkpoint()``
hands them the latest state, so the run continues its step count. Running ``run_job`` again
with the same ``storage`` after the driver itself died restores from there too.

Works on its own (``ray.init`` happens on first use) and inside a Ray Tune function trainable
(a trial calls ``training.finetune(..., workers=n)``). On a small machine give the trial's
driver ~0 CPU (``tune.with_resources(fn, {"cpu": 0.01})``): the workers here take 0.99 CPU
each by default, so two trials fit on two CPUs instead of deadlocking.

Cost across workers: the loop meters each rank and sums tokens and FLOPs over ranks;
device-seconds = wall x workers.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from claims_search.errors import ClaimsSearchError

log = logging.getLogger(__name__)


def _train_fn(config: dict) -> dict:
    """The Ray Train worker: restore, run ``training.execute``, checkpoint through Ray."""
    import ray.train
    import ray.train.torch
    import torch

    from claims_search.training import execute

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    state = None
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restarted worker group, or a rerun with the same storage
        with restored.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    elif config.get("init_state"):
        state = torch.load(config["init_state"], map_location="cpu", weights_only=True)
    # Fault injection for tests: fail once, after the checkpoint at this step, if not restored.
    fail_at = config.get("fail_at_step") if restored is None else None

    def on_checkpoint(state: dict) -> None:
        metrics = {"step": state["step"], "tokens": state["cost"]["tokens"]}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(state, Path(d) / "state.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"step_{state['step']:08d}")
        else:
            ray.train.report(metrics)
        if fail_at is not None and state["step"] >= fail_at:
            raise RuntimeError(f"injected failure at step {state['step']} (fail_at_step)")

    return execute(
        config["job"],
        device=ray.train.torch.get_device(),
        rank=rank,
        world_size=world,
        prepare=lambda model: ray.train.torch.prepare_model(model) if world > 1 else model,
        state=state,
        on_checkpoint=on_checkpoint,
        checkpoint_every=config["checkpoint_every"],
    )


def run_job(
    job: dict,
    storage: str | Path,
    *,
    workers: int,
    use_gpu: bool = False,
    init_state: str | Path | None = None,
    checkpoint_every: int = 200,
    max_failures: int = 2,
    resources_per_worker: dict | None = None,
    fail_at_step: int | None = None,
) -> tuple[dict, Path]:
    """Run a ``training`` job on ``workers`` Ray Train workers; return (rank 0's outcome, the
    final state file). Checkpoints live under ``storage`` (a path every node can reach).

    ``resources_per_worker`` defaults to ``{"CPU": 0.99}`` (+ 1 GPU with ``use_gpu``).
    ``fail_at_step`` makes every worker fail once after that step's checkpoint (tests).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ClaimsSearchError(f"--workers: must be at least 1, got {workers}")
    storage = Path(storage).resolve()
    resources = resources_per_worker or ({"CPU": 0.99, "GPU": 1} if use_gpu else {"CPU": 0.99})
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"job": job, "init_state": str(init_state) if init_state else None,
                           "checkpoint_every": checkpoint_every, "fail_at_step": fail_at_step},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name="ray", storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()  # raises TrainingFailedError once max_failures is spent
    outcome = result.return_value
    if outcome is None:
        raise RuntimeError(f"Ray Train run under {storage} returned nothing (error: {result.error})")
    final = storage / "final_state.pt"
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            shutil.copyfile(Path(d) / "state.pt", final)
    elif init_state is not None:  # nothing trained: the run was already at its step count
        shutil.copyfile(init_state, final)
    else:
        raise RuntimeError(f"Ray Train run under {storage} reported no checkpoint")
    return outcome, final
