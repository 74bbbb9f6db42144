"""The claims Transformer: an encoder over code tokens, and separate heads (femr style).

Input is a packed ``batches.Batch``: each row holds several patient sequences side by side,
``batch.seq`` says which sequence every position belongs to (-1 = padding), and attention is
block-diagonal (a position sees only its own sequence), so short patients waste no compute
on padding. Each sequence starts with a [CLS] token.

Embeddings, summed (BEHRT / CEHR-BERT style): code + age in years at the event + whole months
before the sequence's reference day (the prediction time for task samples, the last event for
pretraining crops) + visit index (distinct event days so far; events on one day share it).
Blocks are pre-LayerNorm. Attention, chosen once per forward by :func:`attention_kernel`:

- rows that each hold one whole sequence (``batch.unpacked``): SDPA with no mask, which CUDA
  serves with FlashAttention;
- packed rows on CUDA: ``flex_attention`` with a document block mask (a position sees its own
  sequence): compiled, it skips the blocks two patients never share and never builds T x T;
- packed rows elsewhere (CPU), or with attention dropout (flex has none): SDPA with a dense
  additive block-diagonal mask (B, 1, T, T), built once per forward in the compute dtype and
  shared by every block.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from claims_search.model.sizes import AGE_BUCKETS, MONTH_BUCKETS, ModelSize


class Block(nn.Module):
    """One pre-LN Transformer block: x + attn(ln(x)), then x + ff(ln(x))."""

    def __init__(self, size: ModelSize):
        super().__init__()
        w = size.width
        self.heads = size.heads
        self.attn_dropout = size.attn_dropout
        self.ln1 = nn.LayerNorm(w)
        self.qkv = nn.Linear(w, 3 * w)
        self.proj = nn.Linear(w, w)
        self.ln2 = nn.LayerNorm(w)
        self.ff1 = nn.Linear(w, size.ff_dim)
        self.ff2 = nn.Linear(size.ff_dim, w)
        self.drop = nn.Dropout(size.dropout)

    def forward(self, x: torch.Tensor, mask) -> torch.Tensor:
        """``mask``: None (no mask), a dense additive mask (B, 1, T, T) in q's dtype, or a
        flex ``BlockMask`` (see ``ClaimsEncoder.forward``)."""
        B, T, W = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(W, dim=2)  # 3 x (B, T, W)
        q = q.view(B, T, self.heads, W // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.heads, W // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.heads, W // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        if isinstance(mask, BlockMask):
            y = _flex(q.device.type)(q, k, v, block_mask=mask)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, W)  # (B, T, W)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.ln2(x)))))


class ClaimsEncoder(nn.Module):
    """Encoder of packed patient sequences: ``forward(batch) -> hidden (B, T, W)``."""

    def __init__(self, size: ModelSize, vocab_size: int):
        super().__init__()
        self.size = size
        self.vocab_size = vocab_size
        w = size.width
        self.codes = nn.Embedding(vocab_size, w)
        self.ages = nn.Embedding(AGE_BUCKETS, w)
        self.months = nn.Embedding(MONTH_BUCKETS, w)
        self.visits = nn.Embedding(size.max_len + 1, w)  # [CLS] is visit 0
        self.drop = nn.Dropout(size.dropout)
        self.blocks = nn.ModuleList(Block(size) for _ in range(size.depth))
        self.ln_f = nn.LayerNorm(w)
        self.apply(_init_weights)
        # "auto" (attention_kernel's choice), or force "sdpa-mask" / "flex" for packed rows.
        self.attention = "auto"
        self.last_kernel: str | None = None  # what the last forward ran (bench/gpu_check.py)

    def forward(self, batch) -> torch.Tensor:
        """Hidden states (B, T, W) of a ``batches.Batch`` (already on this module's device)."""
        x = (
            self.codes(batch.tokens)
            + self.ages(batch.ages.clamp(0, AGE_BUCKETS - 1))
            + self.months(batch.months.clamp(0, MONTH_BUCKETS - 1))
            + self.visits(batch.visits.clamp(0, self.size.max_len))
        )  # (B, T, W)
        x = self.drop(x)
        kernel = attention_kernel(self.size, batch.seq.shape[1], batch.unpacked, x.device.type,
                                  self.training and self.size.attn_dropout > 0, self.attention)
        self.last_kernel = kernel
        # Built once per forward, shared by every block.
        if kernel in ("sdpa", "flash"):
            mask = None  # every row is one whole sequence
        elif kernel == "flex":
            mask = document_block_mask(batch.seq)
        else:
            mask = additive_mask(batch.seq, _compute_dtype(x))
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


def attention_mask(seq: torch.Tensor) -> torch.Tensor:
    """Block-diagonal boolean mask (B, 1, T, T) from sequence ids (B, T).

    Padding (-1) attends to padding only, so no softmax row is empty (that would give NaN);
    real positions never see padding or another patient.
    """
    return (seq[:, :, None] == seq[:, None, :]).unsqueeze(1)  # (B, 1, T, T)


def additive_mask(seq: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`attention_mask` as SDPA adds it to the scores, in ``dtype``: 0 where a position
    may attend, -inf elsewhere (B, 1, T, T). Given a boolean mask SDPA converts it like this in
    every call, i.e. in every block; built once, it is converted once."""
    mask = torch.zeros(seq.shape[0], 1, seq.shape[1], seq.shape[1], dtype=dtype, device=seq.device)
    return mask.masked_fill_(~attention_mask(seq), float("-inf"))


def document_block_mask(seq: torch.Tensor) -> "BlockMask":
    """The same block-diagonal rule as a flex ``BlockMask``: stored per 128 x 128 tile (which
    tiles any two positions of one sequence share), never as T x T."""
    B, T = seq.shape

    def same_sequence(b, h, q, kv):
        return seq[b, q] == seq[b, kv]

    return create_block_mask(same_sequence, B, None, T, T, device=seq.device,
                             _compile=seq.device.type == "cuda")


# Names of the attention paths, as attention_kernel returns them.
KERNELS = {
    "flash": "SDPA without a mask on CUDA: FlashAttention (rows of one whole sequence each)",
    "sdpa": "SDPA without a mask on CPU: the fused CPU kernel (rows of one whole sequence each)",
    "flex": "flex_attention with a document BlockMask, compiled (packed rows on CUDA)",
    "sdpa-mask": "SDPA with a dense additive (B, 1, T, T) block-diagonal mask (packed rows on CPU, or with attention dropout)",
}


def attention_kernel(size: ModelSize, row_len: int, unpacked: bool, device: str = "cuda",
                     attn_dropout: bool = False, prefer: str = "auto") -> str:
    """Which attention path a forward takes (a key of ``KERNELS``), from the batch's row
    length and whether it is packed; pure, so it can be asked on a machine without the device.
    On CUDA it assumes the loop's bf16 autocast (FlashAttention takes bf16/fp16 only). Today
    the choice does not depend on ``row_len`` (FlashAttention and flex take any length); it
    is asked for so that a table by length stays true if it ever does.
    ``attn_dropout``: training with attention dropout (flex cannot drop). ``prefer``: "auto",
    or "flex" / "sdpa-mask" to force the packed path (tests, benchmarks)."""
    if prefer not in ("auto", "flex", "sdpa-mask"):
        raise ValueError(f"attention: prefer must be 'auto', 'flex' or 'sdpa-mask', got {prefer!r}")
    if unpacked:
        # FlashAttention takes head sizes that are multiples of 8 up to 256 (every preset's).
        fits_flash = size.head_dim % 8 == 0 and size.head_dim <= 256
        return "flash" if device == "cuda" and fits_flash else "sdpa"
    if attn_dropout:
        return "sdpa-mask"
    if prefer != "auto":
        return prefer
    return "flex" if device == "cuda" else "sdpa-mask"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


@functools.cache
def _flex(device_type: str):
    """flex_attention, compiled on CUDA (eager it is a reference implementation that builds the
    scores in full: right, and slow)."""
    if device_type == "cuda":
        return torch.compile(flex_attention)
    return flex_attention


class MaskedCodeHead(nn.Module):
    """Masked-code prediction; logits only at masked positions (``batch.targets >= 0``).

    The decoder is tied to the encoder's code embedding, so it adds only ``vocab_size`` biases.
    Returns ``(logits (M, V), loss)`` where M is the number of masked positions.
    """

    def __init__(self, encoder: ClaimsEncoder):
        super().__init__()
        self.weight = encoder.codes.weight  # tied: (V, W)
        self.bias = nn.Parameter(torch.zeros(encoder.vocab_size))

    def forward(self, hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        # The masked positions come with the batch (computed in ``batches.pack``): a gather
        # of known size, where ``hidden[targets >= 0]`` would wait for the device to count M.
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.masked_index)  # (M, W)
        targets = batch.masked_targets  # (M,)
        logits = F.linear(h, self.weight, self.bias)  # (M, V)
        loss = F.cross_entropy(logits.float(), targets)
        return logits, loss


class ClassificationHead(nn.Module):
    """One logit per packed sequence, from its [CLS] position (``pool="cls"``) or the mean of
    its positions (``pool="mean"``). Returns ``(logits (S,), loss or None)``; the loss is binary
    cross-entropy against ``batch.labels`` when the batch has labels.
    """

    def __init__(self, width: int, dropout: float = 0.1, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, W = hidden.shape
        flat = hidden.reshape(B * T, W)  # (B*T, W)
        if self.pool == "cls":
            pooled = flat[batch.cls_index]  # (S, W)
        else:
            seq = batch.seq.reshape(-1)  # (B*T,) global sequence index, -1 padding
            real = seq >= 0
            S = batch.cls_index.shape[0]
            sums = flat.new_zeros(S, W).index_add_(0, seq[real], flat[real])  # (S, W)
            counts = torch.bincount(seq[real], minlength=S).clamp(min=1)  # (S,)
            pooled = sums / counts[:, None].to(sums.dtype)
        logits = self.out(self.drop(pooled)).squeeze(-1)  # (S,)
        loss = None
        if batch.labels is not None:
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels.float())
        return logits, loss


class ClaimsModel(nn.Module):
    """Encoder + one head: ``forward(batch) -> (loss, logits)``; what the loop trains (or DDP wraps)."""

    def __init__(self, encoder: ClaimsEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, batch) -> tuple[torch.Tensor | None, torch.Tensor]:
        logits, loss = self.head(self.encoder(batch), batch)
        return loss, logits


def pretraining_model(size: ModelSize, vocab_size: int) -> ClaimsModel:
    """A fresh encoder with a masked-code head."""
    encoder = ClaimsEncoder(size, vocab_size)
    return ClaimsModel(encoder, MaskedCodeHead(encoder))


def classification_model(
    encoder: ClaimsEncoder, pool: str = "cls", dropout: float | None = None
) -> ClaimsModel:
    """An encoder (fresh or pretrained) with a new classification head."""
    p = encoder.size.dropout if dropout is None else dropout
    return ClaimsModel(encoder, ClassificationHead(encoder.size.width, p, pool))


def _init_weights(module: nn.Module) -> None:
    # BERT / nanoGPT: N(0, 0.02) weights, zero biases; LayerNorm keeps its ones/zeros.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
