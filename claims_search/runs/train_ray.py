"""Ray Train edge of training: jobs (``worker.execute``) run in TorchTrainer workers.

Ray Train V2: each worker runs ``worker.execute`` with its rank; ``prepare_model`` wraps the
model in DistributedDataParallel (gloo on CPU, NCCL on GPU; the loop autocasts to bf16 on
CUDA). Every rank calls ``ray.train.report`` at the same steps (it is a barrier); rank 0
attaches the loop's state as a checkpoint. With ``FailureConfig(max_failures)`` Ray restarts a
failed worker group and ``ray.train.get_checkpoint()`` hands it the latest state, so the run
continues its step count. Running again with the same ``storage`` after the driver itself died
restores from there too.

``run_phases`` runs several jobs in order in ONE worker group (one ``fit``: the worker-group
start-up, and CUDA/NCCL init on GPUs, is paid once per trial, not once per job); ``run_job`` is
one phase of it. Each checkpoint carries ``phase.json`` (``{"phase": i, "done": bool}``), so a
restarted worker group skips the finished phases and continues the current one.

Nothing crosses nodes through a local path. ``storage`` is a local path (one machine, or a
mount shared at the same path by every node) or a URI (``s3://``, ``gs://``...); Ray's run
state, the checkpoints and every phase's files live there, through one pyarrow filesystem::

    STORAGE/ray/...                   Ray Train's run (storage marker, checkpoints)
    STORAGE/plan.json                 what was asked: a different plan starts afresh
    STORAGE/phases/<i>/outcome.json   rank 0's outcome of phase i (aggregates only)
    STORAGE/phases/<i>/state.pt       its final loop state (a fine-tuning's init reads it)

Rank 0 writes a finished phase's files before the "phase done" report (a barrier); a rank that
needs a state copies it to its own node's scratch folder (``$TMPDIR/claims-search-scratch``),
which it removes when it finishes. The driver copies the final states it returns likewise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from claims_search import storage as st
from claims_search.model.cost import devices_held
from claims_search.errors import ClaimsSearchError

log = logging.getLogger(__name__)

SCRATCH = "claims-search-scratch"


@dataclass(frozen=True)
class PhasesResult:
    """What ``run_phases`` returns: per phase (rank 0's outcome, a local copy of its final
    state) or None for a phase skipped after divergence; where the last worker group started;
    the node id of every rank of that group."""

    phases: list[tuple[dict, Path] | None]
    started_at: dict
    rank_nodes: list[str] = field(default_factory=list)
    # Where the fit's time went before the first phase (seconds, rank 0 of the last worker
    # group): "scheduling_wait" (its placement group waiting for resources) and "worker_start"
    # (the rest until the train function ran: actor start, imports, process group; a group
    # restarted after a failure also counts the lost attempts here).
    startup: dict = field(default_factory=dict)


def _scratch(storage: str, *parts: str) -> Path:
    """This node's scratch folder for copies of ``storage``'s files (never shared)."""
    key = hashlib.sha256(storage.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / SCRATCH / key / Path(*parts)


def _local_state(storage: str, phase: int, who: str) -> Path:
    """Phase ``phase``'s final state as a local file: itself on a local storage, else a copy."""
    src = st.join(storage, "phases", str(phase), "state.pt")
    if st.is_local(storage):
        return Path(src)
    return st.download(src, _scratch(storage, who, "phases", str(phase), "state.pt"))


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


def _write_phase(storage: str, phase: int, outcome: dict, state: dict) -> None:
    """Rank 0: a finished phase's outcome and final state, to storage (state first: the
    outcome's presence says the phase is complete)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    st.write_bytes(st.join(storage, "phases", str(phase), "state.pt"), buf.getvalue())
    st.write_bytes(st.join(storage, "phases", str(phase), "outcome.json"), json.dumps(outcome).encode())


def _rank_nodes() -> list[str]:
    """The node id of every rank (an all-gather over the worker group's process group)."""
    import ray
    import torch.distributed as dist

    me = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [me]
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, me)
    return nodes


def _scheduling_wait() -> float | None:
    """Seconds this worker's placement group waited for resources (Ray's own record of it)."""
    import ray.util

    try:
        pg = ray.util.get_current_placement_group()
        if pg is None:
            return None
        stats = ray.util.placement_group_table(pg).get("stats") or {}
        return float(stats["end_to_end_creation_latency_ms"]) / 1000
    except Exception:  # noqa: BLE001 - a timing, never worth failing a trial for
        return None


