"""Time `synth` + `prepare` for N patients; report events/s and peak memory (not a test).

    .venv/bin/python bench/synth_prepare.py --patients 100000 [--out DIR] [--keep]

Each step runs as its own `claims-search` process; peak memory is the largest summed RSS of
that process and its children, sampled every 0.2 s with psutil; CPU seconds are the process
tree's user + system time (the fairer figure on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def run_measured(cmd: list[str]) -> tuple[float, int, float]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes of it and its children, CPU seconds).

    CPU seconds (user + system of the process tree) are what to compare on a shared machine,
    where wall time depends on everyone else's load.
    """
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = p.memory_info().rss + sum(
                    c.memory_info().rss for c in p.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    done.set()
    t.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {rc}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return time.perf_counter() - t0, peak, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-prepare-"))
    meds_dir, prep_dir = work / "meds", work / "prepared"
    shutil.rmtree(meds_dir, ignore_errors=True)
    cli = [sys.executable, "-m", "claims_search.cli"]
    synth_s, synth_peak, synth_cpu = run_measured(cli + [
        "synth", "--patients", str(args.patients), "--seed", str(args.seed),
        "--workers", str(args.workers), "--out", str(meds_dir)])
    prep_s, prep_peak, prep_cpu = run_measured(cli + [
        "prepare", "--meds", str(meds_dir), "--out", str(prep_dir), "--force"])
    manifest = json.loads((prep_dir / "manifest.json").read_text())
    n = manifest["n_events"]
    result = {
        "patients": args.patients, "events": n,
        "synth_s": round(synth_s, 1), "synth_cpu_s": round(synth_cpu, 1), "synth_events_per_s": round(n / synth_s),
        "synth_peak_gib": round(synth_peak / 2**30, 2),
        "prepare_s": round(prep_s, 1), "prepare_cpu_s": round(prep_cpu, 1), "prepare_events_per_s": round(n / prep_s),
        "prepare_peak_gib": round(prep_peak / 2**30, 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    if not args.keep and args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
