"""Turn the latent timeline into claims events: monthly visits for chronic conditions, acute
episodes, treatment, CKD, checkup results, enrolment records and the Zipf background.

Each ``emit_*`` appends to an ``Events`` collector and, for conditions, returns the (row, month)
of every code it emitted: the raw material of that condition's burden in the CKD risk.
"""

from __future__ import annotations

import numpy as np

from claims_search.data.synth.codes import INSURER_KINDS, catalogue, is_antihypertensive
from claims_search.data.synth.people import INF, MONTH_START, N_MONTHS, People, month_of
from claims_search.data.synth.world import VISIT_SCALE

CAT = catalogue()
STATIC = -(2**62)  # day of static rows (null time)
CHECKUP_US = 9 * 3600 * 10**6  # checkups (and their results) at 09:00, everything else 00:00
FIRST_VISIT = CAT.id("PROC//JP//111000110")
REVISIT = CAT.id("PROC//JP//112007410")
ARB, CCB = CAT.id("DRUG//ATC//C09CA01"), CAT.id("DRUG//ATC//C08CA01")

# The Zipf background: (diagnosis, usual drug), most common first.
BACKGROUND = [
    ("J00", "N02BE01"), ("J06.9", "R05CB03"), ("K29.7", "A02BX14"), ("M54.5", "M02AA15"),
    ("J20.9", "R05CB06"), ("L30.9", "D07AC01"), ("R05", "R05DA09"), ("H10.9", "S01AE05"),
    ("K59.0", "A02AA02"), ("J02.9", "J01DD16"), ("R51", "N02BE01"), ("R50.9", "N02BE01"),
    ("A08.4", "A07FA01"), ("R10.4", "A03FA03"), ("M79.1", "M01AE01"), ("L50.9", "R06AX26"),
    ("J03.9", "J01CA04"), ("H65.9", "J01CA04"), ("K30", "A02BA03"), ("M25.5", "M02AA15"),
    ("R42", "A03FA03"), ("T14.0", "M02AA15"), ("S93.4", "M02AA15"), ("B35.1", "D01AE15"),
    ("L70.0", "D10AD03"), ("J01.9", "J01FA09"), ("H52.1", "R06AX13"), ("K52.9", "A07FA01"),
    ("N76.0", "G03AA12"), ("M54.2", "M01AE01"), ("R11", "A03FA03"), ("Z23", "B02AA02"),
]
RULE_OUT = ["I20.9", "K25.9", "C34.9", "J47", "E05.9", "I10", "E11.9", "N18.3"]


