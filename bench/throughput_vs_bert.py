"""Training throughput in real (non-padding) tokens/s: our packed model vs BERT, padded and length-grouped (not a test).

    .venv/bin/python bench/throughput_vs_bert.py [--sizes 64x2,128x4] [--steps 5] [--repeats 3]
        [--variants packed,padded,bert,grouped] [--json out.json] [--quick | --smoke]

Same machine, same run, same patients: steps draw patients until ``--batch-tokens`` real
tokens, mask 15 % of their events, and train five models:

- ``packed``: claims_search's encoder + masked-code head as training feeds it
  (``batches.grouped_batches``): length-grouped batches, each packed first-fit-decreasing into rows
  as long as its longest patient with a block-diagonal mask, logits only at masked positions;
- ``rows513``: the same model on ungrouped steps packed into rows of max_len + 1 (what
  training did before length grouping);
- ``padded``: the same model, one patient per row padded to the batch's longest
  (isolates what packing buys);
- ``bert``: Hugging Face ``BertForMaskedLM`` (built from ``BertConfig``, no network, SDPA
  attention) of the same width/depth/heads/feed-forward, one patient per row padded, labels
  -100 outside the masked positions (its standard recipe);
- ``grouped``: the same BERT fed length-grouped batches, as transformers' Trainer does with
  ``group_by_length=True`` (``trainer_pt_utils.get_length_grouped_indices``): the patients of
  a mega-batch of ``--mega-batch`` (default 50, the Trainer's) steps are sorted by length,
  longest first, and cut into batches of at most ``--batch-tokens`` real tokens (the same
  budget as every other variant), each padded to its own longest patient only.

``rows513``, ``padded`` and ``bert`` train on the same ``--steps`` steps (the first of the
mega-batch). ``packed`` and ``grouped`` train on the same ``--steps`` of the mega-batch's
length-sorted batches, picked evenly across the sorted order (short, middle and long buckets
alike), so that their timed tokens have the mega-batch's length mix; with ``--steps`` equal to
``--mega-batch`` every variant trains on exactly the same patients. Throughput = real tokens /
seconds.

Each of ``--repeats`` repeats trains every timed batch once; steps are interleaved across the
variants (packed, padded, bert, grouped, packed, ...) so that noise from other processes hits
them alike. One untimed warm-up step per variant first. The table gives the median over
repeats and the ratios' median (min–max) over repeats, in wall time; a comment line gives the
same ratios in CPU time of this process (less sensitive to other processes' load).

Patient lengths (events, capped at ``--max-len``) come from a prepared cache's train split
(``--cache``) or, by default, a log-normal fit to claims histories: median 40 events, a long
tail (p90 ~190) cut at max_len: many short patients, a few long ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claims_search.model.batches import make_sequence, mask_sequence, own_rows, pack  # noqa: E402
from claims_search.model.model import pretraining_model  # noqa: E402
from claims_search.model.sizes import REFERENCE_VOCAB, ModelSize  # noqa: E402

KINDS = ("packed", "rows513", "padded", "bert", "grouped")
SMOKE = dict(sizes="32x1", steps=1, batch_tokens=600, max_len=128, repeats=1, mega_batch=10)
QUICK = dict(sizes="32x1,64x2", steps=1, batch_tokens=1024, max_len=128, repeats=3, mega_batch=20)


def lengths_from(args, rng: np.random.Generator, n: int) -> np.ndarray:
    if args.cache:
        from claims_search.data.cache import Cache

        cache = Cache.open(args.cache)
        pool = cache.subjects["length"].to_numpy()[cache.subject_indices("train")]
        return np.minimum(rng.choice(pool, n), args.max_len)
    return np.clip(rng.lognormal(np.log(40), 1.2, n).astype(int), 1, args.max_len)


def make_steps(args, rng, n_steps: int):
    """``n_steps`` + 1 (warm-up) steps, each the masked sequences of <= batch_tokens real tokens."""
    steps = []
    for _ in range(n_steps + 1):  # + 1 warm-up step
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


def length_grouped(steps, batch_tokens: int):
    """The Trainer's ``group_by_length`` on one mega-batch, with a real-token budget per batch.

    All patients of ``steps`` sorted by length, longest first (a stable sort of an already
    random order, as ``get_length_grouped_indices`` does), then cut greedily into batches of at
    most ``batch_tokens`` real tokens. The last, partial batch is dropped (the Trainer's
    ``dataloader_drop_last`` analogue): it would be the shortest and least full.
    """
    pool = sorted((s for seqs in steps for s in seqs), key=len, reverse=True)
    batches, current, used = [], [], 0
    for s in pool:
        if current and used + len(s) > batch_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(s)
        used += len(s)
    return batches


def evenly(batches, k: int):
    """``k`` batches spread evenly over the sorted order (midpoints of k equal slices)."""
    n = len(batches)
    return [batches[min(n - 1, int((j + 0.5) * n / k))] for j in range(k)]


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
    if kind in ("bert", "grouped"):
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(vocab_size=REFERENCE_VOCAB, hidden_size=size.width,
                            num_hidden_layers=size.depth, num_attention_heads=size.heads,
                            intermediate_size=size.ff_dim, hidden_dropout_prob=size.dropout,
                            attention_probs_dropout_prob=size.attn_dropout,
                            max_position_embeddings=size.max_len + 8, attn_implementation="sdpa")
        model = BertForMaskedLM(config)
    else:
        model = pretraining_model(size, REFERENCE_VOCAB)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(kind, model, opt, seqs, row_len: int) -> tuple[float, float]:
    """One optimizer step; (wall seconds, CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if kind in ("bert", "grouped"):
        loss = model(**bert_inputs(seqs)).loss
    elif kind == "packed":  # as training packs a length-grouped batch
        loss, _ = model(pack(seqs, row_len=own_rows(seqs, row_len)))
    elif kind == "rows513":
        loss, _ = model(pack(seqs, row_len=row_len))  # rows of max_len + 1
    else:  # padded: one patient per row
        loss, _ = model(padded(seqs))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def padded(seqs):
    """One patient per row, padded to the longest (built directly: FFD would pack them)."""
    from claims_search.model.batches import Batch

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


def real_fraction(kind: str, batches, row_len: int) -> float:
    """Real tokens / positions the model computes on, over ``batches``."""
    real = sum(len(s) for seqs in batches for s in seqs)
    if kind in ("packed", "rows513"):
        rows = (lambda seqs: own_rows(seqs, row_len)) if kind == "packed" else (lambda seqs: row_len)
        positions = sum(int(np.prod(pack(seqs, row_len=rows(seqs)).tokens.shape)) for seqs in batches)
    elif kind == "padded":
        positions = sum(len(seqs) * (-(-max(len(s) for s in seqs) // 8) * 8) for seqs in batches)
    else:
        positions = sum(len(seqs) * max(len(s) for s in seqs) for seqs in batches)
    return real / positions


def spread(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64x2,128x4", help="WIDTHxDEPTH,... (heads = width // 32)")
    p.add_argument("--steps", type=int, default=5, help="timed batches per variant per repeat")
    p.add_argument("--repeats", type=int, default=3, help="times each variant trains its timed batches")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.1,
                   help="dropout of every variant on embeddings and residual branches (BERT's hidden dropout)")
    p.add_argument("--attn-dropout", type=float, default=0.0,
                   help="dropout of every variant on the attention probabilities (ours: 0 by default; "
                        "BERT's default is 0.1)")
    p.add_argument("--mega-batch", type=int, default=50,
                   help="steps per length-grouping mega-batch (transformers' Trainer: 50)")
    p.add_argument("--variants", default=",".join(KINDS),
                   help="subset of packed,rows513,padded,bert,grouped (packed is always run: ratios are to it)")
    p.add_argument("--cache", help="take patient lengths from this prepared cache's train split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write every figure (per repeat) to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="about a minute: 32x1 and 64x2, 1 step of 1024 tokens, max_len 128, 3 repeats")
    p.add_argument("--smoke", action="store_true", help="tiny run to check the script works")
    args = p.parse_args(argv)
    if args.smoke or args.quick:  # presets; flags given explicitly still win
        p.set_defaults(**(SMOKE if args.smoke else QUICK))
        args = p.parse_args(argv)
    kinds = [k for k in KINDS if k in args.variants.split(",") or k == "packed"]
    unknown = set(args.variants.split(",")) - set(KINDS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if args.steps < 1 or args.repeats < 1 or args.mega_batch < 1:
        p.error("--steps, --repeats and --mega-batch must be >= 1")
    args.kinds = kinds
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    steps = make_steps(args, rng, max(args.steps, args.mega_batch))  # steps[0]: warm-up
    timed = {k: steps[1: 1 + args.steps] for k in ("rows513", "padded", "bert")}
    groups = length_grouped(steps[1: 1 + max(args.steps, args.mega_batch)], args.batch_tokens)
    timed["grouped"] = timed["packed"] = groups if len(groups) <= args.steps else evenly(groups, args.steps)
    row_len = args.max_len + 1
    real = {k: sum(len(s) for seqs in b for s in seqs) for k, b in timed.items()}
    fraction = {k: real_fraction(k, timed[k], row_len) for k in args.kinds}
    report = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "settings": {k: getattr(args, k) for k in ("sizes", "steps", "repeats", "batch_tokens",
                                                     "max_len", "mega_batch", "dropout", "attn_dropout", "seed",
                                                     "cache")},
        "variants": args.kinds, "patients_per_step": float(np.mean([len(s) for s in steps[1: 1 + args.steps]])),
        "real_tokens_per_repeat": {k: real[k] for k in args.kinds},
        "real_fraction": fraction,
        "grouped_megabatch": {"patients": sum(len(b) for b in groups), "batches": len(groups),
                              "real_fraction": real_fraction("grouped", groups, row_len)},
        "sizes": [],
    }
    print(f"# {report['machine']}, torch {torch.__version__}, {report['threads']} threads; "
          f"{args.repeats} repeats x {args.steps} steps of <= {args.batch_tokens} real tokens, "
          f"max_len {args.max_len}, vocab {REFERENCE_VOCAB}, dropout {args.dropout}, "
          f"attention dropout {args.attn_dropout}")
    print(f"# patients/step {report['patients_per_step']:.0f}; real / computed positions: "
          + ", ".join(f"{k} {fraction[k]:.0%}" for k in args.kinds)
          + (f" (grouped: whole mega-batch of {args.mega_batch} steps "
             f"{report['grouped_megabatch']['real_fraction']:.0%}, {len(groups)} batches)"
             if "grouped" in args.kinds else ""))
    others = [k for k in args.kinds if k != "packed"]
    header = {"packed": "packed tok/s", "rows513": "ungrouped rows tok/s", "padded": "padded tok/s",
              "bert": "BERT padded tok/s", "grouped": "BERT grouped tok/s"}
    rows = []
    for spec in args.sizes.split(","):
        w, d = (int(x) for x in spec.split("x"))
        size = ModelSize(width=w, depth=d, heads=max(1, w // 32), max_len=args.max_len, dropout=args.dropout,
                         attn_dropout=args.attn_dropout)
        built = {k: build(k, size) for k in args.kinds}
        load_before = os.getloadavg()
        for k in args.kinds:  # warm-up, untimed
            train_step(k, *built[k], steps[0], row_len)
        seconds = {k: [0.0] * args.repeats for k in args.kinds}
        cpu = {k: [0.0] * args.repeats for k in args.kinds}
        for r in range(args.repeats):
            for i in range(args.steps):
                for k in args.kinds:  # interleaved: contention from other processes hits all
                    if i < len(timed[k]):
                        wall, used = train_step(k, *built[k], timed[k][i], row_len)
                        seconds[k][r] += wall
                        cpu[k][r] += used
        load_after = os.getloadavg()
        rate = {k: [real[k] / s for s in seconds[k]] for k in args.kinds}
        ratio = {k: spread([p / o for p, o in zip(rate["packed"], rate[k])]) for k in others}
        cpu_rate = {k: [real[k] / s for s in cpu[k]] for k in args.kinds}  # tokens per CPU-second
        cpu_ratio = {k: spread([p / o for p, o in zip(cpu_rate["packed"], cpu_rate[k])]) for k in others}
        result = {"size": spec, "width": w, "depth": d, "heads": size.heads,
                  "params_ours": size.n_params(REFERENCE_VOCAB), "seconds": seconds,
                  "rate": {k: spread(v) for k, v in rate.items()}, "rate_per_repeat": rate,
                  "ratio": ratio, "cpu_seconds": cpu, "cpu_ratio": cpu_ratio, "loadavg_before": load_before, "loadavg_after": load_after}
        report["sizes"].append(result)
        rows.append(result)
        print(f"# {spec}: 1/5/15-min load average {', '.join(f'{x:.1f}' for x in load_before)} before, "
              f"{', '.join(f'{x:.1f}' for x in load_after)} after", flush=True)
    print("| width x depth (heads) | params (ours) | "
          + " | ".join(header[k] for k in args.kinds) + " | "
          + " | ".join(f"packed / {header[k].removesuffix(' tok/s')}" for k in others) + " |")
    print("|---" * (2 + len(args.kinds) + len(others)) + "|")
    for res in rows:
        print(f"| {res['width']} x {res['depth']} ({res['heads']}) | {res['params_ours'] / 1e6:.2f} M | "
              + " | ".join(f"{res['rate'][k]['median']:,.0f}" for k in args.kinds) + " | "
              + " | ".join(f"**{res['ratio'][k]['median']:.2f}x** ({res['ratio'][k]['min']:.2f}–"
                           f"{res['ratio'][k]['max']:.2f})" for k in others) + " |")
    print(f"# tok/s: median of {args.repeats} repeats; ratios: median (min–max) of per-repeat ratios")
    for res in rows:  # CPU time is less sensitive than wall time to other processes' load
        print(f"# {res['size']}, same ratios in real tokens per CPU-second of this process: "
              + ", ".join(f"packed / {k} {res['cpu_ratio'][k]['median']:.2f}x ({res['cpu_ratio'][k]['min']:.2f}–"
                          f"{res['cpu_ratio'][k]['max']:.2f})" for k in others))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
