"""Ray Train edge of a training run: the same job as ``training.execute``, in TorchTrainer workers.

Ray Train V2: each worker runs ``training.execute`` with its rank; ``prepare_model`` wraps the
model in DistributedDataParallel (gloo on CPU, NCCL on GPU; the loop autocasts to bf16 on
CUDA). Every rank calls ``ray.train.report`` at the same steps (it is a barrier); rank 0
attaches the loop's ``state_dict`` as a checkpoint, persisted under ``storage``. With
``FailureConfig(max_failures)`` Ray restarts failed workers and ``ray.train.get_checkpoint()``
hands them the latest state, so the run continues its step count. Running ``run_job`` again
with the same ``storage`` after the driver itself died restores from there too.

Works on its own (``ray.init`` happens on first use) and inside a Ray Tune function trainable
(a trial calls ``training.run_trial(..., workers=n)``, which uses ``run_phases``). On a small machine give the trial's
driver ~0 CPU (``tune.with_resources(fn, {"cpu": 0.01})``): the workers here take 0.99 CPU
each by default, so two trials fit on two CPUs instead of deadlocking.

Cost across workers: the loop meters each rank and sums tokens and FLOPs over ranks;
device-seconds = wall x workers.

``run_phases`` runs several jobs in order in ONE worker group (one ``fit``: the worker-group
start-up, and CUDA/NCCL init on GPUs, is paid once per trial, not once per job). Each
checkpoint carries ``phase.json`` (``{"phase": i, "done": bool}``), so a restarted worker group
skips the finished phases and continues the current one from its last checkpoint. Rank 0
writes each finished phase's outcome and final state to ``STORAGE/phases/<i>/`` before the
"phase done" report (a barrier), so later phases and the driver can read them::

    STORAGE/phases/<i>/outcome.json   execute()'s outcome of phase i
    STORAGE/phases/<i>/state.pt       its final loop state (a fine-tuning's init reads it)
"""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------- several jobs in one fit


def _phase_checkpoint(phase: int, done: bool, state: dict | None, name: str, metrics: dict) -> None:
    """``ray.train.report`` (a barrier: every rank calls it); rank 0 attaches a checkpoint
    holding ``phase.json`` and, for a phase in progress, the loop state."""
    import ray.train
    import torch

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "phase.json").write_text(json.dumps({"phase": phase, "done": done}))
        if state is not None:
            torch.save(state, Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)


def _write_phase(folder: Path, outcome: dict, state: dict) -> None:
    """Rank 0: a finished phase's outcome and final state, each written atomically."""
    import io

    import torch

    from claims_search.atomic import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(folder / "state.pt", buf.getvalue())
    atomic_write_bytes(folder / "outcome.json", json.dumps(outcome).encode())


