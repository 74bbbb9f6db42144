"""Measured peak memory of one training step on CPU against ``claims_search.model.memory``'s estimate.

How it measures: torch's profiler with ``profile_memory=True`` records every allocation and free
of torch's CPU allocator, with its size, in order. After a warm-up step (AdamW's moments exist),
one more ``TrainLoop._train_step`` is profiled; its peak is the bytes alive before it (weights and
AdamW state, summed from the tensors) plus the highest running sum of the recorded allocations.
This counts tensors only (no allocator caching, no Python objects), is exact and repeats byte for
byte across runs, so the comparison does not depend on the machine's load. bf16 uses CPU
autocast in place of the loop's CUDA autocast.

Also the cross-check of issue 25: tensors saved for backward per real token at the 101M preset
with bf16 autocast over full crops (saved-tensor hooks, each storage counted once).

    .venv/bin/python bench/memory_check.py            # the table and the 101M cross-check
    .venv/bin/python bench/memory_check.py --quick    # seconds: the first case, the cross-check on it
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from claims_search.model import loop as loop_mod  # noqa: E402
from claims_search.model import memory  # noqa: E402
from claims_search.model.batches import make_sequence, mask_sequence, pack  # noqa: E402
from claims_search.model.model import pretraining_model  # noqa: E402
from claims_search.model.sizes import ModelSize  # noqa: E402


def synthetic_batch(size: ModelSize, vocab: int, batch_tokens: int, seed: int = 0,
                    full: bool = False):
    """A packed masked-code batch of about ``batch_tokens`` real tokens: random lengths up to
    ``max_len`` (or every sequence a full crop), packed as ``batches.pack`` does."""
    rng = np.random.default_rng(seed)
    seqs, used = [], 0
    while True:
        n = size.max_len if full else int(rng.integers(8, size.max_len + 1))
        if used + n + 1 > batch_tokens and seqs:
            break
        days = np.sort(rng.integers(0, 3000, n))
        s = make_sequence(rng.integers(4, vocab, n), days, 0, int(days[-1]))
        seqs.append(mask_sequence(s, rng, 0.15, vocab))
        used += n + 1
    return pack(seqs, -(-(size.max_len + 1) // 8) * 8)


@contextlib.contextmanager
def cpu_autocast(dtype: str):
    """The loop's autocast, on CPU: bf16 as on CUDA, or none."""
    original = loop_mod._autocast
    if dtype == "bf16":
        loop_mod._autocast = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)
    try:
        yield
    finally:
        loop_mod._autocast = original


def _state_bytes(train: loop_mod.TrainLoop) -> int:
    seen, total = set(), 0
    tensors = list(train.model.parameters())
    for st in train.optimizer.state.values():
        tensors += [v for v in st.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def measure(size: ModelSize, vocab: int, batch, dtype: str, fused: bool) -> tuple[int, memory.Estimate]:
    """(measured peak bytes of one step, the estimate) for ``batch`` on CPU."""
    torch.manual_seed(0)
    model = pretraining_model(size, vocab)
    settings = loop_mod.PretrainSettings(batch_tokens=10**9, steps=10, warmup=1)
    train = loop_mod.TrainLoop(model, lambda e: [batch], settings)
    if fused:  # the loop's CUDA choice, available on CPU too
        train.optimizer = torch.optim.AdamW(train.optimizer.param_groups, lr=1e-3, fused=True)
        train.scheduler = torch.optim.lr_scheduler.LambdaLR(train.optimizer, train._lr_factor)
    with cpu_autocast(dtype):
        train._train_step(batch)  # AdamW's moments now exist
        before = _state_bytes(train)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            train._train_step(batch)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    B, T = batch.tokens.shape
    masked = int((batch.targets >= 0).sum())
    est = memory.estimate(size, vocab, positions=B * T, row_len=T, dtype=dtype,
                          masked_fraction=masked / (B * T), packed=not batch.unpacked,
                          fused_adam=fused)
    return before + peak, est


def saved_per_token(size: ModelSize, vocab: int, batch, dtype: str = "bf16") -> tuple[float, float]:
    """Bytes saved for backward per real token by one forward (each storage once): (all of
    them, those that are not parameters or their autocast copies)."""
    torch.manual_seed(0)
    model = pretraining_model(size, vocab).train()
    weights = {id(p) for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() >= 1}
    seen: dict[int, tuple[int, bool]] = {}

    def pack_hook(t):
        s = t.untyped_storage()
        # A parameter, or its bf16 copy made by autocast (same shape as a parameter).
        is_weight = id(t) in weights or (t.dtype == torch.bfloat16 and tuple(t.shape) in shapes)
        seen.setdefault(s.data_ptr(), (s.nbytes(), is_weight))
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t), ctx:
        model(batch)
    total = sum(n for n, _ in seen.values())
    acts = sum(n for n, w in seen.values() if not w)
    return total / batch.n_tokens, acts / batch.n_tokens


CASES = [  # (width, depth, heads, max_len, vocab, batch_tokens)
    (64, 2, 2, 128, 500, 2048),
    (64, 2, 2, 128, 500, 8192),
    (128, 4, 4, 256, 1000, 4096),
    (128, 4, 4, 256, 1000, 16384),
    (256, 4, 4, 512, 2000, 8192),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-101m", action="store_true", help="leave out the 101M cross-check")
    ap.add_argument("--only-101m", action="store_true", help="only the 101M cross-check")
    ap.add_argument("--quick", action="store_true",
                    help="the first case only, and the cross-check at its size in place of 101M: seconds")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("\n".join(common.table(["width x depth", "max_len", "vocab", "batch_tokens", "B x T", "dtype", "AdamW",
                                  "measured MiB", "estimate MiB", "error"], [])))
    for w, d, h, max_len, vocab, bt in [] if args.only_101m else CASES[:1] if args.quick else CASES:
        size = ModelSize(width=w, depth=d, heads=h, max_len=max_len)
        batch = synthetic_batch(size, vocab, bt)
        for dtype, fused in (("fp32", False), ("bf16", True)):
            measured, est = measure(size, vocab, batch, dtype, fused)
            B, T = batch.tokens.shape
            print(f"| {w} x {d} | {max_len} | {vocab} | {bt} | {B} x {T} | {dtype} | "
                  f"{'fused' if fused else 'foreach'} | {measured / 2**20:.1f} | {est.peak / 2**20:.1f} | "
                  f"{est.peak / measured - 1:+.1%} |")
    if not args.skip_101m:
        name, vocab = ("64x2", 500) if args.quick else ("101M", 10_000)
        size = ModelSize(64, 2, 2, max_len=128) if args.quick else ModelSize.from_name(name)
        t0 = time.perf_counter()
        batch = synthetic_batch(size, vocab, 4 * (size.max_len + 1), full=True)
        total, acts = saved_per_token(size, vocab, batch)
        B, T = batch.tokens.shape
        masked = int((batch.targets >= 0).sum())
        # Saved for backward: the estimate's activations less ln_f's output (alive, not saved).
        saved = (B * T * (memory.per_position(size, T, "bf16") - 4 * size.width)
                 + masked * memory.per_masked(size, vocab, "bf16"))
        print(f"\n{name}, bf16 autocast, {B} full crops (T={T}): saved for backward per real token: "
              f"{total / 1024:.0f} KiB in all, {acts / 1024:.0f} KiB without weights and their bf16 copies; "
              f"estimate {saved / batch.n_tokens / 1024:.0f} KiB ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
