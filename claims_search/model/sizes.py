"""Model sizes: a frozen shape, its parameter count and training FLOPs, and a named preset table.

A size is only the shape of the encoder (width, depth, heads, feed-forward ratio, dropout,
attention-probability dropout, longest sequence). Training settings live in ``loop.PretrainSettings`` / ``FinetuneSettings``.

Presets: ``debug`` for tests, then five sizes matching the reference study's 2.2 M ... 101 M
parameters (within 10 %) at ``REFERENCE_VOCAB`` = 10,000 codes. The study gives only the ends
and 11 M; the intermediate sizes here are our choice: a geometric ladder through 11 M
(x2.2 below it, x3 above it). See docs/model.md for the table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from claims_search.errors import ClaimsSearchError

# Vocabulary the preset parameter counts assume: ICD-10 diagnoses + ATC drugs + Japanese
# procedure codes after dropping rare codes (min_count) lands around 10^4 codes.
REFERENCE_VOCAB = 10_000

# Embedding tables beside the code embedding (see model.ClaimsEncoder).
AGE_BUCKETS = 128  # 0 = unknown birth date, 1 + age in whole years (clipped at 126)
MONTH_BUCKETS = 256  # whole months (30 days) before the sequence's reference day, clipped


@dataclass(frozen=True)
class ModelSize:
    """The shape of one encoder. Validated on construction; never holds training settings."""

    width: int
    depth: int
    heads: int
    ff_ratio: float = 4.0
    dropout: float = 0.1  # embeddings and residual branches
    # On the attention probabilities (rows, heads, T, T): off by default, as in ModernBERT.
    # Its masks were 27 % of a CPU training step at width 128 for no measured gain
    # (docs/model.md, "Dropout").
    attn_dropout: float = 0.0
    max_len: int = 512  # most events per patient sequence (the [CLS] token comes on top)

    def __post_init__(self) -> None:
        name = f"ModelSize(width={self.width}, depth={self.depth}, heads={self.heads})"
        for f in ("width", "depth", "heads", "max_len"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ClaimsSearchError(f"{name}: {f} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ClaimsSearchError(
                f"{name}: heads ({self.heads}) must divide width ({self.width})"
            )
        for f in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ClaimsSearchError(f"{name}: {f} must be in [0, 1), got {getattr(self, f)}")
        if self.ff_ratio <= 0 or self.ff_dim < 1:
            raise ClaimsSearchError(f"{name}: ff_ratio must be positive, got {self.ff_ratio}")

    @property
    def ff_dim(self) -> int:
        """Hidden width of each feed-forward block."""
        return int(round(self.ff_ratio * self.width))

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelSize":
        """A preset by name, optionally with some fields replaced (``from_name("11M", dropout=0)``)."""
        if name not in PRESETS:
            raise ClaimsSearchError(f"unknown model size {name!r}; presets: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ClaimsSearchError(f"model size {name!r}: unknown fields {sorted(unknown)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        """The constructor's keyword arguments (what a trial config's "model" entry holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def n_params(self, vocab_size: int) -> int:
        """Parameters of ``model.ClaimsEncoder`` (embeddings included, heads excluded).

        Heads add little: ``MaskedCodeHead`` ties its decoder to the code embedding and adds
        ``vocab_size`` biases; ``ClassificationHead`` adds ``width + 1``.
        """
        w, f = self.width, self.ff_dim
        embeddings = (vocab_size + AGE_BUCKETS + MONTH_BUCKETS + self.max_len + 1) * w
        block = (
            2 * w  # ln1
            + 3 * w * w + 3 * w  # qkv
            + w * w + w  # attention output
            + 2 * w  # ln2
            + w * f + f + f * w + w  # feed-forward
        )
        return embeddings + self.depth * block + 2 * w  # + final LayerNorm

    def n_matmul_params(self) -> int:
        """Weights that take part in matrix multiplies per token (blocks only, no embeddings)."""
        return self.depth * (4 * self.width * self.width + 2 * self.width * self.ff_dim)

    def flops_per_token(
        self, vocab_size: int, seq_len: int, masked_fraction: float = 0.0
    ) -> float:
        """Training FLOPs (forward + backward) per token at attention span ``seq_len``.

        As nanoGPT's ``estimate_mfu`` and PaLM (Chowdhery et al. 2022, appendix B) count them:
        ``6 N + 12 L W T`` where N are the matmul weights of the blocks (2 FLOPs per
        multiply-add forward, twice that backward), L depth, W width, T the attention span
        (QK^T and AV). Embedding lookups are not matmuls and count zero; biases, LayerNorm,
        softmax and GELU are ignored. The masked-code decoder (W x vocab) runs only at masked
        positions: pass ``masked_fraction`` (e.g. 0.15) to add ``6 W V`` per masked token.
        """
        attention = 12 * self.depth * self.width * seq_len
        decoder = 6 * self.width * vocab_size * masked_fraction
        return 6 * self.n_matmul_params() + attention + decoder


def size_key(model: dict) -> str:
    """A size's short name from a trial config's ``model`` entry: ``w64d4h4`` (width, depth, heads)."""
    return f"w{int(model['width'])}d{int(model['depth'])}h{int(model['heads'])}"


# name -> size; parameter counts (encoder, at REFERENCE_VOCAB codes) in the comments and checked
# by tests/test_sizes.py. Head dimension 32 for debug, 32-64 for the rest.
PRESETS: dict[str, ModelSize] = {
    "debug": ModelSize(width=32, depth=2, heads=2, max_len=64),  # 0.36 M
    "2.2M": ModelSize(width=128, depth=4, heads=4),  # 2.18 M (study: 2.2 M)
    "4.9M": ModelSize(width=192, depth=6, heads=6),  # 4.76 M (ladder)
    "11M": ModelSize(width=256, depth=10, heads=4),  # 10.7 M (study: 11 M)
    "33M": ModelSize(width=512, depth=9, heads=8),  # 34.0 M (ladder)
    "101M": ModelSize(width=768, depth=13, heads=12),  # 100.5 M (study: 101 M)
}

# The study's sizes (None = ours, not given by the study), in parameters at REFERENCE_VOCAB.
STUDY_PARAMS: dict[str, float | None] = {
    "2.2M": 2.2e6, "4.9M": None, "11M": 11e6, "33M": None, "101M": 101e6,
}
