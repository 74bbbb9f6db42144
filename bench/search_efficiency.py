"""Search efficiency without hindsight: the size policy replayed on committed unit tables (not a test).

    .venv/bin/python bench/search_efficiency.py --results bench/results --out DIR [--seeds 5] [--quick]
    .venv/bin/python bench/search_efficiency.py --study runs/pilot-lr [--seeds 5] [--report FILE]   (old mode)

**Tables mode** (``--results``, the default). Every ``<results>/<study>/units.json`` (schema
below) is one ladder of sizes, each pretrained once and fine-tuned per task and labelled-set
size. A *search* is one (study, labelled size): all of that study's tasks at that number of
labelled patients, as one live search would run them. A trial of the replay is a lookup into the
table, charged its compute up to where the strategy stopped it. Strategies, each driven exactly
as a live search would be (no strategy sees a size it has not paid for):

- ``policy``: ``claims_search.search.policy.SizePolicy`` with the product's settings (``Settings()``, or
  ``--z/--rungs/--warmup``): sizes in order of cost; a size is asked at each rung with its
  pretraining validation loss at that fraction and stopped there or trained fully; the search
  ends when the policy itself says ``Done``. A size stopped at rung f costs f x its pretraining
  (its fine-tunings never run); a size trained fully costs its pretraining plus its
  fine-tunings on the search's tasks.
- ``grid``: every size fully; its answer is **the grid's answer**: the paired rule over all sizes.
- ``random``: every size fully, in a random order; ``tpe``: the product's TPE sampler on a ladder.
  ``search._no_repeats`` queues every configuration of a finite space that its budget covers, in
  a shuffled order (``random.Random(seed).shuffle``), before TPE proposes anything, so on a
  ladder the product's TPE *is* a random order (replayed with its own shuffle, not Optuna).
  Neither has a rule for done: it declares its answer after the last size (100 %).
- ``ascent``: cheapest first, each size fully; it stops at the first size that is not the
  paired rule's pick on any task, and declares the picks then.

The pick after each fully trained size is the paired rule of ``claims_search.results.recommend`` with
margin δ (``--delta``, the policy's δ): with per-patient tuning predictions in the table,
``recommend()`` itself on them; without, its verdicts mimicked from the table's paired-difference
standard error (``paired_se``): a cheaper size qualifies when the upper end of the 95 %
interval of (best - it), ``diff + 1.96 se``, is below δ; the answer is the cheapest that
qualifies, else the best (as ``recommend.py``'s module docstring says).

Measured per search, *without hindsight*: the compute spent until the strategy declares its
answer, as a share of the grid's (training every size fully); whether its declared answer equals
the grid's per task ("agrees"); whether it is worse than the grid's answer by more than δ on
held-out; and, for contrast only, the hindsight figure of the old replay (compute until the
running pick equals the grid's and stays so). The closing line reads ``default policy: median X %
of the grid's compute to its declared answer; Y % agree with the grid's answer (N tasks x S
seeds)``. The policy, grid, ascent are deterministic on a table; ``--seeds`` varies the random
and TPE orders. Where no tables are committed it says so in one line and exits 0.

**The table format** (``bench/results/<study>/units.json``; JSON, one file per study; sizes in
any order; every number a plain float; nothing patient-level but the optional predictions)::

    {"format": "claims-search-units/1",
     "study": "pilot-lr",                 # a name; the folder's name if absent
     "metric": "auprc",                   # the tuning metric the paired rule reads
     "sizes": [{"key": "w16d2h2", "n_params": 6144,
                "pretrain": {"steps": 4000, "flops": 2.0e12,       # compute of the whole pretraining;
                             # a step's compute is flops / steps (every step holds the same tokens)
                             "val_loss": [[0.0625, 4.91], [0.125, 4.20], ..., [1.0, 3.35]]}}],
                             # [fraction of steps, pretraining validation loss] at every evaluation
     "units": [{"size": "w16d2h2", "task": "ckd_incidence", "n_labelled": 2000,
                "finetune": {"steps": 1200, "flops": 1.7e11,       # all of this unit's fine-tuning
                             "carve_out": [[120, 0.31], ...]},     # optional: [step, carve-out metric]
                "tuning": 0.334, "held_out": 0.304,                # final metrics, the table's "metric"
                "predictions": "predictions/w16d2h2.ckd_incidence.2000.parquet"}],
                             # optional: per-patient tuning predictions (relative path; columns as
                             # claims_search/runs/predictions.py: row, subject_idx, label, prob;
                             # synthetic patients only)
     "paired_se": {"ckd_incidence/2000": 0.0075}}
                             # the paired rule's standard error of a difference per task/labelled
                             # size ("task" alone also read; 0.005 where absent): read where the units
                             # lack predictions, and as the policy's noise

A rung f reads the last evaluation at or before f (its loss, charged at f). Compact: the
study's five sizes x six tasks x two labelled sizes are about 20 kB without predictions.
No tables are committed today: the study's units were lost with a machine (issue 26, item 4),
and ``bench/ladder_sim.py`` measures the policy on simulated ladders meanwhile.

**Study mode** (``--study``, kept as it was): reads the units ``bench/scaling_study.py`` trained
(every size of its ladder, pretrained once and fine-tuned per task and labelled-set size) and
replays search strategies on them, as tabular benchmarks of hyper-parameter search do: a
strategy picks sizes one at a time, each pick costs what that size really cost (its pretraining
plus its fine-tuning on every task, in training FLOPs), and after each pick the paired rule
(``recommend.recommend``) recommends a size from the picks so far. Strategies:

- ``grid``: every size, cheapest first (what the study did);
- ``default`` (reported as "TPE, 2 start-up trials, univariate"): Optuna's multi-objective TPE
  (maximise each task's metric, minimise cost) with 2 start-up trials and no multivariate
  option, never repeating a size. Not claims-search's own policy;
- ``random``: sizes in a random order;
- ``ascend``: cheapest first, but stop growing once, for every task, the fitted saturating curve
  ``m(N) = a - b N^-c`` (on the sizes so far, at least 3) predicts a gain below ``--delta`` at
  the next size, or the paired rule finds the newest size no better than the one before it;
- ``ascend+patience``: ascend's sizes, each fine-tuning charged only up to where ``--patience``
  evaluations without a better carve-out AUPRC would have ended it.

Per task: the compute spent until the strategy's recommendation equals the grid's and stays so,
with hindsight, and the hypervolume of the (metric, cost) frontier against cumulative compute
(``<report>_hv.png``). That mode needs the study's unit folders, which no machine has today.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from claims_search.search.policy import Candidate, Done, Pick, Settings, SizePolicy, Train, Wait

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FORMAT = "claims-search-units/1"
Z95 = 1.959964  # the two-sided 95 % interval's half-width in standard errors
STRATEGIES = ("policy", "grid", "random", "tpe", "ascent")
LABELS = {"policy": "default policy", "grid": "grid", "random": "random order",
          "tpe": "product TPE (= shuffled queue)", "ascent": "plain ascent"}


def _S():
    """``bench/scaling_study.py``, imported when the study mode needs it (it imports torch)."""
    import scaling_study

    return scaling_study


# ---- the replay engine: one ladder, any strategy -------------------------------------------------

@dataclass
class Ladder:
    """One search's ladder as a replay sees it: sizes (cheapest first by ``full_cost``), their
    costs, what each would show if trained (rung losses, final tuning and held-out metric per
    task) and the paired rule. ``rung_loss(key, f) -> (loss, fraction charged)``;
    ``pick(trained, task) -> Pick`` (the paired rule over sizes trained fully)."""

    name: str
    keys: list[str]
    n_params: dict[str, int]
    pre_cost: dict[str, float]
    ft_cost: dict[str, float]
    tasks: list[str]
    tuning: dict[str, dict[str, float]]      # key -> task -> final tuning metric
    held_out: dict[str, dict[str, float]]    # key -> task -> held-out (true) metric
    rung_loss: Callable[[str, float], tuple[float, float]]
    pick: Callable[[list[str], str], Pick]
    info: dict = field(default_factory=dict)

    def full(self, key: str) -> float:
        return self.pre_cost[key] + self.ft_cost[key]

    @property
    def grid_cost(self) -> float:
        return sum(self.full(k) for k in self.keys)


def paired_pick(trained: list[str], obs: dict[str, float], cost: dict[str, float], se: float, delta: float,
                rule: str = "margin") -> str:
    """The paired rule's answer over ``trained`` sizes from their tuning metrics ``obs``, its
    verdicts mimicked with a paired-difference standard error ``se`` (``recommend.py``): best =
    highest metric (ties: cheapest); a cheaper size qualifies, with ``rule="margin"``, when the
    95 % interval's upper end of best - it is below δ; with ``rule="indistinguishable"`` (margin
    None) when the interval contains 0 and is at most 2 x 0.01 wide. The cheapest qualifying, else the best."""
    order = sorted(trained, key=lambda k: cost[k])
    best = max(order, key=lambda k: (obs[k], -cost[k]))
    for k in order:
        if cost[k] >= cost[best] or k == best:
            break
        d = obs[best] - obs[k]
        lo, hi, width = d - Z95 * se, d + Z95 * se, 2 * Z95 * se
        if (hi < delta) if rule == "margin" else (lo <= 0 and width <= 2 * 0.01):
            return k
    return best


@dataclass
class Outcome:
    """What one strategy did on one ladder: compute spent to its declared answer, the answer per
    task, the sizes trained fully / stopped (key -> rung), the running picks after each event
    (cumulative compute, {task: key}), and the policy's closing line."""

    spent: float
    answer: dict[str, str]
    trained: list[str]
    stopped: dict[str, float]
    trace: list[tuple[float, dict[str, str]]]
    line: str = ""


