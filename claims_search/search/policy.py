"""The size search policy: which size to train next, whether a size in training goes on, and
when the search is done. Plain Python: the live search (``search_policy.py``, its Ray edge) and
the replays (``bench/search_efficiency.py``, ``bench/ladder_sim.py``) drive the same object.

The default ("ladder") policy, in words a user can act on:

1. Sizes are tried in order of their full training cost, cheapest first.
2. The first ``warmup_sizes`` sizes (3) train fully: a prediction needs at least two points.
3. Every later size first trains to a rung (``rungs``, fractions of its pretraining steps). There
   its pretraining validation loss predicts, per task, its final tuning metric: the line through
   (loss at that rung, final metric) of the two largest sizes trained fully. It goes on only if, on
   some task, that prediction's upper bound beats the current pick by more than ``delta`` (and,
   with ``skip_ahead``, the next size is not predicted to beat it by more than ``delta`` for sure).
4. Before a size starts, the line through (log training cost, final metric) of the two largest
   sizes seen (a stopped size counts with its prediction) says what it could reach. Cost, not
   parameters: it is the order sizes are tried in, so the line never runs backwards. The search is done when
   no untried size could beat the pick by more than ``delta`` on any task, or every size was tried.

Both lines are secants through the two largest sizes trained (see :func:`secant`): on a curve that
saturates they over-predict, so a size is stopped only when even the optimistic line says it
cannot help. Upper bounds are the predicted gain over the pick plus ``z`` of its standard errors,
propagated from ``Pick.noise``, the paired rule's noise of a difference between two sizes.

The caller tells the policy what happened (:meth:`SizePolicy.at_rung`, :meth:`finished`,
:meth:`failed`) and who the current pick is per task (the paired rule, ``recommend.py``, over the
sizes trained fully): the policy never reads predictions or patients itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field



@dataclass(frozen=True)
class Candidate:
    """One size the policy may train: ``key`` names it (a trial config's size, e.g. ``w32d2h2``),
    ``cost`` is what training it fully costs (pretraining + every fine-tuning; estimated, e.g. in
    FLOPs, before it runs: only the order and the shares use it), ``n_params`` its parameters."""

    key: str
    cost: float
    n_params: int


@dataclass(frozen=True)
class Settings:
    """``delta``: a gain no larger than this is no gain (the paired rule's δ). ``rungs``:
    fractions of pretraining where a size is judged. ``z``: standard errors in an upper bound
    (1.645: one-sided 95 %). ``warmup_sizes``: sizes trained fully before any is stopped.
    ``skip_ahead``: a size that passes its rung is still stopped there when the next size is
    predicted to beat it by more than δ even at its lower bound, on every task (it cannot be the
    answer). Off by default: that prediction runs through the optimistic rung line, so on a curve
    that rises then saturates (the study's medication task) it skips the answer and pays for the
    largest size (70 % of the grid against 16 % without, tests/test_ladder_sim.py). Defaults
    chosen on simulated ladders (``bench/ladder_sim.py``, docs/ladder_sim.md)."""

    delta: float = 0.01
    rungs: tuple[float, ...] = (0.125, 0.25)
    z: float = 1.645
    warmup_sizes: int = 3
    skip_ahead: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.delta < 1:
            raise ValueError(f"policy delta must be in [0, 1), got {self.delta}")
        if any(not 0 < r < 1 for r in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise ValueError(f"policy rungs must be increasing fractions in (0, 1), got {self.rungs}")
        if self.warmup_sizes < 2:
            raise ValueError("policy warmup_sizes must be >= 2 (a line needs two points)")


@dataclass(frozen=True)
class Pick:
    """The paired rule's current answer for one task: the size ``key``, its tuning ``metric``
    and ``noise``, the standard error of a paired difference at that metric."""

    key: str
    metric: float
    noise: float


@dataclass(frozen=True)
class Train:
    """Train size ``key``; ask :meth:`SizePolicy.at_rung` at each fraction of ``rungs``."""

    key: str
    rungs: tuple[float, ...]


@dataclass(frozen=True)
class Wait:
    """Nothing to start until a running size reports."""


@dataclass(frozen=True)
class Done:
    """The search is over: ``answer`` maps each task to its size; ``line`` says why, in one line."""

    answer: dict[str, str]
    line: str


@dataclass(frozen=True)
class Verdict:
    """What :meth:`SizePolicy.at_rung` decided: ``go_on``, in one line ``reason``, and the
    per-task ``predicted`` (final metric, its standard error) behind it (empty in warm-up)."""

    go_on: bool
    reason: str
    predicted: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class _Size:
    cand: Candidate
    status: str = "untried"  # untried | running | pruned | complete | failed
    rung_loss: dict[float, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # final tuning metric per task
    predicted: dict[str, float] = field(default_factory=dict)  # a pruned size's predicted metric
    stopped_at: float | None = None


def secant(x: tuple[float, float], y: tuple[float, float], at: float) -> tuple[float, float]:
    """The line through two points (x, y), read at ``at``: (prediction, r), where ``r`` is how far
    ``at`` lies beyond the second point in units of the points' spacing. A saturating curve is
    concave, so the secant through its two largest points over-predicts what lies beyond them:
    stopping on it is cautious. The prediction's error from the points' noise is ``r`` times the
    noise of their difference."""
    (x0, x1), (y0, y1) = x, y
    if x1 == x0:
        return float(y1), 0.0
    r = (at - x1) / (x1 - x0)
    return float(y1 + r * (y1 - y0)), abs(r)


class SizePolicy:
    """The ladder policy over ``candidates`` for ``tasks`` (see the module docstring)."""

    def __init__(self, candidates: list[Candidate], tasks: list[str], settings: Settings = Settings()):
        if not candidates:
            raise ValueError("the policy needs at least one size")
        if len({c.key for c in candidates}) != len(candidates):
            raise ValueError("the policy's sizes must have distinct keys")
        self.settings, self.tasks = settings, list(tasks)
        self.sizes = {c.key: _Size(c) for c in sorted(candidates, key=lambda c: (c.cost, c.n_params, c.key))}
        self.picks: dict[str, Pick] = {}
        self.done: Done | None = None

    # ---- what the caller asks ---------------------------------------------------------------
    def propose(self) -> Train | Wait | Done:
        """The next size to train (cheapest untried, if it could gain), Wait, or Done."""
        if self.done:
            return self.done
        untried = [s for s in self.sizes.values() if s.status == "untried"]
        running = any(s.status == "running" for s in self.sizes.values())
        started = sum(s.status in ("running", "complete", "pruned") for s in self.sizes.values())
        if untried and len(self._complete()) < self.settings.warmup_sizes and started >= self.settings.warmup_sizes \
                and running:
            return Wait()  # warm-up sizes first: the rest are judged against them
        if untried:
            nxt = untried[0]
            # Any untried size, not only the next: a curve may rise by less than δ per size and
            # by more than δ over several.
            verdicts = [self._could_gain(u) for u in untried]
            could = any(c for c, _ in verdicts)
            why = verdicts[-1][1]
            if could:
                nxt.status = "running"
                return Train(nxt.cand.key, self.settings.rungs)  # warm-up sizes record their rung losses too
            if running:
                return Wait()
            return self._finish(f"stopped: no untried size can gain more than δ = {self.settings.delta:g} on "
                                f"any task ({why})")
        if running:
            return Wait()
        return self._finish("stopped: every size was tried")

    def at_rung(self, key: str, fraction: float, loss: float) -> Verdict:
        """Size ``key`` reached ``fraction`` of its pretraining with validation ``loss``: go on?"""
        s = self.sizes[key]
        s.rung_loss[fraction] = float(loss)
        ref = [o for o in self._complete() if fraction in o.rung_loss]
        if len(self._complete()) < self.settings.warmup_sizes or len(ref) < 2 or not self.picks:
            return Verdict(True, f"warm-up: {len(self._complete())} of {self.settings.warmup_sizes} sizes trained "
                                 "fully before any is judged")
        a, b = ref[-2], ref[-1]  # the two largest sizes trained fully (ref is in cost order)
        predicted, gains = {}, {}
        for task in self.tasks:
            if task not in a.metrics or task not in b.metrics or task not in self.picks:
                continue
            pred, r = secant((a.rung_loss[fraction], b.rung_loss[fraction]), (a.metrics[task], b.metrics[task]), loss)
            predicted[task], gains[task] = self._gain(pred, r, b.cand.key, task)
        spread = dict(gains)  # (gain over the pick, its error) per task, for the reason line
        gains = {t: g + self.settings.z * e for t, (g, e) in gains.items()}
        at = f"rung {_frac(fraction)}"
        if not gains:
            return Verdict(True, f"{at}: no task to judge on")
        task = max(gains, key=gains.get)
        p, _ = predicted[task]
        g, e = spread[task]
        said = (f"{task}: predicted {p:.3f}, {g:+.3f} ± {self.settings.z * e:.3f} against {self.picks[task].key} "
                f"{self.picks[task].metric:.3f}")
        if gains[task] > self.settings.delta:
            ahead = self._skip_ahead(s, predicted) if self.settings.skip_ahead else None
            if ahead is None:
                return Verdict(True, f"{at}: could gain more than δ = {self.settings.delta:g} ({said})", predicted)
            said = f"{ahead} is predicted better by more than δ = {self.settings.delta:g} on every task"
            s.status, s.stopped_at = "pruned", fraction
            s.predicted = {t: v for t, (v, _) in predicted.items()}
            return Verdict(False, f"{at}: skipped ahead: {said}", predicted)
        s.status, s.stopped_at = "pruned", fraction
        s.predicted = {t: v for t, (v, _) in predicted.items()}
        return Verdict(False, f"{at}: cannot gain more than δ = {self.settings.delta:g} on any task ({said})",
                       predicted)

    def finished(self, key: str, metrics: dict[str, float], picks: dict[str, Pick]) -> None:
        """Size ``key`` trained fully with final tuning ``metrics``; ``picks``: the paired rule's
        answer per task over every size trained fully so far, this one included."""
        s = self.sizes[key]
        s.status, s.metrics = "complete", dict(metrics)
        self.picks = dict(picks)

    def failed(self, key: str) -> None:
        """Size ``key`` failed (its own error): it is not tried again and predicts nothing."""
        self.sizes[key].status = "failed"

    def stopped(self, key: str) -> None:
        """Size ``key`` ended at a rung (the verdict of :meth:`at_rung` said so)."""
        self.sizes[key].status = "pruned"

    # ---- inside ------------------------------------------------------------------------------
    def _complete(self) -> list[_Size]:
        return [s for s in self.sizes.values() if s.status == "complete"]

    def _gain(self, pred: float, r: float, last: str, task: str) -> tuple[tuple[float, float], tuple[float, float]]:
        """((prediction, its error), (gain over the pick, its error)) of a secant prediction ``r``
        spacings beyond size ``last``."""
        pick = self.picks[task]
        # pred - pick = r (y1 - y0) when the pick is y1, (1 + r)(y1 - y0) when it is y0; (1 + r)
        # bounds the other cases: times the paired noise of one difference.
        err = pick.noise * (r if pick.key == last else 1 + r)
        return (pred, pick.noise * r), (pred - pick.metric, err)

    def _could_gain(self, nxt: _Size) -> tuple[bool, str]:
        """Whether untried size ``nxt`` could beat the pick by more than δ on some task, from the
        line in log cost through the two largest sizes seen (a stopped one at its prediction)."""
        if len(self._complete()) < self.settings.warmup_sizes or not self.picks:
            return True, "warm-up"
        seen = [s for s in self.sizes.values() if s.status in ("complete", "pruned") and (s.metrics or s.predicted)]
        a, b = seen[-2], seen[-1]
        x = (math.log(a.cand.cost), math.log(b.cand.cost))
        best_gain, said = -math.inf, "no task to judge on"
        for task in self.tasks:
            y = (a.metrics.get(task, a.predicted.get(task)), b.metrics.get(task, b.predicted.get(task)))
            if None in y or task not in self.picks:
                continue
            pred, r = secant(x, y, math.log(nxt.cand.cost))
            _, (gain, err) = self._gain(pred, r, b.cand.key, task)
            if gain + self.settings.z * err > best_gain:
                best_gain = gain + self.settings.z * err
                said = f"{nxt.cand.key}: predicted {gain:+.3f} ± {self.settings.z * err:.3f} on {task}"
        if best_gain == -math.inf:
            return True, said
        return best_gain > self.settings.delta, said

    def _skip_ahead(self, me: _Size, predicted: dict[str, tuple[float, float]]) -> str | None:
        """The next untried size's key when the line in log cost through the largest size trained
        fully and ``me`` (at its prediction) puts it more than δ above ``me`` at its lower bound
        on every task; else None."""
        untried = [x for x in self.sizes.values() if x.status == "untried"]
        if not untried or not predicted or not self._complete():
            return None
        nxt, b = untried[0], self._complete()[-1]
        x = (math.log(b.cand.cost), math.log(me.cand.cost))
        for task, (p, e) in predicted.items():
            pred, r = secant(x, (b.metrics[task], p), math.log(nxt.cand.cost))
            if pred - p - self.settings.z * (self.picks[task].noise * (1 + r) + e) <= self.settings.delta:
                return None
        return nxt.cand.key

    def _finish(self, line: str) -> Done:
        self.done = Done({t: p.key for t, p in self.picks.items()}, line)
        return self.done

    def spent_share(self, spent: dict[str, float]) -> float:
        """``spent`` (cost charged per size key) as a share of training every size fully."""
        return sum(spent.values()) / sum(s.cand.cost for s in self.sizes.values())


def _frac(f: float) -> str:
    """0.125 -> "1/8" (rungs read as fractions of pretraining)."""
    from fractions import Fraction

    return str(Fraction(f).limit_denominator(64))