def _phases_fn(config: dict) -> dict:
    """The Ray Train worker: run the phases in order in this worker group, skipping those a
    restored checkpoint marks finished."""
    import time

    entered = time.time()  # wall clock: the driver compares it with its own (NTP across nodes)
    import ray.train
    import ray.train.collective
    import ray.train.torch
    import torch

    from claims_search.runs.worker import diverged, execute

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    storage = config["storage"]
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
    gate = config.get("max_loss")  # {"phase": i, "value": v}: stop after phase i if it diverged
    skipped = False
    nodes = _rank_nodes()
    try:
        for i in range(first, len(config["phases"])):
            if gate is not None and i == gate["phase"] + 1:
                # Rank 0 alone evaluated; it reads the finished phase's outcome and tells the others.
                stop = None
                if rank == 0:
                    outcome = json.loads(st.read_bytes(st.join(storage, "phases", str(gate["phase"]), "outcome.json")))
                    # Diverged, or stopped at a rung by the search policy.
                    stop = diverged(outcome["val_loss"], gate["value"]) or (
                        (outcome.get("rungs") or {}).get("stopped_at") is not None)
                if ray.train.collective.broadcast_from_rank_zero(stop):
                    skipped = True
                    break
            phase = config["phases"][i]
            job = dict(phase["job"])
            if phase.get("init_from") is not None:  # e.g. a fine-tuning from this fit's pretraining
                job["init"] = str(_local_state(storage, phase["init_from"], f"rank{rank}").parent)
            if state is None and phase.get("init_state"):
                state = torch.load(phase["init_state"], map_location="cpu", weights_only=True)
            last = {"state": state}  # the final state: the last checkpoint (the loop saves its last step)

            def on_checkpoint(s: dict, i: int = i) -> None:
                last["state"] = s
                _phase_checkpoint(i, False, s, f"phase{i:02d}_step_{s['step']:08d}",
                                  {"phase": i, "step": s["step"], "tokens": s["cost"]["tokens"]})
                if fail is not None and fail[0] == i and s["step"] >= fail[1]:
                    if len(fail) > 2 and fail[2] == "cuda_oom":  # what a GPU too small raises
                        raise torch.OutOfMemoryError(f"CUDA out of memory. Injected in phase {i} (fail_at)")
                    raise RuntimeError(f"injected failure in phase {i} at step {s['step']} (fail_at)")

            outcome = execute(
                job,
                device=ray.train.torch.get_device(),
                rank=rank,
                world_size=world,
                devices_per_worker=config.get("devices_per_worker", 1.0),
                prepare=lambda model: ray.train.torch.prepare_model(model) if world > 1 else model,
                state=state,
                on_checkpoint=on_checkpoint,
                checkpoint_every=config["checkpoint_every"],
                ask_rung=_asker(gate, i, rank),
                loader_workers=_loader_workers(),
            )
            state = None
            best = outcome.pop("_best_model", None)
            if rank == 0:
                final = last["state"] if best is None else {**last["state"], "model": best}
                _write_phase(storage, i, {**outcome, "attempt_started_at": started_at}, final)
            # The barrier: once it returns, phase i's files exist for every rank and the driver.
            _phase_checkpoint(i, True, None, f"phase{i:02d}_done", {"phase": i, "done": 1})
    except Exception as e:
        from claims_search.model.memory import is_cuda_oom

        # A GPU out of memory fails the same way on every retry: one worker (no rank waits on
        # it in a collective) returns it instead of raising, so Ray Train does not restart it.
        if world == 1 and is_cuda_oom(e):
            return {"cuda_oom": str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__}
        raise
    finally:
        shutil.rmtree(_scratch(storage, f"rank{rank}"), ignore_errors=True)
    return {"started_at": started_at, "skipped": skipped, "rank_nodes": nodes, "entered": entered,
            "scheduling_wait": _scheduling_wait() if rank == 0 else None}


def asker(spec: dict):
    """``ask(fraction, loss) -> (go_on, reason)`` for a pretraining's rank 0: one call to the
    search's policy actor (``search_policy.PolicyHolder``, named ``spec["actor"]`` in
    ``spec["namespace"]``) per rung, for size ``spec["key"]``."""
    import ray

    def ask(fraction: float, loss: float) -> tuple[bool, str]:
        actor = ray.get_actor(spec["actor"], namespace=spec["namespace"])
        go_on, reason = ray.get(actor.at_rung.remote(spec["key"], fraction, loss))
        log.info("size %s at rung %g: loss %.4f -> %s", spec["key"], fraction, loss, reason)
        return go_on, reason

    return ask


