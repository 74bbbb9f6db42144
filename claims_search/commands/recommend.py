"""Print the recommended model size per task of a search, read back from MLflow.

The recommendation is the cheapest complete trial as good as the best one. Trials are compared
on their per-sample tuning predictions (read from where each trial kept them, under the
search's --storage): a patient-level paired bootstrap of best minus candidate. Without
--margin a candidate qualifies when that 95% interval contains 0 (indistinguishable); with
--margin D when its upper end is below D (non-inferior within D). Trials without readable
predictions fall back to the unpaired rule: at least the best's own lower bound, or within
--tolerance of the best. LightGBM is recommended when it is as good as the best Transformer
and cheaper. When the intervals are too wide to tell sizes apart at the margin, the best trial
is kept and the output says so. Also printed: the metric with its interval, the cost, the
compute saved against the most expensive model on the frontier, whether the task saturates or
still improves with size, and the baseline.

Settings default to what the search published; the tracking URI to $MLFLOW_TRACKING_URI, else
sqlite:///mlflow.db in the working directory.

Example: claims-search recommend --experiment smoke --margin 0.01
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search recommend`."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the search's name)")
    parser.add_argument("--json", action="store_true", help="print one JSON object {task: recommendation}")
    parser.add_argument("--margin", type=float,
                        help="metric the best may be ahead by, at most, for a cheaper size to qualify (paired "
                        "non-inferiority; 0 <= D < 1; default: the search's, else indistinguishable)")
    parser.add_argument("--tolerance", type=float,
                        help="for trials without predictions: metric a cheaper model may lose (0 <= X < 1; "
                        "default: the best's bootstrap interval)")
    parser.add_argument("--stability-seeds", type=int, metavar="N",
                        help="more bootstrap seeds that decide again, to say how stable each answer is "
                        "(0 = off; each costs one more bootstrap; default: the search's, else 4)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


# ---- the words -----------------------------------------------------------------------------


def _interval(c) -> str:
    return f"{c.diff:.4f}, 95% CI [{c.low:.4f}, {c.high:.4f}] (width {c.width:.4f})"


def _rule_line(rec, c, who: str) -> str:
    """Why ``who`` qualified (or not) against the best: the rule and its numbers."""
    if c.rule == "paired":
        if c.high < 0:  # the interval says which way, whatever the rule
            verdict = f"below 0: {who} is better"
        elif rec.margin is not None:
            verdict = f"upper end {'<' if c.high < rec.margin else '>='} margin {rec.margin:g}"
        else:
            verdict = "contains 0" if c.low <= 0 else "excludes 0"
        return f"  paired rule ({c.patients} patients): best - {who} = {_interval(c)}: {verdict}"
    bar = (f"within {rec.tolerance:g} of the best" if c.rule == "tolerance" else "within the best's 95% interval")
    return f"  {c.rule} rule (no per-sample predictions): {bar}: >= {rec.threshold:.4f}"


def _trend_words(rec) -> str:
    return {"paired": "under the paired rule",
            "gain": f"by {rec.min_gain_per_doubling:g} or more per doubling of cost (no per-sample predictions)",
            "mixed": "under the paired rule (by gain per doubling for trials without predictions)"}[rec.trend_rule]


def _trend_lines(rec) -> list[str]:
    """Saturation or still improving, only when the rule says so (never both)."""
    from claims_search.commands.frontier import fmt_size

    if rec.saturation is not None:
        s = rec.saturation
        return [f"  saturates at {fmt_size(s)} (cost {s.cost:.4g}): no larger trial is better {_trend_words(rec)}"]
    if rec.still_improving:  # the largest then beats every smaller size: it is the best
        return [f"  still improving at the largest size tried ({fmt_size(rec.best)}): it is better than every "
                f"smaller size {_trend_words(rec)}"]
    return []


def _baseline_line(rec, metric: str) -> list[str]:
    """The baseline's verdict against the best Transformer, when it is not the recommendation."""
    from claims_search.commands.frontier import fmt_metric

    b, c = rec.baseline, rec.baseline_comparison
    if b is None or rec.choice == "baseline":
        return []
    head = f"  baseline (LightGBM) {metric.upper()} {fmt_metric(b)}  cost {b.cost:.4g}"
    if c is not None and c.rule == "paired":
        if c.high < 0:
            verdict = "better than the best Transformer"
        elif c.low > 0 and (rec.margin is None or not c.qualifies):
            verdict = "worse than the best Transformer"
        elif rec.margin is not None:
            verdict = f"{'within' if c.qualifies else 'not shown within'} margin {rec.margin:g} of the best Transformer"
        else:
            verdict = "indistinguishable from the best Transformer"
        return [f"{head}: {verdict} (best - LightGBM = {_interval(c)})"]
    if rec.best.metric_high is not None and b.metric > rec.best.metric_high:
        verdict = ": above the best Transformer's interval (unpaired; recommended only on paired predictions)"
    elif rec.baseline_indistinguishable:
        verdict = ": indistinguishable from the best Transformer (unpaired)"
    else:
        verdict = ": below the best Transformer's interval (unpaired)"
    return [head + verdict]


