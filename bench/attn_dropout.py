"""Attention-probability dropout, on or off: what it does to quality and training time (not a test).

    nice -n 19 .venv/bin/python bench/attn_dropout.py --out runs/bench-attn [--patients 20000]
        [--seeds 0,1,2] [--attn 0,0.1] [--threads 2]
    .venv/bin/python bench/attn_dropout.py --quick --out /tmp/attn-quick   # a minute: the pipeline

Per seed and per attention dropout: one masked-code pretraining of one size (width 64, depth 4,
4 heads, hidden dropout 0.1, 128 events) on the train split, then fine-tuning on both built-in
tasks, scored on the tuning split. The size and settings are the scaling study's largest size
and its pretraining/fine-tuning recipe, with dropout on. Every unit is cached under ``--out``,
so two processes with ``--attn 0`` and ``--attn 0.1`` can share the machine's cores and a third
call (any ``--attn``) reports what is there.

Report: per seed, the pretraining's validation loss, each task's tuning AUROC and AUPRC, and the
training device-seconds; then per metric the paired difference (each other value minus 0),
mean and range over seeds. Aggregates only: per-patient predictions stay under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TASKS = ("ckd_incidence", "antihypertensive_start")
MODEL = dict(width=64, depth=4, heads=4, dropout=0.1, max_len=128)
PRETRAIN = dict(lr=1e-3, batch_tokens=4096, steps=1000, warmup=100)
FINETUNE = dict(lr=3e-3, batch_tokens=4096, steps=300, warmup=30, pool="mean")
QUICK = dict(pretrain_steps=10, finetune_steps=10)  # on common.quick_data's patients


def unit(cache: Path, out: Path, seed: int, attn: float, pre_kw: dict, ft_kw: dict) -> dict:
    """Pretrain and fine-tune one (seed, attention dropout); cached as summary.json."""
    from claims_search.model.loop import FinetuneSettings, PretrainSettings
    from claims_search.runs.training import finetune, pretrain

    done = out / f"seed{seed}-attn{attn:g}" / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    model = dict(MODEL, attn_dropout=attn)
    pre = pretrain(cache, model, PretrainSettings(**pre_kw, seed=seed), done.parent / "pretrain")
    result = {"val_loss": pre.val_loss, "pretrain_s": pre.cost.device_s, "tasks": {}}
    for task in TASKS:
        r = finetune(cache, task, model, FinetuneSettings(**ft_kw, seed=seed), done.parent / task,
                     init_checkpoint=pre.checkpoint, n_boot=200)
        result["tasks"][task] = {m: r.metrics["tuning"][m] for m in ("auroc", "auprc")}
        result["tasks"][task]["finetune_s"] = r.cost.device_s
    common.write_json(done, result)  # a unit exists only once it finished
    return result


def rows(units: dict) -> list[tuple[str, dict]]:
    """(metric name, {(seed, attn): value}) for every reported figure."""
    out = [("pretraining val loss", {k: u["val_loss"] for k, u in units.items()}),
           ("pretraining device-s", {k: u["pretrain_s"] for k, u in units.items()})]
    for task in TASKS:
        for m in ("auroc", "auprc", "finetune_s"):
            out.append((f"{task} {m.replace('_s', ' device-s')}", {k: u["tasks"][task][m] for k, u in units.items()}))
    return out


def report(units: dict, seeds: list[int], attns: list[float]) -> str:
    base, others = attns[0], attns[1:]
    header = (["figure"] + [f"attn {a:g}, seed {s}" for a in attns for s in seeds]
              + [f"attn {a:g} − {base:g}: mean (min–max)" for a in others])
    lines = common.table(header, [])
    for name, values in rows(units):
        cells = [f"{values[(s, a)]:.3f}" if (s, a) in values else "–" for a in attns for s in seeds]
        diffs = []
        for a in others:
            d = [values[(s, a)] - values[(s, base)] for s in seeds if (s, a) in values and (s, base) in values]
            diffs.append(f"{statistics.mean(d):+.3f} ({min(d):+.3f}–{max(d):+.3f})" if d else "–")
        lines.append(common.row([name, *cells, *diffs]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-attn")
    p.add_argument("--patients", type=int, default=20000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--attn", default="0,0.1", help="attention dropouts to train (the first is the baseline)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="train nothing; report the cached units")
    p.add_argument("--quick", action="store_true", help="tiny data, one seed and 10 steps: the pipeline in a minute")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out, pre_kw, ft_kw = Path(args.out), dict(PRETRAIN), dict(FINETUNE)
    seeds, attns = [int(s) for s in args.seeds.split(",")], [float(a) for a in args.attn.split(",")]
    if args.quick:
        seeds = seeds[:1]
        pre_kw.update(steps=QUICK["pretrain_steps"], warmup=1)
        ft_kw.update(steps=QUICK["finetune_steps"], warmup=1, best_step=False)
    # Units of any seed and attention dropout share a folder; data, model and steps must not differ.
    common.guard(out, {"quick": args.quick, "patients": common.QUICK_PATIENTS if args.quick else args.patients,
                       "model": MODEL, "pretrain": pre_kw, "finetune": ft_kw}, "attn_dropout")
    if args.quick:
        cache = common.quick_data(out)
    else:
        cache = common.data(out, args.patients, 0, MODEL["max_len"])
    units = {}
    for seed in seeds:
        for attn in attns:
            done = out / f"seed{seed}-attn{attn:g}" / "summary.json"
            if args.report_only and not done.exists():
                continue
            units[(seed, attn)] = unit(cache, out, seed, attn, pre_kw, ft_kw)
    text = report(units, seeds, sorted(attns))
    (out / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
