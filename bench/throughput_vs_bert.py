"""Training throughput in real (non-padding) tokens/s: our packed model vs padded BERT (not a test).

    .venv/bin/python bench/throughput_vs_bert.py [--sizes 64x2,128x4] [--steps 5] [--smoke]

Same machine, same run, same batches: each step draws patients until ``--batch-tokens`` real
tokens, masks 15 % of their events, and trains three models on exactly those patients:

- ``packed``: claims_search's encoder + masked-code head, patients packed several per row
  with a block-diagonal mask, logits only at masked positions;
- ``padded``: the same model, one patient per row padded to the batch's longest
  (isolates what packing buys);
- ``bert``: Hugging Face ``BertForMaskedLM`` (built from ``BertConfig``, no network, SDPA
  attention) of the same width/depth/heads/feed-forward, one patient per row padded, labels
  -100 outside the masked positions (its standard recipe).

Steps alternate between the models so that noise from other processes hits them alike.
Patient lengths (events, capped at ``--max-len``) come from a prepared cache's train split
(``--cache``) or, by default, a log-normal fit to claims histories: median 40 events, a long
tail (p90 ~190) cut at max_len: many short patients, a few long ones.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claims_search.batches import make_sequence, mask_sequence, pack  # noqa: E402
from claims_search.model import pretraining_model  # noqa: E402
from claims_search.sizes import REFERENCE_VOCAB, ModelSize  # noqa: E402


def lengths_from(args, rng: np.random.Generator, n: int) -> np.ndarray:
    if args.cache:
        from claims_search.cache import Cache

        cache = Cache.open(args.cache)
        pool = cache.subjects["length"].to_numpy()[cache.subject_indices("train")]
        return np.minimum(rng.choice(pool, n), args.max_len)
    return np.clip(rng.lognormal(np.log(40), 1.2, n).astype(int), 1, args.max_len)


def make_steps(args, rng):
    """Per step: the masked sequences (ours) and the same patients as padded BERT tensors."""
    steps = []
    for _ in range(args.steps + 1):  # + 1 warm-up step
        seqs, used = [], 0
        for n in lengths_from(args, rng, 4096):
            if used + n + 1 > args.batch_tokens:
                break
            tokens = rng.integers(4, REFERENCE_VOCAB, n)
            days = np.sort(rng.integers(17000, 19000, n))
            s = mask_sequence(make_sequence(tokens, days, 0, int(days[-1])), rng, 0.15, REFERENCE_VOCAB)
            seqs.append(s)
            used += len(s)
        steps.append(seqs)
    return steps


def bert_inputs(seqs):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    attention = torch.zeros(len(seqs), T, dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.from_numpy(s.tokens)
        attention[r, : len(s)] = 1
        labels[r, : len(s)] = torch.from_numpy(np.where(s.targets >= 0, s.targets, -100))
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def build(kind: str, size: ModelSize):
    torch.manual_seed(0)
    if kind == "bert":
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(vocab_size=REFERENCE_VOCAB, hidden_size=size.width,
                            num_hidden_layers=size.depth, num_attention_heads=size.heads,
                            intermediate_size=size.ff_dim, hidden_dropout_prob=size.dropout,
                            attention_probs_dropout_prob=size.dropout,
                            max_position_embeddings=size.max_len + 8, attn_implementation="sdpa")
        model = BertForMaskedLM(config)
    else:
        model = pretraining_model(size, REFERENCE_VOCAB)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(kind, model, opt, seqs, row_len: int) -> float:
    t0 = time.perf_counter()
    if kind == "bert":
        loss = model(**bert_inputs(seqs)).loss
    elif kind == "packed":
        loss, _ = model(pack(seqs, row_len=row_len))  # rows of max_len + 1, as in training
    else:  # padded: one patient per row
        loss, _ = model(padded(seqs))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def padded(seqs):
    """One patient per row, padded to the longest (built directly: FFD would pack them)."""
    from claims_search.batches import Batch

    T = -(-max(len(s) for s in seqs) // 8) * 8
    B = len(seqs)
    arr = {k: torch.zeros(B, T, dtype=torch.long) for k in ("tokens", "ages", "months", "visits")}
    seq = torch.full((B, T), -1, dtype=torch.long)
    targets = torch.full((B, T), -1, dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s)
        for k in arr:
            arr[k][r, :n] = torch.from_numpy(getattr(s, k))
        seq[r, :n] = r
        targets[r, :n] = torch.from_numpy(s.targets)
    return Batch(**arr, seq=seq, cls_index=torch.arange(B) * T, n_tokens=sum(len(s) for s in seqs),
                 targets=targets)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64x2,128x4", help="WIDTHxDEPTH,... (heads = width // 32)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--cache", help="take patient lengths from this prepared cache's train split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny run to check the script works")
    args = p.parse_args()
    if args.smoke:
        args.sizes, args.steps, args.batch_tokens, args.max_len = "32x1", 1, 600, 128
    rng = np.random.default_rng(args.seed)
    steps = make_steps(args, rng)
    real = [sum(len(s) for s in seqs) for seqs in steps[1:]]
    padded_pos = [len(seqs) * max(len(s) for s in seqs) for seqs in steps[1:]]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.steps} steps of <= {args.batch_tokens} real tokens, "
          f"max_len {args.max_len}, vocab {REFERENCE_VOCAB}")
    print(f"# patients/step {np.mean([len(s) for s in steps[1:]]):.0f}, "
          f"real/padded positions {sum(real) / sum(padded_pos):.0%}")
    print("| width x depth (heads) | params (ours) | packed tok/s | padded tok/s | BERT tok/s | packed / BERT |")
    print("|---|---|---|---|---|---|")
    for spec in args.sizes.split(","):
        w, d = (int(x) for x in spec.split("x"))
        size = ModelSize(width=w, depth=d, heads=max(1, w // 32), max_len=args.max_len)
        kinds = ["packed", "padded", "bert"]
        built = {k: build(k, size) for k in kinds}
        seconds = {k: 0.0 for k in kinds}
        for i, seqs in enumerate(steps):
            for k in kinds:  # interleaved: contention from other processes hits all three
                t = train_step(k, *built[k], seqs, args.max_len + 1)
                if i > 0:
                    seconds[k] += t
        rate = {k: sum(real) / seconds[k] for k in kinds}
        print(f"| {w} x {d} ({size.heads}) | {size.n_params(REFERENCE_VOCAB) / 1e6:.2f} M | "
              f"{rate['packed']:,.0f} | {rate['padded']:,.0f} | {rate['bert']:,.0f} | "
              f"{rate['packed'] / rate['bert']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
