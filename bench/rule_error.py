"""Measured error rate of the recommendation rule (not a test).

    nice -n 19 .venv/bin/python bench/rule_error.py [--out runs/bench-rule-error] [--patients 60000]
        [--replicates 200] [--tuning-sizes 300,1000,3000] [--append-docs] [--plot docs/rule_error.png]
    .venv/bin/python bench/rule_error.py --quick --out /tmp/rule-quick   # seconds: the pipeline

What it does, and what it caches under ``--out`` (a rerun skips every finished step):

1. Data: ``claims-search synth --patients N --workers 1`` then ``prepare --max-len 128
   --workers 1`` (splits 80/10/10 by patient, as the generator assigns them) -> ``meds/``,
   ``prepared/``.
2. Models, trained once each: a ladder of small Transformers (``LADDER``), each pretrained once
   and fine-tuned on both built-in tasks in this process with
   ``training.pretrain_and_finetune(..., eval_splits=("tuning", "held_out"))``, and the LightGBM
   baseline per task (``baseline.baseline(..., num_threads=1)``) -> ``models/<name>/``,
   ``baseline-<task>/``. Each keeps its per-sample predictions on tuning and held_out.
3. Truth: each model's AUPRC on the whole held_out split (its own ~10 % of patients, never used
   by the rule).
4. Replicates: for each tuning size n, draw patients of the tuning split *without* replacement
   (a random order, the first patients whose samples reach n) - a tuning split of about n
   samples from the same population; every model's predictions are cut to those rows. Build one
   ``TrialRecord`` per model (tuning AUPRC of the draw; its own patient-bootstrap 95 % interval
   from ``metrics.bootstrap_replicates``, which the unpaired rule reads) and call
   ``recommend.recommend`` under each rule in ``RULES``, with the LightGBM record left out
   ("transformers": the size rule alone) and put in ("with LightGBM": the product's choice).
   -> ``replicates/<task>-n<n>-r<replicates>-b<n_boot>.json``.
5. Error: the recommended model's held-out AUPRC is below the held-out best's (among the
   models offered to the rule) by more than the yardstick (the margin; 0.01 for the rules
   without one). Also: how often the rule says underpowered, and compute saved = training cost
   of the largest Transformer / cost of the recommended (device-seconds, pretraining + that
   task's fine-tuning, as ``TrialRecord.cost``).

The old rules (no predictions) never recommend LightGBM, so they are run on the Transformers
alone. "Certain errors" are those the held-out split itself is sure of (paired held-out 95 %
interval of best - recommended entirely above the yardstick). ``--smoke`` checks the pipeline in
about a minute (2 sizes, 10 steps; use another ``--out``); ``--quick`` does so on
``common.quick_data``'s tiny dataset with 3 replicates of 15 tuning samples and 100 bootstrap
replicates, in seconds. ``--out`` records its settings (``settings.json``) and refuses a run with
others, quick against full in particular.

The replicates share one set of trained models and one finite tuning split (draws of 3,000
overlap), so the binomial intervals describe replicate noise only, not training noise.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("ckd_incidence", "antihypertensive_start")
# (width, depth, heads): the Transformer ladder, cheapest first.
LADDER = ((16, 1, 2), (32, 1, 2), (32, 2, 4), (64, 2, 4))
MAX_LEN = 128
# Small enough for a 2-core CPU; mean pooling and a higher fine-tuning rate learn far faster
# than the defaults at this few steps (measured: held-out AUROC 0.57 with cls/1e-3/200 steps
# vs 0.68 with mean/3e-3/400 on 5,000 patients). best_step off: its evaluations on a
# carve-out of train would cost more than the fine-tuning itself here.
PRETRAIN = dict(lr=1e-3, batch_tokens=2048, steps=150, warmup=15)
FINETUNE = dict(lr=3e-3, batch_tokens=2048, steps=300, warmup=30, pool="mean", best_step=False)
# label, recommend() keywords, use per-sample predictions, yardstick for "error"
RULES = (
    ("paired, no margin (indistinguishable)", dict(margin=None), True, 0.01),
    ("paired, margin 0.01", dict(margin=0.01), True, 0.01),
    ("paired, margin 0.02", dict(margin=0.02), True, 0.02),
    ("old unpaired (best's lower bound)", dict(tolerance=None), False, 0.01),
    ("old unpaired, tolerance 0.01", dict(tolerance=0.01), False, 0.01),
)
VARIANTS = ("transformers", "with LightGBM")
SECTION = "## Recommendation rule: measured error rate"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def name_of(size) -> str:
    w, d, h = size
    return f"w{w}d{d}h{h}"


# ---------------------------------------------------------------- 1. data


def data(out: Path, patients: int, seed: int, max_len: int, timings: dict) -> Path:
    """``meds/`` and ``prepared/`` under ``out`` (one worker, one thread each), each timed when made."""
    meds, prepared, env = out / "meds", out / "prepared", {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    if common.synth(meds, patients, seed, ("--workers", "1"), log, env):
        timings["synth_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if common.prepare(meds, prepared, max_len, ("--workers", "1"), log, env):
        timings["prepare_s"] = time.perf_counter() - t
    return prepared


# ---------------------------------------------------------------- 2. models


def train_ladder(cache: Path, out: Path, timings: dict) -> dict:
    """{name: summary} of every Transformer of the ladder (trained once, then read back)."""
    import torch

    from claims_search.model.loop import FinetuneSettings, PretrainSettings
    from claims_search.runs.training import pretrain_and_finetune

    torch.set_num_threads(1)
    models = {}
    for size in LADDER:
        name = name_of(size)
        folder = out / "models" / name
        done = folder / "summary.json"
        if not done.exists():
            log(f"training {name} (pretrain {PRETRAIN['steps']} steps, fine-tune {FINETUNE['steps']} per task)")
            t = time.perf_counter()
            w, d, h = size
            tr = pretrain_and_finetune(
                cache, dict(width=w, depth=d, heads=h, max_len=MAX_LEN), PretrainSettings(**PRETRAIN),
                FinetuneSettings(**FINETUNE), TASKS, folder, eval_splits=("tuning", "held_out"), n_boot=200)
            summary = {
                "name": name, "size": dict(width=w, depth=d, heads=h, max_len=MAX_LEN),
                "wall_s": time.perf_counter() - t,
                "pretrain_cost": tr.pretrain.cost.to_dict(), "pretrain_val_loss": tr.pretrain.val_loss,
                "tasks": {task: {"finetune_cost": ft.cost.to_dict(), "metrics": ft.metrics,
                                 "predictions": {s: str(p) for s, p in ft.predictions.items()}}
                          for task, ft in tr.finetunes.items()},
            }
            done.write_text(json.dumps(summary, indent=2))
            log(f"  {name}: {summary['wall_s']:.0f} s wall; held-out AUPRC "
                + ", ".join(f"{t_}={s['metrics']['held_out']['auprc']:.3f}" for t_, s in summary["tasks"].items()))
        models[name] = json.loads(done.read_text())
        timings.setdefault("train_s", {})[name] = models[name]["wall_s"]
    return models


def train_baselines(cache: Path, out: Path, timings: dict) -> dict:
    """{task: summary} of the LightGBM baseline (trained once, then read back)."""
    from claims_search.runs.baseline import baseline

    res = {}
    for task in TASKS:
        folder = out / f"baseline-{task}"
        if not (folder / "result.json").exists():
            log(f"LightGBM baseline on {task} (1 thread)")
            t = time.perf_counter()
            baseline(cache, task, folder, eval_splits=("tuning", "held_out"), num_threads=1, n_boot=200)
            (folder / "wall_s.json").write_text(json.dumps({"wall_s": time.perf_counter() - t}))
        r = json.loads((folder / "result.json").read_text())
        wall = json.loads((folder / "wall_s.json").read_text())["wall_s"] if (folder / "wall_s.json").exists() else None
        res[task] = {"cost": r["cost"], "metrics": r["metrics"], "wall_s": wall,
                     "predictions": {s: str(folder / "predictions" / f"{s}.parquet") for s in ("tuning", "held_out")}}
        timings.setdefault("baseline_s", {})[task] = wall
    return res


# ---------------------------------------------------------------- 3-5. the rule's error


class Model:
    """One model of one task: its cost, predictions on both splits, held-out truth."""

    def __init__(self, name: str, is_baseline: bool, pretrain_s: float, finetune_s: float, n_params: int,
                 flops: float | None, tuning: pd.DataFrame, held_out: pd.DataFrame, params: dict):
        from sklearn.metrics import average_precision_score

        self.name, self.is_baseline, self.params = name, is_baseline, params
        self.pretrain_s, self.finetune_s, self.n_params, self.flops = pretrain_s, finetune_s, n_params, flops
        self.tuning = tuning.sort_values("row", kind="stable").reset_index(drop=True)
        self.held_out = held_out.sort_values("row", kind="stable").reset_index(drop=True)
        self.truth = float(average_precision_score(self.held_out["label"], self.held_out["prob"]))
        self.tuning_full = float(average_precision_score(self.tuning["label"], self.tuning["prob"]))

    @property
    def cost(self) -> float:
        return self.pretrain_s + self.finetune_s


def load_models(task: str, ladder: dict, base: dict) -> list[Model]:
    from claims_search.runs import predictions as P

    out = []
    for name, s in ladder.items():
        pre, ft = s["pretrain_cost"], s["tasks"][task]["finetune_cost"]
        flops = None if pre.get("flops") is None or ft.get("flops") is None else pre["flops"] + ft["flops"]
        preds = s["tasks"][task]["predictions"]
        out.append(Model(name, False, pre["device_s"], ft["device_s"], int(ft.get("n_params") or 0), flops,
                         P.read(preds["tuning"]), P.read(preds["held_out"]), {"model": s["size"]}))
    b = base[task]
    out.append(Model("LightGBM", True, 0.0, b["cost"]["device_s"], int(b["cost"].get("n_params") or 0), None,
                     P.read(b["predictions"]["tuning"]), P.read(b["predictions"]["held_out"]), {}))
    return out


_MEMO: dict = {}
MEMO_STATS = {"hits": 0, "misses": 0}


def _key(labels, probs, groups, metric, n_boot, seed) -> tuple:
    h = hashlib.sha1()
    for x in (np.asarray(labels), np.asarray(groups), *[np.asarray(p) for p in probs]):
        h.update(str(x.dtype).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return (h.hexdigest(), len(probs), metric, n_boot, seed)


def _memoized_bootstrap():
    """Wrap ``metrics.bootstrap_replicates`` (which ``recommend`` calls) with a cache: the
    rules and variants of one replicate share one bootstrap. Exact: the patient draws depend
    only on the labels, patients, n_boot and seed, never on the models, so the replicates of a
    subset of the models are those rows of the all-models result. Returns the real function."""
    from claims_search import metrics

    real = metrics.bootstrap_replicates

    def wrapper(labels, probs, groups, metric="auprc", *, n_boot=1000, seed=0, where="predictions"):
        key = _key(labels, probs, groups, metric, n_boot, seed)
        if key in _MEMO:
            MEMO_STATS["hits"] += 1
        else:
            MEMO_STATS["misses"] += 1
            _MEMO[key] = real(labels, probs, groups, metric, n_boot=n_boot, seed=seed, where=where)
        return _MEMO[key]

    metrics.bootstrap_replicates = wrapper
    return real


def draw_rows(tuning: pd.DataFrame, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row positions of about ``n`` samples: whole patients of the tuning split in a random
    order, without replacement, until their samples reach ``n`` (all of them if fewer)."""
    patients = tuning["subject_idx"].to_numpy()
    uniq, inverse, counts = np.unique(patients, return_inverse=True, return_counts=True)
    order = rng.permutation(len(uniq))
    k = int(np.searchsorted(np.cumsum(counts[order]), n)) + 1
    chosen = np.zeros(len(uniq), bool)
    chosen[order[:k]] = True
    return np.flatnonzero(chosen[inverse])


