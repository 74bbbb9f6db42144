"""The size-ladder study on synthetic claims with planted difficulty (not a test).

    nice -n 19 .venv/bin/python bench/scaling_study.py [--out runs/bench-scaling] [--patients 40000]
        [--labelled 2000,20000] [--max-minutes 55] [--report docs/scaling_study.md]
        [--sizes w16d2h2,...] [--tasks ...] [--pretrain-steps 1000] [--finetune-steps 300] [--finetune-lr 3e-3]
        [--max-len 128] [--batch-tokens 4096] [--gpu]
    .venv/bin/python bench/scaling_study.py --quick --out /tmp/scaling-quick   # minutes: the pipeline

``--gpu`` trains every unit on the CUDA device (LightGBM and the report stay on the CPU), in a
study folder of its own; with ``--batch-tokens`` and the step counts it is the same study at the
scale that targets 2 and 3 need (docs/benchmarks.md, "Not yet measured").

Every unit of work is cached under ``--out`` and skipped when a rerun finds it, so a full study
runs as pieces of at most ``--max-minutes`` each (the run stops starting units after that and
says how many are left; run the same command again to continue):

1. Data: ``claims-search synth --complexity-tasks`` (the built-in tasks plus the complexity
   family ``complexity_k0..k3``, whose planted risk needs more capacity as k rises) and
   ``prepare --max-len 128`` with the family's task files -> ``meds/``, ``prepared/``.
2. ``pretrain/<size>``: one masked-code pretraining per size of :data:`LADDER` on the whole
   train split (the pretraining pool, larger than any labelled set), shared by every task.
3. ``finetune/<size>/<task>/n<labelled>-<init>``: per task and labelled-set size (the train
   split's patients subsampled: ``FinetuneSettings.train_patients``), fine-tuned from that
   pretraining (``pre``) and, at the smallest labelled size, from scratch (``scratch``), scored
   on tuning and held_out; the same steps at every labelled size.
4. ``lightgbm/<task>/n<labelled>``: the baseline on the same labelled patients.
5. Report: per task and labelled size, each size's tuning and held-out metric with 95 %
   intervals against non-embedding parameters and cost, the oracle ceiling, LightGBM, the
   from-scratch models, the size the paired rule (``recommend.recommend`` with per-patient
   tuning predictions, no margin) recommends, and a saturating fit ``m(N) = a - b N^-c`` on the smaller
   sizes judged on how well it predicts the larger ones. Written to ``--report`` (markdown,
   plus ``<report stem>_*.png``) and ``--out/report.json``.

Per-patient predictions stay under ``--out`` (never in the report). Cost is training FLOPs
(pretraining + fine-tuning; noise-free, so it ranks the sizes), with the device-seconds measured
on this machine beside it; every unit runs alone, with the threads given by ``--threads``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "claims_search" / "data" / "tasks" / "complexity"
# (width, depth, heads), cheapest first: non-embedding parameters 6.1 k ... 442 k (72x), about
# 2.3x per step (ff_ratio 4: 12 w^2 per layer), so a fit on the first four predicts the last two.
LADDER = ((16, 2, 2), (24, 2, 2), (32, 3, 4), (48, 3, 4), (64, 4, 4), (96, 4, 4))
QUICK_LADDER = ((16, 1, 2), (32, 1, 2))
MAX_LEN = 128
# Bootstrap replicates of the paired rule, here and in search_efficiency's replay: the same
# draws, so the replayed grid reproduces the report's answer.
RULE_BOOT = 1000
STABILITY_SEEDS = 4  # more bootstrap seeds that decide again: how stable each answer is
# Measured on 8,000 patients (docs/benchmarks.md, "The demo"): mean pooling and a 3e-3
# fine-tuning rate learn in a few hundred steps on 2 cores. One run uses one rate for every size;
# --rates-from adds other runs' rates, and the report takes each unit at its best on tuning, so
# sizes fine-tuned at more rates than others are favoured: the report marks them "(of k)" and
# says so.
PRETRAIN = dict(lr=1e-3, batch_tokens=4096, steps=1000, warmup=100)
FINETUNE = dict(lr=3e-3, batch_tokens=4096, steps=300, warmup=30, pool="mean")
QUICK = dict(patients=2000, labelled=(300,), pretrain_steps=20, finetune_steps=20,
             tasks=("antihypertensive_start", "complexity_k3"))
FIT_ON = 4  # sizes the saturating curve is fitted on (the smallest ones)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def name_of(size) -> str:
    w, d, h = size
    return f"w{w}d{d}h{h}"


def non_embedding(size) -> int:
    from claims_search.model.sizes import ModelSize

    w, d, h = size
    return ModelSize(w, d, h, max_len=MAX_LEN).n_matmul_params()


write_json = common.write_json  # kept: other scripts read a study through this module


# ---------------------------------------------------------------- 1. data


def data(out: Path, patients: int, seed: int) -> Path:
    """``meds/`` with the complexity family and ``prepared/`` with its task files, under ``out``."""
    tasks = [a for f in sorted(TASKS_DIR.glob("*.yaml")) for a in ("--task", f.stem)]
    return common.data(out, patients, seed, MAX_LEN, ("--complexity-tasks",), tuple(tasks), log=log)


# ---------------------------------------------------------------- 2-4. units of work


class Deadline:
    """Stops new units after ``minutes`` (a piece of a long study); counts what was left."""

    def __init__(self, minutes: float) -> None:
        self.end, self.left = time.monotonic() + 60 * minutes, 0

    def expired(self) -> bool:
        if time.monotonic() > self.end:
            self.left += 1
            return True
        return False


def units(cache: Path, out: Path, ladder, tasks, labelled, pre_kw, ft_kw, deadline: Deadline,
          scratch: bool = True, gpu: bool = False) -> None:
    """Run every unit not yet done, cheapest size first, until the deadline (on the CUDA device
    with ``gpu``; LightGBM stays on the CPU)."""
    from claims_search.runs.baseline import baseline
    from claims_search.model.loop import FinetuneSettings, PretrainSettings
    from claims_search.runs.training import finetune, pretrain

    for task in tasks:
        for n in labelled:
            done = out / "lightgbm" / task / f"n{n}" / "summary.json"
            if done.exists() or deadline.expired():
                continue
            log(f"LightGBM {task} n={n}")
            t = time.perf_counter()
            r = baseline(cache, task, done.parent / "run", eval_splits=("tuning", "held_out"), n_boot=200,
                         train_patients=n)
            write_json(done, {"metrics": r.metrics, "cost": r.cost.to_dict(), "wall_s": time.perf_counter() - t,
                              "predictions": {s: str(done.parent / "run" / "predictions" / f"{s}.parquet")
                                              for s in ("tuning", "held_out")}})
    # Most needed first, so a study cut short still answers its targets: every pretraining, then
    # fine-tuning with the fewest labels, then from scratch, then with more labels.
    pres = {}
    for size in ladder:
        pre_done = out / "pretrain" / name_of(size) / "summary.json"
        if not pre_done.exists():
            if deadline.expired():
                continue
            log(f"pretrain {name_of(size)} ({pre_kw['steps']} steps)")
            r = pretrain(cache, model_of(size), PretrainSettings(**pre_kw), pre_done.parent / "run", use_gpu=gpu)
            write_json(pre_done, {"val_loss": r.val_loss, "cost": r.cost.to_dict(),
                                  "checkpoint": str(r.checkpoint)})
        pres[size] = json.loads(pre_done.read_text())
    # From scratch only with the fewest labels, where pretraining should matter (a cut that keeps
    # the study's compute down).
    order = [(labelled[0], "pre")]
    if scratch:
        order.append((labelled[0], "scratch"))
    order += [(n, "pre") for n in labelled[1:]]
    for n, init in order:
        for size in ladder:
            if init == "pre" and size not in pres:
                continue
            for task in tasks:
                done = out / "finetune" / name_of(size) / task / f"n{n}-{init}" / "summary.json"
                if done.exists() or deadline.expired():
                    continue
                log(f"fine-tune {name_of(size)} {task} n={n} {init}")
                settings = FinetuneSettings(**ft_kw, train_patients=n, from_scratch=init == "scratch")
                r = finetune(cache, task, model_of(size), settings, done.parent / "run",
                             init_checkpoint=pres[size]["checkpoint"] if init == "pre" else None,
                             eval_splits=("tuning", "held_out"), n_boot=200, use_gpu=gpu)
                write_json(done, {"metrics": r.metrics, "cost": r.cost.to_dict(),
                                  "predictions": {s: str(p) for s, p in r.predictions.items()}})


def model_of(size) -> dict:
    w, d, h = size
    return dict(width=w, depth=d, heads=h, max_len=MAX_LEN, dropout=0.0)


# ---------------------------------------------------------------- 5. report


def saturating_fit(params: list[float], values: list[float]):
    """Fit ``m(N) = a - b N^-c`` (pow3 of Domhan et al. 2015); None if it does not converge."""
    import numpy as np
    from scipy.optimize import curve_fit

    x = np.asarray(params, float) / 1e4
    try:
        coef, _ = curve_fit(lambda n, a, b, c: a - b * n ** (-c), x, np.asarray(values, float),
                            p0=(max(values) + 0.02, 0.05, 0.5), bounds=([0, -1, 0], [1, 1, 3]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return lambda n: float(coef[0] - coef[1] * (n / 1e4) ** (-coef[2]))


def pick_rate(outs: list[Path], unit: str, metric: str) -> tuple[Path | None, list[Path]]:
    """The fine-tuning ``unit`` (``<size>/<task>/n<N>-<init>``) at the rate with the best
    *tuning* metric among the studies ``outs`` (same data and pretraining, another rate each),
    and every study's copy of it (all of them were paid for). The held-out split plays no part."""
    found = [o / "finetune" / unit / "summary.json" for o in outs if (o / "finetune" / unit / "summary.json").exists()]
    score = lambda f: json.loads(f.read_text())["metrics"]["tuning"][metric]  # noqa: E731
    return (max(found, key=score) if found else None), found


