"""Packed batches from a tokenized cache: masked-code pretraining crops and task samples.

Packing: a batch holds at most ``batch_tokens`` real tokens; its sequences ([CLS] + at most
``max_len`` events each) are placed first-fit-decreasing into rows, several patients per row
where they fit. ``Batch.seq`` gives each position's sequence (-1 for padding) and the model
turns it into a block-diagonal attention mask. Batches are grouped by length (a window of
batches' worth of sequences sorted, then cut at the budget), and a batch's rows are as long as
its longest sequence: attention costs T² per row, so short patients do not pay for long rows.

Masking recipe (BERT, Devlin et al. 2019): each event token is chosen with probability
``mask_prob`` (at least one per sequence, never [CLS]); a chosen token becomes [MASK] 80 % of
the time, a random code 10 %, itself 10 %; the model predicts the original code there.

Determinism and DDP: the subject (or sample) order of an epoch comes from ``(seed, epoch)``
and is the same on every rank; rank r takes every ``world_size``-th item from position r.
Crops and masks come from ``(seed, epoch, rank)``. So a batch stream is a pure function of
``(cache, split, settings, seed, epoch, rank, world_size)``.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from claims_search.errors import ClaimsSearchError
from claims_search.model.sizes import AGE_BUCKETS, MONTH_BUCKETS

# Reserved token ids of the cache's vocabulary (docs/design.md, vocab.parquet).
PAD, UNK, CLS, MASK = 0, 1, 2, 3
FIRST_CODE = 4
IGNORE = -1  # target of a position that is not predicted


@dataclass
class Batch:
    """One packed batch; B rows of T positions holding S sequences.

    tokens, ages, months, visits: int64 (B, T); seq: int64 (B, T), the sequence (0..S-1) of each
    position, -1 for padding. targets: int64 (B, T) original code at masked positions, -1
    elsewhere (pretraining only). cls_index: int64 (S,) flat position (row * T + column) of each
    sequence's [CLS]. labels: float32 (S,) and sample_index: int64 (S,) (row of
    ``cache.labels(task, split)``) for task batches. n_tokens: real (non-padding) positions.
    unpacked: True when every row is exactly one sequence with no padding (set by ``pack``).
    masked_index: int64 (M,) flat positions (row * T + column) where ``targets >= 0``, in
    row-major order, and masked_targets: int64 (M,) the targets there (pretraining only):
    computed on the host in ``pack`` so that the masked-code head gathers them on the device
    without a boolean index (which would wait for the device to learn M).
    """

    tokens: torch.Tensor
    ages: torch.Tensor
    months: torch.Tensor
    visits: torch.Tensor
    seq: torch.Tensor
    cls_index: torch.Tensor
    n_tokens: int
    targets: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    sample_index: torch.Tensor | None = None
    unpacked: bool = False  # every row is one whole sequence without padding: no mask needed
    masked_index: torch.Tensor | None = None
    masked_targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # On the host (pack, split); a batch of meta tensors (FLOP counting) has no values to index.
        if self.targets is not None and self.masked_index is None and self.targets.device.type != "meta":
            self.masked_index, self.masked_targets = _masked(self.targets)

    def to(self, device: torch.device | str) -> "Batch":
        """A copy with every tensor on ``device``; non-blocking, so a copy from pinned memory
        (``pin_memory``) overlaps the device's work."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory (what a non-blocking copy to CUDA needs)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = fn(value) if isinstance(value, torch.Tensor) else value
        return Batch(**moved)

    @property
    def n_sequences(self) -> int:
        return int(self.cls_index.shape[0])

    def split(self, parts: int) -> list[tuple["Batch", float]]:
        """The batch cut into at most ``parts`` batches of whole rows (gradient accumulation),
        each with its weight: its share of the batch's predictions (masked positions when the
        batch has targets, else sequences). Each part's mean loss times its weight sums to the
        whole batch's mean loss. Rows are independent (the mask is per row), so the parts'
        forward passes equal the whole batch's."""
        B, T = self.tokens.shape
        chunks = [c for c in np.array_split(np.arange(B), min(parts, B)) if len(c)]
        if self.targets is not None:
            total = int((self.targets >= 0).sum())
        else:
            total = self.n_sequences
        out = []
        for rows in chunks:
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            seq = self.seq[r0:r1]  # (b, T)
            old = torch.unique(seq[seq >= 0])  # sorted global ids of this part's sequences (S_p,)
            remap = torch.full((self.n_sequences + 1,), -1, dtype=seq.dtype)
            remap[old] = torch.arange(len(old), dtype=seq.dtype)
            part = Batch(
                tokens=self.tokens[r0:r1],
                ages=self.ages[r0:r1],
                months=self.months[r0:r1],
                visits=self.visits[r0:r1],
                seq=torch.where(seq >= 0, remap[seq.clamp(min=0)], seq),  # (b, T) ids 0..S_p-1
                cls_index=self.cls_index[old] - r0 * T,  # (S_p,) flat positions in the part
                n_tokens=int((seq >= 0).sum()),
                targets=None if self.targets is None else self.targets[r0:r1],
                labels=None if self.labels is None else self.labels[old],
                sample_index=None if self.sample_index is None else self.sample_index[old],
                unpacked=self.unpacked,
            )  # masked_index and masked_targets: recomputed for the part (__post_init__)
            n = int((part.targets >= 0).sum()) if part.targets is not None else part.n_sequences
            out.append((part, n / total if total else 1.0 / len(chunks)))
        return out