def _saves_line(rec, cost: str) -> list[str]:
    from claims_search.commands.frontier import fmt_size

    if rec.record.trial_id == rec.largest.trial_id or rec.saved <= 0:
        return []  # nothing saved: no claim either way about bigger models
    return [f"  saves {rec.saved:.4g} {cost} ({rec.saved_factor:.1f}x less) vs the largest frontier model "
            f"{fmt_size(rec.largest)}"]


def _fallback_note(rec) -> list[str]:
    """When the best was judged paired but some cheaper trials could not be."""
    unpaired = [c for c in rec.comparisons if c.rule != "paired"]
    if not unpaired or not any(c.rule == "paired" for c in rec.comparisons):
        return []
    return [f"  {len(unpaired)} cheaper trial(s) without readable predictions were judged by the "
            f"{unpaired[0].rule} rule"]


def _headline(rec, metric: str, cost: str) -> list[str]:
    """The first lines: what is recommended and why."""
    from claims_search.commands.frontier import fmt_metric, fmt_size
    from claims_search.recommend import RESOLUTION, median_width

    r, best = rec.record, rec.best
    params = f", {r.n_params / 1e6:.2f}M params" if r.n_params else ""
    figures = f"  {metric.upper()} {fmt_metric(r)}  cost {r.cost:.4g} {cost}"
    if rec.choice == "baseline":
        why = ("better than the best Transformer" if rec.difference is not None and rec.difference.high < 0
               else "at least as good as the best Transformer")
        cheaper = "at a lower cost" if r.cost < best.cost else "at a higher cost, but every size is worse"
        return [f"{rec.task}: recommended LightGBM (trial {r.trial_id}): {why}, {cheaper}", figures,
                f"  best Transformer {fmt_size(best)} (trial {best.trial_id}) {metric.upper()} {fmt_metric(best)}  "
                f"cost {best.cost:.4g}",
                _rule_line(rec, rec.difference, "LightGBM"),
                *([f"  the Transformer sizes could not be told apart: {rec.reason}"] if rec.underpowered else [])]
    if rec.underpowered:
        delta = rec.margin if rec.margin is not None else RESOLUTION
        return [f"{rec.task}: the tuning split is too small to tell these sizes apart at margin {delta:g} "
                f"(interval width {median_width(rec):.4f}); not recommending the smallest by default",
                f"  keeping the best trial {fmt_size(r)}{params} (trial {r.trial_id})",
                figures, f"  why: {rec.reason}"]
    if r is best:
        return [f"{rec.task}: recommended {fmt_size(r)}{params} (trial {r.trial_id}), the best trial", figures,
                *_no_cheaper(rec)]
    return [f"{rec.task}: recommended {fmt_size(r)}{params} (trial {r.trial_id})", figures,
            _rule_line(rec, rec.difference, "recommended"),
            f"  best {fmt_size(best)} (trial {best.trial_id}) {metric.upper()} {fmt_metric(best)}  cost {best.cost:.4g}"]


