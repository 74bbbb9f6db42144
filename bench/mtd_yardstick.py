"""The MEDS ecosystem's tokenizer as a yardstick: wall time and peak memory of meds-torch-data's
``MTD_preprocess`` against our ``claims-search prepare`` on the same MEDS dataset (not a test).

    .venv/bin/python bench/mtd_yardstick.py --mtd /work/mtd-venv/bin/MTD_preprocess \\
        --meds /work/bench-data/meds100k --work /work/bench-data/yardstick [--repeats 1] \\
        [--lock /tmp/claims-timing.lock] [--json out.json] [--quick]

meds-torch-data lives in its own virtual environment (it pins its own polars and MEDS
stack); install it outside the repository:

    python3 -m venv /work/mtd-venv
    /work/mtd-venv/bin/pip install 'torch==2.13.0' meds-torch-data==0.9.0

Runs, each from a fresh output folder, interleaved (mtd, ours, mtd, ours, ...):

- ``mtd``: ``MTD_preprocess MEDS_dataset_dir=MEDS output_dir=OUT do_reshard=True`` (its
  defaults: one process running MEDS-Transforms stages one after the other as subprocesses:
  reshard to 10,000 subjects per shard, fit normalisation, fit vocabulary indices, normalise,
  tokenise, tensorise);
- ``ours``: ``claims-search prepare --meds MEDS --out OUT`` (its defaults, ``--workers 2``).

Peak memory is the peak over time of the summed resident set size (RSS) of the whole process
tree (the command and every descendant), sampled every ``--interval`` seconds with psutil;
pages shared between processes (libraries, copy-on-write) count once per process, so it is an
upper bound. Beside it: the largest single process's sampled peak RSS (what ``/usr/bin/time -v``
would report, up to sampling) and the CPU seconds of the tree (user + sys of every waited-for
descendant, from ``getrusage``). With ``--lock`` each run holds that flock(2) lock (as ``flock(1)`` does) so timed
runs of others do not overlap; the 1-minute load average before and after each run is recorded.

``--quick`` generates (with ``claims-search synth``, untimed) and measures the quick modes'
300-patient dataset (``common.QUICK_PATIENTS``): seconds for ours. ``--meds`` absent: a
``--patients`` dataset is generated under ``--work``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(summed RSS, largest single RSS), bytes, of ``proc`` and its living descendants."""
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for p in procs:
        try:
            sizes.append(p.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sum(sizes), max(sizes, default=0)


def measure(cmd: list[str], env: dict, log: Path, interval: float, lock: str | None) -> dict:
    """Run ``cmd`` to completion; wall, CPU, peak tree RSS and peak single-process RSS."""
    lock_file = open(lock, "a") if lock else None
    if lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            handle = psutil.Process(proc.pid)
            peak = [0, 0, 0]  # tree bytes, samples, largest single process bytes
            done = threading.Event()

            def sample():
                while not done.is_set():
                    tree, single = tree_rss(handle)
                    peak[0], peak[2] = max(peak[0], tree), max(peak[2], single)
                    peak[1] += 1
                    done.wait(interval)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            rc = proc.wait()
            done.set()
            sampler.join()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
    finally:
        if lock_file:
            lock_file.close()
    if rc != 0:
        sys.exit(f"mtd_yardstick: {' '.join(cmd)} exited {rc}; its log: {log}")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_tree_rss_gib": peak[0] / 2**30,
        "max_single_rss_gib": peak[2] / 2**30,  # sampled, like the tree's
        "samples": peak[1],
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
    }


