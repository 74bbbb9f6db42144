"""One trial = one architecture: pretrain once, fine-tune on every task, report per-task results.

Runs as a Ray Tune function trainable; its training is one `training.pretrain_and_finetune`
call: all phases in ONE Ray Train fit (``workers >= 1``; the worker group starts once per
trial), or in this process (``workers_per_trial: 0``). The only Ray calls here are
``ray.tune.report``, once at the end with ``status`` and every objective, and the node id.

Nothing crosses nodes through a local path: the trial reads the Space object validated when
the search started (never the user's path again), its Ray Train run keeps its state under
``<artifacts>/<trial_id>/train`` (the search's ``--storage``, a URI on a cluster), and its
finished checkpoints and ``final.json`` go there too. The driver's node-local folder is
scratch, removed when the trial ends.

A trial that fails in a way a retry would repeat (a configuration our checks refuse, or a Ray
Train run that spent its own retries, e.g. a model the workers' memory cannot hold) reports
``status: failed`` with a one-line ``reason``; Tune's own retry is kept for other errors (its
driver's node lost). No ``final.json`` is written for it.

A trial whose pretraining diverged (non-finite loss, or no better than guessing uniformly
over the vocabulary), or that the ladder policy stopped at a rung (``reason`` and ``rung`` say
where and why), skips its fine-tunings and reports ``status: pruned``: the searcher is
told PRUNED and the frontier never sees it (see `search_tune.GuardedOptunaSearch`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claims_search.model import memory
from claims_search.model.cost import Cost
from claims_search.runs.failures import failure_reason
from claims_search.search.objective import COST_FIELDS, directions, objective_values


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares (passed with ``tune.with_parameters``)."""

    space: Any  # space.Space, validated once when the search started
    cache_dir: str
    artifacts: str  # folder (shared storage on a cluster) for each trial's checkpoints
    tasks: tuple[str, ...]
    metric: str
    cost: str  # the space's cost measure: device_seconds | flops | wall_seconds
    workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    vocab_size: int
    worker_resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources per Train worker
    # The ladder policy's actor (search_policy.py) and its rungs: the pretraining asks it there.
    policy_actor: str | None = None
    policy_namespace: str = ""
    rungs: tuple[float, ...] = ()