def run_replicates(task: str, models: list[Model], n: int, reps: int, seed: int, n_boot: int,
                   real_bootstrap) -> list[dict]:
    """``reps`` draws of about ``n`` tuning samples; in each, every rule of :data:`RULES` under
    each variant of :data:`VARIANTS` (one bootstrap per draw, shared through the memo)."""
    from claims_search.results.frontier import TrialRecord
    from claims_search.metrics import percentile_interval
    from claims_search.results.recommend import recommend

    assert models[-1].is_baseline and not any(m.is_baseline for m in models[:-1])
    ref = models[0].tuning
    for m in models:  # every model scored the same tuning rows
        assert np.array_equal(m.tuning[["row", "subject_idx", "label"]].to_numpy(),
                              ref[["row", "subject_idx", "label"]].to_numpy()), m.name
    rows_out = []
    for r in range(reps):
        rng = np.random.default_rng([seed, TASKS.index(task), n, r])
        idx = draw_rows(ref, n, rng)
        frames = {m.name: m.tuning.iloc[idx].reset_index(drop=True) for m in models}
        f0 = frames[models[0].name]
        y, g = f0["label"].to_numpy(), f0["subject_idx"].to_numpy()  # as recommend() reads them
        if y.all() or not y.any():
            rows_out.append({"rep": r, "skipped": "one class"})
            continue
        probs = [frames[m.name]["prob"].to_numpy(dtype=np.float64) for m in models]
        # The one bootstrap of this draw (seed = the seed recommend() is given): each model's own
        # 95 % interval (what the unpaired rule reads) and, through the memo, the paired rules'.
        points, boots = real_bootstrap(y, probs, g, "auprc", n_boot=n_boot, seed=r)
        _MEMO.clear()
        _MEMO[_key(y, probs, g, "auprc", n_boot, r)] = (points, boots)
        _MEMO[_key(y, probs[:-1], g, "auprc", n_boot, r)] = (points[:-1], boots[:-1])
        records = []
        for m, pt, b in zip(models, points, boots):
            low, high = percentile_interval(b)
            records.append(TrialRecord(
                trial_id=m.name, task=task, status="complete", params=m.params, n_params=m.n_params,
                metric=float(pt), metric_low=low, metric_high=high, cost=m.cost, pretrain_cost=m.pretrain_s,
                finetune_cost=m.finetune_s, is_baseline=m.is_baseline))
        out = {"rep": r, "n": int(len(idx)), "patients": int(len(np.unique(g))), "positives": int(y.sum()),
               "variants": {}}
        for variant in VARIANTS:
            offered = records if variant == "with LightGBM" else records[:-1]
            res = out["variants"][variant] = {}
            for label, kw, paired, _ in rules_for(variant):
                rec = recommend(offered, task, predictions=frames if paired else None, metric="auprc",
                                n_boot=n_boot, seed=r, **kw)
                res[label] = {"chosen": rec.record.trial_id, "rule": rec.rule,
                              "underpowered": rec.underpowered, "best": rec.best.trial_id}
        rows_out.append(out)
    return rows_out