def units_of(study: Path, table: dict, row: dict) -> tuple[Path, list[Path]]:
    """A report row's pretrained fine-tuning unit (at its chosen rate) and every unit tried for
    it; reports written before rates could be chosen name none: the study's own unit."""
    own = study / "finetune" / row["size"] / table["task"] / f"n{table['n_labelled']}-pre"
    return Path(row["pre"].get("unit", own)), [Path(u) for u in row["pre"].get("tried", [own])]


def rate_of(summary_file: Path) -> float:
    return json.loads((summary_file.parents[4] / "settings.json").read_text())["finetune"]["lr"]


def task_table(out: Path, cache: Path, task: str, n: int, ladder, metric: str, rates_from: tuple = ()) -> dict:
    """Everything the report says about one task at one labelled-set size (each fine-tuning at
    its best rate on tuning when ``rates_from`` names studies at other rates)."""
    import polars as pl

    from claims_search.runs import predictions as P
    from claims_search.results.frontier import TrialRecord
    from claims_search.data.labels import oracle_scores
    from claims_search.results.recommend import recommend

    # Scored from the cache's labels, not read from its manifest: a cache prepared before the
    # AUPRC over tied probabilities (labels.oracle_scores) holds the lower, tie-blind figure.
    oracle = oracle_scores(pl.read_parquet(cache / "labels" / f"{task}.parquet"))["splits"]
    rows, records, frames = [], [], {}
    for size in ladder:
        pre_f = out / "pretrain" / name_of(size) / "summary.json"
        row = {"size": name_of(size), "non_embedding": non_embedding(size)}
        for init in ("pre", "scratch"):
            f, tried = pick_rate([out, *rates_from], f"{name_of(size)}/{task}/n{n}-{init}", metric)
            if f is None or (init == "pre" and not pre_f.exists()):
                continue
            s = json.loads(f.read_text())
            spent = [json.loads(t.read_text())["cost"] for t in tried]  # every rate tried was paid for
            pre_cost = json.loads(pre_f.read_text())["cost"] if init == "pre" else {"flops": 0.0, "device_s": 0.0}
            # FLOPs rank the sizes: device-seconds on a shared 2-core machine are noisy (both reported).
            cost = sum(c["flops"] for c in spent) + pre_cost["flops"]
            row[init] = {"tuning": s["metrics"]["tuning"], "held_out": s["metrics"]["held_out"], "cost": cost,
                         "device_s": sum(c["device_s"] for c in spent) + pre_cost["device_s"],
                         "lr": rate_of(f), "unit": str(f.parent), "tried": [str(t.parent) for t in tried]}
            if init == "pre":
                t = s["metrics"]["tuning"]
                records.append(TrialRecord(trial_id=name_of(size), task=task, status="complete",
                                           params={"model": dict(zip(("width", "depth", "heads"), size))},
                                           n_params=row["non_embedding"], metric=t[metric],
                                           metric_low=t[f"{metric}_low"], metric_high=t[f"{metric}_high"],
                                           cost=cost, pretrain_cost=None, finetune_cost=None))
                frames[name_of(size)] = P.read(s["predictions"]["tuning"])
        rows.append(row)
    base_f = out / "lightgbm" / task / f"n{n}" / "summary.json"
    base = json.loads(base_f.read_text()) if base_f.exists() else None
    rec = (recommend(records, task, frames, metric=metric, n_boot=RULE_BOOT, seed=0, stability_seeds=STABILITY_SEEDS)
           if records else None)
    done = [r for r in rows if "pre" in r]
    fit = None
    if len(done) > FIT_ON:
        f = saturating_fit([r["non_embedding"] for r in done[:FIT_ON]],
                           [r["pre"]["held_out"][metric] for r in done[:FIT_ON]])
        if f is not None:
            fit = [{"size": r["size"], "predicted": f(r["non_embedding"]), "measured": r["pre"]["held_out"][metric]}
                   for r in done[FIT_ON:]]
    return {"task": task, "n_labelled": n, "rows": rows, "oracle": oracle,
            "lightgbm": base and {k: base[k] for k in ("metrics", "cost")},
            "recommended": rec and rec.record.trial_id, "rule": rec and rec.rule,
            "underpowered": rec and rec.underpowered, "agreement": rec and rec.agreement,
            "agreeing_seeds": rec and rec.agreeing_seeds, "agreement_seeds": rec and rec.agreement_seeds, "fit": fit,
            "complete": len(done) == len(ladder) and base is not None}


