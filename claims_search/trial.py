"""One trial = one architecture: pretrain once, fine-tune on every task, report per-task results.

Runs as a Ray Tune function trainable; its training is one `training.run_trial` call: all
phases in ONE Ray Train fit (``workers >= 1``; the worker group starts once per trial), or in
this process (``workers_per_trial: 0``). The only Ray calls here are ``ray.tune.report``, once
at the end with ``status`` and every objective, and the node id.

A trial whose pretraining diverged (non-finite loss, or no better than guessing uniformly
over the vocabulary) skips its fine-tunings and reports ``status: pruned``: the searcher is
told PRUNED and the frontier never sees it (see `search_tune.GuardedOptunaSearch`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from claims_search.objective import COST_FIELDS, directions, objective_values


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares (passed with ``tune.with_parameters``)."""

    space_path: str
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
    from claims_search.atomic import atomic_write_bytes

    trial_id = tune.get_context().get_trial_id()
    remote = st.is_uri(ctx.artifacts)
    # Runs write locally; on remote storage each finished run's folder is uploaded next to it.
    out = (Path(tempfile.gettempdir()) / "claims-search-trials" if remote else Path(ctx.artifacts)) / trial_id
    final = st.join(ctx.artifacts, trial_id, "final.json")
    sample = json.dumps(config, sort_keys=True, default=str)
    if st.exists(final):
        fs, inner = st.filesystem(final)
        with fs.open_input_stream(inner) as f:
            try:
                result = json.loads(f.read())
            except ValueError:  # a torn write: train again
                result = {}
        if result.get("trial_config_sample") == sample:
            tune.report(result)
            return
    result = _train(config, ctx, trial_id, out, remote)
    result["trial_config_sample"] = sample
    data = json.dumps(result).encode()
    if remote:
        fs, inner = st.filesystem(final)
        with fs.open_output_stream(inner) as f:
            f.write(data)
        shutil.rmtree(out, ignore_errors=True)  # uploaded: the node's scratch copy can go
    else:
        atomic_write_bytes(final, data)
    tune.report(result)


def _train(config: dict, ctx: TrialContext, trial_id: str, out: Path, remote: bool) -> dict:
    """Pretrain once and fine-tune on every task in one Ray Train fit; the trial's result."""
    import ray

    from claims_search import storage as st
    from claims_search import training
    from claims_search.loop import FinetuneSettings, PretrainSettings
    from claims_search.sizes import ModelSize
    from claims_search.space import load_space

    space = load_space(ctx.space_path)
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
        run_kw["ray_options"] = {"resources_per_worker": res}

    # Fine-tunings are skipped in the same fit when pretraining did no better than a uniform guess.
    pre, fts = training.run_trial(cache_dir, size, PretrainSettings(**cfg["pretrain"]),
                                  FinetuneSettings(**cfg["finetune"]), list(ctx.tasks), out,
                                  max_pretrain_loss=math.log(ctx.vocab_size), **run_kw)
    pre_cost = pre.cost.to_dict()
    keep(pre.checkpoint.parent)
    # Nested values travel as JSON strings: Tune flattens nested dicts on the way.
    base = {"node_id": ray.get_runtime_context().get_node_id(), "trial_config": json.dumps(cfg),
            "n_params": size.n_params(ctx.vocab_size), "pretrain_val_loss": pre.val_loss,
            "pretrain_cost": json.dumps(pre_cost)}
    if not math.isfinite(pre.val_loss) or pre.val_loss >= math.log(ctx.vocab_size):
        # Tune insists every result carries the searcher's metrics: None for a pruned trial
        # (the guarded searcher tells Optuna PRUNED for anything without status "complete").
        unset = {m: None for m in directions(space)[0]}
        return {**base, **unset, "status": "pruned", "reason": f"pretraining loss {pre.val_loss:.3f} diverged"}

    per_task, results = {}, {}
    total = pre.cost
    for task in ctx.tasks:
        ft = fts[task]
        m = ft.metrics["tuning"]
        ft_cost = ft.cost.to_dict()
        task_cost = (cost_value(pre_cost, ctx.cost) or 0.0) + (cost_value(ft_cost, ctx.cost) or 0.0)
        per_task[task] = (m[ctx.metric], task_cost)
        results[task] = {"metrics": m, "finetune_cost": ft_cost,
                         "checkpoint": st.join(keep(ft.checkpoint.parent), "checkpoint")}
        total = total + ft.cost
    total_cost = cost_value(total.to_dict(), ctx.cost)
    return {**base, "status": "complete", "tasks": json.dumps(results), "total_cost": json.dumps(total.to_dict()),
            **objective_values(space, per_task, total_cost)}