def run_policy(lad: Ladder, settings: Settings, policy_cls=SizePolicy) -> Outcome:
    """Drive the size policy on ``lad`` to its own ``Done``, one size at a time."""
    cands = [Candidate(k, lad.full(k), lad.n_params[k]) for k in lad.keys]
    p = policy_cls(cands, lad.tasks, settings)
    spent, trained, stopped, trace, picks = 0.0, [], {}, [], {}
    while not isinstance(step := p.propose(), Done):
        if isinstance(step, Wait):  # one at a time: nothing can be running here
            raise RuntimeError("the policy waits with nothing running")
        assert isinstance(step, Train)
        stop_at = None
        for f in step.rungs:
            loss, charged = lad.rung_loss(step.key, f)
            if not p.at_rung(step.key, f, loss).go_on:
                stop_at = charged
                break
        if stop_at is not None:
            p.stopped(step.key)
            stopped[step.key] = stop_at
            spent += stop_at * lad.pre_cost[step.key]
        else:
            spent += lad.full(step.key)
            trained.append(step.key)
            picks = {t: lad.pick(trained, t) for t in lad.tasks}
            p.finished(step.key, {t: lad.tuning[step.key][t] for t in lad.tasks}, picks)
        trace.append((spent, {t: pk.key for t, pk in picks.items()}))
    return Outcome(spent, dict(step.answer), trained, stopped, trace, step.line)


