"""Simulate one shard of patients, vectorised over patients (loops run over conditions,
checkups and months, never over patients): latent conditions, treatment, planted task
outcomes, and every claims event, returned as sorted integer arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from claims_search.data.synth import complexity, emit, tasks
from claims_search.data.synth.people import (INF, MONTH_START, N_CHECKUPS, N_MONTHS, People,
                                        draw_people, month_of)
from claims_search.data.synth.world import CKD, CONDITIONS, CONTRAINDICATIONS, INDEX, Condition, World


def _gompertz_onset(c: Condition, people: People, onset_age: dict, rng, world: World) -> np.ndarray:
    """Onset age (years, inf = never) under base hazard plus extra hazard after each parent's
    onset: the minimum of independent event times is exact for additive hazards."""
    n = people.n
    beta = c.b / 10 if abs(c.b) > 1e-3 else 1e-4
    a = c.a - 50 * beta

    def H(t):
        return np.exp(a) * np.expm1(beta * t) / beta

    def Hinv(x):
        arg = 1 + beta * x * np.exp(-a)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(arg > 0, np.log(np.maximum(arg, 1e-300)) / beta, np.inf)

    mult = people.frailty * np.where(people.female, c.female_rr, 1.0)
    if c.only_sex:
        mult = mult * (people.female == (c.only_sex == "F"))
    with np.errstate(divide="ignore"):
        onset = Hinv(H(c.min_age) + rng.exponential(size=n) / mult)
        parents = list(c.parents) + [(CONDITIONS[p].key, rr) for p, rr in
                                     world.extra_parents.get(INDEX.get(c.key, -1), [])]
        for key, rr in parents:
            tp = onset_age.get(key)
            if tp is None:  # acute parents act through their episodes, not an onset
                continue
            start = np.maximum(tp, c.min_age)
            e = rng.exponential(size=n) / (mult * rr)
            cand = np.where(np.isfinite(tp), Hinv(H(np.where(np.isfinite(start), start, 0)) + e),
                            np.inf)
            onset = np.minimum(onset, cand)
    return np.where(onset <= c.max_age, onset, np.inf)


def _onset_day(people: People, age: np.ndarray) -> np.ndarray:
    day = people.birth + np.where(np.isfinite(age), age, 0) * 365.25
    return np.where(np.isfinite(age) & (day < MONTH_START[N_MONTHS]), day.astype(np.int64), INF)


def _first_dx(c: Condition, people: People, onset: np.ndarray, rng) -> np.ndarray:
    """First confirmed diagnosis: ``delay`` months (mean) after onset. Of those diagnosed before
    enrolment, most show up at once (snap); a share ``c.undiagnosed`` waits again."""
    delay = rng.exponential(c.delay * 30.4, (2, people.n)).astype(np.int64)
    first = np.where(onset < INF, onset + delay[0], INF)
    es = people.day(people.es)
    first = np.where((first < es) & (rng.random(people.n) < c.undiagnosed), es + delay[1], first)
    return people.snap(first, rng)


@dataclass
class Latent:
    onset_age: dict  # key -> (n,) years
    onset: dict  # chronic key -> (n,) day
    first_dx: dict  # chronic key -> (n,) day of first confirmed diagnosis
    episodes: dict  # acute key -> (rows, months, days)
    present: dict  # chronic key -> (n, M) bool (onset month reached)


def _latent(people: People, world: World, rng) -> Latent:
    n, months = people.n, np.arange(N_MONTHS)
    age_m = people.age(MONTH_START[:N_MONTHS][None, :]).astype(np.float32)  # (n, M)
    lat = Latent({}, {}, {}, {}, {})
    for c in CONDITIONS:
        if c.kind == "chronic":
            age = _gompertz_onset(c, people, lat.onset_age, rng, world)
            lat.onset_age[c.key] = age
            lat.onset[c.key] = _onset_day(people, age)
            lat.present[c.key] = months[None, :] >= month_of(lat.onset[c.key])[:, None]
            fd = _first_dx(c, people, lat.onset[c.key], rng)
            lat.first_dx[c.key] = fd
            continue
        rate = np.exp(c.a + c.b / 10 * (age_m - 50)) / 12 * people.frailty[:, None]
        rate = rate * np.where(people.female, c.female_rr, 1.0)[:, None]
        if c.only_sex:
            rate = rate * (people.female == (c.only_sex == "F"))[:, None]
        rate = rate * ((age_m >= c.min_age) & (age_m < c.max_age))
        for key, rr in c.parents:
            rate = rate * (1 + rr * lat.present[key])
        hit = people.enrolled & (rng.random((n, N_MONTHS), dtype=np.float32) < np.minimum(rate, 0.5))
        rows, ms = np.nonzero(hit)
        lat.episodes[c.key] = (rows, ms, MONTH_START[ms] + rng.integers(0, 28, rows.size))
    age = _gompertz_onset(CKD, people, lat.onset_age, rng, world)
    lat.onset["ckd"] = _onset_day(people, age)
    return lat


def _first_episode(people: People, episodes) -> np.ndarray:
    rows, _, days = episodes
    first = np.full(people.n, INF, dtype=np.int64)
    np.minimum.at(first, rows, days)
    return first


def _treatment(people: People, lat: Latent, rng) -> np.ndarray:
    """Natural first antihypertensive: after a hypertension, heart failure or AF diagnosis."""
    n = people.n
    t = np.full(n, INF, dtype=np.int64)
    for key, p, mean_days in (("htn", 0.65, 60), ("hf", 0.85, 20), ("af", 0.4, 60)):
        fd = lat.first_dx[key]
        cand = fd + rng.exponential(mean_days, n).astype(np.int64)
        t = np.where((fd < INF) & (rng.random(n) < p), np.minimum(t, cand), t)
    return people.snap(t, rng)


def _burden(people: People, c: Condition, rows: np.ndarray, months: np.ndarray) -> np.ndarray:
    """log(1 + decayed count of the condition's codes) over the months strictly before each
    checkup's month, each code weighted exp(-age in months / tau): (n, N_CHECKUPS)."""
    n = people.n
    keep = people.checkups[rows, 0] < INF  # only patients with a checkup need it
    rows, months = rows[keep], months[keep]
    mc = month_of(np.minimum(people.checkups, MONTH_START[N_MONTHS] - 1))  # (n, J)
    gamma = np.exp(-1.0 / c.tau)
    out = np.zeros((n, N_CHECKUPS))
    for j in range(N_CHECKUPS):
        d = mc[rows, j] - 1 - months
        w = np.where(d >= 0, gamma ** np.maximum(d, 0), 0.0)
        out[:, j] = np.bincount(rows, weights=w, minlength=n)
    return np.log1p(out)


@dataclass
class ShardSim:
    """One simulated shard: events as sorted arrays (row, day, us, code, value) and the oracle."""

    people: People
    events: tuple
    oracle: dict  # task name -> tasks.Oracle


def simulate(world: World, n: int, rng: np.random.Generator, *, pilot: bool = False,
             family: "complexity.Family | None" = None, family_rng: np.random.Generator | None = None):
    """Simulate ``n`` patients. ``pilot=True`` stops before planting CKD and returns the log
    burdens (rows, K) at checkups without CKD so far (used to calibrate the world). With a
    ``family``, the complexity tasks are planted last, from ``family_rng`` only, so every other
    event and label is the same as without it."""
    people = draw_people(rng, n)
    lat = _latent(people, world, rng)
    ev = emit.Events()
    visit_day = rng.integers(0, 28, (n, N_MONTHS), dtype=np.int8).astype(np.int64)
    any_visit = np.zeros((n, N_MONTHS), dtype=bool)

    # Antihypertensive start: guideline rule at checkups.
    lat.first_dx["htn"] = tasks.place_htn_diagnoses(people, lat.onset["htn"], lat.first_dx["htn"], rng)
    contra = np.full(n, INF, dtype=np.int64)  # first contraindication of ARB/CCB, if any
    for key in CONTRAINDICATIONS:
        first = lat.first_dx[key] if key in lat.first_dx else _first_episode(people, lat.episodes[key])
        contra = np.minimum(contra, first)
    first_ah, ah_oracle = tasks.plant_antihypertensive(
        people, _treatment(people, lat, rng), lat.first_dx["htn"], contra, rng)

    # Every condition's events, and its burden at each checkup.
    burden = np.zeros((n, N_CHECKUPS, len(CONDITIONS)), dtype=np.float32)
    for k, c in enumerate(CONDITIONS):
        if c.kind == "chronic":
            r, m = emit.emit_chronic(ev, people, c, lat.first_dx[c.key], first_ah, visit_day,
                                     any_visit, rng)
            if c.key == "htn":
                r2, m2 = emit.emit_treatment(ev, people, first_ah, visit_day, any_visit, rng)
                r, m = np.concatenate([r, r2]), np.concatenate([m, m2])
        else:
            r, m = emit.emit_acute(ev, c, lat.episodes[c.key], rng)
        burden[:, :, k] = _burden(people, c, r, m)

    natural_ckd = _first_dx(CKD, people, lat.onset["ckd"], rng)
    if pilot:
        ok = (people.checkups < INF) & (natural_ckd[:, None] > people.checkups)
        return burden[ok]
    logit = np.zeros((n, N_CHECKUPS))
    valid = people.checkups < INF
    logit[valid] = world.ckd_logit(burden[valid])
    first_ckd, ckd_oracle = tasks.plant_ckd(people, natural_ckd, logit, rng)
    emit.emit_ckd(ev, people, first_ckd, visit_day, any_visit, rng)
    emit.emit_checkups(ev, people, lat, first_ah, first_ckd, rng)
    emit.emit_admin(ev, people)
    emit.emit_background(ev, people, rng)
    emit.emit_revisits(ev, any_visit, visit_day, rng)
    events = ev.arrays()
    oracle = {"antihypertensive_start": ah_oracle, "ckd_incidence": ckd_oracle}
    if family is not None:
        (r, d, c), family_oracle = complexity.plant(people, events, family, family_rng)
        ev.add(r, d, c)
        events = ev.arrays()
        oracle.update(family_oracle)
    return ShardSim(people, events, oracle)


def pilot_burdens(world: World, n: int = 6000) -> np.ndarray:
    """Log burdens at checkups of a fixed pilot population (for ``calibrate.build_world``)."""
    return simulate(world, n, np.random.default_rng(12345), pilot=True)
