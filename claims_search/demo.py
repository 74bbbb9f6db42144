"""`make demo`: the whole job on the embedded default, nothing to start by hand.

Synthetic claims (MEDS) -> prepared cache -> the `smoke` search on a local Ray instance,
tracked in a local SQLite MLflow store -> the recommendation per task, and how to open the
MLflow UI. Re-running it reuses the data and cache and finishes the same search (--resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from claims_search.cli import main as cli
from claims_search.tracking import ui_url


def main(argv: list[str] | None = None) -> int:
    """Run the demo in ``--dir`` (default ./demo)."""
    p = argparse.ArgumentParser(prog="claims_search.demo", description=__doc__)
    p.add_argument("--dir", default="demo")
    p.add_argument("--patients", type=int, default=4000)
    p.add_argument("--space", default="smoke")
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
    if args.space == "smoke":
        print("\nAbout this demo: the smoke space trains debug-sized models for 30 steps on a laptop, so they sit "
              "near chance and LightGBM usually wins; its cost axis is device-seconds (the one measure LightGBM "
              "shares with the Transformers; at this size it is mostly timing noise). Real searches: "
              "search_spaces/default.yaml on GPUs.")
    print(f"\nOpen the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri}   "
          f"(then {ui_url('http://127.0.0.1:5000')})")
    print("Recommendations again, any time:  .venv/bin/claims-search recommend --experiment demo "
          f"--tracking-uri {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