def rules_for(variant: str):
    """The old rules never recommend LightGBM (without predictions it is shown beside, never
    chosen), so they are compared on the Transformers alone."""
    return [r for r in RULES if r[2] or variant == "transformers"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - half), min(1.0, c + half)


def certainly_worse(models: list[Model], variant: str, yard: float, seed: int) -> dict[str, bool]:
    """{model: whether the held-out split itself is sure it is worse than the held-out best by
    more than ``yard``} (paired held-out 95 % interval of best - it entirely above ``yard``)."""
    from claims_search.metrics import paired_bootstrap

    offered = [m for m in models if variant == "with LightGBM" or not m.is_baseline]
    best = max(offered, key=lambda m: m.truth)
    out = {}
    for m in offered:
        if m is best:
            out[m.name] = False
            continue
        pb = paired_bootstrap(best.held_out["label"], best.held_out["prob"], m.held_out["prob"],
                              best.held_out["subject_idx"], "auprc", n_boot=1000, seed=seed)
        out[m.name] = bool(pb["low"] > yard)
    return out


def summarise(task: str, models: list[Model], variant: str, n: int, rows: list[dict], seed: int = 0) -> list[dict]:
    by = {m.name: m for m in models}
    offered = [m for m in models if variant == "with LightGBM" or not m.is_baseline]
    truth_best = max(m.truth for m in offered)
    sure = {yard: certainly_worse(models, variant, yard, seed) for yard in {r[3] for r in rules_for(variant)}}
    largest = max((m for m in models if not m.is_baseline), key=lambda m: m.cost)
    done = [r for r in rows if "variants" in r]
    out = []
    for label, _, _, yard in rules_for(variant):
        res = [r["variants"][variant][label] for r in done]
        chosen = [x["chosen"] for x in res]
        errors = sum(truth_best - by[c].truth > yard + 1e-12 for c in chosen)
        certain = sum(sure[yard][c] for c in chosen)
        under = sum(x["underpowered"] for x in res)
        saved = [largest.cost / by[c].cost if by[c].cost > 0 else float("inf") for c in chosen]
        picks = {m.name: sum(c == m.name for c in chosen) / max(1, len(chosen)) for m in offered}
        lo, hi = wilson(errors, len(done))
        out.append({"task": task, "variant": variant, "tuning_n": n, "rule": label, "yardstick": yard,
                    "replicates": len(done), "errors": int(errors), "certain_errors": int(certain),
                    "certain_rate": certain / max(1, len(done)), "error_rate": errors / max(1, len(done)),
                    "error_low": lo, "error_high": hi, "underpowered_rate": under / max(1, len(done)),
                    "median_saved": float(np.median(saved)) if saved else float("nan"), "picks": picks,
                    "mean_samples": float(np.mean([r["n"] for r in done])) if done else float("nan"),
                    "mean_positives": float(np.mean([r["positives"] for r in done])) if done else float("nan")})
    return out