def run_order(lad: Ladder, order: list[str], stop_when_no_gain: bool = False) -> Outcome:
    """Train ``order`` fully, one at a time; with ``stop_when_no_gain`` (plain ascent) stop after
    the first size that is not the pick on any task."""
    spent, trained, trace, picks = 0.0, [], [], {}
    for k in order:
        spent += lad.full(k)
        trained.append(k)
        picks = {t: lad.pick(trained, t).key for t in lad.tasks}
        trace.append((spent, dict(picks)))
        if stop_when_no_gain and len(trained) > 1 and all(v != k for v in picks.values()):
            break
    return Outcome(spent, picks, trained, {}, trace, "")


def strategy(lad: Ladder, name: str, seed: int, settings: Settings) -> Outcome:
    if name == "policy":
        return run_policy(lad, settings)
    if name == "grid":
        return run_order(lad, list(lad.keys))
    if name == "random":
        return run_order(lad, list(np.random.default_rng([seed, 7]).permutation(lad.keys)))
    if name == "tpe":  # search._no_repeats: every configuration queued, random.Random(sampler seed).shuffle
        keys = list(lad.keys)
        random.Random(seed).shuffle(keys)
        return run_order(lad, keys)
    if name == "ascent":
        return run_order(lad, list(lad.keys), stop_when_no_gain=True)
    raise ValueError(name)


def hindsight(out: Outcome, grid: dict[str, str], task: str) -> float | None:
    """The old replay's figure: compute until the running pick equals the grid's and stays so
    (it reads picks still to come); None if the declared answer is not the grid's."""
    ok = [picks.get(task) == grid[task] for _, picks in out.trace]
    for i in range(len(ok)):
        if all(ok[i:]):
            return out.trace[i][0]
    return None


