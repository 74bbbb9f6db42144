"""Single training runs: pretrain one size, fine-tune it on one task. Plain Python, no Ray.

``workers=None`` runs ``loop.TrainLoop`` in this process; ``workers >= 1`` hands the same job
to ``train_ray.run_job`` (Ray Train workers, DDP). Both paths run ``worker.execute``, so a run
gives the same result format either way.

Everything that can be checked is checked before any training starts (a size whose heads
don't divide its width, a ``max_len`` longer than the cache was prepared for, a checkpoint
from another vocabulary or of another size, a task missing from the cache, an evaluation
split with one class only) and raises ClaimsSearchError.

Output folder (written atomically when the run finishes)::

    OUT/result.json          kind, size, settings, vocab, val_loss | metrics, cost, steps,
                             splits_read (the splits the run read), trained_on (fine-tuning:
                             how many train samples and patients it learned from)
    OUT/checkpoint/meta.json the same facts, readable without torch
    OUT/checkpoint/state.pt  loop.TrainLoop.state_dict(): model, optimiser, step, cost so far

While a run is in progress its periodic checkpoints live in ``OUT.partial/`` (in-process:
``state.pt``; on Ray: Ray Train's storage); ``resume=True`` continues from there, and a
finished ``OUT`` whose settings differ only in ``steps`` is continued to the new step count.
Pretraining cost and fine-tuning cost are kept apart: ``FinetuneResult.cost`` is the
fine-tuning alone, ``FinetuneResult.pretrain_cost`` what its initial checkpoint cost.

:func:`pretrain_and_finetune` is one search trial's training: pretrain once, fine-tune on every
task, the same outputs as separate calls; on Ray all its phases share one Ray Train fit (one
worker-group start-up per trial instead of one per run), its state under a ``storage`` that may
be a URI (nothing crosses nodes through a local path: see ``train_ray``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from claims_search.model.cost import Cost
from claims_search.errors import ClaimsSearchError
from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.model.sizes import ModelSize
from claims_search.storage import normalize
from claims_search.runs.worker import diverged, execute, open_cache

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class PretrainResult:
    """A finished pretraining run: its checkpoint folder, tuning-split masked-code loss, cost."""

    checkpoint: Path
    val_loss: float
    cost: Cost
    steps: int = 0
    resumed_from_step: int = 0
    splits_read: tuple[str, ...] = ()  # the splits the run read from the cache (worker.execute)
    # The search policy's rungs (worker.Rungs.outcome): losses, and where and why it stopped.
    rungs: dict | None = None

    @property
    def stopped(self) -> bool:
        """Ended at a rung by the search policy (its fine-tunings are skipped)."""
        return bool(self.rungs and self.rungs.get("stopped_at") is not None)


@dataclass(frozen=True)
class FinetuneResult:
    """A finished fine-tuning run: ``{split: metrics}``, its own cost, its checkpoint folder,
    and the cost of the pretraining it started from (None when trained from scratch).
    ``trained_on``: how many train samples and patients it learned from (``worker.trained_on``);
    ``splits_read``: the splits it read from the cache, evaluation included."""

    metrics: dict[str, dict[str, float | int]]
    cost: Cost
    checkpoint: Path
    pretrain_cost: Cost | None = None
    steps: int = 0
    resumed_from_step: int = 0
    predictions: dict[str, Path] = field(default_factory=dict)  # split -> per-sample predictions
    trained_on: dict[str, int] = field(default_factory=dict)  # {"samples", "patients"}
    splits_read: tuple[str, ...] = ()


# ---------------------------------------------------------------- checks and checkpoints


def vocab_fingerprint(cache) -> dict:
    """``{"size", "hash"}`` of a cache's vocabulary (sha256 of its codes in token-id order)."""
    codes = "\n".join(cache.vocab.sort_values("token_id")["code"].astype(str))
    return {"size": int(cache.vocab_size), "hash": hashlib.sha256(codes.encode()).hexdigest()[:16]}


