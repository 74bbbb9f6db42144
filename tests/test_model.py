"""The claims Transformer: packing isolates patients, heads see only what they should."""

import numpy as np
import pytest
import torch

from claims_search.model.batches import make_sequence, mask_sequence, pack
from claims_search.model.model import (ClaimsEncoder, attention_mask, classification_model,
                                 pretraining_model)
from claims_search.model.sizes import ModelSize

SIZE = ModelSize(width=32, depth=2, heads=4, max_len=24)
VOCAB = 50

# Three short patient histories: (token, day) pairs; patient C is a single event.
PATIENTS = {
    "A": [(10, 100), (11, 100), (12, 130), (20, 400), (21, 401)],
    "B": [(30, 50), (31, 90), (32, 90), (33, 95), (34, 300), (35, 300), (36, 310), (37, 900)],
    "C": [(40, 7)],
}


def sequence(name: str, masked: bool = False):
    tokens, days = (np.array(x) for x in zip(*PATIENTS[name]))
    s = make_sequence(tokens, days, birth_days=-9000, ref_day=int(days[-1]) + 10)
    return mask_sequence(s, np.random.default_rng(len(name)), 0.3, VOCAB) if masked else s


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return ClaimsEncoder(SIZE, VOCAB).eval()  # eval: dropout off, outputs comparable


def hidden_per_sequence(encoder, batch) -> list[torch.Tensor]:
    h = encoder(batch)  # (B, T, W)
    return [h[batch.seq == s] for s in range(batch.n_sequences)]


def test_packed_patients_get_the_same_outputs_as_each_alone(encoder):
    names = ["A", "B", "C"]
    packed = pack([sequence(n) for n in names], row_len=SIZE.max_len + 1)
    assert packed.tokens.shape[0] == 1  # all three share one row
    together = hidden_per_sequence(encoder, packed)
    for name, h in zip(names, together):
        (alone,) = hidden_per_sequence(encoder, pack([sequence(name)], row_len=SIZE.max_len + 1))
        torch.testing.assert_close(h, alone, atol=1e-5, rtol=1e-5)


def test_changing_one_patient_does_not_move_its_row_neighbours(encoder):
    before = pack([sequence("A"), sequence("B")], row_len=32)
    after = pack([sequence("A"), sequence("B")], row_len=32)
    after.tokens[after.seq == 1] = 5  # rewrite patient B entirely
    a0, b0 = hidden_per_sequence(encoder, before)
    a1, b1 = hidden_per_sequence(encoder, after)
    torch.testing.assert_close(a0, a1)
    assert not torch.allclose(b0, b1)


def test_mask_is_block_diagonal_and_padding_sees_only_padding():
    seq = torch.tensor([[0, 0, 1, -1]])
    mask = attention_mask(seq)[0, 0]
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, False], [False, False, False, True]]


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_classification_gives_one_logit_per_patient_independent_of_packing(encoder, pool):
    model = classification_model(encoder, pool=pool).eval()
    seqs = [sequence(n) for n in "ABC"]
    for s, label in zip(seqs, [1.0, 0.0, 1.0]):
        s.label, s.sample_index = label, 0
    loss, logits = model(pack(seqs, row_len=SIZE.max_len + 1))
    assert logits.shape == (3,) and torch.isfinite(loss)
    alone = torch.cat([model(pack([s], row_len=SIZE.max_len + 1))[1] for s in seqs])
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def test_masked_code_head_scores_only_masked_positions_with_the_tied_embedding():
    torch.manual_seed(0)
    model = pretraining_model(SIZE, VOCAB)
    batch = pack([sequence("A", masked=True), sequence("B", masked=True)], row_len=SIZE.max_len + 1)
    loss, logits = model(batch)
    assert logits.shape == (int((batch.targets >= 0).sum()), VOCAB)
    assert model.head.weight is model.encoder.codes.weight
    assert loss.item() == pytest.approx(np.log(VOCAB), rel=0.1)  # untrained: near uniform
    loss.backward()
    assert model.encoder.codes.weight.grad is not None


def test_a_batch_of_whole_rows_runs_without_a_mask(encoder):
    s = make_sequence(np.arange(4, 11), np.arange(7), -1, 7)  # 8 positions with [CLS]
    batch = pack([s], row_len=8)
    assert batch.unpacked
    masked = pack([s], row_len=8)
    masked.unpacked = False  # force the block-diagonal path
    torch.testing.assert_close(encoder(batch), encoder(masked), atol=1e-5, rtol=1e-5)


def test_attention_dropout_is_its_own_setting_and_off_by_default():
    batch = pack([sequence("A"), sequence("B")], row_len=32)

    def twice(size):  # two training-mode passes; equal only when no dropout is drawn
        torch.manual_seed(0)
        model = ClaimsEncoder(size, VOCAB).train()
        return model(batch), model(batch)

    torch.testing.assert_close(*twice(ModelSize(width=32, depth=2, heads=4, max_len=24, dropout=0.0)))
    first, second = twice(ModelSize(width=32, depth=2, heads=4, max_len=24, dropout=0.0, attn_dropout=0.5))
    assert not torch.allclose(first, second)


def test_flex_attention_with_a_document_block_mask_equals_the_dense_mask():
    """The packed path a GPU takes (flex_attention, no T x T mask) gives the reference attention's
    outputs, here on CPU (eager flex: slow, but the same arithmetic). Flex has no backward on
    CPU: bench/gpu_check.py compares the gradients on CUDA."""
    batch = pack([sequence("A"), sequence("B"), sequence("C"), sequence("A")], row_len=16)
    assert not batch.unpacked
    outputs = {}
    for path in ("sdpa-mask", "flex"):
        torch.manual_seed(0)
        model = ClaimsEncoder(SIZE, VOCAB).eval()
        model.attention = path
        with torch.no_grad():
            outputs[path] = model(batch)[batch.seq >= 0]  # (N, W) real positions
        assert model.last_kernel == path
    torch.testing.assert_close(outputs["flex"], outputs["sdpa-mask"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("row_len, unpacked, device, expected", [
    (513, True, "cuda", "flash"),       # a batch of full crops: one sequence a row, no mask
    (520, False, "cuda", "flex"),       # packed rows on a GPU: document block mask
    (40, False, "cpu", "sdpa-mask"),    # packed rows on CPU: dense additive mask
    (513, True, "cpu", "sdpa"),
])
def test_attention_kernel_names_the_path_each_batch_takes(row_len, unpacked, device, expected):
    from claims_search.model.model import attention_kernel
    from claims_search.model.sizes import PRESETS

    assert attention_kernel(PRESETS["11M"], row_len, unpacked, device) == expected
    assert attention_kernel(PRESETS["11M"], row_len, False, device, attn_dropout=True) == "sdpa-mask"


def test_the_dense_mask_is_built_once_per_forward_in_the_compute_dtype(encoder, monkeypatch):
    from claims_search.model import model as M

    made = []
    real = M.additive_mask
    monkeypatch.setattr(M, "additive_mask", lambda seq, dtype: made.append(dtype) or real(seq, dtype))
    encoder(pack([sequence("A"), sequence("B")], row_len=32))
    assert made == [torch.float32]  # once for both blocks; bf16 under CUDA autocast
