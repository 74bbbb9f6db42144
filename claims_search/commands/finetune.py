"""Fine-tune one model size on a task: a classification head on the encoder, from a pretrained
checkpoint (--init, a `claims-search pretrain` output) or from scratch (--from-scratch).
Reports AUROC and AUPRC with patient-level bootstrap 95 % intervals on the tuning split, and
on the held-out split with --held-out; prints the fine-tuning cost and, separately, what the
pretraining it started from cost.

With --init the size comes from the checkpoint (a different --size is an error). Writes
OUT/result.json and OUT/checkpoint/ atomically (aggregates only, nothing per patient).

Example: claims-search finetune --data prepared --task ckd_incidence --init runs/pt-debug --out runs/ft-ckd
"""

from __future__ import annotations

import argparse

from claims_search.commands.pretrain import StepProgress, add_run_arguments, add_size_arguments, size_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search finetune`."""
    parser.add_argument("--task", required=True,
                        help="task name, one of the prepared cache's (its manifest.json lists them)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", metavar="DIR", help="pretrained checkpoint (a pretrain --out folder)")
    start.add_argument("--from-scratch", action="store_true",
                       help="no pretraining: random initial weights (needs a model size)")
    add_run_arguments(parser, steps=300, lr=3e-4, warmup=30)
    add_size_arguments(parser)
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls",
                        help="sequence summary fed to the head: the [CLS] token or the mean of all tokens")
    parser.add_argument("--patience", type=int, default=0, metavar="N",
                        help="stop once N evaluations in a row (ten per run) did not beat the best "
                             "step's AUPRC on the train carve-out; 0: run every step")
    parser.add_argument("--held-out", action="store_true", help="also evaluate on the held-out split")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap replicates (patients resampled) for the 95 %% intervals")


def run(args: argparse.Namespace) -> int:
    """Fine-tune, print metrics with intervals and costs; 0 on success."""
    from claims_search.commands.formatting import format_cost
    from claims_search.model.loop import FinetuneSettings
    from claims_search.metrics import format_metrics
    from claims_search.runs.training import finetune

    size = size_from_args(args, required=args.from_scratch)
    settings = FinetuneSettings(lr=args.lr, batch_tokens=args.batch_tokens, steps=args.steps,
                                warmup=min(args.warmup, args.steps), seed=args.seed,
                                log_every=args.log_every, pool=args.pool, from_scratch=args.from_scratch,
                                patience=args.patience)
    splits = ("tuning", "held_out") if args.held_out else ("tuning",)
    with StepProgress(args.steps, f"finetune {args.task}") as bar:
        result = finetune(args.data, args.task, size, settings, args.out, init_checkpoint=args.init,
                          eval_splits=splits, n_boot=args.bootstrap, workers=args.workers,
                          use_gpu=args.gpu, resume=not args.restart,
                          checkpoint_every=args.checkpoint_every,
                          on_report=bar if args.workers is None else None)
    stopped = f" (stopped early: --patience {args.patience})" if result.steps < args.steps else ""
    print(f"fine-tuned {args.task} for {result.steps} steps{stopped} "
          f"({'from scratch' if result.pretrain_cost is None else 'from ' + args.init})")
    print(format_metrics(result.metrics))
    print(format_cost(result.cost))
    if result.pretrain_cost is not None:
        print("pretrain " + format_cost(result.pretrain_cost).removeprefix("cost").lstrip())
    print(f"wrote {args.out}/result.json and {result.checkpoint}")
    return 0