def _loader_workers() -> int:
    """Batch-building processes for this worker: its CPUs beyond the training loop and the
    prefetch thread (used on a GPU only; ``worker.execute``)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(0, int(cpus) - 2)


def _asker(gate: dict | None, phase: int, rank: int):
    """Rank 0 of the gated phase asks the search policy at its rungs (:func:`asker`)."""
    if gate is None or gate.get("ask") is None or phase != gate["phase"] or rank != 0:
        return None
    return asker(gate["ask"])


def _plan_matches(storage: str, plan: dict) -> None:
    """Keep an interrupted run of the same plan (Ray Train resumes it); start afresh otherwise."""
    where = st.join(storage, "plan.json")
    if st.exists(where):
        try:
            same = json.loads(st.read_bytes(where)) == plan
        except ValueError:
            same = False
        if not same:
            log.warning("%s: an interrupted run with other settings; starting afresh", storage)
            for part in ("ray", "phases"):
                st.remove(st.join(storage, part))
    st.write_bytes(where, json.dumps(plan, indent=2).encode())


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
    local_dir: str | Path | None = None,
) -> PhasesResult:
    """Run several ``training`` jobs in order in ONE TorchTrainer fit on ``workers`` workers.

    ``phases``: ``[{"job": job, "init_state": state file | None, "init_from": phase index |
    None}]``; ``init_from=k`` initialises the job's encoder from phase k's final state
    (``init_state`` must be a path every worker can read: only for a local ``storage``).
    ``max_loss={"phase": k, "value": v}`` skips the phases after k when phase k diverged
    (``worker.diverged``). ``fail_at=(phase, step)`` makes every worker fail once after that
    checkpoint (tests; ``(phase, step, "cuda_oom")``: with a CUDA out-of-memory error, which one
    worker returns unretried). Final states of a remote ``storage`` are copied into ``local_dir``
    (default: this node's scratch folder, left to the caller). ``resources_per_worker`` defaults to
    ``{"CPU": 0.99}`` (+ 1 GPU with ``use_gpu``).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ClaimsSearchError(f"--workers: must be at least 1, got {workers}")
    storage = st.normalize(storage)
    if st.is_uri(storage) and any(p.get("init_state") for p in phases):
        raise ClaimsSearchError(f"{storage}: init_state files are local to this node; not with remote storage")
    _plan_matches(storage, {"phases": phases, "workers": workers, "max_loss": max_loss})
    resources = resources_per_worker or ({"CPU": 0.99, "GPU": 1} if use_gpu else {"CPU": 0.99})
    held = devices_held(resources)
    storage_path, storage_fs = st.ray_storage(storage) if st.is_uri(storage) else (storage, None)
    fit_started = time.time()
    trainer = TorchTrainer(
        _phases_fn,
        train_loop_config={"phases": phases, "storage": storage, "checkpoint_every": checkpoint_every,
                           "fail_at": fail_at, "max_loss": max_loss, "devices_per_worker": held},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name="ray", storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()  # raises TrainingFailedError once max_failures is spent
    ret = result.return_value
    if ret is None:
        raise RuntimeError(f"Ray Train run under {storage} returned nothing (error: {result.error})")
    if ret.get("cuda_oom"):
        from claims_search.runs.failures import failure_reason

        raise ClaimsSearchError(f"{failure_reason(ret['cuda_oom'])} (not retried: {ret['cuda_oom']})")
    log.info("ray train: %d phase(s); the last worker group started at phase %d, step %d",
             len(phases), ret["started_at"]["phase"], ret["started_at"]["step"])
    out: list[tuple[dict, Path] | None] = []
    for i in range(len(phases)):
        where = st.join(storage, "phases", str(i), "outcome.json")
        if not st.exists(where):
            if not ret["skipped"]:
                raise RuntimeError(f"Ray Train run under {storage}: phase {i} left no outcome")
            out.append(None)
            continue
        state = _local_state(storage, i, "driver")
        if local_dir is not None and st.is_uri(storage):
            Path(local_dir).mkdir(parents=True, exist_ok=True)
            state = Path(shutil.move(state, Path(local_dir) / f"phase{i}-state.pt"))
        out.append((json.loads(st.read_bytes(where)), state))
    if local_dir is not None:
        shutil.rmtree(_scratch(storage, "driver"), ignore_errors=True)
    wait = ret.get("scheduling_wait") or 0.0
    startup = {"scheduling_wait": wait, "worker_start": max(0.0, ret["entered"] - fit_started - wait)}
    return PhasesResult(out, ret["started_at"], ret.get("rank_nodes", []), startup)


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
    """One job on ``workers`` Ray Train workers: ``run_phases`` with one phase. Returns (rank
    0's outcome, its final state file). ``fail_at_step`` makes every worker fail once after
    that step's checkpoint (tests)."""
    done = run_phases([{"job": job, "init_state": str(init_state) if init_state else None, "init_from": None}],
                      storage, workers=workers, use_gpu=use_gpu, checkpoint_every=checkpoint_every,
                      max_failures=max_failures, resources_per_worker=resources_per_worker,
                      fail_at=None if fail_at_step is None else (0, fail_at_step))
    return done.phases[0]
