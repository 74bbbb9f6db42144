"""The job's command line: a claims-search command (``search ...``) turned into the shell command a
Ray job runs, with the search's name, tracking URI and storage filled in. CLI knowledge, so it
lives beside the commands, above the Ray Job Submission edge (``cluster/jobs.py``)."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

from claims_search.cli import COMMANDS
from claims_search.errors import ClaimsSearchError
from claims_search.named import generated_name


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``argv``."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def is_command(argv: list[str]) -> bool:
    """True if ``argv`` is a claims-search command (``search ...``) rather than a raw command."""
    return bool(argv) and argv[0] in COMMANDS


def build_entrypoint(
    argv: list[str],
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    now: dt.datetime | None = None,
    token: str | None = None,
) -> tuple[str, str | None]:
    """``(shell command, experiment name)`` for ``argv``.

    A claims-search command runs as ``python -m claims_search.cli ...`` (the uploaded working
    dir's code if there is one, else the installed package). A ``search`` gets ``--name`` (a
    generated ``<space>-<UTC time>-<6 hex>`` if missing: that is its MLflow experiment), the tracking
    URI and the shared storage (``--storage``) unless it names its own. Anything else
    (``python probe.py``) runs as given.
    """
    if not argv:
        raise ClaimsSearchError("submit: nothing to run: give a command after `--`, e.g. -- search --space smoke ...")
    argv = list(argv)
    experiment = None
    if argv[0] == "search":
        experiment = flag_value(argv, "--name")
        if experiment is None:
            experiment = generated_name(Path(flag_value(argv, "--space") or "search").stem, now, token)
            argv += ["--name", experiment]
        if tracking_uri and flag_value(argv, "--tracking-uri") is None:
            argv += ["--tracking-uri", tracking_uri]
        if storage_path and flag_value(argv, "--storage") is None:
            argv += ["--storage", storage_path]
    if is_command(argv):
        argv = ["python", "-m", "claims_search.cli", *argv]
    return shlex.join(argv), experiment
