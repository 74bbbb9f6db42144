"""Does the batch pipeline feed a GPU? Real tokens/s it delivers with a worker's CPUs, against what an
H100 would consume at 45 % MFU for each preset (issue 25, item 2).

    .venv/bin/python bench/pipeline.py [--data demo/prepared] [--batch-tokens 65536] [--seconds 3]
    .venv/bin/python bench/pipeline.py --quick [--data DIR]   # seconds: 0.2 s a measurement, tiny data

The pipeline (``batches.pretrain_batches``) cuts an epoch into windows of 50 batches' worth of
patients and builds each window at once in numpy. A worker's CPUs share the work:

- the loop's thread drives the GPU (1 CPU);
- the loop's prefetch thread (``batches.Prefetched``) reads the stream: with ``draws="patient"``
  (the stream as it always was) it draws every patient's crop and mask from one generator,
  in order; it receives the built windows from the processes (1 CPU);
- ``workers`` processes build windows ahead: the other ``cpus_per_worker - 2`` CPUs. With
  ``draws="window"`` each window draws from its own generator, so they draw too.

Each stage is timed on one thread, per CPU second of that thread (what a CPU of its own gives;
this machine is shared, so wall rates fall with its load): A, the draws patient by patient; B,
a process building a window (from those draws, or drawing its own) and pickling it; R,
receiving one. With c CPUs and k = c - 2 builders the pipeline delivers
``min(1 / (1/A + 1/R), k B)`` (patient draws) or ``min(R, k B)`` (window draws), and the
one-thread rate when k = 0. The wall rate through ``Prefetched`` with those processes is
measured too, on this machine's own cores.

An H100 consumes 989 TFLOP/s dense bf16 (SXM, NVIDIA's data sheet) x 45 % MFU over the preset's
training FLOPs per real token: ``ModelSize.flops_per_token`` at the row length of each batch
the pipeline made (attention grows with it), token-weighted, 15 % masked. Headroom = delivered
/ consumed; the target is 2x. An A10G (70 TFLOP/s, the shipped g5 nodes' card) is shown beside.

Without ``--data`` it reads ``demo/prepared`` (``make demo`` makes it), or else generates 2,000
synthetic patients and prepares them in a temporary folder (about a minute). ``--quick`` without
``--data`` reads ``common.quick_data``'s tiny dataset (made in a temporary folder), with 4,096
tokens a batch and 0.2 s a measurement: the report's structure, not its figures.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

PEAKS = {"H100": 989e12, "A10G": 70e12}  # dense bf16 FLOP/s
MFU = 0.45
TARGET = 2.0
SPACES = ("default", "paper")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def open_cache(data: str | None, quick: bool = False):
    """``data``'s cache; else (not ``quick``) ``demo/prepared`` or 2,000 synthetic patients; else
    (``quick``) ``common.quick_data``'s, each made in a temporary folder."""
    from claims_search.data.cache import Cache
    from claims_search.cli import main as cli

    if data:
        return Cache(data)
    if quick:
        return Cache(common.quick_data(Path(tempfile.mkdtemp(prefix="pipeline-bench-quick-"))))
    if (ROOT / "demo" / "prepared" / "manifest.json").exists():
        return Cache(ROOT / "demo" / "prepared")
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    print(f"no --data and no demo/prepared: generating 2,000 synthetic patients in {tmp}")
    assert cli(["synth", "--patients", "2000", "--seed", "0", "--out", str(tmp / "meds"), "--workers", "1"]) == 0
    assert cli(["prepare", "--meds", str(tmp / "meds"), "--out", str(tmp / "prepared"), "--workers", "1"]) == 0
    return Cache(tmp / "prepared")


def per_cpu_second(work, seconds: float) -> float:
    """Tokens per CPU second of this thread: ``work(i)`` returns the tokens it handled."""
    work(0)  # warm-up
    c0, t0, tokens, i = time.thread_time(), time.perf_counter(), 0, 1
    while time.perf_counter() - t0 < seconds:
        tokens += work(i)
        i += 1
    return tokens / (time.thread_time() - c0)