def score(lad: Ladder, out: Outcome, grid: Outcome, delta: float) -> dict[str, dict]:
    """Per task: share of the grid's compute to the declared answer, agreement, worse than the
    grid's answer by more than δ on held-out, the hindsight share."""
    res = {}
    for t in lad.tasks:
        h = hindsight(out, grid.answer, t)
        res[t] = {"share": out.spent / lad.grid_cost, "answer": out.answer.get(t), "grid": grid.answer[t],
                  "agree": out.answer.get(t) == grid.answer[t],
                  "worse": lad.held_out[out.answer[t]][t] < lad.held_out[grid.answer[t]][t] - delta
                  if t in out.answer else True,
                  "hindsight_share": None if h is None else h / lad.grid_cost,
                  "trained": list(out.trained), "stopped": dict(out.stopped)}
    return res


# ---- the committed tables ------------------------------------------------------------------------

def find_tables(results: Path) -> list[Path]:
    return sorted(results.glob("*/units.json")) if results.is_dir() else []


def load_tables(path: Path, delta: float, rule: str = "margin") -> list[Ladder]:
    """One Ladder per labelled size of the study in ``path`` (``units.json``; module docstring)."""
    doc = json.loads(path.read_text())
    if doc.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    study = doc.get("study", path.parent.name)
    sizes = {s["key"]: s for s in doc["sizes"]}
    se_of = doc.get("paired_se", {})
    ladders = []
    for n in sorted({u["n_labelled"] for u in doc["units"]}):
        units = [u for u in doc["units"] if u["n_labelled"] == n]
        tasks = sorted({u["task"] for u in units})
        keys = [k for k in sizes if all(any(u["size"] == k and u["task"] == t for u in units) for t in tasks)]
        if len(keys) < 2:
            continue
        by = {(u["size"], u["task"]): u for u in units if u["size"] in keys}
        ft = {k: sum(by[(k, t)]["finetune"]["flops"] for t in tasks) for k in keys}
        pre = {k: float(sizes[k]["pretrain"]["flops"]) for k in keys}
        keys.sort(key=lambda k: (pre[k] + ft[k], sizes[k]["n_params"], k))
        tuning = {k: {t: float(by[(k, t)]["tuning"]) for t in tasks} for k in keys}
        held = {k: {t: float(by[(k, t)]["held_out"]) for t in tasks} for k in keys}
        curves = {k: sorted((float(f), float(v)) for f, v in sizes[k]["pretrain"]["val_loss"]) for k in keys}
        cost = {k: pre[k] + ft[k] for k in keys}

        def rung_loss(key, f, curves=curves):
            seen = [(g, v) for g, v in curves[key] if g <= f + 1e-12]
            if not seen:
                raise ValueError(f"{path}: {key} has no pretraining evaluation at or before rung {f:g}")
            return seen[-1][1], f

        preds = {(k, t): path.parent / by[(k, t)]["predictions"] for k in keys for t in tasks
                 if by[(k, t)].get("predictions")}
        metric = doc.get("metric", "auprc")

        def pick(trained, task, tuning=tuning, cost=cost, preds=preds, n=n, metric=metric):
            se = float(se_of.get(f"{task}/{n}", se_of.get(task, 0.005)))
            if all((k, task) in preds for k in trained):
                return _recommend_pick(trained, task, tuning, cost, preds, metric, delta, se)
            k = paired_pick(trained, {x: tuning[x][task] for x in trained}, cost, se, delta, rule)
            return Pick(k, tuning[k][task], se)

        ladders.append(Ladder(f"{study}/n{n}", keys, {k: int(sizes[k]["n_params"]) for k in keys}, pre, ft,
                              tasks, tuning, held, rung_loss, pick, {"study": study, "n_labelled": n}))
    return ladders


def _recommend_pick(trained, task, tuning, cost, preds, metric, delta, se) -> Pick:
    """The product's paired rule on the units' per-patient tuning predictions (margin δ)."""
    from claims_search.runs import predictions as P
    from claims_search.results.frontier import TrialRecord
    from claims_search.results.recommend import recommend

    records = [TrialRecord(trial_id=k, task=task, status="complete", params={"model": {}}, n_params=None,
                           metric=tuning[k][task], metric_low=None, metric_high=None, cost=cost[k],
                           pretrain_cost=None, finetune_cost=None) for k in trained]
    frames = {k: P.read(preds[(k, task)]) for k in trained}
    rec = recommend(records, task, frames, metric=metric, margin=delta, n_boot=1000, seed=0)
    key = rec.record.trial_id
    widths = [c.high - c.low for c in rec.comparisons if c.low is not None and c.high is not None]
    noise = statistics.median(widths) / (2 * Z95) if widths else se
    return Pick(key, tuning[key][task], noise)


