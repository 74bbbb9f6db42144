"""Model sizes: every preset's parameter count and FLOPs against the model actually built."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from claims_search.model.batches import Batch
from claims_search.errors import ClaimsSearchError
from claims_search.model.model import ClaimsEncoder, pretraining_model
from claims_search.model.sizes import PRESETS, REFERENCE_VOCAB, STUDY_PARAMS, ModelSize

PRESET_NAMES = list(PRESETS)


def plain_batch(T: int, device: str = "cpu", masked: int = 0) -> Batch:
    """One row holding one sequence of T positions; the first ``masked`` are predicted."""
    zeros = lambda: torch.full((1, T), 5, dtype=torch.long, device=device)  # noqa: E731
    targets = torch.full((1, T), -1, dtype=torch.long, device=device)
    targets[0, :masked] = 7
    return Batch(tokens=zeros(), ages=zeros(), months=zeros(), visits=zeros(),
                 seq=torch.zeros(1, T, dtype=torch.long, device=device),
                 cls_index=torch.zeros(1, dtype=torch.long, device=device), n_tokens=T,
                 targets=targets)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_n_params_matches_the_built_encoder(name):
    size = PRESETS[name]
    with torch.device("meta"):  # no memory even for 101M
        encoder = ClaimsEncoder(size, REFERENCE_VOCAB)
    assert sum(p.numel() for p in encoder.parameters()) == size.n_params(REFERENCE_VOCAB)


@pytest.mark.parametrize("name", [n for n, p in STUDY_PARAMS.items() if p])
def test_presets_match_the_study_within_ten_percent(name):
    assert PRESETS[name].n_params(REFERENCE_VOCAB) == pytest.approx(STUDY_PARAMS[name], rel=0.10)


def test_the_five_study_sizes_grow_and_debug_is_tiny():
    counts = [PRESETS[n].n_params(REFERENCE_VOCAB) for n in STUDY_PARAMS]
    assert counts == sorted(counts) and len(counts) == 5
    assert PRESETS["debug"].n_params(1000) < 200_000


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_flops_per_token_is_three_counted_forwards(name):
    size, T = PRESETS[name], 64
    with torch.device("meta"):
        encoder = ClaimsEncoder(size, REFERENCE_VOCAB)
    with FlopCounterMode(display=False) as counter:
        encoder(plain_batch(T, "meta"))
    assert 3 * counter.get_total_flops() / T == size.flops_per_token(REFERENCE_VOCAB, T)


def test_flops_counted_through_forward_and_backward_include_the_masked_decoder():
    size, T, vocab, masked = PRESETS["debug"], 40, 300, 6
    model = pretraining_model(size, vocab)
    # The math kernel: torch's counter has no formula for the CPU flash kernel, which a
    # one-sequence batch without attention dropout would take.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = model(plain_batch(T, masked=masked))
        loss.backward()
    expected = T * size.flops_per_token(vocab, T, masked_fraction=masked / T)
    assert counter.get_total_flops() == expected


def test_heads_must_divide_width():
    with pytest.raises(ClaimsSearchError, match=r"width=100.*heads \(3\) must divide width"):
        ModelSize(width=100, depth=2, heads=3)


def test_from_name_with_overrides_and_unknown_names():
    size = ModelSize.from_name("11M", dropout=0.0, attn_dropout=0.1, max_len=256)
    assert (size.width, size.depth, size.dropout, size.attn_dropout, size.max_len) == (256, 10, 0.0, 0.1, 256)
    assert ModelSize(**size.to_dict()) == size
    with pytest.raises(ClaimsSearchError, match="unknown model size 'huge'"):
        ModelSize.from_name("huge")
    with pytest.raises(ClaimsSearchError, match="unknown fields"):
        ModelSize.from_name("debug", widht=8)
