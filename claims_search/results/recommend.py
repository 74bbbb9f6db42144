"""The recommended size per task: the cheapest trial statistically as good as the best.

Pure (no Ray, no MLflow, no file reading: predictions are handed in). The *best* is the
complete Transformer trial with the highest metric (ties: the cheapest). The *candidates* are
the complete Transformer trials cheaper than it; the recommendation is the cheapest candidate
that qualifies, else the best itself.

Every trial is scored on the same tuning samples, so when the best and a candidate both have
per-sample predictions (``predictions.py``) they are compared *paired*: a patient-level
bootstrap of ``best - candidate`` that scores both models on the same patient draws
(``metrics.PairedBootstrap``: each model sorted once, every seed's replicates from it), 95 %
percentile interval ``[low, high]``:

Each candidate is judged on its own interval only (another size never changes its verdict).
With δ the margin, or :data:`RESOLUTION` without one, and W the interval's width:

- ``margin=None`` (*indistinguishable*): the candidate qualifies when the interval contains 0
  (``low <= 0``) and is narrow enough to mean it (``W <= 2·δ``): the tuning split cannot tell
  it from the best, and could have. ``low > 0``: told apart (*worse*).
- ``margin=δ`` (*non-inferior within δ*): it qualifies when ``high < δ``: the best is at most δ
  better, with 97.5 % confidence (the upper end of the same interval, a one-sided bound).
  ``low >= δ``, or an interval no wider than 2·δ that reaches δ: *worse* (not within δ).
- Otherwise the verdict is *too wide*: the interval cannot separate "as good" from "δ worse"
  (an interval of width W around a true difference of 0 reaches W/2 on each side, so with
  W > 2δ a candidate exactly as good as the best cannot be shown within δ, and one δ worse
  still contains 0).

Trials without readable predictions fall back to the unpaired rule of earlier versions: the
candidate's metric must reach the best's own bootstrap lower bound (rule ``"unpaired"``) or
``best.metric - tolerance`` (rule ``"tolerance"``).

The recommendation is the cheapest qualifying candidate, else the best. *Underpowered*: no
candidate qualified and at least one was *too wide*: the best is kept, and the reason names
those sizes, instead of defaulting to the smallest. An underpowered split makes no claim about
size either: no saturation point, not "still improving" (the same wide intervals would back
either).

*Baseline*: LightGBM is recommended (``choice="baseline"``) when, paired against the best
Transformer, it is significantly better (``high < 0``: then every size is worse than it, at any
cost); when it scores at least the best Transformer and is cheaper than the Transformer that
would otherwise be recommended (it is the best model, and the cheaper); or when it is as good
under the rule and cheaper (not while the split is underpowered). Without predictions it is shown beside the
recommendation, never recommended.

Not corrected for: comparing many candidates with one best (no Holm or Hsu adjustment), and the
winner's curse (the best trial's figure is optimistic: it was picked on the split it is scored
on); the held-out confirmation after a search, or ``finetune --held-out``, is the unbiased one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union

import numpy as np

from claims_search.results.frontier import TrialRecord, _order, pareto_front, saturation_point, still_improving
from claims_search.results.frontier import gain_per_doubling

log = logging.getLogger(__name__)

# The smallest difference the indistinguishable rule (no margin) is expected to resolve: one
# point of AUPRC/AUROC. Only used to decide whether the tuning split is underpowered.
RESOLUTION = 0.01

# The most bootstrap seeds the stability check may add (each is one more paired bootstrap).
MAX_STABILITY_SEEDS = 100

# trial_id -> per-sample predictions, or a function record -> predictions (None = none).
Predictions = Union[Mapping[str, Any], Callable[[TrialRecord], Any], None]


@dataclass(frozen=True)
class Comparison:
    """``best - record`` on the task's metric, and whether ``record`` qualifies.

    ``rule`` is ``"paired"`` (``low``/``high``: the paired bootstrap 95 % interval; ``n``
    samples of ``patients`` patients), ``"unpaired"`` or ``"tolerance"`` (no interval: the
    record's metric against :attr:`Recommendation.threshold`).
    """

    record: TrialRecord
    rule: str
    diff: float
    qualifies: bool
    low: float | None = None
    high: float | None = None
    n: int | None = None
    patients: int | None = None
    verdict: str = ""  # "qualifies", "worse" or "too wide" (module docstring); set in __post_init__
    delta: float | None = None  # the δ the paired verdict used (margin or RESOLUTION)

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", "qualifies" if self.qualifies else "worse")

    @property
    def trial_id(self) -> str:
        """The compared trial's id."""
        return str(self.record.trial_id)

    @property
    def width(self) -> float | None:
        """Width of the paired interval (None for the unpaired rules)."""
        return None if self.low is None or self.high is None else self.high - self.low

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: the trial's id and the numbers (aggregates only)."""
        return {"trial_id": self.trial_id, "rule": self.rule, "diff": self.diff, "low": self.low,
                "high": self.high, "width": self.width, "qualifies": self.qualifies, "verdict": self.verdict,
                "delta": self.delta, "n": self.n, "patients": self.patients}


@dataclass(frozen=True)
class Recommendation:
    """Per-task outcome of a search.

    ``record`` is what is recommended: a Transformer trial (``choice="transformer"``) or the
    LightGBM baseline (``choice="baseline"``); ``best`` the best Transformer. ``rule`` is the
    rule that decided (``"paired"``, ``"unpaired"``, ``"tolerance"``), ``margin``/``tolerance``
    its settings, ``threshold`` the unpaired rule's bar (the best's lower bound or best -
    tolerance; it applies only to trials judged unpaired). ``difference`` is ``best - record``
    (None when the record is the best); ``comparisons`` every candidate's, cheapest first;
    ``baseline_comparison`` the baseline's. ``underpowered`` with ``reason``: see the module
    docstring (``record`` is then the best, or a baseline significantly better than it).
    ``saturation`` is the cheapest trial no larger trial beats; ``still_improving`` whether the
    largest beats every smaller one; both under ``trend_rule`` (``"paired"``; ``"gain"``: at
    least ``min_gain_per_doubling`` per doubling of cost, the fallback for trials without
    predictions; ``"mixed"``: some of each); neither when underpowered. ``saved`` and
    ``saved_factor`` compare ``record`` against the most expensive Transformer on the frontier
    (``largest``). ``agreement``: the share of ``agreement_seeds`` bootstrap seeds (this one
    and the next ones) whose patient draws lead to the same ``record``; None when it was not
    asked for or the best has no paired predictions (an answer on a knife-edge reads below 1).
    """

    task: str
    record: TrialRecord
    best: TrialRecord
    threshold: float
    tolerance: float | None
    largest: TrialRecord
    saved: float
    saved_factor: float
    saturation: TrialRecord | None
    front: tuple[TrialRecord, ...]
    baseline: TrialRecord | None
    baseline_indistinguishable: bool
    n_complete: int
    rule: str = "unpaired"
    margin: float | None = None
    choice: str = "transformer"
    metric: str = "auprc"
    difference: Comparison | None = None
    comparisons: tuple[Comparison, ...] = ()
    baseline_comparison: Comparison | None = None
    underpowered: bool = False
    reason: str | None = None
    still_improving: bool = False
    trend_rule: str = "gain"
    min_gain_per_doubling: float = 0.005
    agreement: float | None = None
    agreement_seeds: int = 0
    cost_unit: str | None = None  # set by summary.py: the space's cost, or prices.UNIT when kinds mixed

    @property
    def agreeing_seeds(self) -> int:
        """How many of ``agreement_seeds`` seeds gave ``record`` (0 when not judged)."""
        return round((self.agreement or 0.0) * self.agreement_seeds)

    def to_dict(self) -> dict[str, Any]:
        """Aggregate summary for `recommend --json` and the tracking artifacts."""

        def brief(r: TrialRecord | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {
                "trial_id": r.trial_id,
                "model": r.model,
                "n_params": r.n_params,
                "metric": r.metric,
                "metric_low": r.metric_low,
                "metric_high": r.metric_high,
                "cost": r.cost,
            }

        def cmp(c: Comparison | None) -> dict[str, Any] | None:
            return c.to_dict() if c is not None else None

        return {
            "task": self.task,
            "recommended": brief(self.record),
            "choice": self.choice,
            "best": brief(self.best),
            "rule": self.rule,
            "margin": self.margin,
            "threshold": self.threshold,
            "tolerance": self.tolerance,
            "difference": cmp(self.difference),
            "underpowered": self.underpowered,
            "underpowered_reason": self.reason,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "largest_on_frontier": brief(self.largest),
            "compute_saved": self.saved,
            "compute_saved_factor": self.saved_factor,
            "saturation": brief(self.saturation),
            "still_improving": self.still_improving,
            "trend_rule": self.trend_rule,
            "frontier_trial_ids": [r.trial_id for r in self.front],
            "baseline": brief(self.baseline),
            "baseline_indistinguishable": self.baseline_indistinguishable,
            "baseline_comparison": cmp(self.baseline_comparison),
            "n_complete": self.n_complete,
            "agreement": self.agreement,
            "agreement_seeds": self.agreement_seeds,
            "cost_unit": self.cost_unit,
        }


def check_margin(value: float | None, name: str = "margin") -> float | None:
    """``value`` if it is None or in [0, 1), else ValueError (a metric difference is below 1)."""
    if value is not None and not 0.0 <= value < 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_stability_seeds(value: int | None, name: str = "stability_seeds") -> int | None:
    """``value`` if it is None or in 0..MAX_STABILITY_SEEDS, else ValueError."""
    if value is not None and not 0 <= value <= MAX_STABILITY_SEEDS:
        raise ValueError(f"{name} must be in 0..{MAX_STABILITY_SEEDS}, got {value}")
    return value


def recommend(
    records: Iterable[TrialRecord],
    task: str,
    predictions: Predictions = None,
    *,
    metric: str = "auprc",
    margin: float | None = None,
    tolerance: float | None = None,
    min_gain_per_doubling: float = 0.005,
    n_boot: int = 1000,
    seed: int = 0,
    stability_seeds: int = 0,
) -> Recommendation | None:
    """Recommend a size (or the baseline) for ``task``; None if no Transformer completed.

    ``predictions`` maps ``trial_id`` to that trial's per-sample tuning predictions (a
    DataFrame with ``predictions.COLUMNS``), or is a function ``record -> DataFrame | None``;
    trials without them are judged by the unpaired fallback. ``metric`` names what
    ``record.metric`` measures (``"auprc"``/``"auroc"``): the paired bootstrap recomputes it.
    ``margin`` selects the non-inferiority rule, ``tolerance`` the fallback's bar; ``n_boot``
    and ``seed`` fix the bootstrap (one set of patient draws per task). ``stability_seeds``
    more seeds (``seed + 1`` ...) decide again, each on its own draws: the share that agrees
    is ``agreement``. See the module docstring for the rules.
    """
    if isinstance(predictions, (int, float)):  # recommend(records, task, 0.01) of old callers
        raise TypeError("recommend(): tolerance is keyword-only; the third argument is predictions")
    check_margin(margin)
    check_margin(tolerance, "tolerance")
    records = [r for r in records if r.task == task]
    models = [r for r in records if r.usable and not r.is_baseline]
    if not models:
        return None
    best = min(models, key=lambda r: (-r.metric, *_order(r)))  # highest metric, then cheapest
    baselines = [r for r in records if r.usable and r.is_baseline]
    baseline = max(baselines, key=lambda r: (r.metric, str(r.trial_id))) if baselines else None
    judged = models + ([baseline] if baseline else [])
    if stability_seeds:  # every judge reads the same predictions: load them once
        predictions = {str(r.trial_id): _frame(r, predictions) for r in judged}

    shared: dict = {}  # the judges' aligned predictions and sorted models, built once

    def judge_at(s: int) -> _Judge:
        return _Judge(best, judged, predictions, metric=metric, margin=margin, tolerance=tolerance,
                      min_gain=min_gain_per_doubling, n_boot=n_boot, seed=s, shared=shared)

    judge = judge_at(seed)
    d = _decide(best, models, baseline, judge, margin)
    agreement = None
    if stability_seeds and judge.paired(best):
        again = [_decide(best, models, baseline, judge_at(seed + i), margin).record
                 for i in range(1, stability_seeds + 1)]
        agreement = (1 + sum(r.trial_id == d.record.trial_id for r in again)) / (1 + stability_seeds)
    front = pareto_front(records, task)
    largest = max([r for r in front if not r.is_baseline] or [best], key=lambda r: (r.cost, str(r.trial_id)))
    sized = not d.reason  # an underpowered split makes no claim about size
    return Recommendation(
        task=task, record=d.record, best=best, threshold=judge.threshold, tolerance=tolerance,
        largest=largest, saved=largest.cost - d.record.cost,
        saved_factor=largest.cost / d.record.cost if d.record.cost > 0 else float("inf"),
        saturation=saturation_point(models, min_gain_per_doubling, as_good=judge.as_good) if sized else None,
        front=tuple(front), baseline=baseline,
        baseline_indistinguishable=bool(d.baseline_comparison and d.baseline_comparison.qualifies),
        n_complete=sum(r.status == "complete" for r in records if not r.is_baseline),
        rule=d.difference.rule if d.difference else "paired" if judge.paired(best) else judge.fallback,
        margin=margin, choice="baseline" if d.record is baseline else "transformer", metric=metric,
        difference=d.difference, comparisons=d.comparisons, baseline_comparison=d.baseline_comparison,
        underpowered=bool(d.reason), reason=d.reason,
        still_improving=sized and still_improving(models, min_gain_per_doubling, better=judge.better),
        trend_rule=_trend_rule([judge.paired(r) for r in models]), min_gain_per_doubling=min_gain_per_doubling,
        agreement=agreement, agreement_seeds=1 + stability_seeds if agreement is not None else 0,
    )


@dataclass(frozen=True)
class _Decision:
    record: TrialRecord
    comparisons: tuple[Comparison, ...]
    difference: Comparison | None  # best - record; None when the record is the best
    baseline_comparison: Comparison | None
    reason: str | None  # why the split is underpowered


def _decide(best: TrialRecord, models: list[TrialRecord], baseline: TrialRecord | None, judge: "_Judge",
            margin: float | None) -> _Decision:
    """The cheapest qualifying candidate, unless the split is underpowered (then the best) or
    the baseline wins."""
    candidates = sorted((r for r in models if _order(r) < _order(best)), key=_order)
    comparisons = tuple(judge.compare(r) for r in candidates)
    chosen = next((c for c in comparisons if c.qualifies), None)
    reason = None if chosen else _underpowered(comparisons)
    base = judge.compare(baseline) if baseline else None
    if _baseline_wins(base, chosen.record if chosen else best, best):
        chosen = base
    return _Decision(chosen.record if chosen else best, comparisons, chosen, base, reason)


def _underpowered(comparisons: tuple[Comparison, ...]) -> str | None:
    """Why no cheaper size could be decided, or None: the one-line reason names the sizes whose
    own intervals were too wide (module docstring). Called only when none qualified."""
    wide = [c for c in comparisons if c.verdict == "too wide"]
    if not wide:
        return None
    delta = wide[0].delta
    widths = ", ".join(f"{c.width:.3g}" for c in wide)
    return (f"{len(wide)} of {len(comparisons)} cheaper size(s) have paired 95% intervals wider than "
            f"2 x {delta:g} (width {widths}): the split cannot tell them from the best")


def _baseline_wins(cmp: Comparison | None, chosen: TrialRecord, best: TrialRecord) -> bool:
    """LightGBM replaces the Transformer choice when it is significantly better than the best
    Transformer (``high < 0``: every size is then significantly worse than it, whatever they
    cost); when it scores at least the best Transformer's metric and costs less than the choice
    (it is then the best model and the cheaper one: nothing to prove); or when it is cheaper and,
    paired against the best, qualifies on its own interval (a *too wide* interval is no
    evidence)."""
    if cmp is None or cmp.rule != "paired":
        return False
    if cmp.high < 0:
        return True
    cheaper = cmp.record.cost < chosen.cost
    if cheaper and cmp.record.metric >= best.metric:
        return True
    return cheaper and cmp.qualifies


def _trend_rule(paired: list[bool]) -> str:
    # Saturation words name the rule behind them; "mixed" when some trials lack predictions.
    return "paired" if all(paired) else "gain" if not any(paired) else "mixed"


class _Judge:
    """The rules of one task: paired bootstrap replicates of every trial whose predictions
    line up with the best's (all on the same patient draws, so any two trials' difference is
    one subtraction), and the unpaired fallback for the others."""

    def __init__(self, best: TrialRecord, records: list[TrialRecord], predictions: Predictions, *,
                 metric: str, margin: float | None, tolerance: float | None, min_gain: float,
                 n_boot: int, seed: int, shared: dict | None = None) -> None:
        self.best, self.margin, self.tolerance, self.min_gain = best, margin, tolerance, min_gain
        self.fallback = "tolerance" if tolerance is not None else "unpaired"
        if tolerance is not None:
            self.threshold = best.metric - tolerance
        else:  # no interval: only ties with the best qualify
            self.threshold = best.metric_low if best.metric_low is not None else best.metric
        self._index: dict[str, int] = {}
        self._points = self._reps = np.empty(0)
        self._n = self._patients = 0
        self._pairs: dict[tuple[str, str], tuple[float, float, float]] = {}
        self._bootstrap(records, predictions, metric, n_boot, seed, {} if shared is None else shared)

    # ---- the paired bootstrap --------------------------------------------------------------
    def _bootstrap(self, records, predictions, metric, n_boot, seed, shared) -> None:
        # Judges of one task (the stability seeds) share the aligned predictions and each
        # model's one sort (``shared``): a further seed costs only its replicates.
        if "prepared" not in shared:
            shared["prepared"] = self._prepare(records, predictions, metric)
        if shared["prepared"] is None:
            return  # nothing to pair with, or unusable: everything is judged unpaired
        index, boot, n, patients = shared["prepared"]
        try:
            reps = boot.replicates((metric,), n_boot=n_boot, seed=seed)[metric]
        except Exception as e:  # noqa: BLE001 - judge unpaired, never fail a search
            log.warning("%s; every trial judged by the unpaired rule", e)
            return
        if reps.shape[1] == 0:
            log.warning("%s: no bootstrap replicate has both classes; judged unpaired", self.best.task)
            return
        self._index = index
        self._points, self._reps = boot.points(metric), reps
        self._n, self._patients = n, patients

    def _prepare(self, records, predictions, metric):
        """``(trial index, PairedBootstrap, samples, patients)`` of the trials whose predictions
        line up with the best's, or None."""
        from claims_search.metrics import PairedBootstrap

        ref = _usable(self.best, _frame(self.best, predictions))
        if ref is None:
            return None
        ref = ref.sort_values("row", kind="stable").reset_index(drop=True)
        probs = {str(r.trial_id): p for r in records
                 if (p := _aligned(r, ref if r is self.best else _frame(r, predictions), ref)) is not None}
        try:
            boot = PairedBootstrap(ref["label"].to_numpy(), list(probs.values()), ref["subject_idx"].to_numpy(),
                                   where=f"{self.best.task}/tuning predictions", metric=metric)
        except Exception as e:  # noqa: BLE001 - e.g. one class only: judge unpaired, never fail a search
            log.warning("%s; every trial judged by the unpaired rule", e)
            return None
        index = {tid: i for i, tid in enumerate(probs)}
        return index, boot, len(ref), int(ref["subject_idx"].nunique())

    def paired(self, r: TrialRecord) -> bool:
        """Whether ``r`` (and so any pair with it) is judged on paired predictions."""
        return str(r.trial_id) in self._index and str(self.best.trial_id) in self._index

    def interval(self, a: TrialRecord, b: TrialRecord) -> tuple[float, float, float]:
        """``metric(a) - metric(b)``, and its paired 95 % interval (both must be paired)."""
        from claims_search.metrics import percentile_interval

        key = (str(a.trial_id), str(b.trial_id))
        if key not in self._pairs:
            i, j = self._index[key[0]], self._index[key[1]]
            self._pairs[key] = (float(self._points[i] - self._points[j]),
                                *percentile_interval(self._reps[i] - self._reps[j]))
        return self._pairs[key]

    # ---- the rules ---------------------------------------------------------------------------
    def compare(self, r: TrialRecord) -> Comparison:
        """``best - r`` under the rule in force for ``r``."""
        if self.paired(r):
            diff, low, high = self.interval(self.best, r)
            verdict = self.verdict(low, high)
            return Comparison(r, "paired", diff, verdict == "qualifies", low, high, self._n, self._patients,
                              verdict=verdict, delta=self.delta)
        return Comparison(r, self.fallback, self.best.metric - r.metric, r.metric >= self.threshold)

    @property
    def delta(self) -> float:
        """The δ of the paired verdicts: the margin, else :data:`RESOLUTION`."""
        return RESOLUTION if self.margin is None else self.margin

    def verdict(self, low: float, high: float) -> str:
        """One interval of (better-looking - other) on its own: "qualifies", "worse" or "too wide"
        (module docstring)."""
        d, wide = self.delta, high - low > 2 * self.delta
        if self.margin is None:
            return "worse" if low > 0 else "too wide" if wide else "qualifies"
        return "qualifies" if high < d else "too wide" if wide and low < d else "worse"

    def _close(self, low: float, high: float) -> bool:
        return self.verdict(low, high) == "qualifies"

    def as_good(self, x: TrialRecord, y: TrialRecord) -> bool:
        """Whether ``x`` is as good as ``y`` (saturation): the paired rule, else the gain
        heuristic (``y`` gains less than ``min_gain`` per doubling of cost)."""
        if self.paired(x) and self.paired(y):
            return self._close(*self.interval(y, x)[1:])
        return gain_per_doubling(x, y) < self.min_gain

    def better(self, y: TrialRecord, x: TrialRecord) -> bool:
        """Whether ``y`` is better than ``x`` (still improving): significantly, paired
        (``low > 0``), else by at least ``min_gain`` per doubling of cost."""
        if self.paired(x) and self.paired(y):
            return self.interval(y, x)[1] > 0
        return gain_per_doubling(x, y) >= self.min_gain


def _frame(r: TrialRecord, predictions: Predictions):
    """The predictions of ``r`` or None; a loader that fails is a warning, never an error:
    a finished search must still publish (the trial is judged unpaired)."""
    if predictions is None:
        return None
    if isinstance(predictions, Mapping):
        return predictions.get(str(r.trial_id), predictions.get(r.trial_id))
    try:
        return predictions(r)
    except Exception as e:  # noqa: BLE001 - any unreadable file means "unpaired"
        log.warning("%s/%s: predictions unreadable (%s); judged by the unpaired rule", r.task, r.trial_id, e)
        return None


def _usable(r: TrialRecord, frame):
    """``frame`` if it has the predictions columns, else None (with a warning)."""
    from claims_search.runs.predictions import COLUMNS

    if frame is None:
        return None
    missing = [c for c in COLUMNS if c not in getattr(frame, "columns", ())]
    if missing:
        log.warning("%s/%s: predictions lack %s; judged by the unpaired rule", r.task, r.trial_id, missing)
        return None
    return frame


def _aligned(r: TrialRecord, frame, ref) -> np.ndarray | None:
    """``r``'s probabilities in the best's row order, or None (with a warning) when its rows,
    patients or labels differ from the best's: a pair must be scored on the same samples."""
    frame = _usable(r, frame)
    if frame is None:
        return None
    try:
        frame = frame.sort_values("row", kind="stable")
        same = len(frame) == len(ref) and all(
            np.array_equal(frame[c].to_numpy(), ref[c].to_numpy()) for c in ("row", "subject_idx", "label"))
        prob = frame["prob"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:  # e.g. probabilities stored as text
        same, prob, why = False, None, f"unusable values ({e})"
    else:
        why = "rows, patients or labels differ from the best trial's" if not same else "non-finite probabilities"
    if not same or not np.isfinite(prob).all():
        log.warning("%s/%s: predictions have %s; judged by the unpaired rule", r.task, r.trial_id, why)
        return None
    return prob