def replay_all(ladders: list[Ladder], seeds: int, settings: Settings, delta: float,
               strategies=STRATEGIES) -> dict:
    """{strategy: [per (ladder, seed, task) rows]} (policy, grid and ascent are deterministic:
    one run, counted once per seed so that every strategy has the same rows)."""
    rows = {s: [] for s in strategies}
    for lad in ladders:
        grid = strategy(lad, "grid", 0, settings)
        fixed = {s: strategy(lad, s, 0, settings) for s in strategies if s in ("policy", "grid", "ascent")}
        for seed in range(seeds):
            for s in strategies:
                out = fixed.get(s) or strategy(lad, s, seed, settings)
                for t, r in score(lad, out, grid, delta).items():
                    rows[s].append({"ladder": lad.name, "task": t, "seed": seed, **r,
                                    "line": out.line if s == "policy" else ""})
    return rows


def summary_line(rows: list[dict], n_tasks: int, seeds: int) -> str:
    share = 100 * float(np.median([r["share"] for r in rows]))
    agree = 100 * float(np.mean([r["agree"] for r in rows]))
    return (f"default policy: median {share:.0f} % of the grid's compute to its declared answer; "
            f"{agree:.0f} % agree with the grid's answer ({n_tasks} tasks x {seeds} seeds)")


machine = common.machine


