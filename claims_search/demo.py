"""`make demo`: the whole job on the embedded default, nothing to start by hand.

Synthetic claims (MEDS) -> prepared cache -> the `demo` search (four small sizes trained long
enough to learn) on a local Ray instance, tracked in a local SQLite MLflow store -> the
recommendation per task, what the models reached against LightGBM, and how to open the MLflow
UI. Re-running it reuses the data and cache and finishes the same search (--resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from claims_search.cli import main as cli
from claims_search.tracking.tracker import ui_url

# What the full benchmark found for the demo's two tasks (docs/benchmarks.md, "The five-size
# ladder at four times the training"): the size the paired rule (no margin) recommended on the
# tuning split with 20,000 labelled patients, its non-embedding parameters, and the ladder's
# largest. tests/test_demo.py reads them back, and the held-out figures that found_story()
# quotes, from docs/scaling_study.md, so the demo cannot tell another story than the benchmark's.
FOUND_LABELLED = 20_000
FEW_LABELLED = 2_000  # where the medication task's answer changed with the bootstrap seed (same predictions)
FOUND_LARGEST = "w64d4h4"
FOUND = {
    "antihypertensive_start": ("medication", "w24d2h2", 13_824),
    "ckd_incidence": ("disease", "w64d4h4", 196_608),
}


def main(argv: list[str] | None = None) -> int:
    """Run the demo in ``--dir`` (default ./demo)."""
    p = argparse.ArgumentParser(prog="claims_search.demo", description=__doc__)
    p.add_argument("--dir", default="demo")
    p.add_argument("--patients", type=int, default=8000)
    p.add_argument("--space", default="demo")
    args = p.parse_args(argv)
    d = Path(args.dir).resolve()
    meds, prepared, uri = d / "meds", d / "prepared", f"sqlite:///{d / 'mlflow.db'}"
    steps = []
    if not (meds / "metadata" / "dataset.json").exists():
        steps.append(["synth", "--patients", str(args.patients), "--seed", "0", "--out", str(meds)])
    steps.append(["prepare", "--meds", str(meds), "--out", str(prepared)])
    search = ["search", "--space", args.space, "--data", str(prepared), "--tracking-uri", uri,
              "--name", "demo", "--storage", str(d / "runs")]
    if any((d / "runs" / "demo" / part).exists() for part in ("tune", "outbox")):
        search.append("--resume")
    steps.append(search)
    for step in steps:
        print(f"\n$ claims-search {' '.join(step)}", flush=True)
        rc = cli(step)
        if rc:
            return rc
    story(uri, "demo")
    print(f"\nOpen the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri}   "
          f"(then {ui_url('http://127.0.0.1:5000')})")
    print("Recommendations again, any time:  .venv/bin/claims-search recommend --experiment demo "
          f"--tracking-uri {uri}")
    return 0


def story(uri: str, experiment: str) -> None:
    """What the models reached, per task, from the search's own records: the best Transformer's
    tuning AUROC against LightGBM's, and the cost of each size that completed."""
    from claims_search.commands.formatting import fmt_size
    from claims_search.tracking.tracker import load_records

    records = [r for r in load_records(uri, experiment) if r.status == "complete"]
    print("\nWhat the models reached (tuning split AUROC; cost in device-seconds):")
    for task in sorted({r.task for r in records}):
        mine = [r for r in records if r.task == task]
        models = sorted((r for r in mine if not r.is_baseline), key=lambda r: r.n_params or 0)
        base = next((r for r in mine if r.is_baseline), None)
        sizes = ", ".join(f"{fmt_size(r)} {r.extras.get('auroc', float('nan')):.3f} ({r.cost:.0f})" for r in models)
        lgbm = f"; LightGBM {base.extras.get('auroc', float('nan')):.3f} ({base.cost:.0f})" if base else ""
        print(f"  {task}: {sizes}{lgbm}")
    print("\n".join(found_story()))


def found_story() -> list[str]:
    """The closing lines: what the full benchmark found per task (the tuning verdict and whether
    the held-out split confirmed it), and why the demo's own figures cannot show it."""
    lines = [f"What the full benchmark found ({FOUND_LABELLED:,} labelled patients, five sizes up to "
             f"{FOUND_LARGEST}; paired rule on the tuning split, no margin; docs/benchmarks.md):"]
    for task, (kind, size, params) in FOUND.items():
        shape = ("the tuning split could not tell it apart from the best size there (w48d3h4); not shown "
                 "to be non-inferior (no margin), and held-out did not confirm it: w24d2h2 0.620 against "
                 "w32d3h4 0.650, w48d3h4 0.635, w64d4h4 0.651 (held-out AUPRC)"
                 if size != FOUND_LARGEST else "the largest size tried was the best on tuning, and the tuning "
                 "split told every smaller size apart from it; held-out agreed (w64d4h4 0.408, the highest)")
        lines.append(f"  {task} ({kind}): {size} ({params / 1000:.1f} k non-embedding parameters), {shape}")
    lines.append(f"With {FEW_LABELLED:,} labelled patients the benchmark's medication curve was flat within its "
                 "intervals and its answer changed with the bootstrap seed (the same predictions resampled). "
                 "So the benchmark shows a tuning verdict for a small size, not that the medication task "
                 "saturates small. The demo's own data are small (8,000 patients by default, a few hundred in "
                 "each evaluation split): read its recommendation as the workflow, not as the benchmark's "
                 "answer. Real searches: search_spaces/default.yaml on GPUs.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