def read_meta(checkpoint: str | os.PathLike) -> dict:
    """The ``meta.json`` of a checkpoint folder (or of ``OUT/checkpoint`` given ``OUT``)."""
    path = Path(checkpoint)
    if (path / "checkpoint" / "meta.json").exists():
        path = path / "checkpoint"
    meta = path / "meta.json"
    if not meta.exists() or not (path / "state.pt").exists():
        raise ClaimsSearchError(f"{path}: not a claims-search checkpoint (needs meta.json and state.pt)")
    try:
        data = json.loads(meta.read_text())
    except ValueError as e:
        raise ClaimsSearchError(f"{meta}: not valid JSON: {e}") from None
    if data.get("format") != CHECKPOINT_FORMAT:
        raise ClaimsSearchError(f"{meta}: format: {data.get('format')!r} is not {CHECKPOINT_FORMAT}")
    data["path"] = str(path)
    return data


def as_size(size: ModelSize | dict | str) -> ModelSize:
    """A ModelSize from itself, its kwargs, or a preset name (validated: heads divide width...)."""
    if isinstance(size, ModelSize):
        return size
    if isinstance(size, str):
        return ModelSize.from_name(size)
    try:
        return ModelSize(**size)
    except TypeError as e:
        raise ClaimsSearchError(f"model size {size}: {e}") from None


def _check_common(cache, cache_dir, size: ModelSize, settings) -> None:
    if size.max_len > cache.max_len:
        raise ClaimsSearchError(
            f"{Path(cache_dir) / 'manifest.json'}: settings.max_len: the cache was prepared for up to "
            f"{cache.max_len} events per sequence, the model size asks for max_len={size.max_len} "
            f"(prepare again with --max-len {size.max_len}, or use a smaller max_len)"
        )
    if settings.batch_tokens < size.max_len + 1:
        raise ClaimsSearchError(
            f"batch_tokens ({settings.batch_tokens}) must hold one full sequence "
            f"(max_len + 1 = {size.max_len + 1})"
        )


def _check_init(meta: dict, cache, size: ModelSize) -> None:
    where = Path(meta["path"]) / "meta.json"
    if meta["vocab"]["hash"] != vocab_fingerprint(cache)["hash"]:
        raise ClaimsSearchError(
            f"{where}: vocab: the checkpoint was trained on another vocabulary "
            f"({meta['vocab']['size']} codes, hash {meta['vocab']['hash']}) than this cache's "
            f"({cache.vocab_size} codes, hash {vocab_fingerprint(cache)['hash']})"
        )
    if as_size(meta["size"]) != size:
        raise ClaimsSearchError(f"{where}: size: the checkpoint is {meta['size']}, the run asks for {size.to_dict()}")


def check_task(cache, cache_dir, task: str, splits: Sequence[str]) -> None:
    """The task is in the cache and has both classes in train and in each of ``splits``."""
    manifest = Path(cache_dir) / "manifest.json"
    if task not in cache.tasks:
        raise ClaimsSearchError(
            f"{manifest}: tasks: task {task!r} is not in the cache (has: {', '.join(cache.tasks) or 'none'})"
        )
    counts = cache.manifest["tasks"][task].get("splits", {})
    for split in ("train", *splits):
        c = counts.get(split, {"n": 0, "positives": 0})
        if c["n"] == 0 or c["positives"] in (0, c["n"]):
            raise ClaimsSearchError(
                f"{manifest}: tasks.{task}.splits.{split}: {c['n']} samples, {c['positives']} positive; "
                "training and AUROC/AUPRC need both classes"
            )


def _meta(kind: str, size: ModelSize, settings, vocab: dict, **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "size": size.to_dict(),
            "settings": settings.to_dict(), "vocab": vocab, **extra}


def _resume_state(partial: Path, out_dir: Path, meta: dict, resume: bool) -> Path | None:
    """The state file to continue from, if any: an interrupted run's, else a finished run that
    differs only in having fewer steps."""
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
        return None
    same = lambda m: ({**m["settings"], "steps": 0} == {**meta["settings"], "steps": 0}  # noqa: E731
                      and m["size"] == meta["size"] and m["vocab"] == meta["vocab"]
                      and m.get("task") == meta.get("task") and m.get("init") == meta.get("init"))
    if (partial / "meta.json").exists():
        if not same(json.loads((partial / "meta.json").read_text())):
            log.warning("%s: an interrupted run with other settings; starting afresh", partial)
            shutil.rmtree(partial, ignore_errors=True)
        elif (partial / "state.pt").exists():
            return partial / "state.pt"
    if (out_dir / "checkpoint" / "meta.json").exists():
        done = json.loads((out_dir / "checkpoint" / "meta.json").read_text())
        if same(done) and done["step"] <= meta["settings"]["steps"]:
            return out_dir / "checkpoint" / "state.pt"
    return None


