"""GPU check (< 8 minutes on one H100): training measured as it runs, on one CUDA device.

    python bench/gpu_check.py [--preset 101M] [--steps 40] [--data demo/prepared] [--no-search]
                              [--draws window --workers 12]
    python bench/gpu_check.py --quick   # a minute: the debug preset, 5 steps, tiny data, no search

1. Attention paths: which kernel ``model.attention_kernel`` picks at each preset and row length
   (the table), and flex_attention with a document block mask against the dense-mask reference
   on this GPU: outputs and gradients, bf16.
2. Training as it runs: ``loop.TrainLoop`` on the real pipeline (``batches.pretrain_batches``
   over a prepared cache, built ahead in the loop's background thread, pinned, copied
   non-blocking) at paper.yaml's step (65,536 tokens in 2 micro-batches). The timed steps have
   no host sync: CUDA events are recorded after the warm-up steps and after the last one, and
   the loop reports (its one sync) only at the end. It prints real tokens/s, MFU (the loop's
   FLOPs, ``ModelSize.flops_per_token`` at each batch's row length, over the card's dense bf16
   peak from ``PEAK_BF16``), the attention kernels the forwards ran, and
   ``memory.for_batch_tokens``'s estimate against the measured peak.
3. A two-trial search of small sizes on this GPU: ``claims-search search`` with the space
   written below (``SEARCH_SPACE``), one task, a local Ray instance and a local MLflow store in
   a temporary folder.

Without ``--data`` it uses ``demo/prepared`` (``make demo``), else it generates 2,000 synthetic
patients and prepares them (about a minute); ``--quick`` reads the quick modes' tiny dataset
(``common.quick_data``) instead. On a machine without CUDA it says so in one line and exits 2,
``--quick`` or not.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from NVIDIA's data sheets. Matched against
# torch.cuda.get_device_name() word by word, longest name first: "NVIDIA L40S" is an L40S, not
# an L4 or an L40; "NVIDIA H100 80GB HBM3" is the SXM H100.
PEAK_BF16 = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(name: str) -> float | None:
    """The peak of the longest key whose words all appear, in order, as whole words of ``name``."""
    words = name.replace("-", " ").split()
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        k = key.split()
        if any(words[i:i + len(k)] == k for i in range(len(words))):
            return PEAK_BF16[key]
    return None


# Two trials of small sizes (width 64-128, depth 2-4), one task, a few hundred steps: a search
# end to end on the GPU in about two minutes, Ray start included.
SEARCH_SPACE = """\
name: gpu-check
tasks: [ckd_incidence]
metric: auprc
cost: device_seconds
objective: multi
sampler: {{kind: random, seed: 0}}
budget: {{trials: 2, concurrency: 1, workers_per_trial: 1, cpus_per_worker: 4, gpus_per_worker: 1, gpu_memory_gb: {gpu_gb}}}
model: {{head_dim: [32], heads: [2, 4], depth: {{low: 2, high: 4}}, ff_ratio: 4.0, dropout: 0.1, max_len: {max_len}}}
training:
  pretrain: {{lr: 1.0e-3, batch_tokens: 16384, steps: 200, warmup: 20, mask_prob: 0.15}}
  finetune: {{lr: 3.0e-4, batch_tokens: 16384, steps: 100, warmup: 10}}
