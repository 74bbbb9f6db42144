"""Print the recommended model size per task of a search, read back from MLflow.

The recommendation is the cheapest complete trial as good as the best one. Trials are compared
on their per-sample tuning predictions (read from where each trial kept them, under the
search's --storage): a patient-level paired bootstrap of best minus candidate, each cheaper
size judged on its own interval. Without --margin a candidate qualifies when that 95% interval
contains 0 and is at most twice the rule's resolution wide (indistinguishable); with --margin D
when its upper end is below D (non-inferior within D). An interval too wide to decide either
way is said so, per size; when no cheaper size qualifies and some were too wide, the best trial
is kept. Trials without readable predictions fall back to the unpaired rule: at least the best's
own lower bound, or within --tolerance of the best. LightGBM is recommended when it is as good as
the best Transformer and cheaper. Also printed: the metric with its interval, the cost, the
compute saved against the most expensive model on the frontier, whether the task saturates
(on tuning, and whether held-out bears it out) or still improves with size, the baseline, and
the held-out confirmation the search recorded (--json: "held_out").

Settings default to what the search published; the tracking URI to $MLFLOW_TRACKING_URI, else
sqlite:///mlflow.db in the working directory.

Example: claims-search recommend --experiment smoke --margin 0.01
"""

from __future__ import annotations

import argparse

from claims_search.commands.formatting import trial_counts


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


def _verdict_words(rec, c, who: str) -> str:
    """What one paired interval says, on its own (recommend.py's verdicts)."""
    if c.high < 0:  # the interval says which way, whatever the rule
        return f"below 0: {who} is better"
    d = c.delta if c.delta is not None else rec.margin
    if rec.margin is not None:
        if c.verdict == "worse" and c.low >= d:
            return f"lower end >= margin {d:g}: worse by more than {d:g}"
        return {"qualifies": f"upper end < margin {d:g}: non-inferior within {d:g}",
                "worse": f"upper end >= margin {d:g}: not shown within {d:g}",
                "too wide": f"width > 2 x margin {d:g}: too wide to show within {d:g} or not"}[c.verdict]
    return {"qualifies": f"contains 0, width <= 2 x {d:g}: indistinguishable from the best",
            "worse": "excludes 0: worse than the best",
            "too wide": f"contains 0 but width > 2 x {d:g}: too wide to tell (no margin set)"}[c.verdict]


def _rule_line(rec, c, who: str) -> str:
    """Why ``who`` qualified (or not) against the best: the rule and its numbers."""
    if c.rule == "paired":
        return f"  paired rule ({c.patients} patients): best - {who} = {_interval(c)}: {_verdict_words(rec, c, who)}"
    bar = f"best - {rec.tolerance:g}" if c.rule == "tolerance" else "the best's 95% lower end"
    ok = ">=" if c.qualifies else "<"
    return (f"  {who}: {c.rule} rule (no per-sample predictions): {c.record.metric:.4f} {ok} {bar} "
            f"{rec.threshold:.4f}: {'qualifies' if c.qualifies else 'does not qualify'}")


def _candidate_lines(rec) -> list[str]:
    """Every cheaper size, each judged on its own interval: why it does or does not qualify."""
    from claims_search.commands.formatting import fmt_size

    if not rec.comparisons:
        return []
    return ["  cheaper sizes, each on its own evidence:",
            *(f"  {_rule_line(rec, c, fmt_size(c.record))}" for c in rec.comparisons)]


def _trend_words(rec) -> str:
    return {"paired": "under the paired rule",
            "gain": f"by {rec.min_gain_per_doubling:g} or more per doubling of cost (no per-sample predictions)",
            "mixed": "under the paired rule (by gain per doubling for trials without predictions)"}[rec.trend_rule]


def _trend_lines(rec, held_out: dict | None) -> list[str]:
    """Saturation or still improving, only when the rule says so (never both). A saturation
    claim names the split it rests on, and says whether held-out confirmation bears it out."""
    from claims_search.commands.formatting import fmt_size

    if rec.saturation is not None:
        s = rec.saturation
        return [f"  on tuning, saturates at {fmt_size(s)} (cost {s.cost:.4g}): no larger trial is better "
                f"{_trend_words(rec)}", f"    {_held_out_agrees(rec, held_out)}"]
    if rec.still_improving:  # the largest then beats every smaller size: it is the best
        return [f"  still improving at the largest size tried ({fmt_size(rec.best)}): it is better than every "
                f"smaller size {_trend_words(rec)}"]
    return []