def describe(kind: str, out: Path) -> dict:
    """What the run wrote: files, bytes, and a few facts about the content."""
    files = [p for p in out.rglob("*") if p.is_file() and ".logs" not in p.parts]
    facts: dict = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    by_ext: dict[str, int] = {}
    for p in files:
        by_ext[p.suffix or p.name] = by_ext.get(p.suffix or p.name, 0) + 1
    facts["by_extension"] = by_ext
    facts["top_level"] = sorted(p.name for p in out.iterdir())
    try:
        import pyarrow.parquet as pq

        if kind == "mtd":
            codes = out / "metadata" / "codes.parquet"
            if codes.exists():
                table = pq.read_table(codes)
                facts["vocabulary"] = table.num_rows
                facts["codes_columns"] = table.column_names
            facts["tensor_files"] = len([p for p in files if p.suffix == ".nrt"])
            facts["schema_files"] = len([p for p in files if "tokenization" in p.parts or "schemas" in p.parts])
        else:
            manifest = out / "manifest.json"
            if manifest.exists():
                facts["manifest_keys"] = sorted(json.loads(manifest.read_text()))
            for name in ("vocab.parquet",):
                if (out / name).exists():
                    facts["vocabulary"] = pq.read_metadata(out / name).num_rows
    except Exception as e:  # a description, never a reason to fail the measurement
        facts["describe_error"] = repr(e)
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mtd", default="/work/mtd-venv/bin/MTD_preprocess", help="path of MTD_preprocess")
    p.add_argument("--ours", default=str(ROOT / ".venv" / "bin" / "claims-search"),
                   help="path of claims-search")
    p.add_argument("--meds", help="the MEDS dataset (default: generate --patients of them)")
    p.add_argument("--patients", type=int, default=100_000)
    p.add_argument("--work", default="/work/bench-data/yardstick", help="outputs and logs go here")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between memory samples")
    p.add_argument("--lock", help="hold this flock(2) lock during each timed run")
    p.add_argument("--only", choices=["mtd", "ours"], help="measure one side only")
    p.add_argument("--ours-args", default="", help="extra arguments for prepare, e.g. '--workers 1'")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help=f"--patients {common.QUICK_PATIENTS} (ignored with --meds): seconds for ours")
    args = p.parse_args(argv)
    if args.quick:  # presets; flags given explicitly still win
        p.set_defaults(patients=common.QUICK_PATIENTS)
        args = p.parse_args(argv)
    kinds = [args.only] if args.only else ["mtd", "ours"]
    for tool in [args.ours] + ([args.mtd] if "mtd" in kinds else []):
        if not Path(tool).exists():
            sys.exit(f"mtd_yardstick: {tool} not found (see this script's docstring to install it)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.meds:
        meds = Path(args.meds).resolve()
    else:
        meds = work / f"meds{args.patients}"
        common.synth(meds, args.patients, 0, quiet=True)  # untimed
    import pyarrow.parquet as pq

    n_subjects = pq.read_metadata(meds / "metadata" / "subject_splits.parquet").num_rows
    n_events = sum(pq.read_metadata(f).num_rows for f in (meds / "data").rglob("*.parquet"))
    commands = {
        "mtd": lambda out: [args.mtd, f"MEDS_dataset_dir={meds}", f"output_dir={out}", "do_reshard=True"],
        "ours": lambda out: [args.ours, "prepare", "--meds", str(meds), "--out", str(out), *args.ours_args.split()],
    }
    runs: dict[str, list] = {k: [] for k in kinds}
    outputs: dict[str, dict] = {}
    for r in range(args.repeats):
        for kind in kinds:  # interleaved
            out = work / f"out-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            tool_bin = str(Path(commands[kind](out)[0]).parent)  # MTD calls MEDS_transform-pipeline by name
            env = {**os.environ, "PATH": tool_bin + os.pathsep + os.environ.get("PATH", "")}
            env.pop("VIRTUAL_ENV", None)
            result = measure(commands[kind](out), env, work / f"{kind}-{r}.log", args.interval, args.lock)
            runs[kind].append(result)
            outputs[kind] = describe(kind, out)
            print(f"# {kind} run {r + 1}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} CPU-s, "
                  f"peak tree RSS {result['peak_tree_rss_gib']:.2f} GiB (largest process "
                  f"{result['max_single_rss_gib']:.2f}), load {result['loadavg_before'][0]:.1f} -> "
                  f"{result['loadavg_after'][0]:.1f}", flush=True)

    def med(kind, key):
        return statistics.median(x[key] for x in runs[kind])

    report = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "meds": str(meds), "subjects": n_subjects, "events": n_events, "repeats": args.repeats,
        "commands": {k: " ".join(commands[k](work / f"out-{k}")) for k in kinds},
        "runs": runs, "outputs": outputs,
    }
    print(f"# {report['machine']}, {report['cpus']} CPUs; {n_subjects:,} subjects, {n_events:,} events; "
          f"median of {args.repeats} run(s)")
    print("\n".join(common.table(
        ["tool", "wall", "CPU (user+sys)", "peak memory (tree RSS)", "largest process RSS", "output files",
         "output size"],
        [(k, f"{med(k, 'wall_s'):.1f} s", f"{med(k, 'cpu_s'):.1f} s", f"{med(k, 'peak_tree_rss_gib'):.2f} GiB",
          f"{med(k, 'max_single_rss_gib'):.2f} GiB", outputs[k]["files"], f"{outputs[k]['bytes'] / 2**20:.1f} MiB")
         for k in kinds])))
    if len(kinds) == 2:
        report["ratio_ours_to_mtd"] = {key: med("ours", key) / med("mtd", key)
                                       for key in ("wall_s", "cpu_s", "peak_tree_rss_gib")}
        ratio = report["ratio_ours_to_mtd"]
        print(f"# ours / MTD: wall {ratio['wall_s']:.2f}x, CPU {ratio['cpu_s']:.2f}x, "
              f"peak memory {ratio['peak_tree_rss_gib']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
