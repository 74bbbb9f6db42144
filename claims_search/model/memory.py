"""Peak memory of one training step, estimated before it runs, and refusal of what cannot fit.

A step of ``loop.TrainLoop`` holds, at its peak:

- the model's fp32 weights, their fp32 gradients and AdamW's two fp32 moments: 16 bytes per
  parameter (weights and moments live across steps; gradients from backward to the step);
- under bf16 autocast (CUDA), a bf16 copy of every matrix-multiply weight, cached by autocast
  for the forward and saved for backward: 2 bytes per such weight;
- the tensors saved for backward, per position of the packed batch (B rows x T columns, padding
  included), counted op by op in :func:`per_position` below; and per masked position, the
  masked-code head's logits and log-probabilities (V of each);
- AdamW's temporaries: ``foreach`` AdamW (CPU) allocates about one fp32 copy of the weights
  during the step; ``fused`` AdamW (CUDA, what the loop uses there) allocates none.

Peak = static + max(forward end: activations + head, optimiser step: gradients + temporaries).
It is checked against peaks measured on CPU (``bench/memory_check.py``, tests/test_memory.py)
and against the 469 KiB per real token of issue 25 (101M preset, bf16 autocast, full crops).

``space.check_memory`` refuses at load a space whose step cannot fit its ``budget.gpu_memory_gb``;
``is_cuda_oom`` tells a GPU out of memory from the node's (``failures.failure_reason``).
Plain Python: no torch import, so a space can be checked anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from claims_search.errors import ClaimsSearchError
from claims_search.model.sizes import ModelSize

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2}

# Real tokens per position of a packed batch when the space is checked at load: rows are as long
# as their batch's longest sequence (rounded up to 8), so padding is the gap first-fit-decreasing
# leaves. Assumed 0.9 (10 % padding) to leave room for it; full crops of max_len pack to
# 513 / 520 = 0.987.
PACK_FILL = 0.9

# What CUDA, the caching allocator and its fragmentation take beyond live tensors on a GPU: the
# context (about 0.5 GiB) and the allocator's rounding; refuse above (1 - this) of the memory.
GPU_RESERVE = 0.10


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one training step, by part (all ints, bytes)."""

    weights: int  # fp32 parameters
    optimizer: int  # AdamW exp_avg + exp_avg_sq, fp32
    gradients: int  # fp32, from backward to the optimiser step
    autocast: int  # bf16 copies of matmul weights (0 in fp32)
    activations: int  # saved for backward + the head's logits at the end of the forward
    optimizer_temp: int  # foreach AdamW's temporaries (0 when fused)

    @property
    def static(self) -> int:
        return self.weights + self.optimizer

    @property
    def peak(self) -> int:
        forward_end = self.autocast + self.activations
        step = self.gradients + self.optimizer_temp
        return self.static + max(forward_end, step)

    def gib(self) -> float:
        return self.peak / GIB


def per_position(size: ModelSize, row_len: int, dtype: str, packed: bool = True) -> int:
    """Bytes saved for backward per position (B*T) of the encoder at row length ``row_len``.

    ``dtype``: "fp32" or "bf16" (autocast: matmuls and their outputs in bf16, LayerNorm and the
    residual stream in fp32). ``packed``: the batch has a block mask (``batches.Batch.unpacked``
    False); SDPA then converts it to the compute dtype in every block and keeps it for backward.
    Attention is counted as SDPA's fused kernels keep it (flash on CPU, efficient/flash on CUDA):
    the output and a log-sum-exp per head, never the T x T probabilities.
    """
    a = DTYPE_BYTES[dtype]
    W, F, h, T = size.width, size.ff_dim, size.heads, row_len
    drop = W if size.dropout > 0 else 0  # a bool mask per element
    block = (
        4 * W + 8  # ln1 input: the fp32 residual (B, T, W), + mean and rstd
        + a * W  # qkv's input: ln1's output (cast to bf16 under autocast)
        + 3 * a * W  # qkv's output (B, T, 3W): q, k, v for attention's backward
        + a * W + 4 * h  # attention's output (B, nh, T, hs) and log-sum-exp (B, nh, T)
        + (a * T if packed else 0)  # the block mask (B, 1, T, T) in the compute dtype
        + a * W  # proj's input: the heads merged back (B, T, W), a copy
        + drop  # dropout on the attention branch
        + 4 * W + 8  # ln2 input: the residual after attention, fp32
        + a * W  # ff1's input
        + a * F  # ff1's output (B, T, F), GELU's input
        + a * F  # GELU's output, ff2's input
        + drop  # dropout on the feed-forward branch
    )
    embeddings = drop + (T if packed else 0)  # dropout mask; the boolean mask (B, 1, T, T)
    final = 4 * W + 8 + 4 * W  # ln_f's input and its output (hidden, alive into the head)
    return size.depth * block + embeddings + final


