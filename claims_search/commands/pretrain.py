"""Pretrain one model size with masked-code modelling on the prepared cache's train split;
report the masked-code loss on its tuning split and what the run cost.

The size is a preset (--size debug, 2.2M, 4.9M, 11M, 33M, 101M) or explicit --width/--depth/
--heads (--max-len, --dropout, --ff-ratio adjust either). Writes OUT/result.json and
OUT/checkpoint/ atomically; an interrupted run continues from OUT.partial/ when run again
(--restart starts afresh), and a finished OUT is continued when --steps grows.
--workers N runs on N Ray Train workers (DDP; gloo on CPU, NCCL with --gpu).

Example: claims-search pretrain --data prepared --out runs/pt-debug --size debug --steps 200
"""

from __future__ import annotations

import argparse
import sys
import time

from claims_search.commands.formatting import use_help_formatter


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """--size or --width/--depth/--heads, plus shape overrides (shared with finetune)."""
    g = parser.add_argument_group("model size (--size, or --width, --depth and --heads together)")
    g.add_argument("--size", help="preset name: debug, 2.2M, 4.9M, 11M, 33M, 101M")
    g.add_argument("--width", type=int, help="hidden size (a multiple of --heads)")
    g.add_argument("--depth", type=int, help="number of Transformer layers")
    g.add_argument("--heads", type=int, help="attention heads per layer")
    g.add_argument("--max-len", type=int,
                   help="most events per sequence (default: the preset's; <= the cache's --max-len)")
    g.add_argument("--dropout", type=float, help="dropout rate (default: the preset's, 0.1)")
    g.add_argument("--ff-ratio", type=float,
                   help="feed-forward width / hidden size (default: the preset's, 4.0)")


def add_run_arguments(parser: argparse.ArgumentParser, steps: int, lr: float, warmup: int) -> None:
    """Training settings and where to run (shared with finetune)."""
    use_help_formatter(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="prepared cache folder (claims-search prepare)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=steps, help="optimiser steps")
    g.add_argument("--lr", type=float, default=lr,
                   help="peak learning rate (AdamW; linear warm-up, then cosine decay to 10 %%)")
    g.add_argument("--warmup", type=int, default=warmup,
                   help="warm-up steps (capped at --steps)")
    g.add_argument("--batch-tokens", type=int, default=8192, help="real tokens per batch (per worker)")
    g.add_argument("--seed", type=int, default=0, help="random seed (initialisation, batches, masking)")
    g.add_argument("--log-every", type=int, default=50,
                   help="report the mean loss every N steps (progress bar on a terminal, log lines otherwise)")
    g.add_argument("--checkpoint-every", type=int, default=200,
                   help="save a resumable checkpoint every N steps (0: only at the end)")
    g.add_argument("--restart", action="store_true", help="ignore an interrupted run's checkpoints")
    g.add_argument("--workers", type=int,
                   help="run on N Ray Train workers (default: in this process, no Ray)")
    g.add_argument("--gpu", action="store_true", help="train on CUDA (bf16 autocast)")


def size_from_args(args: argparse.Namespace, required: bool = True):
    """The ModelSize the arguments ask for (None if none given and not ``required``)."""
    from claims_search.errors import ClaimsSearchError
    from claims_search.model.sizes import ModelSize

    shape = {k: getattr(args, a) for k, a in
             (("max_len", "max_len"), ("dropout", "dropout"), ("ff_ratio", "ff_ratio")) if getattr(args, a) is not None}
    explicit = [args.width, args.depth, args.heads]
    if args.size and any(v is not None for v in explicit):
        raise ClaimsSearchError("give --size or --width/--depth/--heads, not both")
    if args.size:
        return ModelSize.from_name(args.size, **shape)
    if all(v is not None for v in explicit):
        return ModelSize(width=args.width, depth=args.depth, heads=args.heads, **shape)
    if any(v is not None for v in explicit):
        raise ClaimsSearchError("--width, --depth and --heads go together")
    if required:
        raise ClaimsSearchError("give a model size: --size PRESET or --width W --depth D --heads H")
    return None


def progress(step: int, m: dict) -> None:
    """Print one progress line (aggregates only)."""
    print(f"step {step:>6}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['tokens_per_s']:,.0f} tokens/s", flush=True)


class StepProgress:
    """Training progress for ``on_report(step, metrics)``: on a terminal a progress bar with
    the loss, tokens/s, elapsed time and an ETA (``rich.progress``); otherwise one log line
    per report (:func:`progress`). Use as a context manager; the instance is the callback.

    The ETA is the remaining steps at the rate measured between the first report and the
    latest (before the second report: since the bar started, which counts the start-up too).
    """

    def __init__(self, total: int, label: str, *, tty: bool | None = None, console=None):
        self.total, self.label = int(total), label
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.console = console
        self.bar = None
        self.samples: list[tuple[float, int]] = []

    def __enter__(self) -> "StepProgress":
        self.t0 = time.monotonic()
        if self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tokens/s"),
                TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                console=self.console, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, loss="-", speed="-", eta="-")
        return self

    def eta(self, step: int, now: float) -> float | None:
        """Seconds left at the measured rate (None before any progress)."""
        self.samples.append((now, step))
        (t_a, s_a), (t_b, s_b) = ((self.t0, 0), self.samples[0]) if len(self.samples) == 1 \
            else (self.samples[0], self.samples[-1])
        if s_b <= s_a or t_b <= t_a:
            return None
        return max(0.0, (self.total - step) * (t_b - t_a) / (s_b - s_a))

    def __call__(self, step: int, m: dict) -> None:
        left = self.eta(step, time.monotonic())
        if self.bar is None:
            progress(step, m)
            return
        eta = "-" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
        self.bar.update(self.task, completed=step, loss=f"{m['loss']:.4f}",
                        speed=f"{m['tokens_per_s']:,.0f}", eta=eta)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search pretrain`."""
    add_run_arguments(parser, steps=1000, lr=1e-3, warmup=100)
    add_size_arguments(parser)
    parser.add_argument("--mask-prob", type=float, default=0.15,
                        help="fraction of events masked (masked-code modelling)")


def run(args: argparse.Namespace) -> int:
    """Pretrain, print the validation loss and cost; 0 on success."""
    from claims_search.commands.formatting import format_cost
    from claims_search.model.loop import PretrainSettings
    from claims_search.runs.training import pretrain

    size = size_from_args(args)
    settings = PretrainSettings(lr=args.lr, batch_tokens=args.batch_tokens, steps=args.steps,
                                warmup=min(args.warmup, args.steps), seed=args.seed,
                                log_every=args.log_every, mask_prob=args.mask_prob)
    with StepProgress(args.steps, "pretrain") as bar:
        result = pretrain(args.data, size, settings, args.out, workers=args.workers, use_gpu=args.gpu,
                          resume=not args.restart, checkpoint_every=args.checkpoint_every,
                          on_report=bar if args.workers is None else None)
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else ""
    print(f"pretrained {size.to_dict()} for {result.steps} steps{resumed}")
    print(f"tuning masked-code loss {result.val_loss:.4f}")
    print(format_cost(result.cost))
    print(f"wrote {args.out}/result.json and {result.checkpoint}")
    return 0