class Events:
    """Collects events as parallel arrays: patient row, day, microseconds within the day, code
    id, numeric value (NaN = none)."""

    def __init__(self):
        self.parts: list[tuple] = []

    def add(self, row, day, code, value=None, us=0):
        row = np.asarray(row, dtype=np.int64)
        if row.size == 0:
            return
        day = np.broadcast_to(np.asarray(day, dtype=np.int64), row.shape)
        code = np.broadcast_to(np.asarray(code, dtype=np.int32), row.shape)
        value = (np.full(row.shape, np.nan, np.float32) if value is None
                 else np.broadcast_to(np.asarray(value, dtype=np.float32), row.shape))
        self.parts.append((row, day, np.full(row.shape, us, np.int64), code, value))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(row, day, us, code, value), sorted by row, time (static first), then code."""
        row, day, us, code, value = (np.concatenate(x) for x in zip(*self.parts))
        # One int64 key instead of a 4-key lexsort (10x faster): row (< 2^20) | day + 40,001
        # (< 2^16; 0 for static rows) | 09:00 or not (1 bit) | code (< 2^9).
        assert row.max(initial=0) < 2**20 and code.max(initial=0) < 2**9
        day_key = np.where(day == STATIC, 0, day + 40_001)
        key = (((row << 16 | day_key) << 1 | (us > 0)) << 9) | code
        order = np.argsort(key, kind="stable")
        return row[order], day[order], us[order], code[order], value[order]


def emit_chronic(ev: Events, people: People, c, first_dx, first_ah, visit_day, any_visit, rng):
    """A chronic condition: first confirmed diagnosis (sometimes preceded by a suspected one),
    then monthly visits with its block; antihypertensives only after the first one."""
    rows0 = np.flatnonzero(first_dx < INF)
    fd = first_dx[rows0]
    fm = month_of(fd)
    dx, sus = CAT.id(f"DX//ICD10//{c.dx}"), CAT.id(f"DX_SUSPECTED//ICD10//{c.dx}")
    mask = ((np.arange(N_MONTHS)[None, :] > fm[:, None]) & people.enrolled[rows0]
            & (rng.random((rows0.size, N_MONTHS), dtype=np.float32) < c.visit * VISIT_SCALE))
    r, m = np.nonzero(mask)
    rows = rows0[r]
    any_visit[rows, m] = True
    day = MONTH_START[m] + visit_day[rows, m]
    ev.add(rows0, fd, dx)
    ev.add(rows, day, dx)
    out_r, out_m = [rows0, rows], [fm, m]
    ah_month = month_of(first_ah[rows])
    for code, p in c.block:
        keep = rng.random(rows.size) < p
        if is_antihypertensive(code):
            keep &= m > ah_month
        ev.add(rows[keep], day[keep], CAT.id(code))
        out_r.append(rows[keep]), out_m.append(m[keep])
    sd = fd - rng.integers(7, 45, fd.size)
    ok = (rng.random(fd.size) < c.suspected) & people.in_span(sd, sd, rows0)
    ev.add(rows0[ok], sd[ok], sus)
    out_r.append(rows0[ok]), out_m.append(month_of(sd[ok]))
    return np.concatenate(out_r), np.concatenate(out_m)


def emit_treatment(ev: Events, people: People, first_ah, visit_day, any_visit, rng):
    """Antihypertensive treatment: the first prescription (ARB or CCB) on ``first_ah``, then
    monthly refills, sometimes with the other class added."""
    rows0 = np.flatnonzero(first_ah < INF)
    drug = np.where(rng.random(rows0.size) < 0.5, ARB, CCB)
    fm = month_of(first_ah[rows0])
    ev.add(rows0, first_ah[rows0], drug)
    mask = ((np.arange(N_MONTHS)[None, :] > fm[:, None]) & people.enrolled[rows0]
            & (rng.random((rows0.size, N_MONTHS), dtype=np.float32) < 0.6))
    r, m = np.nonzero(mask)
    rows = rows0[r]
    any_visit[rows, m] = True
    day = MONTH_START[m] + visit_day[rows, m]
    ev.add(rows, day, drug[r])
    second = rng.random(rows.size) < 0.25
    ev.add(rows[second], day[second], np.where(drug[r] == ARB, CCB, ARB)[second])
    return np.concatenate([rows0, rows, rows[second]]), np.concatenate([fm, m, m[second]])


def emit_acute(ev: Events, c, episodes, rng):
    """Acute episodes: diagnosis, its block, an initial-consultation fee."""
    rows, m, day = episodes
    ev.add(rows, day, CAT.id(f"DX//ICD10//{c.dx}"))
    out_r, out_m = [rows], [m]
    for code, p in list(c.block) + [("PROC//JP//111000110", 0.6)]:
        keep = rng.random(rows.size) < p
        ev.add(rows[keep], day[keep], CAT.id(code))
        out_r.append(rows[keep]), out_m.append(m[keep])
    return np.concatenate(out_r), np.concatenate(out_m)


def emit_ckd(ev: Events, people: People, first_ckd, visit_day, any_visit, rng):
    """CKD from its first confirmed diagnosis: the stage progresses over the years; anaemia
    and erythropoietin from stage 4, dialysis at stage 5."""
    rows0 = np.flatnonzero(first_ckd < INF)
    stage0 = rng.choice(5, rows0.size, p=[0.05, 0.2, 0.55, 0.15, 0.05]) + 1
    years = 2 + rng.exponential(4, rows0.size)  # per stage
    stage_id = np.array([CAT.id(f"DX//ICD10//N18.{s}") for s in range(1, 6)])
    ev.add(rows0, first_ckd[rows0], stage_id[stage0 - 1])
    fm = month_of(first_ckd[rows0])
    mask = ((np.arange(N_MONTHS)[None, :] > fm[:, None]) & people.enrolled[rows0]
            & (rng.random((rows0.size, N_MONTHS), dtype=np.float32) < 0.7))
    r, m = np.nonzero(mask)
    rows = rows0[r]
    any_visit[rows, m] = True
    day = MONTH_START[m] + visit_day[rows, m]
    stage = np.minimum(5, stage0[r] + ((day - first_ckd[rows]) / (365.25 * years[r])).astype(int))
    ev.add(rows, day, stage_id[stage - 1])
    u = rng.random((4, rows.size))
    ev.add(rows[u[0] < 0.3], day[u[0] < 0.3], CAT.id("DRUG//ATC//A07BA01"))
    ev.add(rows[u[1] < 0.5], day[u[1] < 0.5], CAT.id("PROC//JP//160007410"))
    late = (stage >= 4) & (u[2] < 0.3)
    ev.add(rows[late], day[late], CAT.id("DX//ICD10//D63.1"))
    ev.add(rows[late], day[late], CAT.id("DRUG//ATC//B03XA01"))
    dial = (stage == 5) & (u[3] < 0.8)
    ev.add(rows[dial], day[dial], CAT.id("PROC//JP//140007410"))


def emit_checkups(ev: Events, people: People, lat, first_ah, first_ckd, rng):
    """The specific health checkup and its numeric results, at 09:00 on the checkup day."""
    r, j = np.nonzero(people.checkups < INF)
    c = people.checkups[r, j]
    age = (c - people.birth[r]) / 365.25

    def has(key):
        return lat.onset[key][r] <= c

    def dx(key):
        return lat.first_dx[key][r] <= c

    htn, t2d, dys, obese = has("htn"), has("t2d"), has("dyslip"), has("obesity")
    ckd = first_ckd[r] <= c
    k = c.size
    g = rng.normal(size=(7, k))
    sbp = 117 + 0.45 * (age - 40) + 22 * htn - 14 * (first_ah[r] <= c) + 11 * g[0]
    vals = {
        "SBP": np.round(sbp),
        "DBP": np.round(0.55 * sbp + 8 + 6 * g[1]),
        "HBA1C": np.round(5.4 + 0.005 * (age - 40) + 1.6 * t2d - 0.5 * (t2d & dx("t2d")) + 0.3 * g[2], 1),
        "EGFR": np.round(np.clip(92 - 0.6 * (age - 40) - 6 * t2d - 4 * htn - 30 * ckd + 9 * g[3], 5, 130), 1),
        "LDL": np.round(118 + 38 * dys - 45 * (dys & dx("dyslip")) + 25 * g[4]),
        "BMI": np.round(22.5 + 5 * obese + 2.5 * g[5], 1),
        "UPROT": np.minimum(3, (rng.random(k) < 0.05 + 0.1 * t2d + 0.05 * htn + 0.5 * ckd)
                            * (1 + (rng.random(k) < 0.3) + (rng.random(k) < 0.1))),
    }
    ev.add(r, c, CAT.id("HC//SPECIFIC_CHECKUP"), us=CHECKUP_US)
    for item, v in vals.items():
        ev.add(r, c, CAT.id(f"HC//{item}"), v, us=CHECKUP_US)


def emit_admin(ev: Events, people: People):
    """Static sex rows, birth, enrolment starts/ends and insurer changes (incl. 75th birthday)."""
    n, rows = people.n, np.arange(people.n)
    ev.add(rows, STATIC, np.where(people.female, CAT.id("GENDER//F"), CAT.id("GENDER//M")))
    ev.add(rows, people.birth, CAT.id("MEDS_BIRTH"))
    ins = np.array([CAT.id(f"INSURER//{k}") for k in INSURER_KINDS])
    es, ee, gs, ge = (people.day(x) for x in (people.es, people.ee, people.gs, people.ge))
    ev.add(rows, es, CAT.id("ENROLL//START"))
    ev.add(rows, es, ins[people.insurer])
    gap = np.flatnonzero(people.gs < INF)
    ev.add(gap, gs[gap] - 1, CAT.id("ENROLL//END"))
    ev.add(gap, ge[gap], CAT.id("ENROLL//START"))
    ev.add(gap, ge[gap], ins[people.insurer2[gap]])
    ended = np.flatnonzero(people.ee < N_MONTHS)
    ev.add(ended, ee[ended] - 1, CAT.id("ENROLL//END"))
    b75 = people.birth + np.int64(round(75 * 365.25))
    koki = np.flatnonzero((people.insurer != 3) & people.in_span(b75, b75))
    ev.add(koki, b75[koki], ins[3])


def emit_background(ev: Events, people: People, rng):
    """Zipf background of common complaints, plus suspected diagnoses that are ruled out."""
    n = people.n
    age = people.age(MONTH_START[:N_MONTHS][None, :])  # (n, M)
    lam = np.select([age < 6, age < 15, age < 65], [0.45, 0.25, 0.12], 0.2)
    lam = lam * np.sqrt(people.frailty)[:, None] * people.enrolled
    counts = rng.poisson(lam)
    r, m = np.nonzero(counts)
    k = counts[r, m]
    r, m = np.repeat(r, k), np.repeat(m, k)
    day = MONTH_START[m] + rng.integers(0, 28, r.size)
    w = 1.0 / np.arange(1, len(BACKGROUND) + 1) ** 1.1
    pick = rng.choice(len(BACKGROUND), r.size, p=w / w.sum())
    dx = np.array([CAT.id(f"DX//ICD10//{d}") for d, _ in BACKGROUND])
    drug = np.array([CAT.id(f"DRUG//ATC//{g}") for _, g in BACKGROUND])
    ev.add(r, day, dx[pick])
    u = rng.random((2, r.size))
    ev.add(r[u[0] < 0.7], day[u[0] < 0.7], drug[pick][u[0] < 0.7])
    ev.add(r[u[1] < 0.5], day[u[1] < 0.5], FIRST_VISIT)
    # Suspected diagnoses (疑い病名) entered for a work-up and never confirmed.
    hit = people.enrolled & (rng.random((n, N_MONTHS), dtype=np.float32) < 0.004 * (1 + (age > 40)))
    r, m = np.nonzero(hit)
    day = MONTH_START[m] + rng.integers(0, 28, r.size)
    sus = np.array([CAT.id(f"DX_SUSPECTED//ICD10//{d}") for d in RULE_OUT])
    ev.add(r, day, sus[rng.integers(0, len(RULE_OUT), r.size)])
    ev.add(r, day, CAT.id("PROC//JP//160000310"))


def emit_revisits(ev: Events, any_visit, visit_day, rng):
    """One revisit fee in most months with a chronic-care visit."""
    r, m = np.nonzero(any_visit & (rng.random(any_visit.shape, dtype=np.float32) < 0.35))
    ev.add(r, MONTH_START[m] + visit_day[r, m], REVISIT)