def tables_main(args) -> int:
    t0 = time.time()
    results = Path(args.results)
    paths = find_tables(results)
    if not paths:
        print(f"search_efficiency: no unit tables are committed under {results} (no <study>/units.json): "
              "nothing to replay; bench/ladder_sim.py measures the policy on simulated ladders")
        return 0
    settings = Settings(delta=args.delta, **({"z": args.z} if args.z is not None else {}),
                        **({"rungs": tuple(args.rungs)} if args.rungs else {}),
                        **({"warmup_sizes": args.warmup} if args.warmup else {}))
    out = Path(args.out)
    # A report folder holds one replay: its settings, quick or full, say which.
    common.guard(out, {"quick": args.quick, "results": str(results), "seeds": args.seeds, "delta": args.delta,
                       "rule": args.rule, "z": args.z, "rungs": args.rungs, "warmup": args.warmup}, "search_efficiency")
    ladders = [lad for p in paths for lad in load_tables(p, args.delta, args.rule)]
    rows = replay_all(ladders, args.seeds, settings, args.delta)
    n_tasks = sum(len(lad.tasks) for lad in ladders)
    lines = [f"Replayed {len(ladders)} search(es) from {len(paths)} table(s) under `{results}` "
             f"({n_tasks} tasks); {settings}; `python bench/search_efficiency.py --results {args.results} "
             f"--out {args.out} --seeds {args.seeds}`; {datetime.date.today().isoformat()}; {machine()}.", "",
             *common.table(["strategy", "median share of the grid to its declared answer", "agree with the grid",
                            "worse than the grid's by > δ (held-out)", "with hindsight (old figure)"], [], "lrrrr")]
    for s in STRATEGIES:
        rs = rows[s]
        hs = [r["hindsight_share"] for r in rs]
        hmed = float(np.median([h if h is not None else np.inf for h in hs]))
        lines.append(common.row([LABELS[s], f"{100 * np.median([r['share'] for r in rs]):.0f} %",
                                 f"{100 * np.mean([r['agree'] for r in rs]):.0f} %",
                                 f"{100 * np.mean([r['worse'] for r in rs]):.0f} %",
                                 f"{100 * hmed:.0f} %" if np.isfinite(hmed) else "never"]))
    lines += ["", "Per search (policy): " + "; ".join(
        f"{lad.name}: {next(r['line'] for r in rows['policy'] if r['ladder'] == lad.name)}" for lad in ladders)]
    closing = summary_line(rows["policy"], n_tasks, args.seeds)
    (out / "search_efficiency.json").write_text(json.dumps({"settings": settings.__dict__ | {"rungs": list(settings.rungs)},
                                                            "rows": rows, "closing": closing}, indent=1, default=str))
    (out / "search_efficiency.md").write_text("\n".join(lines + ["", closing]) + "\n")
    print("\n".join(lines))
    print(f"({time.time() - t0:.1f} s)")
    print(closing)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="bench/results", help="tables mode: folder of <study>/units.json")
    p.add_argument("--out", default="runs/search-efficiency", help="tables mode: where the report goes")
    p.add_argument("--study", default=None, help="study mode: a bench/scaling_study.py output folder")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--metric", default="auprc", choices=("auprc", "auroc"))
    p.add_argument("--delta", type=float, default=None,
                   help="δ of the paired rule and the policy (tables: 0.01, the policy's; study mode's ascend: 0.005)")
    p.add_argument("--rule", default="margin", choices=("margin", "indistinguishable"),
                   help="tables without predictions: the paired rule's verdict to mimic")
    p.add_argument("--z", type=float, default=None)
    p.add_argument("--rungs", type=float, nargs="+", default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--patience", type=int, default=3, help="study mode: ascend+patience's evaluations")
    p.add_argument("--report", default=None, help="study mode: the markdown report")
    p.add_argument("--quick", action="store_true", help="--seeds 1 (flags given still win): seconds")
    args = p.parse_args(argv)
    if args.quick:  # presets; flags given explicitly still win
        p.set_defaults(seeds=1)
        args = p.parse_args(argv)
    if args.study:
        args.delta = 0.005 if args.delta is None else args.delta
        return study_main(args, argv)
    args.delta = Settings().delta if args.delta is None else args.delta
    return tables_main(args)



# ---- the study mode (--study): unchanged but for lazy imports ----------------------------------

STUDY_STRATEGIES = ("grid", "default", "random", "ascend", "ascend+patience")
# What the report and the plot call each strategy: "default" is the replay's TPE, not the product's.
STUDY_LABELS = {"default": "TPE, 2 start-up trials, univariate"}


def patience_stop(curve: list, steps: int, patience: int) -> int:
    """The step where the product's early stopping (``worker.patience_stop``) would have ended a
    run of ``steps`` steps whose carve-out curve is ``curve``; ``steps`` if never (or no curve
    was kept)."""
    from claims_search.runs import worker

    stop = worker.patience_stop(curve, patience)
    return steps if stop is None else stop


def load(study: Path, metric: str, patience: int = 0):
    """(sizes, cost per size, {(task, n): {size: (metric, record inputs)}}, cost per size with
    ``patience``, units whose model patience would change) from the study."""
    from claims_search.runs import predictions as P

    meta = json.loads((study / "report.json").read_text())
    tables = meta["tables"]
    sizes = [r["size"] for r in tables[0]["rows"] if "pre" in r]
    cost, cost_p, changed = {}, {}, []
    for s in sizes:  # one trial = pretraining once + fine-tuning on every task and labelled size (every rate tried)
        pre = json.loads((study / "pretrain" / s / "summary.json").read_text())["cost"]["flops"]
        cost[s] = cost_p[s] = pre
        for t in tables:
            for d in (u for r in t["rows"] if r["size"] == s and "pre" in r for u in _S().units_of(study, t, r)[1]):
                flops = json.loads((d / "summary.json").read_text())["cost"]["flops"]
                run = json.loads((d / "run" / "result.json").read_text())
                stop = patience_stop(run.get("carve_out_auprc", []), run["step"], patience)
                cost[s] += flops
                cost_p[s] += flops * stop / run["step"]  # every step holds the same token budget
                if run.get("best_step", 0) > stop:
                    changed.append(f"{d.parents[3].name}/{'/'.join(d.parts[-3:])}")
    per_task = {}
    for t in tables:
        rows = {r["size"]: r for r in t["rows"] if "pre" in r}
        if set(rows) != set(sizes):
            continue
        frames = {s: P.read(json.loads((_S().units_of(study, t, rows[s])[0] / "summary.json").read_text())
                            ["predictions"]["tuning"]) for s in sizes}
        per_task[(t["task"], t["n_labelled"])] = {"rows": rows, "frames": frames, "grid": t["recommended"]}
    return sizes, cost, per_task, cost_p, changed


def recommend_from(picks: list[str], task: str, data: dict, metric: str) -> str | None:
    from claims_search.results.frontier import TrialRecord
    from claims_search.results.recommend import recommend

    records = []
    for s in picks:
        r = data["rows"][s]
        m = r["pre"]["tuning"]
        records.append(TrialRecord(trial_id=s, task=task, status="complete", params={"model": {}},
                                   n_params=r["non_embedding"], metric=m[metric], metric_low=m[f"{metric}_low"],
                                   metric_high=m[f"{metric}_high"], cost=r["pre"]["cost"], pretrain_cost=None,
                                   finetune_cost=None))
    rec = recommend(records, task, {s: data["frames"][s] for s in picks}, metric=metric, n_boot=_S().RULE_BOOT, seed=0)
    return rec.record.trial_id if rec else None


def order(strategy: str, sizes: list[str], cost: dict, per_task: dict, metric: str, seed: int, delta: float):
    """The sizes ``strategy`` trains, in order (it may stop before the end)."""
    if strategy == "grid":
        return list(sizes)
    if strategy == "random":
        return list(np.random.default_rng(seed).permutation(sizes))
    if strategy == "default":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        keys = sorted(per_task)
        study = optuna.create_study(directions=["maximize"] * len(keys) + ["minimize"],
                                    sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2))
        dist = {"size": optuna.distributions.CategoricalDistribution(sizes)}
        picked: list[str] = []
        repeats = 0
        while len(picked) < len(sizes):
            trial = study.ask()
            s = trial.suggest_categorical("size", sizes)
            fallback = s in picked
            if fallback:  # claims-search never trains a size twice: ask again, a bounded number of times
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                repeats += 1
                if repeats < 20:
                    continue
                s = next(x for x in sizes if x not in picked)  # then the cheapest size not trained yet
            repeats = 0
            picked.append(s)
            values = [per_task[k]["rows"][s]["pre"]["tuning"][metric] for k in keys] + [cost[s]]
            if fallback:  # the asked trial was told FAIL: record the size actually trained
                study.add_trial(optuna.trial.create_trial(params={"size": s}, distributions=dist, values=values))
            else:
                study.tell(trial, values)
        return picked
    if strategy in ("ascend", "ascend+patience"):
        picked = []
        for s in sizes:
            picked.append(s)
            if len(picked) >= 3 and all(_saturated(picked, d, metric, delta, key[0]) for key, d in per_task.items()):
                break
        return picked
    raise ValueError(strategy)


