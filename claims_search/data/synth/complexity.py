"""The complexity family: disease-like tasks ``complexity_k0`` .. ``complexity_k3`` on the same
patients, whose planted risk needs more capacity as ``k`` rises (docs/synthetic.md).

Off by default (``generate(..., complexity=True)``, ``claims-search synth --complexity-tasks``).
Each task has its own outcome code (``DX//SYNTH//COMPLEXITY_K<k>``), planted at checkups like
``ckd_incidence`` (a first outcome within 365 days, among patients without one so far) from a
risk that is a function of the patient's *observed* history at or before the checkup: the
confirmed diagnosis codes of the 40 latent conditions. The logit has four parts, each scaled to
unit variance on a fixed pilot population:

- ``L`` linear in log counts of a few common conditions in the last 365 days,
- ``P`` pairwise products of decayed burdens (the ``ckd_incidence`` mechanism),
- ``S`` order and timing: "first A, then first B within 180 days",
- ``T`` long-range history: which of A and B was diagnosed first, years since a first
  diagnosis, and a condition coded 2-5 years ago but not in the last year.

``k`` moves the logit's variance from ``L`` to ``S`` and ``T`` (``SHARES``); scale and intercept
are set per task so that the oracle AUROC and the prevalence stay about the same. The family
draws from its own random stream: turning it on leaves every other draw unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from claims_search.data.synth.codes import COMPLEXITY_TASKS as TASKS
from claims_search.data.synth.codes import OUTCOME_CODES
from claims_search.data.synth.people import INF, MONTH_START, N_CHECKUPS, N_MONTHS, People, month_of
from claims_search.data.synth.world import CONDITIONS

FAMILY_SEED = 20_261_010
PARTS = ("L", "P", "S", "T")
SHARES = {  # variance share of each part in the task's logit
    "complexity_k0": {"L": 1.0},
    "complexity_k1": {"L": 0.3, "P": 0.7},
    "complexity_k2": {"L": 0.15, "P": 0.35, "S": 0.5},
    "complexity_k3": {"L": 0.05, "P": 0.15, "S": 0.4, "T": 0.4},
}
TARGET_PREVALENCE = 0.15  # of eligible pilot checkups
TARGET_AUROC = 0.85  # oracle AUROC on the pilot, set through each task's logit scale
SEQ_DAYS = 180  # "A, then B within 6 months"
K = len(CONDITIONS)


@dataclass
class History:
    """Each condition's confirmed-diagnosis events at or before each checkup, (n, J, K): count in
    the last 365 days, decayed burden (the condition's tau), count 2-5 years before, years since
    the first one (0 if none) and the first one's day (INF if none by then)."""

    cnt365: np.ndarray
    burden: np.ndarray
    far: np.ndarray
    years: np.ndarray
    first: np.ndarray


def history(people: People, events: tuple, dx_ids: np.ndarray) -> History:
    """History at every checkup from a shard's events (row, day, us, code, ...); ``dx_ids`` (K,)
    are the conditions' diagnosis code ids. Events on the checkup day count (they are at or
    before the prediction time)."""
    row, day, _, code = events[:4]
    lookup = np.full(max(int(code.max(initial=0)), int(dx_ids.max())) + 1, -1)
    lookup[dx_ids] = np.arange(K)
    cond = lookup[code]
    keep = (cond >= 0) & (people.checkups[row, 0] < INF)  # only patients with a checkup need it
    row, day, cond = row[keep], day[keep], cond[keep]
    n, cell = people.n, row * K + cond
    first_ever = np.full(n * K, INF, dtype=np.int64)
    np.minimum.at(first_ever, cell, day)
    first_ever = first_ever.reshape(n, K)
    tau_days = np.array([c.tau for c in CONDITIONS])[cond] * 30.44
    shape = (n, N_CHECKUPS, K)
    h = History(*(np.zeros(shape, np.float32) for _ in range(4)), np.full(shape, INF, np.int64))
    for j in range(N_CHECKUPS):
        c = people.checkups[:, j]
        before = (c[row] - day).astype(np.float64)  # days before the checkup
        past = before >= 0

        def total(w):
            return np.bincount(cell, weights=w * past, minlength=n * K).reshape(n, K)

        h.cnt365[:, j] = total(before < 365)
        h.burden[:, j] = np.log1p(total(np.exp(-np.maximum(before, 0) / tau_days)))
        h.far[:, j] = total((before >= 730) & (before < 1826))
        seen = first_ever <= c[:, None]
        h.first[:, j] = np.where(seen, first_ever, INF)
        h.years[:, j] = np.where(seen, (c[:, None] - first_ever) / 365.25, 0)
    return h


@dataclass
class Family:
    """The family's fixed random structure (from FAMILY_SEED, conditions picked on the pilot)
    and its calibration."""

    lin: np.ndarray  # (8,) conditions of L
    pairs: np.ndarray  # (P, 2) condition pairs of P
    seq: np.ndarray  # (S, 2) ordered pairs (A, B) of S
    order: np.ndarray  # (O, 2) pairs of T's "A diagnosed before B"
    common: np.ndarray  # conditions of T's per-condition terms
    w: dict = field(default_factory=dict)  # part -> weights
    mu: dict = field(default_factory=dict)  # part -> feature means on the pilot
    sd: dict = field(default_factory=dict)
    part_sd: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)  # task -> logit scale
    intercept: dict = field(default_factory=dict)

    def features(self, h: History) -> dict[str, np.ndarray]:
        """Raw feature blocks (..., F) of each part; P's are the burdens its pairs multiply."""
        f = h.first
        a, b = f[..., self.seq[:, 0]], f[..., self.seq[:, 1]]
        seq = (a < b) & (b < INF) & (b - a <= SEQ_DAYS)
        oa, ob = f[..., self.order[:, 0]], f[..., self.order[:, 1]]
        order = np.where((oa < INF) & (ob < INF), np.sign(ob - oa), 0)
        cm = self.common
        lapsed = (h.far[..., cm] > 0) & (h.cnt365[..., cm] == 0)
        return {
            "L": np.log1p(h.cnt365[..., self.lin]),
            "P": h.burden,
            "S": seq.astype(np.float32),
            "T": np.concatenate([order, np.log1p(h.years[..., cm]), lapsed], -1).astype(np.float32),
        }

    def parts(self, h: History) -> dict[str, np.ndarray]:
        """Each part's value (...), unit variance on the pilot once calibrated."""
        out = {}
        for name, x in self.features(h).items():
            z = (x - self.mu.get(name, 0.0)) / self.sd.get(name, 1.0)
            if name == "P":
                z = z[..., self.pairs[:, 0]] * z[..., self.pairs[:, 1]]
            out[name] = z @ self.w[name] / self.part_sd.get(name, 1.0)
        return out

    def logits(self, h: History) -> dict[str, np.ndarray]:
        """Every task's true logit (n, J)."""
        parts = self.parts(h)
        return {t: self.scale[t] * sum(np.sqrt(s) * parts[p] for p, s in SHARES[t].items())
                + self.intercept[t] for t in TASKS}