def _phases_fn(config: dict) -> dict:
    """The Ray Train worker of ``run_phases``: run the phases in order in this worker group,
    skipping those a restored checkpoint marks finished."""
    import math

    import ray.train
    import ray.train.collective
    import ray.train.torch
    import torch

    from claims_search.training import execute

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    phases_dir = Path(config["storage"]) / "phases"
    first, state = 0, None
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restarted worker group, or a rerun with the same storage
        with restored.as_directory() as d:
            mark = json.loads((Path(d) / "phase.json").read_text())
            first = mark["phase"] + 1 if mark["done"] else mark["phase"]
            if not mark["done"]:
                state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    started_at = {"phase": first, "step": int(state["step"]) if state else 0}
    # Fault injection for tests: fail once, after the checkpoint at (phase, step), if not restored.
    fail = config.get("fail_at") if restored is None else None
    gate = config.get("max_loss")  # {"phase": i, "value": v}: stop after phase i if its loss >= v
    skipped = False

    for i in range(first, len(config["phases"])):
        if gate is not None and i == gate["phase"] + 1:
            # Rank 0 alone evaluated; it reads the finished phase's outcome and tells the others.
            stop = None
            if rank == 0:
                loss = json.loads((phases_dir / str(gate["phase"]) / "outcome.json").read_text())["val_loss"]
                stop = not math.isfinite(loss) or loss >= gate["value"]
            if ray.train.collective.broadcast_from_rank_zero(stop):
                skipped = True
                break
        phase = config["phases"][i]
        job = dict(phase["job"])
        if phase.get("init_from") is not None:  # e.g. a fine-tuning from this fit's pretraining
            job["init"] = str(phases_dir / str(phase["init_from"]))
        if state is None and phase.get("init_state"):
            state = torch.load(phase["init_state"], map_location="cpu", weights_only=True)
        last = {"state": state}  # the final state: the last checkpoint (the loop saves its last step)

        def on_checkpoint(st: dict, i: int = i) -> None:
            last["state"] = st
            _phase_checkpoint(i, False, st, f"phase{i:02d}_step_{st['step']:08d}",
                              {"phase": i, "step": st["step"], "tokens": st["cost"]["tokens"]})
            if fail is not None and fail[0] == i and st["step"] >= fail[1]:
                raise RuntimeError(f"injected failure in phase {i} at step {st['step']} (fail_at)")

        outcome = execute(
            job,
            device=ray.train.torch.get_device(),
            rank=rank,
            world_size=world,
            prepare=lambda model: ray.train.torch.prepare_model(model) if world > 1 else model,
            state=state,
            on_checkpoint=on_checkpoint,
            checkpoint_every=config["checkpoint_every"],
        )
        state = None
        if rank == 0:
            (phases_dir / str(i)).mkdir(parents=True, exist_ok=True)
            _write_phase(phases_dir / str(i), {**outcome, "attempt_started_at": started_at}, last["state"])
        # The barrier: once it returns, phase i's files exist for every rank and the driver.
        _phase_checkpoint(i, True, None, f"phase{i:02d}_done", {"phase": i, "done": 1})
    return {"started_at": started_at, "skipped": skipped}


def run_phases(
    phases: list[dict],
    storage: str | Path,
    *,
    workers: int,
    use_gpu: bool = False,
    checkpoint_every: int = 200,
    max_failures: int = 2,
    resources_per_worker: dict | None = None,
    fail_at: tuple[int, int] | None = None,
    max_loss: dict | None = None,
) -> list[tuple[dict, Path] | None]:
    """Run several ``training`` jobs in order in ONE TorchTrainer fit on ``workers`` workers.

    ``phases``: ``[{"job": job, "init_state": state file | None, "init_from": phase index |
    None}]``; ``init_from=k`` initialises the job's encoder from phase k's final state.
    ``max_loss={"phase": k, "value": v}`` skips the phases after k when phase k's ``val_loss``
    is non-finite or >= v. ``fail_at=(phase, step)`` makes every worker fail once after that
    checkpoint (tests). Returns, per phase, (rank 0's outcome, its final state file), or None
    for a skipped phase. Files live under ``storage`` (a path every node can reach).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ClaimsSearchError(f"--workers: must be at least 1, got {workers}")
    storage = Path(storage).resolve()
    (storage / "phases").mkdir(parents=True, exist_ok=True)
    resources = resources_per_worker or ({"CPU": 0.99, "GPU": 1} if use_gpu else {"CPU": 0.99})
    trainer = TorchTrainer(
        _phases_fn,
        train_loop_config={"phases": phases, "storage": str(storage), "checkpoint_every": checkpoint_every,
                           "fail_at": fail_at, "max_loss": max_loss},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name="ray", storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()  # raises TrainingFailedError once max_failures is spent
    if result.return_value is None:
        raise RuntimeError(f"Ray Train run under {storage} returned nothing (error: {result.error})")
    log.info("ray train: %d phase(s); the last worker group started at phase %d, step %d",
             len(phases), result.return_value["started_at"]["phase"], result.return_value["started_at"]["step"])
    out: list[tuple[dict, Path] | None] = []
    for i in range(len(phases)):
        folder = storage / "phases" / str(i)
        if not (folder / "outcome.json").exists():
            if not result.return_value["skipped"]:
                raise RuntimeError(f"Ray Train run under {storage}: phase {i} left no outcome")
            out.append(None)
            continue
        out.append((json.loads((folder / "outcome.json").read_text()), folder / "state.pt"))
    return out