def _saturated(picked: list[str], data: dict, metric: str, delta: float, task: str) -> bool:
    xs = [data["rows"][s]["non_embedding"] for s in picked]
    ys = [data["rows"][s]["pre"]["tuning"][metric] for s in picked]
    f = _S().saturating_fit(xs, ys)
    next_x = xs[-1] * xs[-1] / xs[-2]  # the ladder is geometric: one more step of it
    if f is not None and f(next_x) - ys[-1] < delta:
        return True
    return recommend_from(picked, task, data, metric) != picked[-1]


def floor_share(data: dict, cost: dict) -> float:
    """Compute of the grid's answer, trained fully: the least any strategy spends before it can
    recommend that size (it must have trained it); inf when the grid gave none."""
    return cost[data["grid"]] if data["grid"] is not None else float("inf")


def hypervolume(points: list[tuple[float, float]], max_cost: float) -> float:
    """Area dominated by (metric up, cost down) points, reference (metric 0, cost max_cost)."""
    front = sorted(points, key=lambda p: (p[1], -p[0]))
    hv, best = 0.0, 0.0
    for m, c in front:
        if m > best:
            hv += (m - best) * (max_cost - c)
            best = m
    return hv


def replay(strategy, sizes, cost, per_task, metric, seed, delta) -> dict:
    picks = order(strategy, sizes, cost, per_task, metric, seed, delta)
    cum = np.cumsum([cost[s] for s in picks])
    out = {"picks": picks, "compute": float(cum[-1]), "tasks": {}}
    for key, data in per_task.items():
        recs = [recommend_from(picks[: i + 1], key[0], data, metric) for i in range(len(picks))]
        correct = [r == data["grid"] for r in recs]
        # the first pick after which the recommendation equals the grid's and stays so
        first = next((i for i in range(len(picks)) if all(correct[i:])), None)
        max_cost = sum(cost.values())
        hv = [hypervolume([(data["rows"][s]["pre"]["tuning"][metric], data["rows"][s]["pre"]["cost"])
                           for s in picks[: i + 1]], max_cost) for i in range(len(picks))]
        out["tasks"][f"{key[0]}/n{key[1]}"] = {"final": recs[-1], "grid": data["grid"],
                                                "compute_to_grid": None if first is None else float(cum[first]),
                                                "curve": list(zip(cum.tolist(), hv))}
    return out


