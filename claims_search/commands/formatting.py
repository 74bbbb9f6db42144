"""What several commands print the same way: help text, costs, trial sizes and metrics, trial
counts. Below every command, so that commands never import each other for it."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that keeps the description's layout (its examples) and shows every option's
    default, except where there is none to show (no default, a flag) or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if ("(default" in text or "%(default)" in text or not action.option_strings
                or d is None or d is False
                or d is argparse.SUPPRESS or d == []):
            return text
        return text + " (default: %(default)s)"


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the :class:`HelpFormatter` (commands call it in ``add_arguments``)."""
    parser.formatter_class = HelpFormatter


def format_cost(cost) -> str:
    """One line: wall and device seconds, tokens, FLOPs (or 'n/a'), parameters, device."""
    flops = "n/a" if cost.flops is None else f"{cost.flops:.3g}"
    return (f"cost      wall {cost.wall_s:.1f}s  device {cost.device_s:.1f}s on {cost.n_devices}x {cost.device}  "
            f"tokens {cost.tokens:,}  flops {flops}  params {cost.n_params:,}")


def fmt_metric(r) -> str:
    """``0.4321 [0.40, 0.46]`` (the interval only when known)."""
    if r.metric is None:
        return "-"
    if r.metric_low is None or r.metric_high is None:
        return f"{r.metric:.4f}"
    return f"{r.metric:.4f} [{r.metric_low:.3f}, {r.metric_high:.3f}]"


def fmt_size(r) -> str:
    """``w128 d4 h4`` for a Transformer, ``LightGBM`` for the baseline."""
    if r.is_baseline:
        return "LightGBM"
    m = r.model
    return f"w{m.get('width')} d{m.get('depth')} h{m.get('heads')}" if m else "?"


def trial_counts(records, task: str) -> str:
    """``"3 complete, 1 failed, 0 pruned"`` for the Transformer trials of ``task``."""
    mine = [r.status for r in records if r.task == task and not r.is_baseline]
    return ", ".join(f"{mine.count(s)} {s}" for s in ("complete", "failed", "pruned"))