def _held_out_agrees(rec, held_out: dict | None) -> str:
    """Whether held-out confirmation agrees that the saturation point is as good as the best:
    its held-out metric within δ (the margin, else the rule's resolution) of the best's."""
    from claims_search.results.recommend import RESOLUTION

    roles = held_out or {}
    sat, rec_, best = rec.saturation, roles.get("recommended"), roles.get("best")
    if sat.trial_id == rec.best.trial_id:
        return "held-out: not needed (it is the best trial)"
    if not (rec_ and best and "metrics" in rec_ and "metrics" in best and rec_["trial_id"] == sat.trial_id):
        return "held-out: not confirmed (no held-out scores of this size and the best); a tuning verdict only"
    m = rec.metric
    a, b = rec_["metrics"][m], best["metrics"][m]
    delta = rec.margin if rec.margin is not None else RESOLUTION
    if b - a <= delta:
        return f"held-out agrees: {m.upper()} {a:.3f} against the best's {b:.3f} (within {delta:g})"
    return (f"held-out does NOT confirm it: {m.upper()} {a:.3f} against the best's {b:.3f} "
            f"(more than {delta:g} below)")


def _baseline_line(rec, metric: str) -> list[str]:
    """The baseline's verdict against the best Transformer, when it is not the recommendation."""
    from claims_search.commands.formatting import fmt_metric

    b, c = rec.baseline, rec.baseline_comparison
    if b is None or rec.choice == "baseline":
        return []
    head = f"  baseline (LightGBM) {metric.upper()} {fmt_metric(b)}  cost {b.cost:.4g}"
    if c is not None and c.rule == "paired":
        return [f"{head}: {_baseline_verdict(rec, c)} (best - LightGBM = {_interval(c)})"]
    if rec.best.metric_high is not None and b.metric > rec.best.metric_high:
        verdict = ": above the best Transformer's interval (unpaired; recommended only on paired predictions)"
    elif rec.baseline_indistinguishable:
        verdict = ": indistinguishable from the best Transformer (unpaired)"
    else:
        verdict = ": below the best Transformer's interval (unpaired)"
    return [head + verdict]


def _baseline_verdict(rec, c) -> str:
    """LightGBM against the best Transformer, in words no stronger than its paired interval."""
    if c.high < 0:
        return "better than the best Transformer"
    if c.verdict == "qualifies" and rec.margin is not None:
        if c.low > 0:  # within the margin, yet significantly worse on the point
            return f"within {rec.margin:g} of the best Transformer, though significantly worse"
        return f"non-inferior within {rec.margin:g} to the best Transformer"
    if c.verdict == "qualifies":
        return "indistinguishable from the best Transformer"
    if c.verdict == "too wide":
        return "not told apart from the best Transformer, on an interval too wide to mean it"
    return ("worse than the best Transformer" if rec.margin is None or c.low >= rec.margin
            else f"not shown within {rec.margin:g} of the best Transformer")


def _saves_line(rec, cost: str) -> list[str]:
    from claims_search.commands.formatting import fmt_size

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
    from claims_search.commands.formatting import fmt_metric, fmt_size

    r, best = rec.record, rec.best
    params = f", {r.n_params / 1e6:.2f}M params" if r.n_params else ""
    figures = f"  {metric.upper()} {fmt_metric(r)}  cost {r.cost:.4g} {cost}"
    best_line = f"  best Transformer {fmt_size(best)} (trial {best.trial_id}) {metric.upper()} {fmt_metric(best)}  cost {best.cost:.4g}"
    if rec.choice == "baseline":
        c = rec.difference
        if c.high < 0:
            why = "better than the best Transformer"
        elif c.verdict == "qualifies" and rec.margin is not None and c.low > 0:
            why = (f"within {rec.margin:g} of the best Transformer (best - LightGBM = {c.diff:.4f} "
                   f"[{c.low:.4f}, {c.high:.4f}]), though significantly worse")
        elif c.verdict == "qualifies":
            why = (f"non-inferior within {rec.margin:g} to the best Transformer" if rec.margin is not None
                   else "indistinguishable from the best Transformer")
        else:
            why = "its tuning metric is at least the best Transformer's"
        cheaper = "at a lower cost" if r.cost < best.cost else "at a higher cost, but every size is worse"
        return [f"{rec.task}: recommended LightGBM (trial {r.trial_id}): {why}, {cheaper}", figures, best_line,
                _rule_line(rec, c, "LightGBM"),
                *([f"  the Transformer sizes could not be told apart: {rec.reason}"] if rec.underpowered else [])]
    if rec.underpowered:
        return [f"{rec.task}: the tuning split is too small to tell the cheaper sizes from the best; "
                f"keeping the best trial {fmt_size(r)}{params} (trial {r.trial_id}), not the smallest by default",
                figures, f"  why: {rec.reason}"]
    if r is best:
        return [f"{rec.task}: recommended {fmt_size(r)}{params} (trial {r.trial_id}), the best trial", figures,
                *([] if rec.comparisons else
                  ["  it is also the cheapest size tried" if rec.n_complete > 1 else "  the only size that completed"])]
    return [f"{rec.task}: recommended {fmt_size(r)}{params} (trial {r.trial_id}), the cheapest size that qualifies",
            figures, best_line.replace("best Transformer", "best")]