def _pick(rng, pool: np.ndarray, m: int, ordered: bool) -> np.ndarray:
    out = set()
    while len(out) < m:
        i, j = rng.choice(pool, 2, replace=False).tolist()
        out.add((i, j) if ordered else tuple(sorted((i, j))))
    return np.array(sorted(out), dtype=np.int64)


def _cohort(logit: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (n, J) and each checkup's chance of being in the cohort (no outcome drawn
    at an earlier checkup): high-risk patients leave the cohort, so calibrate on who stays."""
    p = 1 / (1 + np.exp(-logit))
    stay = np.cumprod(np.where(valid, 1 - p, 1), axis=1)
    return p, valid * np.concatenate([np.ones((len(p), 1)), stay[:, :-1]], axis=1)


def _expected_auroc(p: np.ndarray, e: np.ndarray) -> float:
    """AUROC of p against labels drawn from p, in expectation, checkups weighted by e."""
    p, e = p.ravel(), e.ravel()
    order = np.argsort(p)
    pos, neg = (e * p)[order], (e * (1 - p))[order]
    neg_below = np.concatenate([[0], np.cumsum(neg)[:-1]])
    return float((pos * neg_below).sum() / (pos.sum() * neg.sum()))


def _intercept(logit: np.ndarray, valid: np.ndarray) -> float:
    lo, hi = -10.0, 5.0
    for _ in range(22):  # bisection for TARGET_PREVALENCE among the expected cohort (to 4e-6)
        mid = (lo + hi) / 2
        p, e = _cohort(logit + mid, valid)
        if (p * e).sum() / e.sum() > TARGET_PREVALENCE:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def calibrate(h: History, valid: np.ndarray) -> Family:
    """Build the family on a pilot history: conditions picked by how common they are at the
    pilot's checkups (``valid`` (n, J) marks real checkups), parts scaled to unit variance,
    then per task the scale (for TARGET_AUROC) and intercept (for TARGET_PREVALENCE), both
    among the checkups expected to stay in the cohort."""
    rng = np.random.default_rng(FAMILY_SEED)
    seen = (h.first[valid] < INF).mean(0)  # (K,) share of checkups with the diagnosis so far
    common = np.argsort(-seen, kind="stable")[:16]
    recent = np.argsort(-(h.cnt365[valid] > 0).mean(0), kind="stable")[:8]
    fam = Family(lin=np.sort(recent), pairs=_pick(rng, np.arange(K), 40, False),
                 seq=_pick(rng, common, 24, True), order=_pick(rng, common, 16, False),
                 common=np.sort(common))
    for name, x in fam.features(h).items():
        x = x[valid]
        fam.mu[name], fam.sd[name] = x.mean(0), np.maximum(x.std(0), 0.05)
        fam.w[name] = rng.normal(0, 1, len(fam.pairs) if name == "P" else x.shape[-1])
    parts = fam.parts(h)
    fam.part_sd = {name: float(v[valid].std()) for name, v in parts.items()}
    rows = valid.any(1)  # patients with a checkup: the others carry no weight
    parts, valid = {name: v[rows] for name, v in parts.items()}, valid[rows]
    for t in TASKS:
        base = sum(np.sqrt(s) * parts[p] / fam.part_sd[p] for p, s in SHARES[t].items())
        lo, hi = 0.1, 10.0
        for _ in range(18):  # bisection on the scale (to 4e-5); the intercept follows each scale
            mid = (lo + hi) / 2
            if _expected_auroc(*_cohort(mid * base + _intercept(mid * base, valid), valid)) > TARGET_AUROC:
                hi = mid
            else:
                lo = mid
        fam.scale[t] = (lo + hi) / 2
        fam.intercept[t] = _intercept(fam.scale[t] * base, valid)
    return fam


def dx_ids() -> np.ndarray:
    """Code ids of the 40 conditions' confirmed diagnoses (K,)."""
    from claims_search.data.synth.codes import catalogue

    cat = catalogue()
    return np.array([cat.id(f"DX//ICD10//{c.dx}") for c in CONDITIONS])