def wall_rate(batches, seconds: float) -> tuple[float, list[tuple[int, int]]]:
    """Real tokens per wall second, and (tokens, row length) of every batch."""
    seen, t0, tokens = [], None, 0
    for item in batches:
        b = item[0] if isinstance(item, tuple) else item  # Prefetched yields (batch, parts)
        seen.append((b.n_tokens, b.tokens.shape[1]))
        if t0 is None:
            t0 = time.perf_counter()  # after the first batch (processes start, imports)
            continue
        tokens += b.n_tokens
        if time.perf_counter() - t0 > seconds:
            break
    return tokens / (time.perf_counter() - t0), seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a prepared cache (default: demo/prepared)")
    p.add_argument("--batch-tokens", type=int, default=65536, help="paper.yaml's pretraining batch")
    p.add_argument("--grad-accum", type=int, default=2, help="paper.yaml's micro-batches")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--quick", action="store_true",
                   help="--batch-tokens 4096 --seconds 0.2 on tiny data (flags given still win)")
    args = p.parse_args()
    if args.quick:  # presets; flags given explicitly still win
        p.set_defaults(batch_tokens=4096, seconds=0.2)
        args = p.parse_args()

    import torch

    from claims_search.model import batches as B
    from claims_search.model.sizes import PRESETS, REFERENCE_VOCAB

    torch.set_num_threads(1)
    cache = open_cache(args.data, args.quick)
    lengths = cache.subjects["length"].to_numpy()
    train = np.asarray(cache.subject_indices("train"))
    max_len, bt = cache.max_len, args.batch_tokens
    spec = (max_len, 0.15, bt)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"data: {cache.path} ({len(train):,} train subjects, events median {np.median(lengths[train]):.0f}, "
          f"mean {lengths[train].mean():.0f}, max_len {max_len}); batch_tokens {bt:,}")

    def epoch_windows(e):
        order = np.random.default_rng([0, e]).permutation(train)
        return order, B._windows(np.minimum(lengths[order], max_len) + 1, B.GROUP_WINDOW * bt)

    def draws(e):  # A: the patient-by-patient draws of one epoch, as jobs for the builders
        order, windows = epoch_windows(e)
        rng, grouping, jobs = np.random.default_rng([0, e, 0, 1]), np.random.default_rng([0, e, 0, 2]), []
        for lo, hi in windows:
            n = lengths[order[lo:hi]]
            plan = B._draw_per_patient(n, max_len, 0.15, cache.vocab_size, rng)
            cuts = B._cuts(np.minimum(n, max_len) + 1, bt)
            jobs.append((order[lo:hi], plan, cuts, grouping.permutation(len(cuts))))
        return jobs

    tokens_of = int((np.minimum(lengths[train], max_len) + 1).sum())  # positions of one epoch
    B._WORKER_CACHE = cache  # the builders' stage, run here
    jobs = draws(0)
    blobs = [pickle.dumps(B._worker_job(job, spec), protocol=5) for job in jobs]

    def stage_a(i):
        draws(i)
        return tokens_of

    def stage_b_patient(i):
        for job in jobs:
            pickle.dumps(B._worker_job(job, spec), protocol=5)
        return tokens_of

    def stage_b_window(i):
        order, windows = epoch_windows(i)
        for w, (lo, hi) in enumerate(windows):
            pickle.dumps(B._worker_job((order[lo:hi], (0, i, 0, w)), spec), protocol=5)
        return tokens_of

    def stage_r(i):
        return sum(b.n_tokens for blob in blobs for b in map(B._widen, pickle.loads(blob)))

    A, Bp, Bw, R = (per_cpu_second(f, args.seconds) for f in (stage_a, stage_b_patient, stage_b_window, stage_r))

    def one_thread(draw):
        def work(i):
            return sum(b.n_tokens for b in B.pretrain_batches(cache, "train", batch_tokens=bt, max_len=max_len,
                                                              epoch=i, draws=draw))
        return per_cpu_second(work, args.seconds)

    P1, W1 = one_thread("patient"), one_thread("window")
    print("\nper CPU second of one thread (M real tokens/s):")
    print(f"  A  draws, patient by patient:                     {A / 1e6:7.2f}")
    print(f"  B  a process builds a window from those draws:    {Bp / 1e6:7.2f}")
    print(f"  B  a process draws and builds a window:           {Bw / 1e6:7.2f}")
    print(f"  R  receiving a built window:                      {R / 1e6:7.2f}")
    print(f"  the whole pipeline on one thread, patient draws:  {P1 / 1e6:7.2f}")
    print(f"  the whole pipeline on one thread, window draws:   {W1 / 1e6:7.2f}")

    def delivered(draw: str, cpus: int) -> float:
        k = int(cpus) - 2
        if draw == "patient":
            return P1 if k <= 0 else min(1 / (1 / A + 1 / R), k * Bp)
        return W1 if k <= 0 else min(R, k * Bw)

    def cpus_for(draw: str, rate: float) -> str:
        for c in range(2, 257):
            if delivered(draw, c) >= rate:
                return str(c)
        return "never"

    spaces = {n: int(yaml.safe_load((ROOT / "search_spaces" / f"{n}.yaml").read_text())["budget"]["cpus_per_worker"])
              for n in SPACES}
    seen = None
    print("\nmeasured wall rate through Prefetched (the loop's thread; this machine's "
          f"{os.cpu_count()} cores, shared):")
    for draw in ("patient", "window"):
        for c in sorted(set(spaces.values())):
            workers = max(0, c - 2)

            def stream(draw=draw, workers=workers):
                for e in range(10**6):
                    yield from B.pretrain_batches(cache, "train", batch_tokens=bt, max_len=max_len, epoch=e,
                                                  draws=draw, workers=workers)

            with B.Prefetched(stream(), depth=4, prepare=lambda b: (b, b.split(args.grad_accum))) as ahead:
                rate, batches_seen = wall_rate(ahead, args.seconds)
            seen = seen or batches_seen
            print(f"  draws={draw:<8} cpus_per_worker {c} (workers={workers}): {rate / 1e6:6.2f} M tokens/s")
    B.shutdown_workers()

    n = sum(t for t, _ in seen)
    cpus = sorted(set(spaces.values()))
    print(f"\nspaces: {', '.join(f'{k} cpus_per_worker {v}' for k, v in spaces.items())}. Delivered with "
          f"a CPU each, from the stages above: " + "; ".join(
              f"{c} CPUs: patient {delivered('patient', c) / 1e6:.2f}, window {delivered('window', c) / 1e6:.2f} M/s"
              for c in cpus))
    for card, peak in PEAKS.items():
        print(f"\n{card} at {MFU:.0%} MFU ({peak * MFU / 1e12:.0f} TFLOP/s); FLOPs per token at the row lengths of "
              f"{len(seen)} batches (token-weighted); headroom at {cpus[0]} CPUs; CPUs for {TARGET:g}x:")
        print(f"  {'preset':>6} {'MFLOP/tok':>9} {'consumes':>10} {'patient':>8} {'window':>8}"
              f" {'CPUs, patient':>14} {'CPUs, window':>13}")
        for name, size in PRESETS.items():
            if name == "debug":
                continue
            flops = sum(t * size.flops_per_token(REFERENCE_VOCAB, T, 0.15) for t, T in seen) / n
            need = peak * MFU / flops
            print(f"  {name:>6} {flops / 1e6:9.1f} {need / 1e6:6.2f} M/s "
                  f"{delivered('patient', cpus[0]) / need:7.2f}x {delivered('window', cpus[0]) / need:7.2f}x"
                  f" {cpus_for('patient', TARGET * need):>14} {cpus_for('window', TARGET * need):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