def cost_value(cost: dict | None, measure: str) -> float | None:
    """A `cost.Cost` dict read in the space's cost measure."""
    if cost is None:
        return None
    v = cost.get(COST_FIELDS[measure])
    return None if v is None else float(v)


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune trainable: ``config`` is a Tune sample of the space's parameters.

    The final result is also kept as ``<trial>/final.json``: a trial that finished just before
    its driver died (Tune had not yet saved that it ended) reports it again on ``--resume``
    instead of training again.
    """
    from ray import tune

    from claims_search import storage as st

    trial_id = tune.get_context().get_trial_id()
    remote = st.is_uri(ctx.artifacts)
    # Runs write locally; on remote storage each finished run's folder is uploaded next to it.
    out = (Path(tempfile.gettempdir()) / "claims-search-trials" if remote else Path(ctx.artifacts)) / trial_id
    final = st.join(ctx.artifacts, trial_id, "final.json")
    sample = json.dumps(config, sort_keys=True, default=str)
    if st.exists(final):
        try:
            result = json.loads(st.read_bytes(final))
        except ValueError:  # a torn write: train again
            result = {}
        if result.get("trial_config_sample") == sample:
            tune.report(result)
            return
    started = time.monotonic()
    try:
        result = _train(config, ctx, trial_id, out, remote)
        result["trial_wall_s"] = time.monotonic() - started  # start-up, storage and training
    except Exception as e:
        reason = _final_failure(e)
        if reason is None:
            raise  # Tune retries it (FailureConfig)
        # Trying again would fail the same way: the trial ends failed, with its reason.
        try:
            cfg = json.dumps(ctx.space.sample_to_trial_config(config), default=str)
        except Exception:  # noqa: BLE001 - the configuration itself was what failed
            cfg = "{}"
        import ray

        tune.report({**{m: None for m in directions(ctx.space)[0]}, "status": "failed", "reason": reason,
                     "trial_config": cfg, "node_id": ray.get_runtime_context().get_node_id(),
                     "trial_wall_s": time.monotonic() - started})
        return
    finally:
        if remote:  # uploaded (or failed): the node's scratch copy can go
            shutil.rmtree(out, ignore_errors=True)
    result["trial_config_sample"] = sample
    st.write_bytes(final, json.dumps(result).encode())
    tune.report(result)


def _final_failure(e: BaseException) -> str | None:
    """The one-line reason of a failure that retrying the trial would only repeat, else None: a
    check of ours that refused the configuration (``ClaimsSearchError``, a one-worker run's CUDA
    out of memory included: ``train_ray`` returns it unretried), a Ray Train run that already
    spent its own retries (``TrainingFailedError``; each retry restarted its workers), or a CUDA
    out of memory in this process."""
    from ray.train import TrainingFailedError

    from claims_search.errors import ClaimsSearchError

    if isinstance(e, ClaimsSearchError):
        return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    if isinstance(e, TrainingFailedError):
        return f"Ray Train gave up after its retries: {failure_reason(str(e))}"
    if memory.is_cuda_oom(e):  # in-process training (workers_per_trial: 0): the same on every try
        return failure_reason(str(e) or "CUDA out of memory")
    return None


def _train(config: dict, ctx: TrialContext, trial_id: str, out: Path, remote: bool) -> dict:
    """Pretrain once and fine-tune on every task in one Ray Train fit; the trial's result."""
    import ray

    from claims_search import storage as st
    from claims_search.runs import training
    from claims_search.model.loop import FinetuneSettings, PretrainSettings
    from claims_search.model.sizes import ModelSize

    space = ctx.space
    cfg = space.sample_to_trial_config(config)
    size = ModelSize(**cfg["model"])
    cache_dir = ctx.cache_dir  # a path or a URI: training localizes it on every worker's node

    def keep(folder: Path) -> str:
        return st.upload(folder, st.join(ctx.artifacts, trial_id, folder.name)) if remote else str(folder)

    run_kw = dict(workers=ctx.workers or None, use_gpu=ctx.use_gpu)
    if ctx.workers:
        res = {"CPU": ctx.cpus_per_worker * 0.99}
        if ctx.gpus_per_worker:
            res["GPU"] = ctx.gpus_per_worker
        res.update(dict(ctx.worker_resources))
        run_kw["ray_options"] = {"resources_per_worker": res}
        # The Train run's state lives on the search's storage, never on this node's disk.
        run_kw["storage"] = st.join(ctx.artifacts, trial_id, "train")

    if ctx.policy_actor:  # train_ray.asker reads it on the pretraining's rank 0
        from claims_search.model.sizes import size_key

        run_kw["rungs"] = {"fractions": list(ctx.rungs), "actor": ctx.policy_actor,
                           "namespace": ctx.policy_namespace, "key": size_key(cfg["model"])}
    # Fine-tunings are skipped in the same fit when pretraining did no better than a uniform guess
    # (or the search policy stopped it at a rung).
    done = training.pretrain_and_finetune(cache_dir, size, PretrainSettings(**cfg["pretrain"]),
                                          FinetuneSettings(**cfg["finetune"]), list(ctx.tasks), out,
                                          max_pretrain_loss=math.log(ctx.vocab_size), **run_kw)
    pre, fts = done.pretrain, done.finetunes
    upload_started = time.monotonic()
    # From-scratch trials pretrain nothing and pay for nothing.
    pre_cost = pre.cost.to_dict() if pre is not None else Cost().to_dict()
    if pre is not None:
        keep(pre.checkpoint.parent)
    driver_node = ray.get_runtime_context().get_node_id()
    # Nested values travel as JSON strings: Tune flattens nested dicts on the way.
    base = {"node_id": driver_node, "rank_nodes": json.dumps(done.rank_nodes or [driver_node]),
            "trial_config": json.dumps(cfg), "n_params": size.n_params(ctx.vocab_size),
            "pretrain_val_loss": pre.val_loss if pre is not None else None, "pretrain_cost": json.dumps(pre_cost)}
    if done.diverged:
        # Tune insists every result carries the searcher's metrics: None for a pruned trial
        # (the guarded searcher tells Optuna PRUNED for anything without status "complete").
        unset = {m: None for m in directions(space)[0]}
        if pre.stopped:  # the search policy's verdict at a rung: charged what it trained, never on a frontier
            return {**base, **unset, "status": "pruned", "reason": pre.rungs["reason"],
                    "rung": pre.rungs["stopped_at"], "rung_losses": json.dumps(pre.rungs["losses"])}
        return {**base, **unset, "status": "pruned", "reason": f"pretraining loss {pre.val_loss:.3f} diverged"}

    per_task, results = {}, {}
    total = Cost.from_dict(pre_cost)
    for task in ctx.tasks:
        ft = fts[task]
        m = ft.metrics["tuning"]
        ft_cost = ft.cost.to_dict()
        task_cost = (cost_value(pre_cost, ctx.cost) or 0.0) + (cost_value(ft_cost, ctx.cost) or 0.0)
        per_task[task] = (m[ctx.metric], task_cost)
        folder = keep(ft.checkpoint.parent)
        results[task] = {"metrics": m, "finetune_cost": ft_cost, "checkpoint": st.join(folder, "checkpoint"),
                         "predictions": st.join(folder, "predictions", "tuning.parquet")}
        total = total + ft.cost
    total_cost = cost_value(total.to_dict(), ctx.cost)
    base["timings"] = json.dumps({**done.timings, "upload": time.monotonic() - upload_started})
    return {**base, "status": "complete", "tasks": json.dumps(results), "total_cost": json.dumps(total.to_dict()),
            **objective_values(space, per_task, total_cost)}