# ---------------------------------------------------------------- report


def truth_table(task: str, models: list[Model], seed: int) -> list[str]:
    from claims_search.metrics import paired_bootstrap

    best = max((m for m in models), key=lambda m: m.truth)
    best_t = max((m for m in models if not m.is_baseline), key=lambda m: m.truth)
    lines = common.table(["model", "params", "cost (device-s: pretrain + fine-tune)", "tuning AUPRC (whole split)",
                          "held-out AUPRC (truth)", "held-out best − it, paired 95 % CI"], [])
    for m in models:
        ref = best_t if not m.is_baseline else best
        if m is ref:
            diff = "— (best Transformer)" if not m.is_baseline else "— (best)"
        else:
            pb = paired_bootstrap(ref.held_out["label"], ref.held_out["prob"], m.held_out["prob"],
                                  ref.held_out["subject_idx"], "auprc", n_boot=1000, seed=seed)
            diff = f"{pb['diff']:+.4f} [{pb['low']:+.4f}, {pb['high']:+.4f}] (vs {ref.name})"
        cost = f"{m.pretrain_s:.1f} + {m.finetune_s:.1f} = {m.cost:.1f}" if not m.is_baseline else f"{m.cost:.1f} (1 thread)"
        lines.append(f"| {m.name} | {m.n_params:,} | {cost} | {m.tuning_full:.4f} | {m.truth:.4f} | {diff} |")
    lines.append("")
    lines.append(f"Held-out split: {len(models[0].held_out):,} samples of "
                 f"{models[0].held_out['subject_idx'].nunique():,} patients "
                 f"({int(models[0].held_out['label'].sum()):,} positive); tuning pool: "
                 f"{len(models[0].tuning):,} samples of {models[0].tuning['subject_idx'].nunique():,} patients "
                 f"({int(models[0].tuning['label'].sum()):,} positive). LightGBM's cost counts leaves as params.")
    return lines