def per_masked(size: ModelSize, vocab_size: int, dtype: str) -> int:
    """Bytes per masked position of the masked-code head: the picked hidden state (fp32, and its
    bf16 cast), the logits (M, V), their fp32 copy for the loss, and log-softmax's output."""
    a = DTYPE_BYTES[dtype]
    W, V = size.width, vocab_size
    return 4 * W + (a * W if a != 4 else 0) + a * V + (4 * V if a != 4 else 0) + 4 * V


def estimate(
    size: ModelSize,
    vocab_size: int,
    *,
    positions: int,
    row_len: int,
    dtype: str = "bf16",
    masked_fraction: float = 0.15,
    packed: bool = True,
    fused_adam: bool | None = None,
) -> Estimate:
    """Peak memory of one training step over a batch of ``positions`` = B*T positions in rows of
    ``row_len``. ``masked_fraction``: share of positions predicted by the masked-code head (0
    for fine-tuning, whose head is negligible). ``fused_adam`` defaults to the loop's choice
    (fused on CUDA, i.e. with bf16)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    fused = (dtype == "bf16") if fused_adam is None else fused_adam
    n = size.n_params(vocab_size) + (vocab_size if masked_fraction > 0 else size.width + 1)
    # Matmul weights autocast copies: the blocks', and the tied decoder (V x W) in pretraining.
    matmul = size.n_matmul_params() + (vocab_size * size.width if masked_fraction > 0 else 0)
    masked = int(round(positions * masked_fraction))
    act = positions * per_position(size, row_len, dtype, packed) + masked * per_masked(size, vocab_size, dtype)
    return Estimate(
        weights=4 * n,
        optimizer=8 * n,
        gradients=4 * n,
        autocast=2 * matmul if dtype == "bf16" else 0,
        activations=act,
        optimizer_temp=0 if fused else 4 * n,
    )


def for_batch_tokens(
    size: ModelSize,
    vocab_size: int,
    batch_tokens: int,
    *,
    dtype: str = "bf16",
    masked_fraction: float = 0.15,
    fill: float = PACK_FILL,
) -> Estimate:
    """The estimate for a ``batch_tokens`` budget of real tokens at full-length rows (``max_len``
    + 1 rounded up to 8, the longest ``batches.pack`` makes), with ``fill`` real tokens per
    position."""
    row_len = -(-(size.max_len + 1) // 8) * 8
    positions = math.ceil(batch_tokens / fill)
    return estimate(size, vocab_size, positions=positions, row_len=row_len, dtype=dtype,
                    masked_fraction=masked_fraction)


def check_fits(label: str, size: ModelSize, vocab_size: int, batch_tokens: int,
               gpu_memory_gb: float, *, masked_fraction: float, grad_accum: int = 1) -> Estimate:
    """Raise ``ClaimsSearchError`` naming ``label``, the estimate and the memory when a bf16 step
    of ``batch_tokens`` (split in ``grad_accum`` micro-batches) cannot fit ``gpu_memory_gb``
    (GB = 10^9 bytes, as GPU memory is sold) less ``GPU_RESERVE``."""
    micro = math.ceil(batch_tokens / grad_accum)
    est = for_batch_tokens(size, vocab_size, micro, masked_fraction=masked_fraction)
    usable = gpu_memory_gb * 1e9 * (1 - GPU_RESERVE)
    if est.peak > usable:
        split = f" in {grad_accum} micro-batches" if grad_accum > 1 else ""
        raise ClaimsSearchError(
            f"{label}: batch_tokens {batch_tokens}{split} needs about {est.gib():.1f} GiB per GPU "
            f"(bf16: {est.static / GIB:.1f} GiB weights and AdamW, {est.activations / GIB:.1f} GiB "
            f"activations) but budget.gpu_memory_gb is {gpu_memory_gb:g} GB "
            f"({usable / GIB:.1f} GiB usable); lower batch_tokens, raise grad_accum or declare a larger GPU"
        )
    return est


# Messages of a CUDA out-of-memory error as they reach the trial's driver (inside a Ray error's
# text too): torch.OutOfMemoryError's "CUDA out of memory. Tried to allocate ...", and cuBLAS /
# cuDNN / the CUDA runtime failing to allocate. Not Ray's own ray.exceptions.OutOfMemoryError,
# which is the node's RAM (Ray's memory monitor).
_OOM_MARKERS = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                "CUDA error: out of memory")


def is_cuda_oom(error: BaseException | str) -> bool:
    """True when ``error`` (an exception, or one it was raised from, or an error's text) is a GPU
    running out of memory: the configuration's failure, which a retry repeats, not the node's."""
    seen: set[int] = set()
    stack: list = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, str):
            if any(m in e for m in _OOM_MARKERS):
                return True
            continue
        if type(e).__name__ == "OutOfMemoryError" and type(e).__module__.startswith("torch"):
            return True  # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class)
        stack += [str(e), e.__cause__, e.__context__]
    return False
