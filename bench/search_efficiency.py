"""Search efficiency against the study's grid, replayed on the size ladder (not a test).

    .venv/bin/python bench/search_efficiency.py [--study runs/bench-scaling] [--seeds 5]
        [--report docs/search_efficiency.md]

Reads the units ``bench/scaling_study.py`` trained (every size of its ladder, pretrained once
and fine-tuned per task and labelled-set size) and replays search strategies on them, as
tabular benchmarks of hyper-parameter search do: a strategy picks sizes one at a time, each pick
costs what that size really cost (its pretraining plus its fine-tuning on every task, in
training FLOPs: noise-free on a shared machine), and after each pick the paired rule (``recommend.recommend``) recommends a size
from the picks so far. Strategies:

- ``grid``: every size, cheapest first (what the study did);
- ``default`` (reported as "TPE, 2 start-up trials, univariate"): Optuna's multi-objective TPE
  (maximise each task's metric, minimise cost) with 2 start-up trials and no multivariate
  option, never repeating a size. Not claims-search's own policy: ``search`` uses
  ``TPESampler(multivariate=True)`` with Optuna's 10 start-up trials, and for a finite space
  that its budget covers (as this ladder) it queues every configuration once in a shuffled
  order, which is what ``random`` replays;
- ``random``: sizes in a random order;
- ``ascend``: cheapest first, but stop growing once, for every task, the fitted saturating curve
  ``m(N) = a - b N^-c`` (on the sizes so far, at least 3) predicts a gain below ``--delta`` at
  the next size, or the paired rule finds the newest size no better than the one before it;
- ``ascend+patience``: ascend's sizes, each fine-tuning charged only up to where ``--patience``
  evaluations without a better carve-out AUPRC would have ended it (``FinetuneSettings.patience``),
  read from the curve each unit kept (``carve_out_auprc`` in its ``result.json``). Where the full
  run's best step came after that stop, the stopped run's model would differ: the report counts
  those units (their metrics here are the full run's, so a nonzero count makes that column an
  approximation).

Per task: the compute spent until the strategy's recommendation equals the grid's and stays so
(over ``--seeds`` seeds; median reported), as a fraction of the grid's compute (with hindsight:
``all(correct[i:])`` looks at picks still to come, which no running strategy can know; what a
strategy spent before it stopped is the figure without hindsight), and the
hypervolume of the (metric, cost) frontier against cumulative compute (``<report>_hv.png``).
A replay cannot stop a pretraining part-way: early stopping of pretraining from partial curves
needs the curves, which the study does not keep (said in the report).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from claims_search import worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaling_study as S  # noqa: E402

STRATEGIES = ("grid", "default", "random", "ascend", "ascend+patience")
# What the report and the plot call each strategy: "default" is the replay's TPE, not the product's.
LABELS = {"default": "TPE, 2 start-up trials, univariate"}


def patience_stop(curve: list, steps: int, patience: int) -> int:
    """The step where the product's early stopping (``worker.patience_stop``) would have ended a
    run of ``steps`` steps whose carve-out curve is ``curve``; ``steps`` if never (or no curve
    was kept)."""
    stop = worker.patience_stop(curve, patience)
    return steps if stop is None else stop


def load(study: Path, metric: str, patience: int = 0):
    """(sizes, cost per size, {(task, n): {size: (metric, record inputs)}}, cost per size with
    ``patience``, units whose model patience would change) from the study."""
    from claims_search import predictions as P

    meta = json.loads((study / "report.json").read_text())
    tables = meta["tables"]
    sizes = [r["size"] for r in tables[0]["rows"] if "pre" in r]
    cost, cost_p, changed = {}, {}, []
    for s in sizes:  # one trial = pretraining once + fine-tuning on every task and labelled size (every rate tried)
        pre = json.loads((study / "pretrain" / s / "summary.json").read_text())["cost"]["flops"]
        cost[s] = cost_p[s] = pre
        for t in tables:
            for d in (u for r in t["rows"] if r["size"] == s and "pre" in r for u in S.units_of(study, t, r)[1]):
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
        frames = {s: P.read(json.loads((S.units_of(study, t, rows[s])[0] / "summary.json").read_text())
                            ["predictions"]["tuning"]) for s in sizes}
        per_task[(t["task"], t["n_labelled"])] = {"rows": rows, "frames": frames, "grid": t["recommended"]}
    return sizes, cost, per_task, cost_p, changed


def recommend_from(picks: list[str], task: str, data: dict, metric: str) -> str | None:
    from claims_search.frontier import TrialRecord
    from claims_search.recommend import recommend

    records = []
    for s in picks:
        r = data["rows"][s]
        m = r["pre"]["tuning"]
        records.append(TrialRecord(trial_id=s, task=task, status="complete", params={"model": {}},
                                   n_params=r["non_embedding"], metric=m[metric], metric_low=m[f"{metric}_low"],
                                   metric_high=m[f"{metric}_high"], cost=r["pre"]["cost"], pretrain_cost=None,
                                   finetune_cost=None))
    rec = recommend(records, task, {s: data["frames"][s] for s in picks}, metric=metric, n_boot=S.RULE_BOOT, seed=0)
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
    f = S.saturating_fit(xs, ys)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="runs/bench-scaling")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--metric", default="auprc", choices=("auprc", "auroc"))
    p.add_argument("--delta", type=float, default=0.005, help="ascend: smallest gain worth another size")
    p.add_argument("--patience", type=int, default=3, help="ascend+patience: evaluations without a better one")
    p.add_argument("--report", default=None)
    args = p.parse_args(argv)
    study = Path(args.study)
    sizes, cost, per_task, cost_p, changed = load(study, args.metric, args.patience)
    grid_compute = sum(cost.values())  # the grid trains every step of every size, as the study did
    results = {s: [replay(s, sizes, cost_p if s == "ascend+patience" else cost, per_task, args.metric, seed,
                          args.delta)
                   for seed in (range(args.seeds) if s in ("default", "random") else [0])] for s in STRATEGIES}
    n_units = sum(len(r["pre"].get("tried", [1])) for t in json.loads((study / "report.json").read_text())["tables"]
                  for r in t["rows"] if "pre" in r)
    lines = [f"Replayed on `{study}` ({len(sizes)} sizes; grid compute {grid_compute:.2e} FLOPs); "
             f"`{' '.join(['python bench/search_efficiency.py', *(argv if argv is not None else sys.argv[1:])])}`; "
             f"{datetime.date.today().isoformat()}; {S.machine()}.", "",
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
             "| task | floor | " + " | ".join(LABELS.get(s, s) for s in STRATEGIES) + " |",
             "|---|---|" + "---|" * len(STRATEGIES)]
    summary = {}
    for (task, n), data in sorted(per_task.items()):
        key = f"{task}/n{n}"
        floor = floor_share(data, cost) / grid_compute
        summary[key] = {"floor_share": floor}
        cells = [f"{floor:.0%}" if np.isfinite(floor) else "-"]
        for s in STRATEGIES:
            vals = [r["tasks"][key]["compute_to_grid"] for r in results[s]]
            hits = [v for v in vals if v is not None]
            med = float(np.median([v if v is not None else np.inf for v in vals]))
            summary[key][s] = {"median_share": med / grid_compute, "hits": len(hits), "runs": len(vals)}
            spent = float(np.median([r["compute"] for r in results[s]])) / grid_compute
            summary[key][s]["median_spent_share"] = spent
            cells.append((f"{med / grid_compute:.0%}" if np.isfinite(med) else "never")
                         + f" ({len(hits)}/{len(vals)}); stops at {spent:.0%}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    S.write_json(study / "search_efficiency.json", {"summary": summary, "results": results, "sizes": sizes,
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
        for s in STRATEGIES:
            for i, r in enumerate(results[s]):
                xs, ys = zip(*r["tasks"][key]["curve"])
                ax.step(xs, ys, where="post", alpha=0.6, label=LABELS.get(s, s) if i == 0 else None,
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
