"""Metric vs cost pictures per task: a static PNG (matplotlib, Agg) and an offline HTML (plotly).

Each shows every complete trial with its bootstrap interval as an error bar, the Pareto
frontier as a step line, the recommendation ringed (the baseline when it is recommended), the
baseline as a distinct marker, on a log cost axis; under the unpaired rule also the bar a
cheaper trial had to reach. Aggregates only: one point per trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from claims_search.results.frontier import TrialRecord, pareto_front

COST_LABELS = {
    "device_seconds": "cost (device-seconds, log)",
    "gpu_hour_equivalents": "cost (GPU-hour equivalents: device-hours priced per kind, log)",
    "flops": "cost (FLOPs, log)",
    "wall_seconds": "cost (wall-clock seconds, log)",
}


def _label(r: TrialRecord) -> str:
    if r.is_baseline:
        return "baseline (LightGBM)"
    m = r.model
    size = f"w{m.get('width')} d{m.get('depth')} h{m.get('heads')}" if m else ""
    params = f" · {r.n_params / 1e6:.2f}M params" if r.n_params else ""
    return f"trial {r.trial_id}: {size}{params}"


def _bar(rec) -> str | None:
    """Label of the unpaired rule's horizontal bar, or None under the paired rule: a paired
    comparison has no single bar on the metric axis (each candidate has its own interval)."""
    if getattr(rec, "rule", "unpaired") == "paired":
        return None
    return "within tolerance of best" if rec.rule == "tolerance" else "best's 95% lower bound (unpaired rule)"


def _err(rs: list[TrialRecord]) -> tuple[list[float], list[float]]:
    low = [r.metric - r.metric_low if r.metric_low is not None else 0.0 for r in rs]
    high = [r.metric_high - r.metric if r.metric_high is not None else 0.0 for r in rs]
    return low, high


def write_png(
    path: str | Path,
    records: Iterable[TrialRecord],
    task: str,
    rec=None,
    metric: str = "auprc",
    cost: str = "device_seconds",
) -> Path:
    """Static frontier picture of ``task`` at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and Ray workers
    import matplotlib.pyplot as plt

    records = [r for r in records if r.task == task and r.usable]
    models = [r for r in records if not r.is_baseline]
    base = [r for r in records if r.is_baseline]
    front = pareto_front(records, task)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if models:
        ax.errorbar([r.cost for r in models], [r.metric for r in models], yerr=_err(models), fmt="o",
                    color="tab:blue", alpha=0.7, capsize=3, label="trials")
    if base:
        ax.errorbar([r.cost for r in base], [r.metric for r in base], yerr=_err(base), fmt="s",
                    color="tab:gray", capsize=3, label="baseline (LightGBM)")
    if front:
        ax.step([r.cost for r in front], [r.metric for r in front], where="post", color="tab:orange", label="Pareto frontier")
    if rec is not None:
        ax.scatter([rec.record.cost], [rec.record.metric], s=260, facecolors="none", edgecolors="tab:red",
                   linewidths=2, label="recommended", zorder=5)
        if _bar(rec) is not None:
            ax.axhline(rec.threshold, color="tab:red", linestyle=":", linewidth=1, label=_bar(rec))
    ax.set_xscale("log")
    ax.set_xlabel(COST_LABELS.get(cost, cost))
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{task}: {metric.upper()} vs compute{mixed_devices_note(records, cost)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if records:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no complete trials yet", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_html(
    path: str | Path,
    records: Iterable[TrialRecord],
    task: str,
    rec=None,
    metric: str = "auprc",
    cost: str = "device_seconds",
) -> Path:
    """Interactive frontier of ``task`` at ``path``; plotly.js is embedded so it works offline."""
    import plotly.graph_objects as go

    records = [r for r in records if r.task == task and r.usable]
    front = pareto_front(records, task)
    fig = go.Figure()
    for name, rs, symbol, color in (
        ("trials", [r for r in records if not r.is_baseline], "circle", "#1f77b4"),
        ("baseline (LightGBM)", [r for r in records if r.is_baseline], "square", "#7f7f7f"),
    ):
        if not rs:
            continue
        low, high = _err(rs)
        fig.add_trace(go.Scatter(
            x=[r.cost for r in rs], y=[r.metric for r in rs], mode="markers", name=name,
            marker={"symbol": symbol, "size": 9, "color": color}, text=[_label(r) for r in rs],
            error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
            hovertemplate="%{text}<br>" + metric.upper() + " %{y:.4f}<br>cost %{x:.4g}<extra></extra>",
        ))
    if front:
        fig.add_trace(go.Scatter(x=[r.cost for r in front], y=[r.metric for r in front], mode="lines",
                                 line={"shape": "hv", "color": "#ff7f0e"}, name="Pareto frontier"))
    if rec is not None:
        fig.add_trace(go.Scatter(x=[rec.record.cost], y=[rec.record.metric], mode="markers", name="recommended",
                                 text=[_label(rec.record)],
                                 marker={"size": 22, "color": "rgba(0,0,0,0)", "line": {"color": "#d62728", "width": 3}}))
        if _bar(rec) is not None:
            fig.add_hline(y=rec.threshold, line_dash="dot", line_color="#d62728", annotation_text=_bar(rec))
    fig.update_xaxes(type="log", title=COST_LABELS.get(cost, cost))
    fig.update_yaxes(title=metric.upper())
    fig.update_layout(title=f"{task}: {metric.upper()} vs compute{mixed_devices_note(records, cost)}",
                      template="plotly_white")
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def write_plots(
    out_dir: str | Path,
    records: Iterable[TrialRecord],
    task: str,
    rec=None,
    metric: str = "auprc",
    cost: str = "device_seconds",
) -> tuple[Path, Path]:
    """``frontier.png`` and ``frontier.html`` of ``task`` in ``out_dir``."""
    out_dir = Path(out_dir)
    records = list(records)
    return (
        write_png(out_dir / "frontier.png", records, task, rec, metric, cost),
        write_html(out_dir / "frontier.html", records, task, rec, metric, cost),
    )


def mixed_devices_note(records: Iterable[TrialRecord], cost: str = "device_seconds") -> str:
    """A title suffix when the points' costs were measured on different kinds of device: priced
    into one unit (``prices.py``), or, in a measure that was not, a warning (a CPU-second is not
    a GPU-second: such costs share an axis, not a unit)."""
    kinds = sorted({r.tags.get("device", "") for r in records if r.usable} - {""})
    if len(kinds) < 2:
        return ""
    if cost == "gpu_hour_equivalents":
        return f" (devices priced per kind: {', '.join(kinds)})"
    return f" (mixed devices: {', '.join(kinds)}; costs not comparable)"
