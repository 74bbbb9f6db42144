"""Planting the two tasks' outcomes at checkups, and the oracle (the true probability of every
label drawn).

At each checkup where a patient is eligible (the ACES task's input window holds), the outcome is
drawn from its true probability and the patient's timeline is made to agree with the draw:
label 1 puts the first outcome event strictly after the checkup and inside the window; label 0
moves any first outcome event out of the window. Times are days since START (people.py); a
checkup happens at 09:00 on its day and every other event at 00:00, so an event on the checkup
day counts as "at or before" the prediction time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from claims_search.data.synth.people import INF, N_CHECKUPS, People

AH_WINDOW = 90  # antihypertensive_start: (checkup, checkup + 90 d]
CKD_WINDOW = 365  # ckd_incidence: (checkup, checkup + 365 d]
NEW_HTN_DAYS = 90  # "new hypertension diagnosis": first I10 in the 90 days up to the checkup
P_RULE, P_ELSE = 0.9, 0.05


@dataclass
class Oracle:
    """Labels drawn at checkups: patient row, checkup day, true probability, label."""

    row: np.ndarray
    day: np.ndarray
    prob: np.ndarray
    label: np.ndarray

    @staticmethod
    def concat(parts: list["Oracle"]) -> "Oracle":
        return Oracle(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0)
                        for f in ("row", "day", "prob", "label")))


def place_htn_diagnoses(people: People, onset: np.ndarray, first_dx: np.ndarray,
                        rng: np.random.Generator, p_before: float = 0.9) -> np.ndarray:
    """Undiagnosed hypertensives who go to a checkup are often diagnosed in the weeks before it
    (a clinic visit ahead of the checkup): move their first I10 into the 90 days up to the
    checkup with probability ``p_before``. This makes "new hypertension" common enough at
    checkups for the guideline rule to matter."""
    first_dx = first_dx.copy()
    prev = np.full(people.n, -INF)
    for j in range(N_CHECKUPS):
        c = people.checkups[:, j]
        sel = ((c < INF) & (onset <= c - NEW_HTN_DAYS) & (first_dx > c)
               & (rng.random(people.n) < p_before))
        day = c - rng.integers(0, NEW_HTN_DAYS - 1, people.n)  # in [c - 88, c]
        sel &= day > prev
        first_dx = np.where(sel, day, first_dx)
        prev = np.where(c < INF, c, prev)
    return first_dx


def plant_antihypertensive(people: People, first_ah: np.ndarray, htn_dx: np.ndarray,
                           contra: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Oracle]:
    """Guideline rule: a first I10 in the last 90 days (at or before the checkup) and no
    contraindication so far -> ARB/CCB within 90 days with p 0.9, else 0.05. Returns the new
    first-antihypertensive days and the oracle rows."""
    first_ah = first_ah.copy()
    parts = []
    for j in range(N_CHECKUPS):
        c = people.checkups[:, j]
        eligible = (c < INF) & (first_ah > c)
        rule = (htn_dx > c - NEW_HTN_DAYS) & (htn_dx <= c) & (contra > c)
        p = np.where(rule, P_RULE, P_ELSE)
        u, start, push = rng.random(people.n), rng.integers(1, AH_WINDOW + 1, people.n), \
            rng.integers(1, 120, people.n)
        label = u < p
        in_window = (first_ah > c) & (first_ah <= c + AH_WINDOW)
        first_ah = np.where(eligible & label, c + start, first_ah)
        first_ah = np.where(eligible & ~label & in_window, c + AH_WINDOW + push, first_ah)
        rows = np.flatnonzero(eligible)
        parts.append(Oracle(rows, c[rows], p[rows], label[rows]))
    # A pushed start may fall outside enrolment: snapping moves it later still, never into a
    # window that was drawn 0 (checkups are >= 337 days apart).
    return people.snap(first_ah, rng), Oracle.concat(parts)


def plant_ckd(people: People, first_ckd: np.ndarray, logit: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, Oracle]:
    """At each checkup with no confirmed CKD so far, draw CKD within 365 days from the world's
    risk (``logit`` (n, N_CHECKUPS)). Label 1 places the first N18 after the checkup, inside
    the window, before the next checkup (so the patient leaves the cohort) and after the end of
    any earlier window drawn 0 (windows of yearly checkups overlap)."""
    first_ckd = first_ckd.copy()
    p_all = 1.0 / (1.0 + np.exp(-logit))
    parts = []
    closed_until = np.full(people.n, -INF)  # end of the last window drawn 0
    for j in range(N_CHECKUPS):
        c = people.checkups[:, j]
        nxt = people.checkups[:, j + 1] if j + 1 < N_CHECKUPS else np.full(people.n, INF)
        eligible = (c < INF) & (first_ckd > c)
        p = p_all[:, j]
        label = rng.random(people.n) < p
        lo = np.maximum(c + 1, closed_until + 1)
        hi = np.minimum(c + CKD_WINDOW, nxt)
        place = lo + (rng.random(people.n) * np.maximum(hi - lo + 1, 1)).astype(np.int64)
        push = c + CKD_WINDOW + 1 + rng.integers(0, 180, people.n)
        in_window = (first_ckd > c) & (first_ckd <= c + CKD_WINDOW)
        first_ckd = np.where(eligible & label, place, first_ckd)
        first_ckd = np.where(eligible & ~label & in_window, push, first_ckd)
        closed_until = np.where(eligible & ~label, c + CKD_WINDOW, closed_until)
        rows = np.flatnonzero(eligible)
        parts.append(Oracle(rows, c[rows], p[rows], label[rows]))
    return people.snap(first_ckd, rng), Oracle.concat(parts)
