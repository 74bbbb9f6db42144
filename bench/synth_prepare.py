"""Time `synth` + `prepare` for N patients; report events/s and peak memory (not a test).

    .venv/bin/python bench/synth_prepare.py --patients 100000 [--out DIR] [--keep]
    .venv/bin/python bench/synth_prepare.py --meds DIR [--timeline t.csv] [--results r.jsonl]
    .venv/bin/python bench/synth_prepare.py --plot r.jsonl --png docs/prepare_scaling.png
    .venv/bin/python bench/synth_prepare.py --quick [--meds DIR]   # seconds: 300 patients, 1 worker

Each step runs as its own `claims-search` process; peak memory is the largest summed RSS of
that process and its children, sampled every 0.2 s with psutil (the same figure as before, so
runs compare), with its anonymous part (heap: what really grows) and its file-backed part
(memory-mapped files, reclaimable) beside it; CPU seconds are the process tree's user +
system time (the fairer figure on a shared machine). ``--meds`` reuses a generated dataset
(prepare only); ``--timeline`` writes every sample with the line prepare printed last, to see
which step holds the memory. An ``--out`` folder records its settings (``settings.json``) and
refuses a run with others (``--quick`` against a full run in particular).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _rss_parts(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed + shared) resident bytes of one process, from /proc."""
    anon = other = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith(("RssFile:", "RssShmem:")):
                other += int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, other


def run_measured(cmd: list[str], timeline: Path | None = None) -> dict:
    """Run ``cmd``; return wall s, CPU s and peak memory (RSS, anonymous, file) of its tree.

    CPU seconds (user + system of the process tree) are what to compare on a shared machine,
    where wall time depends on everyone else's load.
    """
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    peak = {"rss": 0, "anon": 0, "file": 0}
    last_line = [""]
    rows: list[str] = []
    done = threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [p] + p.children(recursive=True)
                rss = sum(q.memory_info().rss for q in procs)
                parts = [_rss_parts(q.pid) for q in procs]
                anon, other = sum(a for a, _ in parts), sum(f for _, f in parts)
                peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
                peak["file"] = max(peak["file"], other)
                main_anon = parts[0][0]
                rows.append(f"{time.perf_counter() - t0:.1f},{rss / 2**20:.0f},{anon / 2**20:.0f},"
                            f"{other / 2**20:.0f},{main_anon / 2**20:.0f},"
                            f"\"{last_line[0][:60]}\"")
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    for line in proc.stdout:  # echo prepare's progress lines, remembered for the timeline
        print(line, end="", flush=True)
        last_line[0] = line.strip().replace('"', "'")
    rc = proc.wait()
    done.set()
    t.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {rc}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if timeline:
        timeline.write_text("t_s,rss_mib,anon_mib,file_mib,main_anon_mib,step\n" + "\n".join(rows) + "\n")
    return {"wall_s": time.perf_counter() - t0,
            "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "peak_gib": peak["rss"] / 2**30, "peak_anon_gib": peak["anon"] / 2**30,
            "peak_file_gib": peak["file"] / 2**30}


def plot(results: Path, png: Path) -> None:
    """Wall time and peak memory of prepare against patients, one point per line of ``results``
    (the last run of each size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        runs[(r.get("label", ""), r["patients"])] = r
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label in sorted({k[0] for k in runs}):
        pts = sorted((n, r) for (lab, n), r in runs.items() if lab == label)
        n = [p / 1e6 for p, _ in pts]
        line, = ax1.plot(n, [r["prepare_s"] for _, r in pts], "o-", label=f"{label} wall".strip())
        ax1.plot(n, [r["prepare_cpu_s"] for _, r in pts], "s--", color=line.get_color(),
                 label=f"{label} CPU (user+sys)".strip())
        ax2.plot(n, [r["prepare_peak_gib"] for _, r in pts], "o-", label=label or None)
    ax1.set(xlabel="patients (millions)", ylabel="prepare time (s)", ylim=(0, None),
            title="time, 2 workers, 2 cores (shared, loaded)")
    ax1.axhline(300, ls=":", c="grey", label="target: 5 min wall")
    ax2.set(xlabel="patients (millions)", ylabel="peak RSS of the process tree (GiB)",
            ylim=(0, None), title="peak memory")
    ax2.axhline(3, ls=":", c="grey", label="target: 3 GiB")
    for ax in (ax1, ax2):
        ax.set_xlim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--meds", type=Path, default=None,
                    help="prepare this existing dataset instead of generating one")
    ap.add_argument("--timeline", type=Path, default=None, help="CSV of prepare's memory samples")
    ap.add_argument("--results", type=Path, default=None, help="append the result (JSON line)")
    ap.add_argument("--label", default="", help="name of this run in --results and the plot")
    ap.add_argument("--plot", type=Path, default=None, metavar="RESULTS",
                    help="only plot the JSON lines of RESULTS to --png")
    ap.add_argument("--png", type=Path, default=Path("prepare_scaling.png"))
    ap.add_argument("--quick", action="store_true",
                    help=f"--patients {common.QUICK_PATIENTS} --workers 1 (flags given still win): seconds")
    args = ap.parse_args()
    if args.quick:  # presets; flags given explicitly still win
        ap.set_defaults(patients=common.QUICK_PATIENTS, workers=1)
        args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return 0
    if args.out:
        common.guard(args.out, {"quick": args.quick, "patients": args.patients, "seed": args.seed,
                                "workers": args.workers, "meds": args.meds and str(args.meds)}, "synth_prepare")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-prepare-"))
    prep_dir = work / "prepared"
    cli = [sys.executable, "-m", "claims_search.cli"]
    result: dict = {"label": args.label}
    if args.meds is None:
        meds_dir = work / "meds"
        shutil.rmtree(meds_dir, ignore_errors=True)
        s = run_measured(cli + ["synth", "--patients", str(args.patients), "--seed", str(args.seed),
                                "--workers", str(args.workers), "--out", str(meds_dir)])
        result |= {f"synth_{k}": round(v, 2) for k, v in s.items()}
    else:
        meds_dir = args.meds
    load_before = os.getloadavg()[0]
    p = run_measured(cli + ["prepare", "--meds", str(meds_dir), "--out", str(prep_dir),
                            "--workers", str(args.workers), "--force"], args.timeline)
    manifest = json.loads((prep_dir / "manifest.json").read_text())
    n = manifest["n_events"]
    result |= {
        "patients": manifest["n_subjects"], "events": n,
        "prepare_s": round(p["wall_s"], 1), "prepare_cpu_s": round(p["cpu_s"], 1),
        "prepare_events_per_s": round(n / p["wall_s"]),
        "prepare_peak_gib": round(p["peak_gib"], 2),
        "prepare_peak_anon_gib": round(p["peak_anon_gib"], 2),
        "prepare_peak_file_gib": round(p["peak_file_gib"], 2),
        "load_average_1min_before": round(load_before, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    if args.results:
        with args.results.open("a") as f:
            f.write(json.dumps(result) + "\n")
    if not args.keep and args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