def fmt(m: dict, metric: str) -> str:
    return f"{m[metric]:.3f} [{m[f'{metric}_low']:.3f}, {m[f'{metric}_high']:.3f}]"


def markdown(tables: list[dict], metric: str, meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`; {meta['date']}; {meta['machine']}; "
             f"{'complete' if all(t['complete'] for t in tables) else 'PARTIAL (units left: run again)'}.", "",
             "Fine-tuning rate: a rate marked \"(of k)\" is the best of k rates on the tuning split; a size "
             "without the mark had one rate. Where both appear in one table the rate was searched unevenly, "
             "which favours the marked sizes (in their tuning metric, and so in the paired rule's verdict).", ""]
    for t in tables:
        o = t["oracle"]["held_out"]
        lines += [f"**{t['task']}, {t['n_labelled']:,} labelled patients** — oracle held-out "
                  f"{metric.upper()} {o[metric]:.3f}; LightGBM "
                  + (fmt(t["lightgbm"]["metrics"]["held_out"], metric) if t["lightgbm"] else "n/a")
                  + f"; recommended (paired rule on tuning, no margin): **{t['recommended'] or 'n/a'}**"
                  + (" (underpowered)" if t["underpowered"] else ""), "",
                  f"| size | non-emb. params | tuning {metric} (pretrained) | held-out (pretrained) | "
                  f"held-out (from scratch) | fine-tuning rate (pretrained) | training FLOPs (pretrained) | "
                  f"device-s (pretrained) |",
                  "|---|---:|---|---|---|---:|---:|---:|"]
        for r in t["rows"]:
            pre, scr = r.get("pre"), r.get("scratch")
            lines.append(f"| {r['size']} | {r['non_embedding']:,} | {fmt(pre['tuning'], metric) if pre else '-'} | "
                         f"{fmt(pre['held_out'], metric) if pre else '-'} | {fmt(scr['held_out'], metric) if scr else '-'} | "
                         f"{pre.get('lr', 0):g}{' (of ' + str(len(pre['tried'])) + ')' if len(pre.get('tried', [])) > 1 else ''} | "
                         f"{pre['cost']:.2e} | {pre['device_s']:.0f} |" if pre else
                         f"| {r['size']} | {r['non_embedding']:,} | - | - | - | - | - | - |")
        if t["fit"]:
            lines += ["", "Saturating fit on the " + str(FIT_ON) + " smallest sizes, held-out: "
                      + "; ".join(f"{f['size']} predicted {f['predicted']:.3f}, measured {f['measured']:.3f}"
                                  for f in t["fit"])]
        lines.append("")
    return "\n".join(lines)


def summary(tables: list[dict], metric: str) -> list[str]:
    """One row per task and labelled size: the recommendation beside the largest size and LightGBM."""
    lines = ["| task | labelled | recommended | its non-emb. params | its held-out | largest's held-out | "
             "LightGBM held-out | oracle held-out | bootstrap-seed stability (the same predictions resampled) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for t in tables:
        rows = {r["size"]: r for r in t["rows"] if "pre" in r}
        rec, largest = rows.get(t["recommended"]), (list(rows.values()) or [None])[-1]
        lines.append(f"| {t['task']} | {t['n_labelled']:,} | {t['recommended'] or '-'} | "
                     + (f"{rec['non_embedding']:,} | " if rec else "- | ") +
                     f"{rec['pre']['held_out'][metric] if rec else float('nan'):.3f} | "
                     f"{largest['pre']['held_out'][metric] if largest else float('nan'):.3f} | "
                     + (f"{t['lightgbm']['metrics']['held_out'][metric]:.3f}" if t["lightgbm"] else "-")
                     + f" | {t['oracle']['held_out'][metric]:.3f} | {agreeing(t)} |")
    return lines + ["", "recommended: the paired rule on the tuning split without a margin: the cheapest size that "
                    "the tuning split cannot tell apart from the best size on tuning (not non-inferiority, and "
                    "not a comparison with the largest); the held-out columns are the check. Bootstrap-seed "
                    "stability: how many of the bootstrap seeds give the same answer on the same tuning "
                    "predictions; it measures the bootstrap's own noise, not replication (nothing is retrained). "
                    "Where a labelled size's per-task table marks some sizes' rate \"(of k)\", the rate was "
                    "searched unevenly and the recommendation favours those sizes."]


def agreeing(table: dict) -> str:
    """``"4 of 5"``: bootstrap seeds (the same predictions resampled) that give the reported answer;
    ``"-"`` if not judged."""
    return f"{table['agreeing_seeds']} of {table['agreement_seeds']}" if table.get("agreement_seeds") else "-"


def plot_k(tables: list[dict], path: Path) -> None:
    """Recommended size (non-embedding parameters) against the complexity knob k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    for n in sorted({t["n_labelled"] for t in tables}):
        pts = []
        for t in tables:
            if t["n_labelled"] == n and t["task"].startswith("complexity_k") and t["recommended"]:
                r = next(r for r in t["rows"] if r["size"] == t["recommended"])
                pts.append((int(t["task"].rsplit("k", 1)[1]), r["non_embedding"]))
        if pts:
            ax.plot(*zip(*sorted(pts)), "o-", label=f"{n:,} labelled")
    ax.set_yscale("log")
    ax.set_xlabel("complexity knob k")
    ax.set_ylabel("recommended non-emb. params")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(tables: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.2), squeeze=False, sharey=False)
    for ax, t in zip(axes[0], tables):
        for init, style in (("pre", "o-"), ("scratch", "s--")):
            pts = [(r["non_embedding"], r[init]["held_out"][metric]) for r in t["rows"] if init in r]
            if pts:
                ax.plot(*zip(*pts), style, label="pretrained" if init == "pre" else "from scratch")
        ax.axhline(t["oracle"]["held_out"][metric], color="k", lw=1, label="oracle")
        if t["lightgbm"]:
            ax.axhline(t["lightgbm"]["metrics"]["held_out"][metric], color="tab:green", ls=":", label="LightGBM")
        ax.set_xscale("log")
        ax.set_title(f"{t['task']}\nn={t['n_labelled']:,}", fontsize=8)
        ax.set_xlabel("non-embedding parameters", fontsize=7)
    axes[0][0].set_ylabel(f"held-out {metric}")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


machine = common.machine


def main(argv=None) -> int:
    global MAX_LEN  # the cache's crop, read by data(), model_of() and non_embedding()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-scaling")
    p.add_argument("--patients", type=int, default=40000)
    p.add_argument("--labelled", default="2000,20000", help="labelled-set sizes (train patients), comma-separated")
    p.add_argument("--tasks", default=None, help="only these tasks, comma-separated (default: every task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric", default="auprc", choices=("auprc", "auroc"))
    p.add_argument("--max-minutes", type=float, default=55.0, help="start no unit after this (one piece)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", default=None, help="markdown report to write (plots beside it)")
    p.add_argument("--sizes", default=None, help="only these ladder sizes, e.g. w16d2h2,w64d4h4 (default: all)")
    p.add_argument("--pretrain-steps", type=int, default=PRETRAIN["steps"], help="steps of every pretraining")
    p.add_argument("--finetune-steps", type=int, default=FINETUNE["steps"], help="steps of every fine-tuning")
    p.add_argument("--finetune-lr", type=float, default=FINETUNE["lr"], help="peak rate of every fine-tuning")
    p.add_argument("--max-len", type=int, default=MAX_LEN, help="events per sequence (the cache's crop)")
    p.add_argument("--rates-from", default=None, metavar="DIR,...",
                   help="studies of the same data and pretraining at other fine-tuning rates: each unit is "
                        "reported at its best rate on tuning, charged for every rate tried")
    p.add_argument("--no-scratch", action="store_true", help="no from-scratch units (e.g. a second fine-tuning rate)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help=f"tokens per step of every pretraining and fine-tuning (default {PRETRAIN['batch_tokens']})")
    p.add_argument("--gpu", action="store_true", help="train on the CUDA device (a study of its own: other settings)")
    p.add_argument("--quick", action="store_true", help="the pipeline in minutes: tiny data, 2 sizes, 20 steps")
    args = p.parse_args(argv)
    import torch

    if args.gpu and not torch.cuda.is_available():
        sys.exit("scaling_study: --gpu: no CUDA device is visible to torch")
    torch.set_num_threads(args.threads)
    out, MAX_LEN = Path(args.out), args.max_len
    ladder, labelled = LADDER, tuple(int(x) for x in args.labelled.split(","))
    if args.sizes:
        ladder = tuple(z for z in LADDER if name_of(z) in args.sizes.split(","))
    pre_kw, ft_kw, patients = dict(PRETRAIN), dict(FINETUNE), args.patients
    # Warm-up stays a tenth of the steps, as in PRETRAIN / FINETUNE.
    pre_kw.update(steps=args.pretrain_steps, warmup=args.pretrain_steps // 10)
    ft_kw.update(steps=args.finetune_steps, warmup=args.finetune_steps // 10, lr=args.finetune_lr)
    if args.batch_tokens:
        pre_kw.update(batch_tokens=args.batch_tokens)
        ft_kw.update(batch_tokens=args.batch_tokens)
    if args.quick:
        ladder, labelled, patients = QUICK_LADDER, QUICK["labelled"], QUICK["patients"]
        pre_kw.update(steps=QUICK["pretrain_steps"], warmup=2)
        ft_kw.update(steps=QUICK["finetune_steps"], warmup=2, best_step=False)
    settings = {"quick": args.quick, "patients": patients, "seed": args.seed, "max_len": MAX_LEN,
                "pretrain": pre_kw, "finetune": ft_kw}
    if args.gpu:  # only then: the CPU studies' settings.json stay valid
        settings["device"] = "cuda"
    common.guard(out, settings, "scaling_study")
    cache = data(out, patients, args.seed)
    tasks = sorted(json.loads((cache / "manifest.json").read_text())["tasks"])
    if args.tasks or args.quick:
        tasks = [t for t in tasks if t in (args.tasks.split(",") if args.tasks else QUICK["tasks"])]
    deadline = Deadline(args.max_minutes)
    started = time.perf_counter()
    units(cache, out, ladder, tasks, labelled, pre_kw, ft_kw, deadline, scratch=not args.no_scratch, gpu=args.gpu)
    log(f"this piece: {time.perf_counter() - started:.0f} s; "
        + (f"{deadline.left} unit(s) left: run the same command again" if deadline.left else "every unit done"))
    rates_from = tuple(Path(d) for d in args.rates_from.split(",")) if args.rates_from else ()
    tables = [task_table(out, cache, t, n, ladder, args.metric, rates_from) for t in tasks for n in labelled]
    meta = {"command": " ".join(["python bench/scaling_study.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.date.today().isoformat(), "machine": machine(), "units_left": deadline.left}
    write_json(out / "report.json", {"meta": meta, "tables": tables})
    if args.report:
        report = Path(args.report)
        plot(tables, args.metric, report.with_name(report.stem + "_metric_vs_size.png"))
        plot_k(tables, report.with_name(report.stem + "_recommended_vs_k.png"))
        report.write_text("\n".join(summary(tables, args.metric)) + "\n\n" + markdown(tables, args.metric, meta))
        log(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
