"""What runs on one worker: a training job (a plain dict) executed on this process's device.

Both drivers call :func:`execute`: ``training`` in this process, ``train_ray`` in each Ray
Train worker. Plain Python and torch; no Ray. :func:`diverged` is the one divergence rule: a
pretraining whose loss is non-finite or no better than ``max_loss`` skips its fine-tunings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.model.sizes import ModelSize


def diverged(loss: float, max_loss: float | None) -> bool:
    """True when a pretraining's validation ``loss`` is non-finite or ``>= max_loss``."""
    return max_loss is not None and (not math.isfinite(loss) or loss >= max_loss)


def open_cache(cache_dir):
    """The prepared cache, from a path or a URI (s3://, gs://): a URI is copied once per node,
    so each Ray Train worker opens its own node's copy."""
    from claims_search.data.cache import Cache
    from claims_search.storage import localize

    return Cache.open(localize(cache_dir))


def execute(
    job: dict,
    *,
    device: Any = "cpu",
    rank: int = 0,
    world_size: int = 1,
    devices_per_worker: float = 1.0,
    prepare: Callable = lambda model: model,
    state: dict | None = None,
    on_report: Callable[[int, dict], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    ask_rung: Callable[[float, float], tuple[bool, str]] | None = None,
    loader_workers: int = 0,
) -> dict:
    """Run one training job (a plain dict from :func:`pretrain` / :func:`finetune`) on this
    worker: build the model, continue from ``state`` if given, train, and on rank 0 evaluate.

    ``devices_per_worker``: what each worker holds (GPUs, or CPU cores): the cost counts
    ``world_size x devices_per_worker`` devices. ``prepare(model)`` wraps the model for DDP (Ray Train's ``prepare_model``). Returns
    ``{"step", "resumed_from_step", "cost", "cache_s", "val_loss" | "metrics", "eval_s",
    "splits_read"}`` and, fine-tuning, ``"trained_on"`` (see ``batches.trained_on``); pretraining
    with ``job["rungs"]`` (fractions of its steps) and ``ask_rung(fraction, loss) -> (go_on,
    reason)`` (the search policy, asked on rank 0), ``"rungs"``: ``{"losses": {fraction: loss},
    "stopped_at": fraction | None, "reason": str | None}``. ``loader_workers``: processes that
    build pretraining batches on a GPU (the worker's CPUs beyond the loop and the prefetch
    thread). Evaluation on
    rank 0 only, other ranks return the same keys without it. ``splits_read`` is
    ``Cache.splits_read`` of this rank's cache: the splits the job read, evaluation included.
    """
    import numpy as np
    import torch

    from claims_search.model import batches as B
    from claims_search.model import loop, model as M

    opened = time.perf_counter()
    cache = open_cache(job["cache_dir"])  # the first job on a node copies a remote cache here
    cache_s = time.perf_counter() - opened
    size = ModelSize(**job["size"])
    device = torch.device(device)
    if job["kind"] == "pretrain":
        settings = PretrainSettings(**job["settings"])
        torch.manual_seed(settings.seed)
        model = M.pretraining_model(size, cache.vocab_size)

        loader = pretrain_loader(device.type, loader_workers)

        def batches(epoch):
            return B.pretrain_batches(cache, "train", batch_tokens=settings.batch_tokens, max_len=size.max_len,
                                      mask_prob=settings.mask_prob, seed=settings.seed, epoch=epoch,
                                      rank=rank, world_size=world_size, **loader)
    else:
        settings = FinetuneSettings(**job["settings"])
        torch.manual_seed(settings.seed)
        encoder = M.ClaimsEncoder(size, cache.vocab_size)
        if job.get("init"):
            weights = torch.load(Path(job["init"]) / "state.pt", map_location="cpu", weights_only=True)["model"]
            encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
        model = M.classification_model(encoder, pool=settings.pool)
        train = cache.labels(job["task"], "train")
        fit_rows = None if settings.train_patients is None else B.labelled_rows(train, settings.train_patients,
                                                                                 settings.seed)
        labelled = np.arange(len(train)) if fit_rows is None else fit_rows
        if settings.best_step:  # carve the early-stopping patients out of the labelled ones
            fit, stop = B.carve_out(train.iloc[labelled], settings.seed)
            fit_rows, stop_rows = labelled[fit], labelled[stop]

        def batches(epoch):
            return B.task_batches(cache, job["task"], "train", batch_tokens=settings.batch_tokens,
                                  max_len=size.max_len, shuffle=True, seed=settings.seed, epoch=epoch,
                                  rank=rank, world_size=world_size, rows=fit_rows)

    model = prepare(model.to(device))
    bare = getattr(model, "module", model)  # never run DDP's forward on one rank only
    best = None
    if job["kind"] == "finetune" and settings.best_step and rank == 0:
        best = BestStep(bare, cache, job["task"], stop_rows, size, settings, (state or {}).get("best"))

    def save(state: dict) -> None:
        # The loop's state holds this rank's cost; store the total over ranks (a collective:
        # every rank checkpoints at the same steps), so a resumed run keeps counting all ranks.
        state["cost"] = trainer.cost().to_dict()
        if best is not None:
            state["best"] = best.state()  # a restarted worker keeps the best step found so far
        on_checkpoint(state)

    on_step = best.observe if best is not None else None
    if job["kind"] == "finetune" and settings.patience and world_size > 1:
        on_step = _shared_stop(on_step, settings, device)  # every rank stops where rank 0 does
    rungs = None
    if job["kind"] == "pretrain" and job.get("rungs"):  # rank 0 asks (ask_rung); the others hear it
        rungs = Rungs(bare, cache, size, settings, job["rungs"], ask_rung)
        on_step = rungs.observe if world_size == 1 else _broadcast(rungs.observe, rungs.steps, device)
    trainer = loop.TrainLoop(model, batches, settings, n_devices=world_size * devices_per_worker, on_report=on_report,
                             on_checkpoint=save if on_checkpoint else None, checkpoint_every=checkpoint_every,
                             on_step=on_step)
    if state is not None:
        trainer.load_state_dict(state)
    resumed_from = trainer.step
    cost = trainer.run()
    out: dict = {"step": trainer.step, "resumed_from_step": resumed_from, "cost": cost.to_dict(), "cache_s": cache_s}
    if job["kind"] == "finetune":
        out["trained_on"] = B.trained_on(train, labelled)
    if rungs is not None and rank == 0:
        out["rungs"] = rungs.outcome()  # the phase's outcome file is rank 0's
    if rank != 0:
        out["splits_read"] = cache.splits_read()
        return out
    if best is not None and best.model is not None:
        bare.load_state_dict(best.model)  # evaluated, and kept as the checkpoint, at its best step
        out["best_step"] = best.step
        out["carve_out_auprc"] = best.curve  # [[step, AUPRC], ...]: when patience would have stopped
        out["_best_model"] = best.model  # not JSON: the driver puts it in the final state
    started = time.perf_counter()
    if job["kind"] == "pretrain":
        val = B.pretrain_batches(cache, "tuning", batch_tokens=settings.batch_tokens, max_len=size.max_len,
                                 mask_prob=settings.mask_prob, seed=settings.seed, epoch=0)
        out["val_loss"] = loop.evaluate_loss(bare, val)
    else:
        out["metrics"], out["predictions"] = evaluate_splits(bare, cache, job["task"], job["eval_splits"], size,
                                                             settings, n_boot=job.get("n_boot", 1000))
    out["eval_s"] = time.perf_counter() - started  # scoring after training: not in the cost
    out["splits_read"] = cache.splits_read()  # this rank's, evaluation included
    return out


def pretrain_loader(device_type: str, loader_workers: int) -> dict:
    """How pretraining batches are drawn on this device (``batches.pretrain_batches`` keywords).
    On a GPU, windows drawn and built in ``loader_workers`` processes keep it fed
    (bench/pipeline.py): the same masking recipe, another random stream than on a CPU, where the
    patient-by-patient stream of every earlier run is kept."""
    if device_type == "cuda":
        return {"draws": "window", "workers": max(0, int(loader_workers))}
    return {"draws": "patient", "workers": 0}


def _eval_step(step: int, settings) -> bool:
    return step % settings.eval_interval == 0 or step == settings.steps


def _shared_stop(observe, settings, device) -> Callable[[int], bool]:
    """``on_step`` for every DDP rank: rank 0 (the one with ``observe``) decides at each
    evaluation step and the others hear it (a broadcast at the same steps on every rank)."""
    import torch

    def on_step(step: int) -> bool:
        stop = bool(observe(step)) if observe is not None else False
        if not _eval_step(step, settings):
            return stop
        flag = torch.tensor([int(stop)], device=device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    return on_step


def _broadcast(observe, steps, device) -> Callable[[int], bool]:
    """``on_step`` for every DDP rank when only rank 0 decides, at ``steps`` only."""
    import torch

    def on_step(step: int) -> bool:
        stop = bool(observe(step))
        if step not in steps:
            return stop
        flag = torch.tensor([int(stop)], device=device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    return on_step


class Rungs:
    """The search policy's rungs in a pretraining: at each fraction of its steps, rank 0 takes
    the validation loss on the first ``RUNG_BATCHES`` tuning batches (the same batches for every
    size, so sizes compare at the same point) and asks whether to go on."""

    RUNG_BATCHES = 16

    def __init__(self, model, cache, size: ModelSize, settings, fractions: Sequence[float], ask):
        self.model, self.cache, self.size, self.settings, self.ask = model, cache, size, settings, ask
        self.steps = {max(1, round(f * settings.steps)): float(f) for f in fractions}
        self.losses: dict[float, float] = {}
        self.stopped_at: float | None = None
        self.reason: str | None = None

    def observe(self, step: int) -> bool:
        if step not in self.steps or self.ask is None:
            return False
        import itertools

        from claims_search.model import batches as B
        from claims_search.model.loop import evaluate_loss

        s = self.settings
        val = B.pretrain_batches(self.cache, "tuning", batch_tokens=s.batch_tokens, max_len=self.size.max_len,
                                 mask_prob=s.mask_prob, seed=s.seed, epoch=0)
        fraction = self.steps[step]
        loss = evaluate_loss(self.model, itertools.islice(val, self.RUNG_BATCHES))
        self.losses[fraction] = loss
        go_on, reason = self.ask(fraction, loss)
        if not go_on:
            self.stopped_at, self.reason = fraction, reason
        return not go_on

    def outcome(self) -> dict:
        return {"losses": {str(f): v for f, v in self.losses.items()}, "stopped_at": self.stopped_at,
                "reason": self.reason}


def patience_stop(curve: Sequence, patience: int) -> int | None:
    """The step at which a fine-tuning whose carve-out curve is ``curve`` ([[step, AUPRC], ...],
    in step order) ends under early stopping: the evaluation that makes ``patience`` in a row
    without a better score (ties are not better). None if it never does, or ``patience`` is 0."""
    best, since = float("-inf"), 0
    for step, score in curve:
        best, since = (score, 0) if score > best else (best, since + 1)
        if patience and since >= patience:
            return int(step)
    return None


class BestStep:
    """Rank 0's record of the best fine-tuning step: AUPRC on the carve-out of train (never the
    tuning split) every ``settings.eval_interval`` steps and at the last; ties keep the earlier.
    :meth:`observe` returns True once ``settings.patience`` evaluations in a row did not beat
    the best (early stopping; never when patience is 0)."""

    def __init__(self, model, cache, task: str, rows, size: ModelSize, settings, saved: dict | None = None):
        self.model_ref, self.cache, self.task, self.rows = model, cache, task, rows
        self.size, self.settings = size, settings
        labels = cache.labels(task, "train")["label"].to_numpy().astype(bool)
        self.y = labels
        both = 0 < labels[rows].sum() < len(rows)  # AUPRC needs both classes in the carve-out
        self.enabled = both
        saved = saved or {}
        self.step, self.score, self.model = saved.get("step", 0), saved.get("score", float("-inf")), saved.get("model")
        self.curve = saved.get("curve", [])  # [[step, AUPRC], ...]

    def observe(self, step: int) -> bool:
        if not self.enabled or not _eval_step(step, self.settings):
            return False
        from sklearn.metrics import average_precision_score

        from claims_search.model import batches as B
        from claims_search.model.loop import predict

        prob, index = predict(self.model_ref, B.task_batches(
            self.cache, self.task, "train", batch_tokens=self.settings.batch_tokens, max_len=self.size.max_len,
            rows=self.rows))
        score = float(average_precision_score(self.y[index], prob))
        self.curve.append([step, score])
        if score > self.score:
            self.step, self.score = step, score
            self.model = {k: v.detach().cpu().clone() for k, v in self.model_ref.state_dict().items()}
        return patience_stop(self.curve, self.settings.patience) is not None

    def state(self) -> dict:
        return {"step": self.step, "score": self.score, "model": self.model, "curve": self.curve}


def evaluate_splits(model, cache, task: str, splits: Sequence[str], size: ModelSize, settings,
                    n_boot: int = 1000) -> tuple[dict, dict]:
    """``({split: metrics.evaluate(...)}, {split: per-sample predictions})`` of a classification
    model on each split of ``task``. Predictions are patient-level (columns of
    ``predictions.COLUMNS`` as lists): they go to the run's folder only, never to tracking."""
    from claims_search.model import batches as B
    from claims_search.model.loop import predict
    from claims_search.metrics import evaluate

    metrics, preds = {}, {}
    for split in splits:
        labels = cache.labels(task, split)
        prob, index = predict(model, B.task_batches(cache, task, split, batch_tokens=settings.batch_tokens,
                                                    max_len=size.max_len))
        y, groups = labels["label"].to_numpy()[index], labels["subject_idx"].to_numpy()[index]
        metrics[split] = evaluate(y, prob, groups, where=f"{task}/{split}", seed=settings.seed, n_boot=n_boot)
        preds[split] = {"row": index.tolist(), "subject_idx": groups.tolist(), "label": y.tolist(),
                        "prob": prob.tolist()}
    return metrics, preds
