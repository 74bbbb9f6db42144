"""Time `synth` + `prepare` for N patients; report events/s and peak memory (not a test).

    .venv/bin/python bench/synth_prepare.py --patients 100000 [--out DIR] [--keep]

Each step runs as its own `claims-search` process; peak memory is the largest summed RSS of
that process and its children, sampled every 0.2 s with psutil. If `claims_search.synth` has
no `generate` yet, `--fallback` writes a crude random MEDS dataset instead (codes from a Zipf
law, yearly checkups with a blood-pressure value) so that `prepare` alone can be timed.
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


def fallback_generate(out: Path, patients: int, seed: int, shard_size: int = 20_000) -> None:
    """A crude random MEDS dataset (not the project's generator): enough to time prepare."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    codes = np.array([f"DX//ICD10//X{i:04d}" for i in range(2000)]
                     + ["DX//ICD10//N18.3", "DRUG//ATC//C09CA01"])
    p = 1.0 / np.arange(1, len(codes) + 1)
    p /= p.sum()
    (out / "data").mkdir(parents=True)
    (out / "metadata").mkdir()
    split_ids, split_names = [], []
    for start in range(0, patients, shard_size):
        ids = np.arange(start, min(start + shard_size, patients))
        sid, times, code, value = [], [], [], []
        for s in ids:
            n = int(rng.integers(100, 200))
            base = np.datetime64("2015-01-01", "D")
            days = np.sort(rng.integers(0, 5 * 365, n))
            ev = rng.choice(len(codes), n, p=p)
            checkups = np.arange(rng.integers(0, 365), 5 * 365, 365)
            all_days = np.concatenate([days, checkups, checkups])
            all_codes = np.concatenate([codes[ev], ["HC//SPECIFIC_CHECKUP"] * len(checkups),
                                        ["HC//SBP"] * len(checkups)])
            vals = np.concatenate([np.full(n + len(checkups), np.nan),
                                   rng.normal(130, 15, len(checkups))])
            order = np.argsort(all_days, kind="stable")
            sid += [s] * (len(order) + 2)
            times += [None, (base - 20000).astype("datetime64[us]")]
            times += list((base + all_days[order]).astype("datetime64[us]"))
            code += ["GENDER//F" if s % 2 else "GENDER//M", "MEDS_BIRTH"] + list(all_codes[order])
            value += [None, None] + [None if np.isnan(v) else float(v) for v in vals[order]]
        pq.write_table(pa.table({
            "subject_id": pa.array(sid, pa.int64()), "time": pa.array(times, pa.timestamp("us")),
            "code": pa.array(code, pa.string()), "numeric_value": pa.array(value, pa.float32()),
        }), out / "data" / f"{start // shard_size}.parquet")
        split_ids += ids.tolist()
        split_names += rng.choice(["train", "tuning", "held_out"], len(ids), p=[.8, .1, .1]).tolist()
    pq.write_table(pa.table({"subject_id": pa.array(split_ids, pa.int64()),
                             "split": pa.array(split_names, pa.string())}),
                   out / "metadata" / "subject_splits.parquet")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--fallback", action="store_true", help="time prepare on random data")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-prepare-"))
    meds_dir, prep_dir = work / "meds", work / "prepared"
    shutil.rmtree(meds_dir, ignore_errors=True)
    cli = [sys.executable, "-m", "claims_search.cli"]
    if args.fallback:
        t0 = time.perf_counter()
        fallback_generate(meds_dir, args.patients, args.seed)
        synth_s, synth_peak, synth_kind = time.perf_counter() - t0, 0, "fallback (random)"
        synth_cpu = time.process_time()
    else:
        synth_s, synth_peak, synth_cpu = run_measured(cli + [
            "synth", "--patients", str(args.patients), "--seed", str(args.seed),
            "--workers", str(args.workers), "--out", str(meds_dir)])
        synth_kind = "claims-search synth"
    prep_s, prep_peak, prep_cpu = run_measured(cli + [
        "prepare", "--meds", str(meds_dir), "--out", str(prep_dir), "--force"])
    manifest = json.loads((prep_dir / "manifest.json").read_text())
    n = manifest["n_events"]
    result = {
        "patients": args.patients, "events": n, "generator": synth_kind,
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
