"""Where a trial's wall time goes: run a real search and tabulate each phase of its trials.

A trial records its phases' wall time as MLflow metrics (``time_<phase>_s``, see
`training.phase_timings`): the driver's set-up, the Ray Train placement group's wait for
resources, the worker group's start, cache localization, each training loop (pretraining, one
per fine-tuning), evaluation, the rest of the fit (checkpoints to storage, reports, shutdown),
uploads, and what none of these covers ("other"). This script runs ``claims-search search``
(local Ray, SQLite MLflow, synthetic data) on a space, reads those metrics back from MLflow and
prints one table: each phase's median seconds over the complete trials and its share of their
summed wall time, and the training loop's share (the target: above 85 % at ``default.yaml``'s
trial length).

``--cpu`` turns a GPU space (``default.yaml``) into one this machine can run: no GPU, the
machine's cores for one worker, one trial at a time. ``--pretrain-steps`` / ``--finetune-steps``
shorten the training (fixed values replace the space's choices) so a trial fits the time there is.

  python bench/trial_time.py --space smoke --out runs/bench-trial-time-smoke
  python bench/trial_time.py --space default --cpu --trials 1 --batch-tokens 8192 \\
      --pretrain-steps 20 --finetune-steps 5 --out runs/bench-trial-time-default
  python bench/trial_time.py --quick --out DIR   # one short smoke trial on tiny data (a test runs it)

``--out`` records its settings (``settings.json``) and refuses a run with others: its data and
searches belong to one set of settings, quick or full.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("setup", "scheduling_wait", "worker_start", "cache", "pretrain", "finetune", "eval", "fit_other",
         "upload", "other")


def claims_search(*args: str, log: Path | None = None) -> str:
    exe = Path(sys.executable).with_name("claims-search")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"claims-search {args[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def derived_space(space: str, out: Path, args) -> Path:
    """The space with this run's overrides, written beside the results."""
    from claims_search.search.space import load_space

    raw = yaml.safe_load(Path(load_space(space).path).read_text())
    b = raw["budget"]
    if args.trials:
        b["trials"] = args.trials
    if args.cpu:
        b.update(gpus_per_worker=0, cpus_per_worker=os.cpu_count(), concurrency=1, workers_per_trial=1)
    if args.pretrain_steps:
        raw["training"]["pretrain"]["steps"] = args.pretrain_steps
        raw["training"]["pretrain"]["warmup"] = max(1, args.pretrain_steps // 10)
    if args.batch_tokens:  # default.yaml's 64 k tokens at 512 positions is a GPU's batch, not 24 GiB of RAM
        raw["training"]["pretrain"]["batch_tokens"] = args.batch_tokens
        raw["training"]["finetune"]["batch_tokens"] = args.batch_tokens
    if args.finetune_steps:
        raw["training"]["finetune"]["steps"] = args.finetune_steps
        raw["training"]["finetune"]["warmup"] = max(1, args.finetune_steps // 10)
    raw["baseline"] = False  # the Transformer trials are what is timed
    raw["name"] = f"{raw['name']}-timed"
    path = out / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_metrics(tracking: str, experiment: str) -> list[dict]:
    """One dict of metrics per complete trial (its child runs repeat them per task)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.status = 'complete'", max_results=1000)
    by_trial = {r.data.tags["trial_id"]: r.data.metrics for r in runs if r.data.tags.get("trial_id")}
    return [m for t, m in sorted(by_trial.items()) if t != "baseline-lightgbm"]


def table(trials: list[dict]) -> tuple[list[tuple[str, float, float]], float]:
    """(phase, median seconds over trials, share of the summed trial wall time); the loop share."""
    per: dict[str, list[float]] = {}
    for m in trials:
        phases: dict[str, float] = {}
        for k, v in m.items():
            if k.startswith("time_") and k.endswith("_s"):
                p = k[len("time_"):-len("_s")]
                p = "finetune" if p.startswith("finetune_") else p
                phases[p] = phases.get(p, 0.0) + v
        phases["other"] = max(0.0, m["trial_wall_s"] - sum(phases.values()))
        for p, v in phases.items():
            per.setdefault(p, []).append(v)
    wall = sum(m["trial_wall_s"] for m in trials)
    rows = [(p, statistics.median(per[p]), sum(per[p]) / wall) for p in ORDER if p in per]
    return rows, sum(m["train_loop_s"] for m in trials) / wall


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="smoke")
    p.add_argument("--out", default="runs/bench-trial-time")
    p.add_argument("--patients", type=int, default=2000)
    p.add_argument("--trials", type=int, default=None, help="override the space's trial count")
    p.add_argument("--cpu", action="store_true", help="run a GPU space on this machine's CPU, one trial at a time")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--batch-tokens", type=int, default=None, help="one value for both phases' batch_tokens")
    p.add_argument("--quick", action="store_true",
                   help="one smoke trial of 5 + 5 steps on the quick modes' tiny data (flags given still win)")
    args = p.parse_args()
    if args.quick:  # presets; flags given explicitly still win
        p.set_defaults(space="smoke", trials=1, pretrain_steps=5, finetune_steps=5)
        args = p.parse_args()
    out = Path(args.out).resolve()
    patients = common.QUICK_PATIENTS if args.quick else args.patients
    common.guard(out, {"quick": args.quick, "space": args.space, "patients": patients, "trials": args.trials,
                       "cpu": args.cpu, "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
                       "batch_tokens": args.batch_tokens}, "trial_time")
    space = derived_space(args.space, out, args)
    max_len = yaml.safe_load(space.read_text())["model"]["max_len"]
    if args.quick:  # the cache's 128 events hold the smoke space's 64
        prepared = common.quick_data(out, quiet=True)
    else:
        prepared = common.data(out, args.patients, 0, max_len, quiet=True)
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    name = f"timed-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    started = time.monotonic()
    stdout = claims_search("search", "--space", str(space), "--data", str(prepared), "--tracking-uri", tracking,
                           "--storage", str(out / "runs"), "--name", name, "--no-progress", log=out / f"{name}.log")
    wall = time.monotonic() - started
    trials = trial_metrics(tracking, name)
    if not trials:
        sys.exit(f"search {name}: no complete trial to time (log: {out / f'{name}.log'})")
    rows, loop_share = table(trials)
    said = [ln for ln in stdout.splitlines() if ln.startswith(("trial wall time:", "\nsearch", "search "))]
    report = {"space": args.space, "derived_space": yaml.safe_load(space.read_text()), "search": name,
              "search_wall_s": wall, "trials": len(trials), "phases": rows, "train_loop_share": loop_share,
              "median_trial_wall_s": statistics.median(m["trial_wall_s"] for m in trials),
              "date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": machine(),
              "load_before": os.getloadavg(), "printed": said}
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"{len(trials)} complete trial(s), median trial wall {report['median_trial_wall_s']:.1f} s, "
          f"search {wall:.0f} s; {machine()}; load {os.getloadavg()[0]:.1f}")
    print("\n".join(common.table(["phase", "median s per trial", "share of trial wall time"],
                                 [(p.replace("_", " "), f"{secs:.1f}", f"{share:.1%}") for p, secs, share in rows],
                                 "lrr")))
    print(f"\ntraining loop (pretrain + fine-tunes): {loop_share:.1%} of trial wall time; report {out / name}.json")


if __name__ == "__main__":
    main()
