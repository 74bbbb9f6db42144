"""The one training loop, shared by masked-code pretraining and task fine-tuning.

Heads and losses differ (``model.ClaimsModel`` returns ``(loss, logits)``); the loop doesn't:
AdamW (weight decay on matrices only), linear warmup then cosine decay to 10 % of the peak
learning rate, gradient-norm clipping. Device-agnostic: bf16 autocast on CUDA, float32 on
CPU. Works on a bare model or one wrapped in DistributedDataParallel. The caller decides where
metrics and checkpoints go through ``on_report(step, metrics)`` and ``on_checkpoint(state)``;
``state_dict()`` holds the whole training state (model, optimiser, scheduler, step, data
position, RNG, cost so far), so a resumed run continues the step count and the batch stream.
Batches are built ahead of the step in a background thread (``batches.Prefetched``): split for
gradient accumulation there and, on CUDA, put in pinned memory, so the step's copies to the
device are non-blocking and the step itself never waits for the device (no host sync between
reports). The stream and its seeds are the same with or without it.
Plain Python: no Ray here (train_ray.py runs this loop inside Ray Train workers).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from claims_search.model.batches import Batch, Prefetched, shutdown_workers
from claims_search.model.cost import Cost, CostMeter
from claims_search.errors import ClaimsSearchError


@dataclass(frozen=True)
class _Settings:
    lr: float
    batch_tokens: int  # most real tokens per batch (per worker under DDP)
    steps: int
    warmup: int
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    # Gradient accumulation: each step's batch runs as this many micro-batches (its rows split,
    # ``Batch.split``), gradients summed before one optimiser step. Same step, less activation
    # memory (claims_search/model/memory.py); the batch stream and step count are unchanged.
    grad_accum: int = 1

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.grad_accum, int) or isinstance(self.grad_accum, bool) or self.grad_accum < 1:
            raise ClaimsSearchError(f"{name}: grad_accum must be an integer >= 1, got {self.grad_accum!r}")
        if self.lr <= 0:
            raise ClaimsSearchError(f"{name}: lr must be positive, got {self.lr}")
        if self.steps < 1 or self.batch_tokens < 1 or self.log_every < 1:
            raise ClaimsSearchError(f"{name}: steps, batch_tokens and log_every must be >= 1")
        if not 0 <= self.warmup <= self.steps:
            raise ClaimsSearchError(f"{name}: warmup ({self.warmup}) must be in [0, steps={self.steps}]")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PretrainSettings(_Settings):
    """Masked-code pretraining: a trial config's "pretrain" entry holds these kwargs."""

    lr: float = 1e-3
    batch_tokens: int = 8192
    steps: int = 1000
    warmup: int = 100
    mask_prob: float = 0.15  # fraction of event tokens predicted (BERT 80/10/10 recipe)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_prob < 1:
            raise ClaimsSearchError(f"PretrainSettings: mask_prob must be in (0, 1), got {self.mask_prob}")


