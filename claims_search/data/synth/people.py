"""Who the patients are: sex, birth date, enrolment spans (with gaps and insurer changes) and
the yearly specific health checkup schedule. All arrays are per patient, vectorised.

Time is in whole days since ``START`` (2015-01-01); month ``m`` starts on ``MONTH_START[m]``.
``INF`` marks "never".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

START = np.datetime64("2015-01-01", "D")
N_MONTHS = 96  # 2015-01 .. 2022-12
MONTH_START = (np.arange("2015-01", "2023-02", dtype="datetime64[M]").astype("datetime64[D]")
               - START).astype(np.int64)  # (N_MONTHS + 1,)
END_DAY = int(MONTH_START[N_MONTHS])  # first day after the data
INF = 10**9
N_CHECKUPS = N_MONTHS // 12  # at most one a year

# Age at START in 5-year bands 0-4 .. 95-99: roughly Japan's population pyramid.
_AGE_W = np.array([3.6, 3.9, 4.2, 4.6, 4.8, 5.0, 5.6, 6.2, 7.2, 7.6, 6.6, 6.2, 6.6, 7.8, 6.4,
                   5.0, 4.0, 2.8, 1.4, 0.5])
_INSURER_P = np.array([0.35, 0.35, 0.30, 0.0])  # KENPO, KYOKAI, KOKUHO, KOKI (see codes.py)
_CHECKUP_P = np.array([0.70, 0.55, 0.40, 0.0])  # participation in the checkup, by insurer


def month_of(day: np.ndarray) -> np.ndarray:
    """Month index of each day (-1 before START, N_MONTHS or more after the data, INF -> big)."""
    return np.searchsorted(MONTH_START, day, side="right") - 1


@dataclass
class People:
    """One shard's patients. Months: enrolled [es, ee) minus the gap [gs, ge)."""

    female: np.ndarray  # (n,) bool
    birth: np.ndarray  # (n,) int64 day
    frailty: np.ndarray  # (n,) float multiplier of every hazard
    es: np.ndarray  # (n,) int64 months
    ee: np.ndarray
    gs: np.ndarray  # INF when no gap
    ge: np.ndarray
    insurer: np.ndarray  # (n,) int insurer kind at enrolment
    insurer2: np.ndarray  # (n,) int insurer kind after the gap
    enrolled: np.ndarray  # (n, N_MONTHS) bool
    checkups: np.ndarray  # (n, N_CHECKUPS) int64 day, sorted, INF padded

    @property
    def n(self) -> int:
        return len(self.birth)

    def day(self, month: np.ndarray) -> np.ndarray:
        """First day of each month index (INF for INF)."""
        return np.where(month >= INF, INF, MONTH_START[np.minimum(month, N_MONTHS)])

    def age(self, day: np.ndarray) -> np.ndarray:
        """Age in years at ``day`` (broadcasts against the patient axis)."""
        return (day - self.birth.reshape((-1,) + (1,) * (np.ndim(day) - 1))) / 365.25

    def snap(self, day: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Move days into enrolment: before it -> its first 90 days; in the gap -> the first
        30 days after; after it -> INF. Only ever moves a day later."""
        es, gs, ge, ee = (self.day(x) for x in (self.es, self.gs, self.ge, self.ee))
        d = np.where(day < es, es + rng.integers(0, 90, self.n), day)
        d = np.where((d >= gs) & (d < ge), ge + rng.integers(0, 30, self.n), d)
        d = np.where((d >= gs) & (d < ge), ge, d)  # the jitter never lands back in the gap
        return np.where(d >= ee, INF, d)

    def in_span(self, a: np.ndarray, b: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """True where days [a, b] lie in one contiguous enrolment span (of patients ``rows``)."""
        sel = slice(None) if rows is None else rows
        es, gs, ge, ee = (self.day(x[sel]) for x in (self.es, self.gs, self.ge, self.ee))
        return (a >= es) & (b < ee) & ((b < gs) | (a >= ge))


def draw_people(rng: np.random.Generator, n: int) -> People:
    """Draw ``n`` patients: demography, enrolment and checkup days."""
    band = rng.choice(len(_AGE_W), n, p=_AGE_W / _AGE_W.sum())
    age0 = band * 5 + rng.random(n) * 5  # age at START
    birth = -np.round(age0 * 365.25).astype(np.int64)
    female = rng.random(n) < 0.51
    frailty = np.exp(rng.normal(0, 0.5, n))

    m = N_MONTHS
    es = np.where(rng.random(n) < 0.75, 0, rng.integers(1, 72, n))
    leaves = rng.random(n) < 0.15 + 0.25 * (age0 > 80)  # job change, emigration, death
    ee = np.where(leaves, es + 12 + (rng.random(n) * (m - es - 12)).astype(np.int64), m)
    ee = np.clip(ee, es + 1, m)
    has_gap = (rng.random(n) < 0.08) & (ee - es > 12)
    gs = es + 3 + (rng.random(n) * np.maximum(ee - es - 9, 1)).astype(np.int64)
    ge = np.minimum(gs + rng.integers(1, 7, n), ee - 1)
    gs = np.where(has_gap & (ge > gs), gs, INF)
    ge = np.where(gs < INF, ge, INF)

    insurer = rng.choice(4, n, p=_INSURER_P)
    insurer = np.where(age0 >= 65, np.where(rng.random(n) < 0.8, 2, insurer), insurer)
    insurer = np.where(age0 >= 75, 3, insurer)
    insurer2 = np.where(age0 >= 75, 3, rng.choice(4, n, p=_INSURER_P))

    months = np.arange(m)
    enrolled = ((months >= es[:, None]) & (months < ee[:, None])
                & ~((months >= gs[:, None]) & (months < ge[:, None])))
    people = People(female, birth, frailty, es, ee, gs, ge, insurer, insurer2, enrolled,
                    np.full((n, N_CHECKUPS), INF, dtype=np.int64))

    # Yearly checkups on the patient's usual month. Only checkups whose 90 days before and
    # 365 days after lie inside one enrolment span exist: the tasks' windows are then always
    # fully observed (so ACES labels and the oracle agree).
    participant = rng.random(n) < _CHECKUP_P[insurer]
    usual = rng.integers(0, 12, n)
    for y in range(N_CHECKUPS):
        day = MONTH_START[12 * y + usual] + rng.integers(0, 28, n)
        a = people.age(day)
        ok = (participant & (rng.random(n) < 0.85) & (a >= 40) & (a < 75)
              & people.in_span(day - 90, day + 366))
        people.checkups[:, y] = np.where(ok, day, INF)
    people.checkups.sort(axis=1)
    return people