@dataclass
class Sequence:
    """One [CLS]-prefixed sequence before packing; all arrays (L,)."""

    tokens: np.ndarray
    ages: np.ndarray
    months: np.ndarray
    visits: np.ndarray
    targets: np.ndarray | None = None
    label: float | None = None
    sample_index: int | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def make_sequence(tokens: np.ndarray, days: np.ndarray, birth_days: int, ref_day: int) -> Sequence:
    """[CLS] + events, with age (years + 1; 0 = unknown birth), months before ``ref_day`` and
    visit index (1 + distinct days before; [CLS] is visit 0)."""
    days = np.asarray(days, dtype=np.int64)
    L = len(days) + 1
    all_days = np.empty(L, dtype=np.int64)  # (L,) [CLS] sits at the reference day
    all_days[0], all_days[1:] = ref_day, days
    # ufuncs rather than np.clip: this runs once per patient, and np.clip's wrapper costs more
    # than the arithmetic on a median patient.
    if birth_days == -1:
        ages = np.zeros(L, dtype=np.int64)
    else:
        years = np.floor((all_days - birth_days) / 365.25).astype(np.int64)
        ages = np.minimum(np.maximum(years + 1, 1), AGE_BUCKETS - 1)
    months = np.minimum(np.maximum((ref_day - all_days) // 30, 0), MONTH_BUCKETS - 1)
    visits = np.zeros(L, dtype=np.int64)
    if L > 1:
        visits[2:] = np.cumsum(days[1:] != days[:-1])
        visits[1:] += 1
    with_cls = np.empty(L, dtype=np.int64)
    with_cls[0], with_cls[1:] = CLS, tokens
    return Sequence(tokens=with_cls, ages=ages, months=months, visits=visits)


def mask_sequence(seq: Sequence, rng: np.random.Generator, mask_prob: float, vocab_size: int) -> Sequence:
    """Apply the BERT 80/10/10 recipe to the events of ``seq`` (see the module docstring)."""
    n = len(seq) - 1  # events, [CLS] excluded
    tokens = seq.tokens.copy()
    targets = np.full(len(seq), IGNORE, dtype=np.int64)
    if n == 0:
        return Sequence(tokens, seq.ages, seq.months, seq.visits, targets)
    chosen = rng.random(n) < mask_prob
    if not chosen.any():
        chosen[rng.integers(n)] = True
    where = np.flatnonzero(chosen) + 1  # (M,) positions in the sequence
    targets[where] = tokens[where]
    roll = rng.random(len(where))
    tokens[where[roll < 0.8]] = MASK
    swap = where[(roll >= 0.8) & (roll < 0.9)]
    tokens[swap] = rng.integers(FIRST_CODE, max(vocab_size, FIRST_CODE + 1), len(swap))
    return Sequence(tokens, seq.ages, seq.months, seq.visits, targets)


def pack(sequences: list[Sequence], row_len: int) -> Batch:
    """Pack sequences first-fit-decreasing into rows of ``row_len`` positions.

    Sequence s of the batch is ``sequences[s]`` (order kept for labels and sample indices).
    Rows are padded to the longest row, rounded up to a multiple of 8, except when every row
    is one sequence and they are all as long: then rows are exactly that long, with no
    padding and no mask (``unpacked``; a batch of full 513-position crops stays 513 wide, so
    attention may take its mask-free flash path).
    """
    if not sequences:
        raise ValueError("pack: no sequences")
    lengths = np.array([len(s) for s in sequences])
    if lengths.max() > row_len:
        raise ValueError(f"pack: a sequence of {lengths.max()} positions exceeds row_len {row_len}")
    fields = [f for f in FIELDS if f != "targets" or sequences[0].targets is not None]
    flat = {f: np.concatenate([getattr(x, f) for x in sequences]) for f in fields}
    batch = _pack_flat(lengths, flat, row_len)
    if sequences[0].label is not None:
        batch.labels = torch.tensor([s.label for s in sequences], dtype=torch.float32)
        batch.sample_index = torch.tensor([s.sample_index for s in sequences], dtype=torch.int64)
    return batch


# Per-position arrays of a sequence, and what a padding position holds in each.
FIELDS = {"tokens": PAD, "ages": 0, "months": 0, "visits": 0, "targets": IGNORE}


def _pack_flat(lengths: np.ndarray, flat: dict[str, np.ndarray], row_len: int) -> Batch:
    """``pack`` of sequences given as their lengths (S,) and, per field of ``FIELDS``, all
    their positions concatenated in sequence order (N,)."""
    row_of, at_of, fill = _first_fit_decreasing(lengths, row_len)
    B = len(fill)
    one_each = B == len(lengths) and int(fill.min()) == int(fill.max())
    T = int(fill.max()) if one_each else -(-int(fill.max()) // 8) * 8
    # Every sequence's positions scattered at once: flat destination of each of its positions.
    starts = row_of * T + at_of  # (S,) flat position of each sequence's [CLS]
    dest = _segments(starts, lengths)  # (N,)

    def scatter(values: np.ndarray, pad: int) -> torch.Tensor:
        out = np.full(B * T, pad, dtype=np.int64)
        out[dest] = values
        return torch.from_numpy(out.reshape(B, T))

    return Batch(
        **{f: scatter(v, FIELDS[f]) for f, v in flat.items()},
        seq=scatter(np.repeat(np.arange(len(lengths)), lengths), -1),
        cls_index=torch.from_numpy(starts.astype(np.int64)),
        n_tokens=int(lengths.sum()),
        unpacked=one_each,
    )


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of consecutive runs, concatenated: ``starts[i] .. starts[i] + lengths[i] - 1``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets, lengths) + np.arange(int(lengths.sum()))


def _first_fit_decreasing(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row (S,), column (S,), fill (B,))``: each sequence, longest first (stable), goes to
    the first row with room, else to a new row; its column is where that row was filled to."""
    longest_first = np.argsort(-lengths, kind="stable")
    if 2 * int(lengths.min()) > row_len:  # no two fit in a row (a length-grouped batch, mostly)
        row_of = np.empty(len(lengths), dtype=np.int64)
        row_of[longest_first] = np.arange(len(lengths))
        return row_of, np.zeros(len(lengths), dtype=np.int64), lengths[longest_first].astype(np.int64)
    fill = np.zeros(len(lengths), dtype=np.int64)  # at most one row per sequence
    row_of = np.zeros(len(lengths), dtype=np.int64)
    at_of = np.zeros(len(lengths), dtype=np.int64)
    B = 0
    for s in longest_first:
        n = lengths[s]
        fits = np.flatnonzero(fill[:B] <= row_len - n)
        r = int(fits[0]) if len(fits) else B
        B += r == B
        row_of[s], at_of[s] = r, fill[r]
        fill[r] += n
    return row_of, at_of, fill[:B]


def _masked(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions (M,) of ``targets >= 0`` in row-major order, and the targets there."""
    flat = targets.reshape(-1).cpu().numpy()  # a host tensor (pack, split): no copy
    index = np.flatnonzero(flat >= 0)  # (M,)
    return torch.from_numpy(index), torch.from_numpy(flat[index])


# Sequences sorted by length at a time, in batches' worth (transformers' Trainer sorts
# `group_by_length` mega-batches of 50 batches).
GROUP_WINDOW = 50


def grouped_batches(sequences: Iterator[Sequence], batch_tokens: int, row_len: int,
              rng: np.random.Generator | None = None) -> Iterator[Batch]:
    """Batches of at most ``batch_tokens`` real tokens, grouped by length.

    ``GROUP_WINDOW`` batches' worth of sequences at a time are sorted longest first, cut greedily
    at the budget, and each batch is packed into rows as long as its own longest sequence
    (rounded up to 8), not ``row_len``: attention costs T² per row, so a batch of 40-event
    patients pays for rows of 40, not of max_len + 1. ``rng`` shuffles each window's batches
    (training); without it they come longest first (evaluation: predictions carry their
    sample index). Within a batch, sequences keep the stream's order.
    """
    window: list[Sequence] = []
    used = 0
    for s in sequences:
        window.append(s)
        used += len(s)
        if used >= GROUP_WINDOW * batch_tokens:
            yield from _grouped(window, batch_tokens, row_len, rng)
            window, used = [], 0
    if window:
        yield from _grouped(window, batch_tokens, row_len, rng)


def _grouped(window: list[Sequence], batch_tokens: int, row_len: int,
             rng: np.random.Generator | None) -> Iterator[Batch]:
    cuts: list[list[int]] = []
    used = 0
    for i in sorted(range(len(window)), key=lambda i: -len(window[i])):  # stable
        if cuts and used + len(window[i]) <= batch_tokens:
            cuts[-1].append(i)
            used += len(window[i])
        else:
            cuts.append([i])
            used = len(window[i])
    for c in range(len(cuts)) if rng is None else rng.permutation(len(cuts)):
        members = [window[i] for i in sorted(cuts[c])]  # in the stream's order within a batch
        yield pack(members, own_rows(members, row_len))


def own_rows(sequences: list[Sequence], row_len: int) -> int:
    """The row length of a length-grouped batch: its longest sequence rounded up to 8, at most
    ``row_len``."""
    return min(row_len, -(-max(len(s) for s in sequences) // 8) * 8)


def _check(cache, batch_tokens: int, max_len: int | None) -> int:
    max_len = cache.max_len if max_len is None else max_len
    if max_len > cache.max_len:
        raise ClaimsSearchError(
            f"cache: max_len {max_len} is longer than the cache was built for ({cache.max_len})"
        )
    if batch_tokens < max_len + 1:
        raise ClaimsSearchError(
            f"batch_tokens ({batch_tokens}) must hold one full sequence (max_len + 1 = {max_len + 1})"
        )
    return max_len


def _shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    return order[rank::world_size]


def pretrain_batches(
    cache,
    split: str,
    *,
    batch_tokens: int,
    max_len: int | None = None,
    mask_prob: float = 0.15,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    draws: str = "patient",
    workers: int = 0,
) -> Iterator[Batch]:
    """One epoch of masked-code batches over the subjects of ``split`` (shuffled, sharded).

    Each subject longer than ``max_len`` events contributes a random crop of ``max_len``
    consecutive events; the reference day for the month embedding is the crop's last event.

    The epoch is cut into windows of ``GROUP_WINDOW`` batches' worth of sequences (as
    :func:`grouped_batches` cuts it), and each window is built at once, in numpy over all its
    positions. ``draws`` says where the crops and masks come from:

    - "patient": one generator for the epoch, drawn patient after patient (the stream of
      ``make_sequence`` + ``mask_sequence`` + ``grouped_batches``, batch for batch). The draws
      run here, patient by patient, and bound the pipeline's speed; ``workers`` processes
      build the windows from them.
    - "window": a generator per window (``(seed, epoch, rank, 3, window)``; its grouping from
      ``(seed, epoch, rank, 2, window)``), drawn for the whole window at once. The same recipe,
      another stream; windows are independent, so ``workers`` processes draw and build them.

    With ``workers`` the windows are built ahead in that many processes and come back in order:
    the stream does not depend on ``workers``.
    """
    max_len = _check(cache, batch_tokens, max_len)
    if draws not in ("patient", "window"):
        raise ValueError(f"pretrain_batches: draws must be 'patient' or 'window', got {draws!r}")
    lengths = cache.subjects["length"].to_numpy()
    order = np.asarray(cache.subject_indices(split), dtype=np.int64)
    order = order[lengths[order] > 0]
    order = _shard(np.random.default_rng([seed, epoch]).permutation(order), rank, world_size)
    windows = _windows(np.minimum(lengths[order], max_len) + 1, GROUP_WINDOW * batch_tokens)
    spec = (max_len, mask_prob, batch_tokens)

    def patient_draws() -> Iterator[tuple]:  # the draws, in order; the building can wait
        rng = np.random.default_rng([seed, epoch, rank, 1])
        grouping = np.random.default_rng([seed, epoch, rank, 2])
        for lo, hi in windows:
            plan = _draw_per_patient(lengths[order[lo:hi]], max_len, mask_prob, cache.vocab_size, rng)
            cuts = _cuts(np.minimum(lengths[order[lo:hi]], max_len) + 1, batch_tokens)
            yield order[lo:hi], plan, cuts, grouping.permutation(len(cuts))

    def window_draws() -> Iterator[tuple]:
        for w, (lo, hi) in enumerate(windows):
            yield order[lo:hi], (seed, epoch, rank, w)

    jobs = patient_draws() if draws == "patient" else window_draws()
    if not workers:
        return (b for job in jobs for b in _job(cache, job, spec))
    cache._events_read[order] = True  # read in the workers' own Cache objects
    return _in_processes(cache.path, jobs, spec, workers)


def _windows(positions: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each window: a window closes after the sequence that brings it to
    ``limit`` positions (the rule of :func:`grouped_batches`)."""
    out, lo, used = [], 0, 0
    for i, n in enumerate(positions.tolist()):
        used += n
        if used >= limit:
            out.append((lo, i + 1))
            lo, used = i + 1, 0
    if lo < len(positions):
        out.append((lo, len(positions)))
    return out


@dataclass
class _Plan:
    """A window's draws: crop ends (k,), -1 uncropped; masked events as flat event indices of
    the window (M,), each one's fate (0 [MASK], 1 random code, 2 kept) and the random codes."""

    ends: np.ndarray
    masked: np.ndarray
    fate: np.ndarray
    codes: np.ndarray


def _draw_per_patient(n: np.ndarray, max_len: int, mask_prob: float, vocab_size: int,
                      rng: np.random.Generator) -> _Plan:
    """The draws of ``pretrain_batches``'s crop and of :func:`mask_sequence`, call for call
    (this loop bounds the pipeline with these draws: only the generator's calls and what
    their sizes need stay in it)."""
    ends = np.full(len(n), -1, dtype=np.int64)
    masked, rolls, codes = [], [], []
    first = 0  # the window's flat index of this patient's first event
    high = max(vocab_size, FIRST_CODE + 1)
    uniform, integers, count = rng.random, rng.integers, np.count_nonzero
    for j, total in enumerate(n.tolist()):
        if total > max_len:
            ends[j] = int(integers(max_len, total + 1))
            m = max_len
        else:
            m = total
        where = (uniform(m) < mask_prob).nonzero()[0]
        if not len(where):
            where = np.array([integers(m)])
        roll = uniform(len(where))
        codes.append(integers(FIRST_CODE, high, count((roll >= 0.8) & (roll < 0.9))))
        masked.append(where + first)
        rolls.append(roll)
        first += m
    roll = np.concatenate(rolls)
    fate = np.where(roll < 0.8, 0, np.where(roll < 0.9, 1, 2))
    return _Plan(ends, np.concatenate(masked), fate, np.concatenate(codes).astype(np.int64))


def _draw_per_window(n: np.ndarray, max_len: int, mask_prob: float, vocab_size: int,
                     rng: np.random.Generator) -> _Plan:
    """The same recipe drawn for a whole window at once."""
    ends = np.full(len(n), -1, dtype=np.int64)
    long = n > max_len
    ends[long] = rng.integers(max_len, n[long] + 1)
    m = np.minimum(n, max_len)
    firsts = np.cumsum(m) - m
    chosen = rng.random(int(m.sum())) < mask_prob
    none = np.add.reduceat(chosen, firsts) == 0  # at least one masked event per patient
    chosen[firsts[none] + rng.integers(0, m[none])] = True
    masked = np.flatnonzero(chosen)
    roll = rng.random(len(masked))
    fate = np.where(roll < 0.8, 0, np.where(roll < 0.9, 1, 2))
    codes = rng.integers(FIRST_CODE, max(vocab_size, FIRST_CODE + 1), int((fate == 1).sum()))
    return _Plan(ends, masked, fate, codes.astype(np.int64))


def _job(cache, job: tuple, spec: tuple) -> Iterator[Batch]:
    """The batches of one window: ``(subjects, plan, cuts, perm)`` drawn patient by patient, or
    ``(subjects, (seed, epoch, rank, window))`` to draw here."""
    if len(job) == 4:
        return _build_window(cache, *job[:2], spec, *job[2:])
    subjects, (seed, epoch, rank, w) = job
    max_len, mask_prob, batch_tokens = spec
    n = cache._length[subjects].astype(np.int64)
    plan = _draw_per_window(n, max_len, mask_prob, cache.vocab_size, np.random.default_rng([seed, epoch, rank, 3, w]))
    cuts = _cuts(np.minimum(n, max_len) + 1, batch_tokens)
    perm = np.random.default_rng([seed, epoch, rank, 2, w]).permutation(len(cuts))
    return _build_window(cache, subjects, plan, spec, cuts, perm)


def _build_window(cache, subjects: np.ndarray, plan: _Plan, spec: tuple, cuts: list[list[int]],
                  perm: np.ndarray) -> Iterator[Batch]:
    """The window's sequences, in numpy over all positions at once (what ``cache.sequence``,
    ``make_sequence`` and the masking do per patient), packed batch by batch: the batches of
    ``cuts`` (:func:`_cuts`) in the order ``perm``, as :func:`grouped_batches` does."""
    max_len = spec[0]
    n = cache._length[subjects].astype(np.int64)
    off = cache._offset[subjects].astype(np.int64)
    cache._events_read[subjects] = True
    cropped = plan.ends > max_len  # cache.sequence keeps the static events in front then
    end = np.where(plan.ends >= 0, plan.ends, n)
    m = np.minimum(n, max_len)  # events per sequence
    n_static = np.where(cropped, np.minimum(np.minimum(cache._n_static[subjects], end), max_len), 0)
    tail = m - n_static
    starts = np.stack([off, off + end - tail], axis=1).reshape(-1)  # static run, then the tail run
    events = _segments(starts, np.stack([n_static, tail], axis=1).reshape(-1))  # (E,) into the cache
    tokens = np.asarray(cache.tokens[events], dtype=np.int64)
    days = np.asarray(cache.days[events], dtype=np.int64)

    L = m + 1  # positions with [CLS]
    first_pos = np.cumsum(L) - L  # (k,) each [CLS]
    first_ev = np.cumsum(m) - m  # (k,) each sequence's first event
    at = _segments(first_pos + 1, m)  # (E,) position of each event
    ref = np.repeat(days[first_ev + m - 1], L)  # (P,) the last event's day
    all_days = ref.copy()
    all_days[at] = days
    birth = np.repeat(cache.subjects["birth_days"].to_numpy()[subjects].astype(np.int64), L)
    years = np.floor((all_days - birth) / 365.25).astype(np.int64)
    ages = np.where(birth == -1, 0, np.minimum(np.maximum(years + 1, 1), AGE_BUCKETS - 1))
    months = np.minimum(np.maximum((ref - all_days) // 30, 0), MONTH_BUCKETS - 1)
    new_day = np.zeros(len(days), dtype=np.int64)
    new_day[1:] = days[1:] != days[:-1]
    new_day[first_ev] = 0
    climbed = np.cumsum(new_day)
    visits = np.zeros(int(L.sum()), dtype=np.int64)
    visits[at] = 1 + climbed - np.repeat(climbed[first_ev], m)
    flat_tokens = np.full(int(L.sum()), CLS, dtype=np.int64)
    flat_tokens[at] = tokens
    targets = np.full(int(L.sum()), IGNORE, dtype=np.int64)
    where = at[plan.masked]
    targets[where] = flat_tokens[where]
    flat_tokens[where[plan.fate == 0]] = MASK
    flat_tokens[where[plan.fate == 1]] = plan.codes
    flat = {"tokens": flat_tokens, "ages": ages, "months": months, "visits": visits, "targets": targets}

    for c in perm:
        members = np.sort(np.array(cuts[c]))
        index = _segments(first_pos[members], L[members])
        lens = L[members]
        yield _pack_flat(lens, {f: v[index] for f, v in flat.items()},
                         min(max_len + 1, -(-int(lens.max()) // 8) * 8))


def _cuts(positions: np.ndarray, batch_tokens: int) -> list[list[int]]:
    """A window's batches, as :func:`_grouped` cuts them: longest first (stable), cut greedily
    at the budget."""
    cuts: list[list[int]] = []
    used = 0
    for i in np.argsort(-positions, kind="stable").tolist():
        n = int(positions[i])
        if cuts and used + n <= batch_tokens:
            cuts[-1].append(i)
            used += n
        else:
            cuts.append([i])
            used = n
    return cuts


_WORKER_CACHE = None


def _worker_init(path) -> None:
    global _WORKER_CACHE
    import torch as _torch

    from claims_search.data.cache import Cache

    _torch.set_num_threads(1)
    _WORKER_CACHE = Cache(path)


# What a worker sends back per batch: its tensors as numpy arrays in the narrowest dtype that
# holds them (a third of the bytes through the pipe), widened to int64 again on arrival.
_NARROW = {"tokens": np.int32, "ages": np.int16, "months": np.int16, "visits": np.int32, "seq": np.int32,
           "targets": np.int32, "masked_index": np.int32, "masked_targets": np.int32, "cls_index": np.int64}


def _worker_job(job, spec) -> list[dict]:
    out = []
    for batch in _job(_WORKER_CACHE, job, spec):
        sent = {f: getattr(batch, f).numpy().astype(dt) for f, dt in _NARROW.items()}
        sent.update(n_tokens=batch.n_tokens, unpacked=batch.unpacked)
        out.append(sent)
    return out


def _widen(sent: dict) -> Batch:
    arrays = {f: torch.from_numpy(sent[f].astype(np.int64)) for f in _NARROW}
    return Batch(**arrays, n_tokens=sent["n_tokens"], unpacked=sent["unpacked"])


# Worker pools by (cache path, processes): started once (spawning imports torch, seconds) and
# kept for the following epochs; shut down at exit or by shutdown_workers().
_POOLS: dict = {}


def _pool(path, workers: int):
    import atexit
    from concurrent.futures import ProcessPoolExecutor

    import multiprocessing

    key = (str(path), workers)
    if key not in _POOLS:
        if not _POOLS:
            atexit.register(shutdown_workers)
        _POOLS[key] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_worker_init, initargs=(path,))
    return _POOLS[key]


def shutdown_workers() -> None:
    """Stop the processes that build windows (``pretrain_batches(workers=...)``)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


def _in_processes(path, jobs: list, spec: tuple, workers: int) -> Iterator[Batch]:
    """Windows built by ``workers`` processes, up to two each ahead, yielded in order. Tensors
    come back as narrow numpy arrays (``_NARROW``)."""
    pool = _pool(path, workers)
    pending = []
    try:
        for job in jobs:
            pending.append(pool.submit(_worker_job, job, spec))
            if len(pending) > 2 * workers:
                yield from map(_widen, pending.pop(0).result())
        while pending:
            yield from map(_widen, pending.pop(0).result())
    finally:
        for future in pending:  # an epoch left early: drop what was built ahead
            future.cancel()


def task_batches(
    cache,
    task: str,
    split: str,
    *,
    batch_tokens: int,
    max_len: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    rows: np.ndarray | None = None,
) -> Iterator[Batch]:
    """One epoch of labelled samples of ``task`` in ``split``: the last ``max_len`` events at or
    before each prediction time, its label, and its row in ``cache.labels(task, split)``
    (``Batch.sample_index``) so that metrics can bootstrap over patients downstream.
    Shuffled only when ``shuffle`` (training); evaluation keeps the labels' order. ``rows``
    keeps only those rows of the split (e.g. one side of :func:`carve_out`).
    """
    max_len = _check(cache, batch_tokens, max_len)
    labels = cache.labels(task, split)
    subject_idx = labels["subject_idx"].to_numpy().astype(np.int64)
    ends = labels["end"].to_numpy().astype(np.int64)
    values = labels["label"].to_numpy().astype(np.float32)
    ref_days = labels["prediction_time"].to_numpy().astype("datetime64[D]").astype(np.int64)
    births = cache.subjects["birth_days"].to_numpy()
    order = np.arange(len(labels)) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(order)
    order = _shard(order, rank, world_size)

    def sequences() -> Iterator[Sequence]:
        for k in order:
            i = int(subject_idx[k])
            tokens, days = cache.sequence(i, end=int(ends[k]), max_len=max_len)
            s = make_sequence(tokens, days, int(births[i]), int(ref_days[k]))
            s.label, s.sample_index = float(values[k]), int(k)
            yield s

    grouping = np.random.default_rng([seed, epoch, rank, 2]) if shuffle else None
    return grouped_batches(sequences(), batch_tokens, max_len + 1, grouping)


class Prefetched:
    """``items`` iterated ``depth`` ahead in a background thread, in the same order.

    The producer thread runs the whole batch pipeline (reading the cache, masking, packing, and
    ``prepare``: e.g. splitting for gradient accumulation and pinning host memory) while the
    loop's thread drives the device; numpy and torch release the GIL in their copies, so the
    two overlap on a worker's CPUs. An exception in the producer is raised in the consumer at
    the item where it happened. ``close()`` (or leaving the ``with`` block, e.g. on ``break``)
    stops the producer and joins it: no thread outlives the loop that used it.
    """

    def __init__(self, items: Iterable, depth: int = 4, prepare: Callable | None = None):
        if depth < 1:
            raise ValueError(f"Prefetched: depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(items, prepare),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterable, prepare: Callable | None) -> None:
        it = iter(items)
        try:
            for x in it:
                if not self._put(("item", prepare(x) if prepare else x)):
                    return  # closed by the consumer
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put(("error", e))
        finally:
            if hasattr(it, "close"):
                it.close()  # a generator's own clean-up (e.g. windows built ahead) runs here

    def __iter__(self) -> "Prefetched":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        self._thread.join()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (it may be blocked on a full queue) and wait for it to end."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> "Prefetched":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def labelled_rows(labels, n_patients: int | None, seed: int) -> np.ndarray:
    """Row positions of ``labels`` that belong to ``n_patients`` patients drawn at random
    (every row of each drawn patient; all rows when ``n_patients`` is None or covers them all)."""
    groups = labels["subject_idx"].to_numpy()
    patients = np.unique(groups)
    if n_patients is None or n_patients >= len(patients):
        return np.arange(len(labels))
    chosen = np.random.default_rng([seed, 7]).choice(patients, size=n_patients, replace=False)
    return np.flatnonzero(np.isin(groups, chosen))


def carve_out(labels, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a task's train rows into (fit, stop) row positions for early stopping: about 1/7
    of the patients go to "stop", stratified by label, never one patient on both sides. The
    tuning split is never used for it: it stays clean for comparing sizes."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = labels["label"].to_numpy().astype(bool)
    groups = labels["subject_idx"].to_numpy()
    folds = StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=seed)
    fit, stop = next(folds.split(np.zeros(len(y)), y, groups))
    return fit, stop


def trained_on(labels, rows=None) -> dict:
    """``{"samples", "patients"}``: how many rows of a task's train ``labels`` a run learned from
    (``rows``, default all: the fitted rows and the early-stopping carve-out), and of how many
    patients. Counts only, never ids."""
    idx = labels["subject_idx"].to_numpy()
    if rows is not None:
        idx = idx[rows]
    return {"samples": int(len(idx)), "patients": int(len(set(idx.tolist())))}