def _agreement_line(rec) -> list[str]:
    """How many bootstrap seeds give the same answer; a warning word when not all do."""
    if rec.agreement is None:
        return []
    same = rec.agreeing_seeds
    note = "" if same == rec.agreement_seeds else ": the answer is on a knife-edge; more tuning patients would settle it"
    return [f"  bootstrap-seed stability (the same predictions resampled, not a replication): the same answer "
            f"under {same} of {rec.agreement_seeds} seeds{note}"]


def describe(rec, metric: str, cost: str, held_out: dict | None = None) -> list[str]:
    """Human-readable lines for one task's Recommendation (see docs/search.md for examples).
    ``held_out``: the task's held-out confirmation ``{role: {trial_id, metrics | error}}``, as
    the search recorded it; its lines close the description. Costs are in ``rec.cost_unit``
    when the summary set one (GPU-hour equivalents when device kinds mixed), else ``cost``."""
    cost = rec.cost_unit or cost
    return [*_headline(rec, metric, cost), *_candidate_lines(rec), *_agreement_line(rec), *_saves_line(rec, cost),
            *_trend_lines(rec, held_out), *_baseline_line(rec, metric), *_fallback_note(rec),
            *held_out_lines(held_out, metric)]


def held_out_lines(roles: dict | None, metric: str) -> list[str]:
    """The held-out confirmation of one task: the headline figures (scored once, after the
    search chose; the tuning figures above chose them and are optimistic), each role's followed
    by meds-evaluation's figures of the same predictions, samples and subjects equally weighted
    (``meds_metrics``), where the confirmation holds them. None: there is none."""
    from claims_search.runs import meds_metrics

    if roles is None:
        return []
    if not roles:
        return ["  held-out confirmation: none recorded (the search stopped before it, or its models were lost)"]
    lines = ["  held-out confirmation (scored once, after the choice; the tuning figures above are optimistic):"]
    for role in ("recommended", "best", "baseline"):
        got = roles.get(role)
        if got is None:
            continue
        if "error" in got:
            lines.append(f"    {role:<11} trial {got['trial_id']}: not scored: {got['error']}")
            continue
        m = got["metrics"]
        lines.append(f"    {role:<11} {metric.upper()} {m[metric]:.3f} [{m[f'{metric}_low']:.3f}, "
                     f"{m[f'{metric}_high']:.3f}]  (n={int(m['n'])}, trial {got['trial_id']})")
        lines += meds_metrics.lines(m, " " * 16)  # none for a search confirmed before they were kept
    return lines


# ---- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print (or emit as JSON) the recommendation per task; 0 on success."""
    import json

    from claims_search.errors import ClaimsSearchError
    from claims_search.results.recommend import check_margin, check_stability_seeds
    from claims_search.results.summary import SummarySettings, summarize
    from claims_search.tracking.tracker import default_tracking_uri, load_confirmation, load_records, load_settings

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
        prices=got.get("prices"),
    )
    out = {task: s.recommendation for task, s in summarize(records, None, settings).items()}
    confirmed = load_confirmation(uri, args.experiment)
    if args.json:
        print(json.dumps({t: ({**r.to_dict(), "held_out": confirmed.get(t)} if r else None) for t, r in out.items()},
                         indent=2, default=str))
    else:
        for task, rec in out.items():
            if rec is None:
                print(f"{task}: no complete Transformer trial to recommend from ({trial_counts(records, task)})")
            else:
                print("\n".join(describe(rec, settings.metric, settings.cost, confirmed.get(task, {}))))
                if _overridden(args, got):
                    print("  (the held-out confirmation scored the search's own choice, under the search's settings)")
    return 0 if out and all(out.values()) else 1


def _overridden(args: argparse.Namespace, got: dict) -> bool:
    """Whether --margin or --tolerance differ from what the search decided with."""
    return any(getattr(args, k) is not None and getattr(args, k) != got.get(k) for k in ("margin", "tolerance"))


