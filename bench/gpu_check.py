"""GPU check (< 5 minutes on one CUDA device): bf16 autocast, SDPA kernels, MFU of the largest preset.

    python bench/gpu_check.py [--preset 101M] [--steps 20] [--batch-tokens 32768]

1. bf16: a few ``loop.TrainLoop`` steps of the preset under autocast: finite, falling loss,
   hidden states in bfloat16.
2. SDPA: which fused kernel serves our attention shapes. Rows holding one whole sequence
   (no mask) can use FlashAttention; packed rows carry a block-diagonal boolean mask, which
   FlashAttention does not take, so they use the memory-efficient kernel. Both are probed.
3. MFU: training tokens/s of the preset on packed batches (claims-like lengths) and on full
   unpacked rows (flash path), times ``ModelSize.flops_per_token`` (6N + 12LWT + masked
   decoder), over the card's dense bf16 peak from ``PEAK_BF16``.

On a machine without CUDA it says so and exits 0 (a skip, not a failure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from NVIDIA's data sheets; matched by
# substring of torch.cuda.get_device_name(), first match wins (order matters: "H100 PCIe"
# before "H100").
PEAK_BF16 = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def peak_flops(name: str) -> float | None:
    for key, peak in PEAK_BF16:
        if key in name:
            return peak
    return None


def claims_batches(size, vocab: int, batch_tokens: int, rng: np.random.Generator, whole_rows: bool):
    """An endless stream of masked packed batches; lengths log-normal (median 40, tail cut at
    max_len). With ``whole_rows`` every patient fills one row exactly (max_len + 1 rounded
    down to a multiple of 8 positions), so batches need no mask and SDPA may use flash."""
    from claims_search.batches import make_sequence, mask_sequence, pack

    row = size.max_len + 1
    while True:
        seqs, used = [], 0
        while True:
            n = (row // 8) * 8 - 1 if whole_rows else int(np.clip(rng.lognormal(np.log(40), 1.2), 1, size.max_len))
            if used + n + 1 > batch_tokens:
                break
            tokens = rng.integers(4, vocab, n)
            days = np.sort(rng.integers(17000, 19000, n))
            seqs.append(mask_sequence(make_sequence(tokens, days, 0, int(days[-1])), rng, 0.15, vocab))
            used += n + 1
        yield pack(seqs, row_len=(row // 8) * 8 if whole_rows else row)


def check_bf16(size, vocab, device) -> None:
    from claims_search.loop import PretrainSettings, TrainLoop
    from claims_search.model import pretraining_model

    torch.manual_seed(0)
    model = pretraining_model(size, vocab).to(device)
    rng = np.random.default_rng(0)
    fixed = [next(claims_batches(size, vocab, 8192, rng, False)) for _ in range(2)]
    settings = PretrainSettings(lr=1e-3, batch_tokens=8192, steps=12, warmup=2, log_every=4)
    losses = []
    TrainLoop(model, lambda epoch: iter(fixed), settings,
              on_report=lambda step, m: losses.append(m["loss"])).run()
    seen = []  # dtype of the first attention projection's output (LayerNorm output stays fp32)
    model.encoder.blocks[0].qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.encoder(fixed[0].to(device))
    ok = all(np.isfinite(losses)) and losses[-1] < losses[0] and seen == [torch.bfloat16]
    print(f"bf16 autocast: losses {[round(x, 3) for x in losses]}, matmuls in {seen[0]}: {'OK' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(1)


def check_sdpa(size, device) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from claims_search.model import attention_mask

    B, H, T, hs = 8, size.heads, size.max_len + 1, size.head_dim
    T = -(-T // 8) * 8
    q, k, v = (torch.randn(B, H, T, hs, device=device, dtype=torch.bfloat16) for _ in range(3))
    seq = torch.arange(T, device=device).div(T // 4, rounding_mode="floor").expand(B, T)  # 4 patients a row
    mask = attention_mask(seq)
    for label, m in (("unpacked rows (no mask)", None), ("packed rows (block-diagonal mask)", mask)):
        usable = []
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                with sdpa_kernel(backend):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
                usable.append(backend.name)
            except RuntimeError:
                pass
        print(f"SDPA {label}: fused kernels that accept it: {', '.join(usable) or 'none (math only)'}")


def measure_mfu(size, vocab, device, steps: int, batch_tokens: int, whole_rows: bool, peak: float | None) -> None:
    from claims_search.model import pretraining_model

    torch.manual_seed(0)
    model = pretraining_model(size, vocab).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    stream = claims_batches(size, vocab, batch_tokens, np.random.default_rng(1), whole_rows)
    batches = [next(stream).to(device) for _ in range(4)]
    tokens = flops = 0.0
    for i in range(steps + 3):
        batch = batches[i % len(batches)]
        if i == 3:  # after warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens = flops = 0.0
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        T = batch.tokens.shape[1]
        masked = float((batch.targets >= 0).sum()) / batch.n_tokens
        tokens += batch.n_tokens
        flops += batch.n_tokens * size.flops_per_token(vocab, T, masked)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    achieved = flops / wall
    kind = "unpacked full rows (flash-eligible)" if whole_rows else "packed claims-like rows"
    mfu = f"{achieved / peak:.1%}" if peak else "unknown (card not in PEAK_BF16)"
    print(f"MFU {kind}: {tokens / wall:,.0f} real tokens/s, {achieved / 1e12:.1f} TFLOP/s, MFU {mfu}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="101M")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-tokens", type=int, default=32768)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: needs a CUDA device; none visible to torch here, skipping.")
        return 0
    from claims_search.sizes import PRESETS, REFERENCE_VOCAB

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    size = PRESETS[args.preset]
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s; preset {args.preset} "
          f"({size.n_params(REFERENCE_VOCAB) / 1e6:.1f} M params at vocab {REFERENCE_VOCAB})")
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    check_bf16(size, REFERENCE_VOCAB, device)
    check_sdpa(size, device)
    for whole_rows in (False, True):
        measure_mfu(size, REFERENCE_VOCAB, device, args.steps, args.batch_tokens, whole_rows, peak)
    print(f"gpu_check: done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