@dataclass(frozen=True)
class FinetuneSettings(_Settings):
    """Task fine-tuning: a trial config's "finetune" entry holds these kwargs."""

    lr: float = 3e-4
    batch_tokens: int = 8192
    steps: int = 300
    warmup: int = 30
    pool: str = "cls"  # ClassificationHead pooling: "cls" or "mean"
    from_scratch: bool = False  # read by training.finetune: skip the pretrained encoder
    # Keep the best step, judged by AUPRC on a patient-grouped carve-out of train every
    # ``eval_every`` steps (0: ten times per run); the tuning split stays clean for selection.
    best_step: bool = True
    eval_every: int = 0
    # Stop once that AUPRC has not beaten its best for this many evaluations in a row (0: run
    # every step). With few labels the best step comes early, and the rest is paid for nothing.
    patience: int = 0
    # Fine-tune on a random subset of this many train patients (None: all): learning curves, and
    # the few-labels regime where pretraining pays (bench/scaling_study.py).
    train_patients: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool not in ("cls", "mean"):
            raise ClaimsSearchError(f"FinetuneSettings: pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.eval_every < 0:
            raise ClaimsSearchError(f"FinetuneSettings: eval_every must be >= 0, got {self.eval_every}")
        if self.patience < 0:
            raise ClaimsSearchError(f"FinetuneSettings: patience must be >= 0, got {self.patience}")
        if self.patience and not self.best_step:
            raise ClaimsSearchError("FinetuneSettings: patience needs best_step (it stops on the best-step evaluations)")
        if self.train_patients is not None and self.train_patients < 1:
            raise ClaimsSearchError(f"FinetuneSettings: train_patients must be >= 1, got {self.train_patients}")

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, self.steps // 10)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP keeps the real model in .module


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class TrainLoop:
    """Train ``model`` (a ``ClaimsModel``, optionally DDP-wrapped) for ``settings.steps`` steps.

    ``batches(epoch)`` returns that epoch's batches (e.g. ``lambda e: pretrain_batches(...,
    epoch=e, rank=r, world_size=w)``); it must be deterministic so that resuming can replay
    the epoch up to where it stopped. ``n_devices`` is what the run holds, over all ranks: GPUs,
    or CPU cores on CPU (for device-seconds).
    ``on_report(step, {"loss", "lr", "grad_norm", "tokens", "tokens_per_s"})`` runs every
    ``settings.log_every`` steps and at the last step; ``on_checkpoint(state_dict)`` every
    ``checkpoint_every`` steps (0 = never) and at the last step. ``on_step(step)`` runs after
    every optimiser step; when it returns True the run ends there (early stopping), and that
    step is the last (``stopped``). ``prefetch``: batches built ahead in a background thread
    (0: built in the loop's own thread, as the stream is read).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Callable[[int], Iterable[Batch]],
        settings: PretrainSettings | FinetuneSettings,
        *,
        n_devices: float = 1,
        on_report: Callable[[int, dict], None] | None = None,
        on_checkpoint: Callable[[dict], None] | None = None,
        checkpoint_every: int = 0,
        on_step: Callable[[int], None] | None = None,
        prefetch: int = 4,
    ):
        self.prefetch = prefetch
        self.on_step = on_step  # after every optimiser step, before checkpoints (best-step tracking)
        self.model = model
        self.batches = batches
        self.settings = settings
        self.on_report = on_report
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every = checkpoint_every
        inner = _unwrap(model)
        self.device = next(inner.parameters()).device
        self.size = inner.encoder.size
        self.vocab_size = inner.encoder.vocab_size
        self.masked_fraction = getattr(settings, "mask_prob", 0.0)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.stopped = False  # ended early by on_step
        self._previous = Cost()  # cost of earlier segments of a resumed run
        n_params = sum(p.numel() for p in inner.encoder.parameters())
        self.meter = CostMeter(n_params, self.device, n_devices)
        torch.manual_seed(settings.seed)
        self.optimizer = self._optimizer(inner)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _optimizer(self, inner: nn.Module) -> torch.optim.Optimizer:
        # Decay matrices (linear weights, embeddings) only; biases and LayerNorm stay free.
        params = [p for p in inner.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.settings.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.settings.lr, betas=(0.9, 0.98), fused=fused)

    def _lr_factor(self, step: int) -> float:
        s = self.settings
        if step < s.warmup:
            return (step + 1) / s.warmup
        progress = (step - s.warmup) / max(1, s.steps - s.warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def run(self) -> Cost:
        """Train until ``settings.steps`` or until ``on_step`` stops it; returns the cost of the
        whole run (resumed segments included; tokens summed over DDP workers)."""
        s = self.settings
        self.model.train()
        window_loss, window_n, window_start, window_tokens = 0.0, 0, time.perf_counter(), 0

        def flush(grad_norm) -> None:  # report the steps since the last report
            nonlocal window_loss, window_n, window_start, window_tokens
            elapsed = time.perf_counter() - window_start
            self._report(float(window_loss) / window_n, float(grad_norm), window_tokens / max(elapsed, 1e-9))
            window_loss, window_n, window_start, window_tokens = 0.0, 0, time.perf_counter(), 0

        try:
            with self.meter:
                while self.step < s.steps and not self.stopped:
                    seen_any = False
                    # Leaving the block (the epoch's end, a break, an error) ends the producer thread.
                    with self._stream(self.batches(self.epoch)) as stream:
                        for i, (batch, parts) in enumerate(stream):
                            seen_any = True
                            if i < self.batch_in_epoch:
                                continue  # replaying a resumed epoch up to where it stopped
                            loss, grad_norm = self._train_step(batch, parts)
                            self.batch_in_epoch = i + 1
                            self.step += 1
                            window_loss += loss  # a device tensor: no host sync until the report
                            window_n += 1
                            window_tokens += batch.n_tokens
                            if self.step % s.log_every == 0 or self.step == s.steps:
                                flush(grad_norm)
                            if self.on_step:  # the best-step evaluation: beside the training time, not in it
                                with self.meter.aside("eval"):
                                    self.stopped = bool(self.on_step(self.step))
                            if self.stopped and window_n:  # an early last step reports its window too
                                flush(grad_norm)
                            last = self.stopped or self.step == s.steps
                            every = self.checkpoint_every
                            if self.on_checkpoint and ((every and self.step % every == 0) or last):
                                with self.meter.aside("checkpoint"):
                                    self.on_checkpoint(self.state_dict())
                            if last:
                                break
                        else:
                            if not seen_any:
                                raise ClaimsSearchError(f"epoch {self.epoch}: no training batches (empty split?)")
                            self.epoch += 1
                            self.batch_in_epoch = 0
        finally:
            shutdown_workers()  # processes that built windows ahead (pretrain_batches(workers=...))
        return self.cost()

    def _stream(self, batches: Iterable[Batch]):
        """``(batch, parts)`` of each batch: its micro-batches with their weights, in pinned
        memory on CUDA; built ahead in a background thread unless ``prefetch`` is 0."""
        accum, pin = self.settings.grad_accum, self.device.type == "cuda"

        def prepare(batch: Batch):
            parts = batch.split(accum) if accum > 1 else [(batch, 1.0)]
            return batch, [(p.pin_memory() if pin else p, w) for p, w in parts]

        if not self.prefetch:
            return nullcontext(map(prepare, batches))
        return Prefetched(batches, depth=self.prefetch, prepare=prepare)

    def _train_step(self, batch: Batch, parts: list[tuple[Batch, float]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if parts is None:
            parts = batch.split(self.settings.grad_accum) if self.settings.grad_accum > 1 else [(batch, 1.0)]
        loss = None
        for i, (part, weight) in enumerate(parts):
            # Under DDP, all-reduce gradients once, on the last micro-batch.
            last = i == len(parts) - 1
            sync = nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with _autocast(self.device):
                    part_loss, _ = self.model(part.to(self.device))
                # Each part's mean loss weighted by its share of the batch's predictions: the
                # sum is the whole batch's mean loss, and so are the summed gradients.
                (part_loss * weight if len(parts) > 1 else part_loss).backward()
            part_loss = part_loss.detach() * weight if len(parts) > 1 else part_loss.detach()
            loss = part_loss if loss is None else loss + part_loss
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        T = batch.tokens.shape[1]  # attention runs over the whole packed row
        self.meter.add(batch.n_tokens, batch.n_tokens * self.size.flops_per_token(
            self.vocab_size, T, self.masked_fraction))
        return loss, grad_norm.detach()

    def _report(self, loss: float, grad_norm: float, tokens_per_s: float) -> None:
        if self.on_report is None:
            return
        self.on_report(self.step, {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens": self.meter.tokens + self._previous.tokens,
            "tokens_per_s": tokens_per_s,
        })

    def cost(self) -> Cost:
        """Cost so far: earlier segments + this one, tokens and FLOPs summed over DDP workers."""
        current = self.meter.cost
        if _distributed():
            totals = torch.tensor([float(current.tokens), current.flops], dtype=torch.float64,
                                  device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(totals)
            current = Cost(**{**current.to_dict(), "tokens": int(totals[0]), "flops": float(totals[1])})
        return self._previous + current

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: model, optimiser, scheduler, step, data
        position, RNG states, settings and the cost so far (rank-local tokens)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "stopped": self.stopped,
            "rng": rng,
            "settings": self.settings.to_dict(),
            "cost": (self._previous + self.meter.cost).to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the next ``run()`` continues from its step."""
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.stopped = bool(state.get("stopped", False))
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self._previous = Cost.from_dict(state["cost"])
        self.meter = CostMeter(self.meter.n_params, self.device, self.meter.n_devices)


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Mean loss over all predictions (masked codes, or samples) in ``batches``; NaN if none."""
    device = next(_unwrap(model).parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            with _autocast(device):
                loss, logits = model(batch.to(device))
            total += float(loss) * logits.shape[0]
            count += logits.shape[0]
    finally:
        model.train(was_training)
    return total / count if count else float("nan")


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float64, N) and sample indices (int64, N) of task ``batches``, ordered by
    sample index; the indices are rows of ``cache.labels(task, split)``."""
    device = next(_unwrap(model).parameters()).device
    was_training = model.training
    model.eval()
    probs, index = [], []
    try:
        for batch in batches:
            with _autocast(device):
                _, logits = model(batch.to(device))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            index.append(batch.sample_index.numpy())
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    p, i = np.concatenate(probs).astype(np.float64), np.concatenate(index).astype(np.int64)
    order = np.argsort(i, kind="stable")
    return p[order], i[order]