def _no_cheaper(rec) -> list[str]:
    """Why the best itself is recommended: no cheaper size qualified (or none was tried)."""
    from claims_search.commands.frontier import fmt_size

    if not rec.comparisons:
        return ["  it is also the cheapest size tried" if rec.n_complete > 1 else "  the only size that completed"]
    closest = min(rec.comparisons, key=lambda c: c.diff)
    size = fmt_size(closest.record)
    if closest.rule == "paired":
        return [f"  no cheaper size qualifies under the paired rule; closest {size}: best - it = {_interval(closest)}"]
    return [f"  no cheaper size qualifies under the {closest.rule} rule (>= {rec.threshold:.4f}); closest {size}"]


def _agreement_line(rec) -> list[str]:
    """How many bootstrap seeds give the same answer; a warning word when not all do."""
    if rec.agreement is None:
        return []
    same = rec.agreeing_seeds
    note = "" if same == rec.agreement_seeds else ": the answer is on a knife-edge; more tuning patients would settle it"
    return [f"  the same answer under {same} of {rec.agreement_seeds} bootstrap seeds{note}"]


def describe(rec, metric: str, cost: str) -> list[str]:
    """Human-readable lines for one task's Recommendation (see docs/search.md for examples)."""
    return [*_headline(rec, metric, cost), *_agreement_line(rec), *_saves_line(rec, cost), *_trend_lines(rec),
            *_baseline_line(rec, metric), *_fallback_note(rec)]


# ---- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print (or emit as JSON) the recommendation per task; 0 on success."""
    import json

    from claims_search.errors import ClaimsSearchError
    from claims_search.recommend import check_margin, check_stability_seeds
    from claims_search.summary import SummarySettings, summarize
    from claims_search.tracking import default_tracking_uri, load_records, load_settings

    for name in ("margin", "tolerance"):
        try:
            check_margin(getattr(args, name), f"--{name}")
        except ValueError as e:
            raise ClaimsSearchError(str(e)) from None
    try:
        check_stability_seeds(args.stability_seeds, "--stability-seeds")
    except ValueError as e:
        raise ClaimsSearchError(str(e)) from None
    uri = args.tracking_uri or default_tracking_uri()
    records = load_records(uri, args.experiment)
    got = load_settings(uri, args.experiment)
    settings = SummarySettings(
        metric=got["metric"], cost=got["cost"],
        margin=args.margin if args.margin is not None else got.get("margin"),
        tolerance=args.tolerance if args.tolerance is not None else got.get("tolerance"),
        min_gain_per_doubling=got.get("min_gain_per_doubling", 0.005),
        stability_seeds=(args.stability_seeds if args.stability_seeds is not None
                         else int(got.get("stability_seeds", SummarySettings.stability_seeds))),
    )
    out = {task: s.recommendation for task, s in summarize(records, None, settings).items()}
    if args.json:
        print(json.dumps({t: (r.to_dict() if r else None) for t, r in out.items()}, indent=2, default=str))
    else:
        for task, rec in out.items():
            if rec is None:
                print(f"{task}: no complete Transformer trial to recommend from ({trial_counts(records, task)})")
            else:
                print("\n".join(describe(rec, settings.metric, settings.cost)))
    return 0 if out and all(out.values()) else 1


def trial_counts(records, task: str) -> str:
    """``"3 complete, 1 failed, 0 pruned"`` for the Transformer trials of ``task``."""
    mine = [r.status for r in records if r.task == task and not r.is_baseline]
    return ", ".join(f"{mine.count(s)} {s}" for s in ("complete", "failed", "pruned"))
