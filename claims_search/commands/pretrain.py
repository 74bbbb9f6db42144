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


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """--size or --width/--depth/--heads, plus shape overrides (shared with finetune)."""
    g = parser.add_argument_group("model size")
    g.add_argument("--size", help="preset name: debug, 2.2M, 4.9M, 11M, 33M, 101M")
    g.add_argument("--width", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--heads", type=int)
    g.add_argument("--max-len", type=int, help="most events per sequence (<= the cache's --max-len)")
    g.add_argument("--dropout", type=float)
    g.add_argument("--ff-ratio", type=float)


def add_run_arguments(parser: argparse.ArgumentParser, steps: int, lr: float, warmup: int) -> None:
    """Training settings and where to run (shared with finetune)."""
    parser.add_argument("--data", required=True, help="prepared cache folder (claims-search prepare)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=steps)
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--warmup", type=int, default=warmup)
    g.add_argument("--batch-tokens", type=int, default=8192, help="real tokens per batch (per worker)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--checkpoint-every", type=int, default=200)
    g.add_argument("--restart", action="store_true", help="ignore an interrupted run's checkpoints")
    g.add_argument("--workers", type=int, help="run on N Ray Train workers (default: in this process)")
    g.add_argument("--gpu", action="store_true", help="train on CUDA (bf16 autocast)")


def size_from_args(args: argparse.Namespace, required: bool = True):
    """The ModelSize the arguments ask for (None if none given and not ``required``)."""
    from claims_search.errors import ClaimsSearchError
    from claims_search.sizes import ModelSize

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search pretrain`."""
    add_run_arguments(parser, steps=1000, lr=1e-3, warmup=100)
    add_size_arguments(parser)
    parser.add_argument("--mask-prob", type=float, default=0.15, help="fraction of events masked")


def run(args: argparse.Namespace) -> int:
    """Pretrain, print the validation loss and cost; 0 on success."""
    from claims_search.commands.baseline import format_cost
    from claims_search.loop import PretrainSettings
    from claims_search.training import pretrain

    size = size_from_args(args)
    settings = PretrainSettings(lr=args.lr, batch_tokens=args.batch_tokens, steps=args.steps,
                                warmup=min(args.warmup, args.steps), seed=args.seed,
                                log_every=args.log_every, mask_prob=args.mask_prob)
    result = pretrain(args.data, size, settings, args.out, workers=args.workers, use_gpu=args.gpu,
                      resume=not args.restart, checkpoint_every=args.checkpoint_every,
                      on_report=progress if args.workers is None else None)
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else ""
    print(f"pretrained {size.to_dict()} for {result.steps} steps{resumed}")
    print(f"tuning masked-code loss {result.val_loss:.4f}")
    print(format_cost(result.cost))
    print(f"wrote {args.out}/result.json and {result.checkpoint}")
    return 0