recommend: {{tolerance: null}}
baseline: false
"""


def kernel_table(device: str) -> None:
    from claims_search.model.model import KERNELS, attention_kernel
    from claims_search.model.sizes import PRESETS

    lengths = [(40, False), (128, False), (520, False), (513, True)]
    print("attention kernel by preset and row length (packed rows / one whole sequence a row):")
    print(f"  {'preset':>6} " + " ".join(f"{f'T={T}' + (' whole' if u else ''):>12}" for T, u in lengths))
    for name, size in PRESETS.items():
        if name == "debug":
            continue
        print(f"  {name:>6} " + " ".join(f"{attention_kernel(size, T, u, device):>12}" for T, u in lengths))
    for k, what in KERNELS.items():
        print(f"    {k}: {what}")


def check_flex(size, device) -> bool:
    """flex_attention (document block mask) against the dense additive mask, bf16, forward and
    backward, on one packed batch."""
    import numpy as np

    from claims_search.model.batches import make_sequence, pack
    from claims_search.model.model import ClaimsEncoder

    rng = np.random.default_rng(0)
    seqs = [make_sequence(rng.integers(4, 1000, n), np.sort(rng.integers(17000, 19000, n)), 0, 19000)
            for n in rng.integers(20, size.max_len, 24)]
    batch = pack(seqs, size.max_len + 1).to(device)
    out = {}
    for path in ("sdpa-mask", "flex"):
        torch.manual_seed(0)
        enc = ClaimsEncoder(size, 1000).to(device).eval()
        enc.attention = path
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = enc(batch)
        real = h[batch.seq >= 0].float()
        real.square().mean().backward()
        out[path] = (real.detach(), enc.blocks[0].qkv.weight.grad.detach(), enc.last_kernel)
    (h0, g0, _), (h1, g1, k1) = out["sdpa-mask"], out["flex"]
    dh = ((h1 - h0).norm() / h0.norm()).item()
    dg = ((g1 - g0).norm() / g0.norm()).item()
    ok = k1 == "flex" and dh < 2e-2 and dg < 5e-2
    print(f"flex vs dense mask (bf16, {batch.tokens.shape[0]} rows x {batch.tokens.shape[1]}): relative "
          f"difference outputs {dh:.1e}, gradients {dg:.1e}: {'OK' if ok else 'FAILED'}")
    return ok


def measure_training(size, cache, device, steps: int, warmup: int, batch_tokens: int, grad_accum: int,
                     peak: float | None, draws: str = "patient", workers: int = 0) -> None:
    from claims_search.model import memory
    from claims_search.model.batches import pretrain_batches
    from claims_search.model.loop import PretrainSettings, TrainLoop
    from claims_search.model.model import pretraining_model

    torch.manual_seed(0)
    model = pretraining_model(size, cache.vocab_size).to(device)
    settings = PretrainSettings(lr=5e-4, batch_tokens=batch_tokens, steps=warmup + steps, warmup=warmup,
                                grad_accum=grad_accum, log_every=warmup + steps)
    kernels = collections.Counter()
    model.encoder.register_forward_hook(lambda m, i, o: kernels.update([m.last_kernel]))
    marks = {}

    def on_step(step):  # CUDA events are recorded, not waited for: no host sync here
        if step in (warmup, warmup + steps):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks[step] = (event, loop.meter.tokens, loop.meter.flops, time.perf_counter())
        return False

    def stream(epoch):
        return pretrain_batches(cache, "train", batch_tokens=batch_tokens, max_len=size.max_len,
                                mask_prob=0.15, seed=0, epoch=epoch, draws=draws, workers=workers)

    torch.cuda.reset_peak_memory_stats()
    loop = TrainLoop(model, stream, settings, on_step=on_step)
    loop.run()
    torch.cuda.synchronize()
    (e0, tok0, fl0, w0), (e1, tok1, fl1, w1) = marks[warmup], marks[warmup + steps]
    seconds = e0.elapsed_time(e1) / 1e3
    tokens, flops = tok1 - tok0, fl1 - fl0
    mfu = f"{flops / seconds / peak:.1%}" if peak else "unknown (card not in PEAK_BF16)"
    print(f"training {steps} steps after {warmup} warm-up (real pipeline, draws={draws}, workers={workers}; "
          f"{batch_tokens:,} tokens in {grad_accum} micro-batches): {tokens / seconds:,.0f} real tokens/s, "
          f"{flops / seconds / 1e12:.1f} TFLOP/s, MFU {mfu}; GPU time {seconds:.2f} s of "
          f"{w1 - w0:.2f} s wall")
    print(f"attention kernels run (forwards): {dict(kernels)}")
    est = memory.for_batch_tokens(size, cache.vocab_size, math.ceil(batch_tokens / grad_accum), masked_fraction=0.15)
    measured = torch.cuda.max_memory_allocated()
    print(f"memory: estimate {est.gib():.2f} GiB (claims_search/model/memory.py), measured peak "
          f"{measured / 2**30:.2f} GiB allocated ({measured / est.peak:.0%} of the estimate)")


def run_search(data: Path, max_len: int, gpu_gb: float, timeout: int) -> bool:
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-search-"))
    space = tmp / "gpu-check.yaml"
    space.write_text(SEARCH_SPACE.format(gpu_gb=int(gpu_gb), max_len=max_len))
    cmd = [sys.executable, "-m", "claims_search.cli", "search", "--space", str(space), "--data", str(data),
           "--name", "gpu-check", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
           "--storage", str(tmp / "runs"), "--no-progress"]
    print(f"two-trial search: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"two-trial search: did not finish in {timeout} s: FAILED")
        return False
    tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
    print("\n".join(f"  | {line}" for line in tail))
    ok = done.returncode == 0
    print(f"two-trial search: exit {done.returncode} in {time.perf_counter() - t0:.0f} s: {'OK' if ok else 'FAILED'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="101M")
    p.add_argument("--steps", type=int, default=40, help="timed training steps")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing (flex compiles here)")
    p.add_argument("--batch-tokens", type=int, default=65536)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--data", help="a prepared cache (default: demo/prepared, else synthetic)")
    p.add_argument("--draws", choices=["patient", "window"], default="patient",
                   help="pretrain_batches' draws (patient: what a trial's worker uses today)")
    p.add_argument("--workers", type=int, default=0, help="processes building windows ahead")
    p.add_argument("--no-search", action="store_true", help="skip the two-trial search")
    p.add_argument("--search-timeout", type=int, default=240)
    p.add_argument("--quick", action="store_true", help="the debug preset, 5 steps of 4,096 tokens after 2 "
                   "warm-up steps, tiny data, no search (flags given still win)")
    args = p.parse_args()
    if args.quick:  # presets; flags given explicitly still win
        p.set_defaults(preset="debug", steps=5, warmup=2, batch_tokens=4096, grad_accum=1, no_search=True)
        args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: refused: no CUDA device visible to torch on this machine")
        return 2
    from pipeline import open_cache

    from claims_search.model.sizes import PRESETS

    t0 = time.perf_counter()
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    size = PRESETS[args.preset]
    cache = open_cache(args.data, args.quick)
    gpu_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    print(f"device: {name} ({gpu_gb:.0f} GB); torch {torch.__version__}, CUDA {torch.version.cuda}; peak bf16 "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s; preset {args.preset} "
          f"({size.n_params(cache.vocab_size) / 1e6:.1f} M params at the cache's {cache.vocab_size:,} codes); "
          f"data {cache.path}; CPUs {os.cpu_count()}")
    torch.backends.cuda.matmul.allow_tf32 = True
    kernel_table("cuda")
    ok = check_flex(size, device)
    measure_training(size, cache, device, args.steps, args.warmup, args.batch_tokens, args.grad_accum, peak,
                     args.draws, args.workers)
    if not args.no_search:
        ok = run_search(cache.path, cache.max_len, gpu_gb, args.search_timeout) and ok
    print(f"gpu_check: {'done' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
