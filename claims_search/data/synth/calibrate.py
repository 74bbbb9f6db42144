"""The synthetic world and the complexity family, calibrated on a fixed pilot population that
the simulation draws. Above ``world``, ``complexity`` and ``simulate`` (it needs all three), so
that none of them imports another back for its calibration."""

from __future__ import annotations

import functools

import numpy as np

from claims_search.data.synth.complexity import Family, calibrate, dx_ids, history
from claims_search.data.synth.people import INF
from claims_search.data.synth.simulate import pilot_burdens, simulate
from claims_search.data.synth.world import World, _raw_world


@functools.lru_cache(maxsize=1)
def build_world(target_prevalence: float = 0.15) -> World:
    """The world, calibrated on a fixed pilot population: log burdens standardised, logit parts
    scaled to unit variance, intercept set so ~``target_prevalence`` of eligible checkups are
    positive. Deterministic; cached per process."""
    w = _raw_world()
    lb = pilot_burdens(w)  # (N, K) log burdens at eligible pilot checkups
    w.burden_mu = lb.mean(0)
    w.burden_sd = np.maximum(lb.std(0), 0.05)
    z = (lb - w.burden_mu) / w.burden_sd
    w.lin_sd = float((z @ w.ckd_linear).std())
    w.pair_sd = float(((z[:, w.ckd_pairs[:, 0]] * z[:, w.ckd_pairs[:, 1]]) @ w.ckd_pair_w).std())
    w.ckd_intercept = 0.0
    base = w.ckd_logit(lb)
    lo, hi = -15.0, 5.0
    for _ in range(50):  # bisection on the intercept for the target prevalence
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(base + mid)))).mean() > target_prevalence:
            hi = mid
        else:
            lo = mid
    w.ckd_intercept = (lo + hi) / 2
    return w


@functools.lru_cache(maxsize=1)
def build_family() -> Family:
    """The family, calibrated on the same fixed pilot population as the world. Deterministic;
    cached per process."""
    pilot = simulate(build_world(), 6000, np.random.default_rng(12345))
    return calibrate(history(pilot.people, pilot.events, dx_ids()), pilot.people.checkups < INF)