# ---------------------------------------------------------------- drivers


def _device(use_gpu: bool):
    import torch

    if use_gpu and not torch.cuda.is_available():
        raise ClaimsSearchError("--gpu: no CUDA device is visible to torch")
    return "cuda" if use_gpu else "cpu"


def _run(job: dict, meta: dict, out_dir: Path, *, workers, use_gpu, resume, checkpoint_every, on_report,
         ray_options, ask_rung=None) -> tuple[dict, Path]:
    """Run ``job`` in-process or on Ray Train; return its outcome and the final state file."""
    import torch

    partial = out_dir.with_name(out_dir.name + ".partial")
    start = _resume_state(partial, out_dir, meta, resume)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    if workers is not None:
        from claims_search.runs.train_ray import run_job

        return run_job(job, partial, workers=workers, use_gpu=use_gpu, init_state=start,
                       checkpoint_every=checkpoint_every, **(ray_options or {}))

    from claims_search.atomic import atomic_write_bytes

    def save(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(partial / "state.pt", buf.getvalue())

    state = torch.load(start, map_location="cpu", weights_only=True) if start else None
    outcome = execute(job, device=_device(use_gpu), state=state, on_report=on_report,
                      on_checkpoint=save, checkpoint_every=checkpoint_every, ask_rung=ask_rung)
    best = outcome.pop("_best_model", None)
    last = partial / "state.pt" if (partial / "state.pt").exists() else start
    if best is not None and last is not None:  # the run's checkpoint is its best step, as its metrics are
        save({**torch.load(last, map_location="cpu", weights_only=True), "model": best})
    # No step trained (the run was already at its step count): the state it started from.
    return outcome, partial / "state.pt" if (partial / "state.pt").exists() else start


def _finish(out_dir: Path, state_file: Path, meta: dict, result: dict, predictions: dict | None = None) -> None:
    """The run's folder, atomically: checkpoint, result and (fine-tuning) ``predictions/<split>.parquet``."""
    from claims_search.runs import predictions as P
    from claims_search.atomic import atomic_dir

    partial = out_dir.with_name(out_dir.name + ".partial")
    with atomic_dir(out_dir) as tmp:
        (tmp / "checkpoint").mkdir()
        shutil.copyfile(state_file, tmp / "checkpoint" / "state.pt")
        (tmp / "checkpoint" / "meta.json").write_text(json.dumps({**meta, **result}, indent=2))
        (tmp / "result.json").write_text(json.dumps({**meta, **result}, indent=2))
        for split, cols in (predictions or {}).items():
            P.write(P.frame(cols["row"], cols["subject_idx"], cols["label"], cols["prob"]),
                    tmp / "predictions" / f"{split}.parquet")
    shutil.rmtree(partial, ignore_errors=True)


def _pretrain_job(cache, cache_dir, size: ModelSize, settings: PretrainSettings) -> tuple[dict, dict]:
    """Check a pretraining run and describe it: (the job for :func:`execute`, its meta)."""
    _check_common(cache, cache_dir, size, settings)
    meta = _meta("pretrain", size, settings, vocab_fingerprint(cache), task=None, init=None)
    job = {"kind": "pretrain", "cache_dir": normalize(cache_dir), "size": size.to_dict(),
           "settings": settings.to_dict()}
    return job, meta


def _finetune_job(cache, cache_dir, task: str, size: ModelSize, settings: FinetuneSettings, init: str | None,
                  eval_splits: Sequence[str], n_boot: int) -> tuple[dict, dict]:
    """Check a fine-tuning run (task and size; the init checkpoint is checked by the caller)
    and describe it: (the job for :func:`execute`, its meta)."""
    _check_common(cache, cache_dir, size, settings)
    meta = _meta("finetune", size, settings, vocab_fingerprint(cache), task=task, init=init,
                 eval_splits=list(eval_splits))
    job = {"kind": "finetune", "cache_dir": normalize(cache_dir), "size": size.to_dict(),
           "task": task, "settings": settings.to_dict(), "init": init, "eval_splits": list(eval_splits),
           "n_boot": n_boot}
    return job, meta


def _pretrain_result(out_dir: Path, meta: dict, outcome: dict, state_file: Path, workers) -> PretrainResult:
    cost = Cost.from_dict(outcome["cost"])
    result = {"step": outcome["step"], "resumed_from_step": outcome["resumed_from_step"],
              "val_loss": outcome["val_loss"], "cost": cost.to_dict(), "workers": workers,
              "splits_read": outcome.get("splits_read", []), "rungs": outcome.get("rungs")}
    _finish(out_dir, state_file, meta, result)
    return PretrainResult(out_dir / "checkpoint", outcome["val_loss"], cost, outcome["step"],
                          outcome["resumed_from_step"], tuple(result["splits_read"]), outcome.get("rungs"))


def _finetune_result(out_dir: Path, meta: dict, outcome: dict, state_file: Path, workers,
                     pretrain_cost: Cost | None) -> FinetuneResult:
    cost = Cost.from_dict(outcome["cost"])
    result = {"step": outcome["step"], "resumed_from_step": outcome["resumed_from_step"],
              "best_step": outcome.get("best_step", outcome["step"]),
              "carve_out_auprc": outcome.get("carve_out_auprc", []), "metrics": outcome["metrics"], "cost": cost.to_dict(),
              "pretrain_cost": pretrain_cost.to_dict() if pretrain_cost else None, "workers": workers,
              "trained_on": outcome.get("trained_on", {}), "splits_read": outcome.get("splits_read", [])}
    preds = outcome.get("predictions") or {}
    if "tuning" in preds:  # the cut for predicted classes, kept in meta.json (meds_predictions.py)
        from claims_search.runs.meds_predictions import choose_threshold

        result["threshold"] = choose_threshold(preds["tuning"]["label"], preds["tuning"]["prob"])
    _finish(out_dir, state_file, meta, result, preds)
    return FinetuneResult(outcome["metrics"], cost, out_dir / "checkpoint", pretrain_cost,
                          outcome["step"], outcome["resumed_from_step"],
                          {split: out_dir / "predictions" / f"{split}.parquet" for split in preds},
                          result["trained_on"], tuple(result["splits_read"]))


def pretrain(
    cache_dir: str | os.PathLike,
    size: ModelSize | dict | str,
    settings: PretrainSettings,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    use_gpu: bool = False,
    resume: bool = True,
    checkpoint_every: int = 200,
    on_report: Callable[[int, dict], None] | None = None,
    ray_options: dict | None = None,
    ask_rung: Callable[[float, float], tuple[bool, str]] | None = None,
) -> PretrainResult:
    """Masked-code pretraining of ``size`` on the cache's train split; validation loss on its
    tuning split. ``on_report(step, metrics)`` sees progress (in-process runs only);
    ``ray_options`` go to ``train_ray.run_job`` (max_failures, resources_per_worker, ...)."""

    cache = open_cache(cache_dir)
    job, meta = _pretrain_job(cache, cache_dir, as_size(size), settings)
    out_dir = Path(out_dir)
    outcome, state_file = _run(job, meta, out_dir, workers=workers, use_gpu=use_gpu, resume=resume,
                               checkpoint_every=checkpoint_every, on_report=on_report, ray_options=ray_options,
                               ask_rung=ask_rung)
    return _pretrain_result(out_dir, meta, outcome, state_file, workers)


def finetune(
    cache_dir: str | os.PathLike,
    task: str,
    size: ModelSize | dict | str | None,
    settings: FinetuneSettings,
    out_dir: str | os.PathLike,
    *,
    init_checkpoint: str | os.PathLike | None = None,
    eval_splits: Sequence[str] = ("tuning",),
    n_boot: int = 1000,
    workers: int | None = None,
    use_gpu: bool = False,
    resume: bool = True,
    checkpoint_every: int = 200,
    on_report: Callable[[int, dict], None] | None = None,
    ray_options: dict | None = None,
) -> FinetuneResult:
    """Fine-tune a classifier for ``task`` on the train split, from ``init_checkpoint`` (a
    pretraining output or its ``checkpoint/`` folder) or from scratch (no checkpoint, or
    ``settings.from_scratch``); report metrics on ``eval_splits`` with ``n_boot`` bootstrap
    replicates for the intervals. ``size=None`` takes the checkpoint's size."""

    cache = open_cache(cache_dir)
    check_task(cache, cache_dir, task, eval_splits)
    init = None
    if init_checkpoint is not None and settings.from_scratch:
        log.warning("from_scratch is set: ignoring the initial checkpoint %s", init_checkpoint)
    elif init_checkpoint is not None:
        init = read_meta(init_checkpoint)
        if size is None:
            size = as_size(init["size"])
    if size is None:
        raise ClaimsSearchError("finetune: give a model size, or an initial checkpoint to take it from")
    size = as_size(size)
    if init is not None:
        _check_init(init, cache, size)
    job, meta = _finetune_job(cache, cache_dir, task, size, settings,
                              str(Path(init["path"]).resolve()) if init else None, eval_splits, n_boot)
    out_dir = Path(out_dir)
    outcome, state_file = _run(job, meta, out_dir, workers=workers, use_gpu=use_gpu, resume=resume,
                               checkpoint_every=checkpoint_every, on_report=on_report,
                               ray_options=ray_options)
    pretrain_cost = Cost.from_dict(init["cost"]) if init and "cost" in init else None
    return _finetune_result(out_dir, meta, outcome, state_file, workers, pretrain_cost)


# ---------------------------------------------------------------- a whole trial


@dataclass(frozen=True)
class TrialTraining:
    """One trial's training: its pretraining, its fine-tunings per task (empty when the
    pretraining diverged), and where it ran (the node of every Ray Train rank; empty in-process)."""

    pretrain: PretrainResult | None  # None for from-scratch fine-tuning: nothing pretrained
    finetunes: dict[str, FinetuneResult]
    rank_nodes: list[str]
    # Where the time went (seconds; see `phase_timings`); empty in-process.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return not self.finetunes


def phase_timings(setup_s: float, fit_s: float, startup: dict, outcomes: dict[str, dict | None]) -> dict[str, float]:
    """Where a Ray Train trial's time went, in seconds, from rank 0's phase ``outcomes``:

    ``setup`` (the driver's checks, the cache localized on its node), ``scheduling_wait`` and
    ``worker_start`` (see `train_ray.PhasesResult`), ``cache`` (workers opening, and on a new
    node copying, the cache), one training-loop entry per phase (``pretrain``,
    ``finetune_<task>``), ``eval`` (scoring after training) and ``fit_other`` (the rest of the
    fit: checkpoints and phase files written to storage, reports, the group's shutdown)."""
    done = {k: o for k, o in outcomes.items() if o is not None}
    out = {"setup": setup_s, **startup, "cache": sum(o.get("cache_s", 0.0) for o in done.values())}
    out.update({k: float(o["cost"]["wall_s"]) for k, o in done.items()})
    out["eval"] = sum(o.get("eval_s", 0.0) for o in done.values())
    out["fit_other"] = max(0.0, fit_s - sum(v for k, v in out.items() if k != "setup"))
    return out


def pretrain_and_finetune(
    cache_dir: str | os.PathLike,
    size: ModelSize | dict | str,
    pretrain_settings: PretrainSettings,
    finetune_settings: FinetuneSettings,
    tasks: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    use_gpu: bool = False,
    eval_splits: Sequence[str] = ("tuning",),
    n_boot: int = 1000,
    checkpoint_every: int = 200,
    max_pretrain_loss: float | None = None,
    storage: str | None = None,
    ray_options: dict | None = None,
    rungs: dict | None = None,
) -> TrialTraining:
    """Pretrain ``size`` once, then fine-tune it on each task: the same outputs as
    :func:`pretrain` into ``OUT/pretrain`` and :func:`finetune` (from that checkpoint) into
    ``OUT/finetune-<task>``, with every check done before any training starts.

    ``workers=None`` runs in this process; ``workers >= 1`` runs every phase in ONE Ray Train
    fit (``train_ray.run_phases``: the worker group starts once; a restarted group skips the
    finished phases and continues the current one from its last checkpoint). That fit keeps its
    state in ``storage`` (default ``OUT/trial.partial``; a URI on a cluster whose nodes share
    no disk) until the trial finishes. When pretraining diverged (``worker.diverged`` against
    ``max_pretrain_loss``) the fine-tunings are skipped. ``finetune_settings.from_scratch``
    skips pretraining altogether (it pays for none). ``ray_options`` go to ``run_phases``.
    ``rungs``: the search policy's ``{"fractions", "actor", "namespace", "key"}``
    (built by ``trial._train``): the pretraining asks it at each fraction, and a pretraining it
    stops skips the fine-tunings, as a diverged one does.
    """
    import time

    t0 = time.perf_counter()
    cache = open_cache(cache_dir)
    size = as_size(size)
    out_dir = Path(out_dir)
    scratch = finetune_settings.from_scratch
    pre_job, pre_meta = _pretrain_job(cache, cache_dir, size, pretrain_settings)
    if rungs:
        pre_job["rungs"] = list(rungs["fractions"])
    pre_out = out_dir / "pretrain"
    init = None if scratch else str((pre_out / "checkpoint").resolve())
    plans = {}
    for task in tasks:
        check_task(cache, cache_dir, task, eval_splits)
        plans[task] = _finetune_job(cache, cache_dir, task, size, finetune_settings, init, eval_splits, n_boot)

    if workers is None:
        setup = {"setup": time.perf_counter() - t0}
        pre = None
        if not scratch:
            from claims_search.runs.train_ray import asker

            pre = pretrain(cache_dir, size, pretrain_settings, pre_out, use_gpu=use_gpu,
                           checkpoint_every=checkpoint_every, ask_rung=asker(rungs) if rungs else None)
            setup["pretrain"] = pre.cost.wall_s
            if diverged(pre.val_loss, max_pretrain_loss) or pre.stopped:
                return TrialTraining(pre, {}, [], setup)
        fts = {task: finetune(
            cache_dir, task, size, finetune_settings, out_dir / f"finetune-{task}",
            init_checkpoint=None if pre is None else pre.checkpoint, eval_splits=eval_splits, n_boot=n_boot,
            use_gpu=use_gpu, checkpoint_every=checkpoint_every) for task in tasks}
        # In this process only the loops are timed; the rest (evaluation included) is "other".
        return TrialTraining(pre, fts, [], {**setup, **{f"finetune_{t}": r.cost.wall_s for t, r in fts.items()}})

    from claims_search import storage as st
    from claims_search.runs.train_ray import run_phases

    storage = st.normalize(storage or out_dir / "trial.partial")
    outs = ([] if scratch else [pre_out]) + [out_dir / f"finetune-{task}" for task in tasks]
    metas = ([] if scratch else [pre_meta]) + [plans[t][1] for t in tasks]
    phases = [] if scratch else [{"job": pre_job, "init_state": None, "init_from": None}]
    phases += [{"job": plans[t][0], "init_state": None, "init_from": None if scratch else 0} for t in tasks]
    if st.is_local(storage):
        for phase, meta, out in zip(phases, metas, outs):
            # A phase finished by an earlier call with the same settings (fewer steps) continues.
            start = _resume_state(out.with_name(out.name + ".partial"), out, meta, True)
            phase["init_state"] = str(start) if start else None
    gate = None if max_pretrain_loss is None or scratch else {"phase": 0, "value": max_pretrain_loss}
    t1 = time.perf_counter()
    if rungs and not scratch:  # asked by rank 0 of the pretraining phase, stopped like a divergence
        gate = {"phase": 0, "value": max_pretrain_loss if max_pretrain_loss is not None else float("inf"),
                "ask": dict(rungs)}
    done = run_phases(phases, storage, workers=workers, use_gpu=use_gpu, checkpoint_every=checkpoint_every,
                      max_loss=gate, local_dir=out_dir / ".states", **(ray_options or {}))
    timings = phase_timings(t1 - t0, time.perf_counter() - t1, done.startup,
                            dict(zip((["pretrain"] if not scratch else []) + [f"finetune_{t}" for t in tasks],
                                     (p[0] if p is not None else None for p in done.phases))))
    pre = None if scratch else _pretrain_result(pre_out, pre_meta, *done.phases[0], workers)
    fts = {}
    ft_done = done.phases if scratch else done.phases[1:]
    for task, out, phase_done in zip(tasks, outs[len(outs) - len(tasks):], ft_done):
        if phase_done is not None:
            fts[task] = _finetune_result(out, plans[task][1], *phase_done, workers,
                                         None if pre is None else pre.cost)
    st.remove(storage)
    shutil.rmtree(out_dir / ".states", ignore_errors=True)
    return TrialTraining(pre, fts, done.rank_nodes, timings)