def table(summary: list[dict], task: str, variant: str, names: list[str]) -> list[str]:
    rows = [s for s in summary if s["task"] == task and s["variant"] == variant]
    head = ("| rule | tuning n (mean samples / positives) | error rate [95 % CI] | certain errors | "
            "underpowered | median compute saved | picks, % (" + " / ".join(names) + ") |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for s in sorted(rows, key=lambda s: ([r[0] for r in RULES].index(s["rule"]), s["tuning_n"])):
        picks = " / ".join(f"{100 * s['picks'].get(n, 0):.0f}" for n in names)
        lines.append(
            f"| {s['rule']} | {s['tuning_n']:,} ({s['mean_samples']:.0f} / {s['mean_positives']:.0f}) | "
            f"{100 * s['error_rate']:.1f} % [{100 * s['error_low']:.1f}, {100 * s['error_high']:.1f}] "
            f"({s['errors']}/{s['replicates']}) | {100 * s['certain_rate']:.1f} % | {100 * s['underpowered_rate']:.0f} % | "
            f"{s['median_saved']:.1f}× | {picks} |")
    return lines


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    import torch

    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load": load}


def plot(summary: list[dict], path: Path, names_by_task: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4.2), sharey=True)
    for ax, task in zip(np.atleast_1d(axes), TASKS):
        for i, (label, _, _, _) in enumerate(RULES):
            rows = sorted((s for s in summary if s["task"] == task and s["variant"] == "transformers"
                           and s["rule"] == label), key=lambda s: s["tuning_n"])
            if not rows:
                continue
            x = np.array([s["tuning_n"] for s in rows]) * (1 + 0.03 * (i - 2))
            yv = np.array([100 * s["error_rate"] for s in rows])
            err = np.array([[100 * (s["error_rate"] - s["error_low"]), 100 * (s["error_high"] - s["error_rate"])]
                            for s in rows]).T
            ax.errorbar(x, yv, yerr=err, marker="o", capsize=3, label=label,
                        linestyle="--" if "old" in label else "-")
        ax.set_xscale("log")
        ax.set_xticks(sorted({s["tuning_n"] for s in summary}))
        ax.set_xticklabels([f"{n:,}" for n in sorted({s["tuning_n"] for s in summary})])
        ax.minorticks_off()
        ax.set_xlabel("tuning-split samples (drawn by patient)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("error rate, % (held-out shortfall > yardstick)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Recommendation rule: how often the recommended size is worse than the best (Transformers only)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-rule-error"))
    ap.add_argument("--patients", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--tuning-sizes", default="300,1000,3000")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per recommend() (product default)")
    ap.add_argument("--append-docs", action="store_true",
                    help=f"append the report to docs/benchmarks.md as '{SECTION}' (once)")
    ap.add_argument("--plot", default=None, help="write a PNG of the error rates (e.g. docs/rule_error.png)")
    ap.add_argument("--smoke", action="store_true", help="a quick check of the pipeline: 2 sizes, 10 steps")
    ap.add_argument("--quick", action="store_true",
                    help="--smoke on tiny data, 3 replicates of 15 tuning samples, 100 bootstrap replicates")
    args = ap.parse_args(argv)
    if args.quick:  # presets; flags given explicitly still win
        ap.set_defaults(replicates=3, tuning_sizes="15", n_boot=100, smoke=True, patients=common.QUICK_PATIENTS)
        args = ap.parse_args(argv)
    if args.smoke:
        global LADDER
        LADDER = LADDER[:2]
        PRETRAIN.update(steps=10, warmup=1)
        FINETUNE.update(steps=10, warmup=1)
    t0 = time.perf_counter()
    out = Path(args.out)
    # Replicates of any count and tuning size share a folder (their files are named by them); the
    # data and the models must not differ.
    common.guard(out, {"quick": args.quick, "patients": args.patients, "seed": args.seed,
                       "ladder": LADDER, "pretrain": PRETRAIN, "finetune": FINETUNE}, "rule_error")
    tfile = out / "timings.json"
    timings = json.loads(tfile.read_text()) if tfile.exists() else {}
    info = machine()
    timings.setdefault("first_run", {"date": info["date"], "load": info["load"]})
    log(f"machine: {info}")

    # --quick reads the one tiny dataset every quick mode shares (common.quick_data's: seed 0).
    cache = data(out, args.patients, 0 if args.quick else args.seed,
                 common.QUICK_MAX_LEN if args.quick else MAX_LEN, timings)
    tfile.write_text(json.dumps(timings, indent=2))
    ladder = train_ladder(cache, out, timings)
    tfile.write_text(json.dumps(timings, indent=2))
    base = train_baselines(cache, out, timings)
    tfile.write_text(json.dumps(timings, indent=2))

    import torch

    torch.set_num_threads(1)
    real = _memoized_bootstrap()
    sizes = [int(x) for x in args.tuning_sizes.split(",")]
    summary, truth_lines, names_by_task = [], {}, {}
    for task in TASKS:
        models = load_models(task, ladder, base)
        names_by_task[task] = [m.name for m in models]
        truth_lines[task] = truth_table(task, models, args.seed)
        for n in sizes:
            f = out / "replicates" / f"{task}-n{n}-r{args.replicates}-b{args.n_boot}.json"
            if not f.exists():
                log(f"{task} / n={n}: {args.replicates} replicates x {len(RULES)} rules x {len(VARIANTS)} variants")
                t = time.perf_counter()
                rows = run_replicates(task, models, n, args.replicates, args.seed, args.n_boot, real)
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps({"rows": rows, "wall_s": time.perf_counter() - t}))
                log(f"  {time.perf_counter() - t:.0f} s; bootstrap memo {MEMO_STATS}")
            saved = json.loads(f.read_text())
            timings.setdefault("replicates_s", {})[f.name] = saved["wall_s"]
            for variant in VARIANTS:
                summary.extend(summarise(task, models, variant, n, saved["rows"], args.seed))
    tfile.write_text(json.dumps(timings, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    compute = (timings.get("synth_s", 0) + timings.get("prepare_s", 0) + sum(timings.get("train_s", {}).values())
               + sum(v or 0 for v in timings.get("baseline_s", {}).values())
               + sum(timings.get("replicates_s", {}).values()))
    wall = time.perf_counter() - t0
    md = report(args, info, timings, compute, wall, summary, truth_lines, names_by_task)
    (out / "report.md").write_text(md)
    print(md)
    if args.plot:
        plot(summary, Path(args.plot), names_by_task)
    if args.append_docs:
        bench = ROOT / "docs" / "benchmarks.md"
        text = bench.read_text()
        if SECTION in text:
            log(f"{bench} already has '{SECTION}': not appended again ({out / 'report.md'} has this run's)")
        else:
            bench.write_text(text.rstrip("\n") + "\n\n" + md)
            log(f"appended to {bench}")
    log(f"done in {wall:.0f} s (this invocation); compute of all steps incl. cached: {compute:.0f} s")
    return 0


def report(args, info, timings, compute, wall, summary, truth_lines, names_by_task) -> str:
    tr = timings.get("train_s", {})
    bl = timings.get("baseline_s", {})
    reps = timings.get("replicates_s", {})
    L = [SECTION, ""]
    L += [
        "Question (issue: recommendation error rate): how often does the recommended size - the cheapest "
        "size that the tuning split cannot tell from the best (paired patient bootstrap), or that is within "
        "δ of it - turn out, on fresh patients, to be worse than the best by more than the margin? And how "
        "does today's old unpaired rule compare?",
        "",
        f"`nice -n 19 .venv/bin/python bench/rule_error.py --patients {args.patients} --seed {args.seed} "
        f"--replicates {args.replicates} --tuning-sizes {args.tuning_sizes} --append-docs"
        + (f" --plot {args.plot}" if args.plot else ""),
    ]
    L[-1] += "` (resumable: trained models, predictions and replicates are cached under `runs/bench-rule-error/`)."
    L += [
        "",
        f"Machine: `nproc` {info['nproc']}, {info['cpu']} (from /proc/cpuinfo), Python {info['python']}, "
        f"torch {info['torch']}; run under `nice -n 19`, one thread per process, while other jobs (Ray tests) "
        f"were loading the machine (1-min load average {timings['first_run']['load'][0]:.1f} at the start, "
        f"{info['load'][0]:.1f} at the report). Date: {timings['first_run']['date']} (first run, which trained "
        f"and ran the replicates); report written {info['date']}.",
        "",
        "Wall time of each step (first run; a rerun reads them from the cache): "
        f"synth {timings.get('synth_s', float('nan')):.0f} s, prepare {timings.get('prepare_s', float('nan')):.0f} s, "
        "training " + ", ".join(f"{k} {v:.0f} s" for k, v in tr.items())
        + ", LightGBM " + ", ".join(f"{k} {v:.0f} s" for k, v in bl.items() if v)
        + f", replicates {sum(reps.values()):.0f} s; **{compute / 60:.1f} minutes in all** "
        f"(this invocation: {wall:.0f} s).",
        "",
        "**Setup.** "
        f"{args.patients:,} synthetic patients (`synth --seed {args.seed}`, the generator's 80/10/10 patient split; "
        f"`prepare --max-len {MAX_LEN}`). A ladder of {len(LADDER)} Transformers "
        f"({', '.join(name_of(s) for s in LADDER)}), each pretrained once "
        f"({PRETRAIN['steps']} steps of {PRETRAIN['batch_tokens']} tokens) and fine-tuned on each task "
        f"({FINETUNE['steps']} steps of {FINETUNE['batch_tokens']} tokens, lr {FINETUNE['lr']:g}, "
        f"mean pooling, no best-step selection), plus LightGBM (1 thread), all in one process with "
        "`training.pretrain_and_finetune` / `baseline.baseline`. **Truth** = each model's AUPRC on the whole "
        "held_out split. **Replicates**: "
        f"{args.replicates} per tuning size; each draws whole patients of the tuning split without "
        "replacement until about n samples, cuts every model's tuning predictions to those rows, builds "
        "`TrialRecord`s (tuning AUPRC of the draw, and its own patient-bootstrap 95 % interval, which the "
        "unpaired rule reads) and calls `recommend(records, task, predictions=..., metric=\"auprc\", "
        f"n_boot={args.n_boot}, seed=replicate)` under each rule. The old rules get the same records "
        "without predictions (`predictions=None`), so `recommend` falls back to them. Cost = "
        "device-seconds of pretraining + that task's fine-tuning (`TrialRecord.cost`).",
        "",
        "**Error** = the recommended model's held-out AUPRC is below the held-out best's by more than the "
        "yardstick: the margin δ for the non-inferiority rules; **0.01** for the rules without a margin "
        "(indistinguishable, old unpaired, old tolerance 0.01). The interval is Wilson's 95 % binomial "
        "interval over replicates. **Underpowered**: `Recommendation.underpowered` (the rule kept the best). "
        "**Certain errors**: the errors whose recommended model the held-out split itself shows worse than its "
        "best by more than the yardstick (paired held-out 95 % interval of best − it entirely above the "
        "yardstick); the rest of the errors rest on held-out point estimates that the held-out split cannot "
        "separate from the yardstick. **Compute saved** = cost of the largest Transformer / cost of the recommended model (1.0× = the "
        "largest was recommended). **Picks**: % of replicates recommending each model.",
        "",
    ]
    for task in TASKS:
        L += [f"### {task}", "", "The models (truth):", ""] + truth_lines[task] + [""]
        tnames = [n for n in names_by_task[task] if n != "LightGBM"]
        L += ["Transformers only (the size rule alone; LightGBM not offered):", ""]
        L += table(summary, task, "transformers", tnames) + [""]
        L += ["With LightGBM offered (the product's full choice):", ""]
        L += table(summary, task, "with LightGBM", names_by_task[task]) + [""]
    if args.plot:
        L += [f"![error rate by tuning size]({Path(args.plot).name})", ""]
    L += [
        "**Limits.** Few sizes (four Transformers, all tiny and briefly trained on a CPU, so their "
        "differences come from under-training as much as from capacity), synthetic data, one seed of "
        "training: the error rates belong to *this* ladder of true gaps, and another ladder (gaps nearer "
        "or farther from the margin) gives other rates. The truth is itself an estimate (the held-out "
        "split's paired intervals above show how sure it is). The replicates are draws from one finite "
        "tuning split (draws of 3,000 samples overlap heavily), so the binomial intervals cover replicate "
        "noise only, not training or tuning-split noise. Costs are wall-clock device-seconds on a loaded "
        "shared machine, so the cost order of near sizes and the compute-saved factors are noisy.",
        "",
    ]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