def plant(people: People, events: tuple, fam: Family, rng: np.random.Generator):
    """Draw every family task at the shard's checkups and write its outcome into the timeline.

    Returns the outcome events as (row, day, code id) arrays and ``{task: tasks.Oracle}``.
    Planting is ``ckd_incidence``'s (``tasks.plant_ckd``): nobody has the outcome beforehand, a
    label 1 puts the first outcome inside the window and before the next checkup. After the
    first one, the outcome is coded again at monthly follow-ups (p 0.3) while enrolled."""
    from claims_search.data.synth.codes import catalogue
    from claims_search.data.synth.tasks import plant_ckd

    cat = catalogue(complexity=True)
    logits = fam.logits(history(people, events, dx_ids()))
    out_rows, out_days, out_codes, oracle = [], [], [], {}
    for t in TASKS:
        first, oracle[t] = plant_ckd(people, np.full(people.n, INF, np.int64), logits[t], rng)
        rows0 = np.flatnonzero(first < INF)
        fm = month_of(first[rows0])
        follow = ((np.arange(N_MONTHS)[None, :] > fm[:, None]) & people.enrolled[rows0]
                  & (rng.random((rows0.size, N_MONTHS), dtype=np.float32) < 0.3))
        r, m = np.nonzero(follow)
        rows = np.concatenate([rows0, rows0[r]])
        out_rows.append(rows)
        out_days.append(np.concatenate([first[rows0], MONTH_START[m] + rng.integers(0, 28, m.size)]))
        out_codes.append(np.full(rows.size, cat.id(OUTCOME_CODES[t])))
    return (np.concatenate(out_rows), np.concatenate(out_days), np.concatenate(out_codes)), oracle
