"""The latent world: conditions, how they arise with age and with each other, what codes they
emit, and the hidden CKD risk function (the planted difficulty of ``ckd_incidence``).

The world is fixed (built from ``WORLD_SEED``, independent of the user's seed): the seed only
draws patients. That keeps the planted task identical across datasets of any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WORLD_SEED = 20_260_101
VISIT_SCALE = 0.35  # scales every chronic condition's monthly visit probability (event volume)


@dataclass(frozen=True)
class Condition:
    """One latent condition. Chronic: onset by a Gompertz hazard in age (``a`` = log yearly
    hazard at 50, ``b`` = log change per decade), first coded ``delay`` months (mean) after onset,
    then a monthly visit with probability ``visit`` emitting ``block`` codes (code, probability).
    Acute: episodes with a monthly rate (``a``, ``b`` as above, per year), each emitting ``block``.
    ``tau`` is the time-scale (months) of its burden in the CKD risk."""

    key: str
    dx: str
    kind: str  # "chronic" | "acute"
    a: float
    b: float
    tau: int
    block: tuple[tuple[str, float], ...] = ()
    parents: tuple[tuple[str, float], ...] = ()
    min_age: float = 0.0
    max_age: float = 120.0
    female_rr: float = 1.0
    delay: float = 6.0
    visit: float = 0.5
    suspected: float = 0.3
    only_sex: str | None = None  # "F" or "M": the other sex never has it
    undiagnosed: float = 0.4  # of those with onset before enrolment, still undiagnosed at its start


def _c(key, dx, a, b, tau, block=(), parents=(), **kw):
    return Condition(key, dx, "chronic", a, b, tau, tuple(block), tuple(parents), **kw)


def _a(key, dx, a, b, block=(), parents=(), **kw):
    return Condition(key, dx, "acute", a, b, 3, tuple(block), tuple(parents), **kw)


# In topological order: parents come first. Antihypertensive drugs in a block are emitted only
# after the patient's first antihypertensive (the treatment timeline in simulate.py), so the
# first one is exactly where tasks.py put it.
CONDITIONS: tuple[Condition, ...] = (
    _c("obesity", "E66.9", -5.8, 0.1, 48, min_age=10, visit=0.1, delay=24),
    _c("htn", "I10", -3.7, 0.55, 48, [("PROC//JP//160007410", 0.1)], [("obesity", 1.2)],
       min_age=20, delay=48, visit=0.6, undiagnosed=0.8),
    _c("t2d", "E11.9", -5.7, 0.45, 48, [("DRUG//ATC//A10BA02", 0.7), ("DRUG//ATC//A10BH01", 0.4),
       ("DRUG//ATC//A10BK01", 0.15), ("PROC//JP//160010010", 0.5)], [("obesity", 2.0)],
       min_age=25, delay=18, visit=0.7, female_rr=0.6),
    _c("dyslip", "E78.5", -4.8, 0.35, 48, [("DRUG//ATC//C10AA05", 0.5), ("DRUG//ATC//C10AA07", 0.3),
       ("PROC//JP//160156210", 0.3)], [("obesity", 1.0), ("t2d", 1.0)], min_age=20, visit=0.5),
    _c("hypothyroid", "E03.9", -7.5, 0.3, 48, [("DRUG//ATC//H03AA01", 0.8)], min_age=20,
       female_rr=4.0, visit=0.4),
    _c("ihd", "I25.1", -7.5, 0.75, 48, [("DRUG//ATC//B01AC06", 0.7), ("DRUG//ATC//C01DA02", 0.2),
       ("PROC//JP//160068410", 0.2)], [("htn", 1.0), ("t2d", 1.0), ("dyslip", 1.0)],
       min_age=35, female_rr=0.5, visit=0.6),
    _c("af", "I48.9", -8.0, 0.9, 12, [("DRUG//ATC//B01AF02", 0.7), ("PROC//JP//160068410", 0.3),
       ("DRUG//ATC//C07AB07", 0.4)],
       [("htn", 0.8), ("obesity", 0.5)], min_age=40, visit=0.6),
    _c("hf", "I50.9", -8.5, 0.9, 12, [("PROC//JP//160072110", 0.2), ("DRUG//ATC//C03CA01", 0.6),
       ("DRUG//ATC//C07AB07", 0.5)],
       [("htn", 1.5), ("ihd", 3.0), ("af", 2.0), ("t2d", 0.8)], min_age=40, visit=0.7, delay=2),
    _c("stroke", "I69.3", -8.5, 0.9, 48, [("DRUG//ATC//B01AC04", 0.6)],
       [("htn", 1.5), ("af", 2.0), ("t2d", 0.8)], min_age=40, visit=0.5, delay=1),
    _c("copd", "J44.9", -7.3, 0.7, 12, [("DRUG//ATC//R03BB04", 0.7), ("PROC//JP//160094510", 0.1)],
       min_age=40, female_rr=0.3, visit=0.5),
    _c("asthma", "J45.9", -6.7, -0.1, 12, [("DRUG//ATC//R03AK06", 0.6)], visit=0.3),
    _c("gout", "M10.9", -6.6, 0.3, 12, [("DRUG//ATC//M04AA01", 0.7)], [("obesity", 1.0), ("htn", 0.5)],
       min_age=20, female_rr=0.15, visit=0.4),
    _c("oa", "M17.9", -6.7, 0.7, 12, [("DRUG//ATC//M01AH01", 0.5), ("DRUG//ATC//M02AA15", 0.4)],
       [("obesity", 1.5)], min_age=40, female_rr=2.0, visit=0.4),
    _c("osteoporosis", "M81.0", -7.1, 0.9, 48, [("DRUG//ATC//M05BA04", 0.6),
       ("PROC//JP//160161310", 0.1)], min_age=45, female_rr=5.0, visit=0.4),
    _c("depression", "F32.9", -6.7, 0.0, 12, [("DRUG//ATC//N06AB06", 0.7),
       ("PROC//JP//180016110", 0.5)], min_age=12, female_rr=1.6, visit=0.5),
    _c("insomnia", "G47.0", -5.9, 0.3, 3, [("DRUG//ATC//N05CF02", 0.8)], [("depression", 2.0)],
       min_age=15, visit=0.4),
    _c("dementia", "G30.9", -10.2, 1.4, 48, [("DRUG//ATC//N06DA02", 0.7)], [("stroke", 1.5)],
       min_age=60, visit=0.5),
    _c("gerd", "K21.9", -5.9, 0.2, 3, [("DRUG//ATC//A02BC05", 0.7), ("PROC//JP//160095710", 0.05)],
       [("obesity", 0.8)], min_age=15, visit=0.3),
    _c("fatty_liver", "K76.0", -6.3, 0.1, 12, [], [("obesity", 2.5), ("t2d", 1.0)], min_age=20,
       visit=0.2),
    _c("bph", "N40", -6.5, 0.9, 12, [("DRUG//ATC//G04CA02", 0.7)], min_age=45, only_sex="M",
       visit=0.4),
    _c("cataract", "H25.9", -6.4, 1.0, 48, [("PROC//JP//150263410", 0.03)], [("t2d", 1.0)],
       min_age=50, visit=0.15),
    _c("glaucoma", "H40.1", -7.1, 0.6, 48, [("DRUG//ATC//S01ED01", 0.8)], min_age=40, visit=0.3),
    _c("atopic", "L20.9", -7.5, -0.6, 3, [("DRUG//ATC//D07AC01", 0.7)], visit=0.3),
    _c("rhinitis", "J30.4", -6.5, -0.3, 3, [("DRUG//ATC//R06AX27", 0.7)], visit=0.2),
    _c("gastric_cancer", "C16.9", -8.5, 0.9, 48, [("DRUG//ATC//L01BC53", 0.4),
       ("PROC//JP//160095710", 0.2)], min_age=40, female_rr=0.5, visit=0.6, delay=2),
    _c("colon_cancer", "C18.9", -8.7, 0.9, 48, [("PROC//JP//160093810", 0.2)], min_age=40,
       visit=0.6, delay=2),
    _c("anaemia", "D50.9", -7.2, 0.2, 12, [("DRUG//ATC//B03AA07", 0.6), ("PROC//JP//160000310", 0.4)],
       [("gastric_cancer", 2.0), ("colon_cancer", 2.0)], min_age=12, female_rr=3.0, visit=0.3),
    # Contraindications of ARB/CCB start (the antihypertensive_start rule).
    _c("hyperk", "E87.5", -7.2, 0.5, 12, [("DRUG//ATC//V03AE01", 0.4)], [("t2d", 1.5), ("hf", 1.5)],
       min_age=30, visit=0.2, delay=1),
    _a("angioedema", "T78.3", -7.2, 0.1, [("DRUG//ATC//H02AB06", 0.6)], min_age=20),
    _a("pregnancy", "Z33", -6.0, -1.5, [], min_age=18, max_age=48, only_sex="F"),
    # Acute episodes (short time-scale burdens).
    _a("pneumonia", "J18.9", -5.5, 0.6, [("DRUG//ATC//J01CR02", 0.7), ("PROC//JP//170000410", 0.6)],
       [("copd", 3.0), ("t2d", 0.6), ("hf", 1.0), ("dementia", 1.5)]),
    _a("uti", "N39.0", -4.8, 0.3, [("DRUG//ATC//J01MA12", 0.7), ("PROC//JP//160017810", 0.5)],
       [("t2d", 1.0), ("bph", 1.0)], female_rr=3.0),
    _a("influenza", "J10.1", -2.8, -0.2, [("DRUG//ATC//J05AH02", 0.8)]),
    _a("gastroenteritis", "A09.9", -3.0, -0.3, [("DRUG//ATC//A07FA01", 0.6)]),
    _a("zoster", "B02.9", -5.2, 0.4, [("DRUG//ATC//J05AB11", 0.9)], [("t2d", 0.5)]),
    _a("hip_fracture", "S72.0", -9.8, 1.4, [("PROC//JP//150253810", 0.8)],
       [("osteoporosis", 2.0), ("dementia", 1.5)], min_age=50, female_rr=2.0),
    _a("aki", "N17.9", -8.2, 0.8, [("PROC//JP//160007410", 0.8)], [("hf", 3.0), ("t2d", 1.0),
       ("htn", 0.5)], min_age=30),
    _a("cellulitis", "L03.9", -5.0, 0.3, [("DRUG//ATC//J01CA04", 0.7)], [("t2d", 1.0), ("obesity", 0.5)]),
    _a("hypoglycaemia", "E16.2", -9.0, 0.3, [], [("t2d", 60.0)], min_age=30),
    _a("concussion", "S06.0", -5.5, 0.2, [("PROC//JP//170000410", 0.3)], [("dementia", 1.0)]),
)
KEYS = tuple(c.key for c in CONDITIONS)
INDEX = {k: i for i, k in enumerate(KEYS)}
CONTRAINDICATIONS = ("hyperk", "angioedema", "pregnancy")
# CKD is latent too, but not a burden of its own risk: its first confirmed diagnosis is planted.
CKD = _c("ckd", "N18.3", -8.0, 0.8, 48, [("DRUG//ATC//A07BA01", 0.3), ("PROC//JP//160007410", 0.5)],
         [("htn", 1.5), ("t2d", 2.0), ("hf", 1.5)], min_age=30, delay=12, visit=0.7)


@dataclass
class World:
    """Fixed parameters of the synthetic world (picklable; passed to worker processes)."""

    frailty_sd: float = 0.5
    extra_parents: dict = field(default_factory=dict)  # child index -> [(parent index, rr)]
    ckd_linear: np.ndarray = None  # (K,) weights of standardised burdens
    ckd_pairs: np.ndarray = None  # (P, 2) condition index pairs
    ckd_pair_w: np.ndarray = None  # (P,)
    # Filled by calibrate(): standardisation of log-burdens and the logit's scale and intercept.
    burden_mu: np.ndarray = None
    burden_sd: np.ndarray = None
    lin_sd: float = 1.0
    pair_sd: float = 1.0
    ckd_scale: float = 5.0
    ckd_intercept: float = 0.0
    ckd_linear_share: float = 0.3  # of the logit's variance; the rest is pairwise interactions

    def ckd_logit(self, log_burden: np.ndarray) -> np.ndarray:
        """True CKD logit from log burdens (..., K): 30 % linear, 70 % pairwise interactions."""
        z = (log_burden - self.burden_mu) / self.burden_sd  # (..., K)
        lin = z @ self.ckd_linear / self.lin_sd
        pair = (z[..., self.ckd_pairs[:, 0]] * z[..., self.ckd_pairs[:, 1]]) @ self.ckd_pair_w
        pair = pair / self.pair_sd
        s = self.ckd_linear_share
        return self.ckd_scale * (np.sqrt(s) * lin + np.sqrt(1 - s) * pair) + self.ckd_intercept


def _raw_world() -> World:
    rng = np.random.default_rng(WORLD_SEED)
    k = len(CONDITIONS)
    # Hidden extra dependencies between conditions (beyond the clinical ones written above),
    # so that co-occurrence has structure a model can learn but nobody wrote down.
    extra: dict[int, list] = {}
    for _ in range(30):
        child = int(rng.integers(1, k))
        parent = int(rng.integers(0, child))
        extra.setdefault(child, []).append((parent, float(rng.uniform(0.5, 1.5))))
    pairs = set()
    while len(pairs) < 60:
        i, j = sorted(rng.choice(k, 2, replace=False).tolist())
        pairs.add((i, j))
    return World(
        extra_parents=extra,
        ckd_linear=rng.normal(0, 1, k),
        ckd_pairs=np.array(sorted(pairs), dtype=np.int64),
        ckd_pair_w=rng.normal(0, 1, len(pairs)),
        burden_mu=np.zeros(k), burden_sd=np.ones(k),
    )


