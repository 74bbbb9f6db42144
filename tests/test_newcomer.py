"""What a new user meets first: `--help` that explains every option and its default, progress
they can watch, and commands that agree with each other about the same data."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from claims_search.cli import build_parser, main

FIRST_COMMANDS = ("validate", "prepare", "synth", "pretrain", "finetune", "baseline")


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", FIRST_COMMANDS)
def test_every_option_has_help_and_shows_its_default(name):
    p = subparser(name)
    text = re.sub(r"\s+", " ", p.format_help())
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0] if action.option_strings else action.metavar or action.dest
        assert action.help and action.help.strip(), f"{name} {flag}: no help text"
        shown = p._get_formatter()._expand_help(action)  # the option's text in --help
        assert re.sub(r"\s+", " ", shown) in text
        d = action.default
        if action.option_strings and not (d is None or d is False or d == [] or d is argparse.SUPPRESS):
            assert f"default: {d}" in shown, f"{name} {flag}: default {d!r} not shown: {shown}"


def test_training_options_show_their_defaults_and_examples_keep_their_layout():
    text = re.sub(r"\s+", " ", subparser("pretrain").format_help())
    assert "--steps STEPS optimiser steps (default: 1000)" in text
    assert "(default: 0.001)" in text  # --lr
    assert "(default: None)" not in text and "(default: False)" not in text
    ft = re.sub(r"\s+", " ", subparser("finetune").format_help())
    assert "--steps STEPS optimiser steps (default: 300)" in ft and "(default: 0.0003)" in ft
    raw = subparser("prepare").format_help()
    assert "\nExamples:\n  claims-search prepare --meds meds/ --out prepared/\n" in raw


def test_progress_is_a_bar_with_an_eta_on_a_terminal():
    from rich.console import Console

    from claims_search.commands.pretrain import StepProgress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with StepProgress(100, "pretrain", tty=True, console=console) as bar:
        bar(50, {"loss": 5.0, "lr": 1e-3, "tokens_per_s": 1000.0})
        bar(100, {"loss": 4.0, "lr": 1e-4, "tokens_per_s": 1000.0})
    out = buf.getvalue()
    assert "pretrain" in out and "100/100" in out and "loss 4.0000" in out and "ETA" in out


def test_progress_is_log_lines_elsewhere(capsys):
    from claims_search.commands.pretrain import StepProgress

    with StepProgress(100, "pretrain", tty=False) as bar:
        bar(50, {"loss": 5.0, "lr": 1e-3, "tokens_per_s": 1000.0})
    assert capsys.readouterr().out == "step     50  loss 5.0000  lr 1.00e-03  1,000 tokens/s\n"


def test_the_eta_follows_the_measured_rate():
    from claims_search.commands.pretrain import StepProgress

    p = StepProgress(100, "x", tty=False)
    p.t0 = 0.0
    assert p.eta(10, 20.0) == pytest.approx(180.0)  # 10 steps in 20 s since the start
    assert p.eta(30, 40.0) == pytest.approx(70.0)  # then 20 steps in 20 s: 1 step/s


def test_synth_and_validate_count_the_same_shards(tmp_path, capsys):
    out = tmp_path / "meds"
    assert main(["synth", "--patients", "40", "--shard-size", "20", "--out", str(out),
                 "--workers", "1"]) == 0
    said = capsys.readouterr().out
    files = len(list((out / "data").rglob("*.parquet")))
    assert files > 3  # two blocks of 20 patients, a file per split each
    assert f"{files} shards in" in said.splitlines()[0]
    assert main(["validate", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{files} shards, 40 subjects")