def study_main(args, argv) -> int:
    """The study-replay mode (``--study``): the units of ``bench/scaling_study.py``, with hindsight."""
    study = Path(args.study)
    sizes, cost, per_task, cost_p, changed = load(study, args.metric, args.patience)
    grid_compute = sum(cost.values())  # the grid trains every step of every size, as the study did
    results = {s: [replay(s, sizes, cost_p if s == "ascend+patience" else cost, per_task, args.metric, seed,
                          args.delta)
                   for seed in (range(args.seeds) if s in ("default", "random") else [0])] for s in STUDY_STRATEGIES}
    n_units = sum(len(r["pre"].get("tried", [1])) for t in json.loads((study / "report.json").read_text())["tables"]
                  for r in t["rows"] if "pre" in r)
    lines = [f"Replayed on `{study}` ({len(sizes)} sizes; grid compute {grid_compute:.2e} FLOPs); "
             f"`{' '.join(['python bench/search_efficiency.py', *(argv if argv is not None else sys.argv[1:])])}`; "
             f"{datetime.date.today().isoformat()}; {machine()}.", "",
             "Each cell: with hindsight, the median compute until the strategy's answer equals the grid's and "
             "stays so, as a share of the grid's compute (runs that got there / runs): it looks at the picks "
             "still to come, which no running strategy can know; then, without hindsight, the median compute "
             "the strategy spent before it stopped (grid, TPE and random train every size, so the answer they "
             "end with, at 100 %, is the grid's; ascend stops itself, and its answer when it stops is the "
             "grid's where the first figure is not \"never\").",
             "TPE, 2 start-up trials, univariate: the replay's Optuna TPE (multi-objective, no repeats), not "
             "claims-search's policy, which for a finite space its budget covers (as this ladder) tries every "
             "configuration once in a shuffled order, as the random column replays.",
             f"ascend+patience charges each fine-tuning up to where `--patience {args.patience}` would have ended "
             f"it: {sum(cost_p.values()) / grid_compute:.0%} of the grid's compute for every size; "
             f"{len(changed)} of {n_units} fine-tunings would have stopped before their best step "
             + ("(none: its models are the full runs')." if not changed else
                "(their metrics here are the full runs': an approximation): " + ", ".join(changed) + "."), "",
             "floor: the compute of the grid's answer, trained fully (pretraining and its fine-tunings), as a "
             "share of the grid's: no strategy that trains fully can recommend that size for less; where it "
             "is above 30 %, neither can any of them.", "",
             *common.table(["task", "floor", *(STUDY_LABELS.get(s, s) for s in STUDY_STRATEGIES)], [])]
    summary = {}
    for (task, n), data in sorted(per_task.items()):
        key = f"{task}/n{n}"
        floor = floor_share(data, cost) / grid_compute
        summary[key] = {"floor_share": floor}
        cells = [f"{floor:.0%}" if np.isfinite(floor) else "-"]
        for s in STUDY_STRATEGIES:
            vals = [r["tasks"][key]["compute_to_grid"] for r in results[s]]
            hits = [v for v in vals if v is not None]
            med = float(np.median([v if v is not None else np.inf for v in vals]))
            summary[key][s] = {"median_share": med / grid_compute, "hits": len(hits), "runs": len(vals)}
            spent = float(np.median([r["compute"] for r in results[s]])) / grid_compute
            summary[key][s]["median_spent_share"] = spent
            cells.append((f"{med / grid_compute:.0%}" if np.isfinite(med) else "never")
                         + f" ({len(hits)}/{len(vals)}); stops at {spent:.0%}")
        lines.append(common.row([key, *cells]))
    common.write_json(study / "search_efficiency.json", {"summary": summary, "results": results, "sizes": sizes,
                                                         "cost": cost, "cost_patience": cost_p,
                                                         "patience": args.patience, "changed_by_patience": changed})
    if args.report:
        report = Path(args.report)
        report.write_text("\n".join(lines) + "\n")
        _plot(results, per_task, report.with_name(report.stem + "_hv.png"))
    print("\n".join(lines))
    return 0


def _plot(results: dict, per_task: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(f"{t}/n{n}" for t, n in per_task)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for s in STUDY_STRATEGIES:
            for i, r in enumerate(results[s]):
                xs, ys = zip(*r["tasks"][key]["curve"])
                ax.step(xs, ys, where="post", alpha=0.6, label=STUDY_LABELS.get(s, s) if i == 0 else None,
                        color={"grid": "k", "default": "tab:blue", "random": "tab:orange", "ascend": "tab:green",
                               "ascend+patience": "tab:red"}[s])
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("cumulative compute (FLOPs)", fontsize=7)
    axes[0][0].set_ylabel("frontier hypervolume")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
