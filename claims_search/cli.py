"""The `claims-search` command: one table of sub-commands, each a module in `commands/`.

Each command module has a docstring (its ``--help`` text), ``add_arguments(parser)`` and
``run(args) -> int``. A module is imported only when its command runs, and imports heavy
packages (torch, ray, mlflow) inside ``run``, so `claims-search synth` never pays for them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from claims_search.errors import ClaimsSearchError

# name -> one-line help; the module is claims_search.commands.<name>. In the order data flows.
COMMANDS = {
    "synth": "generate synthetic Japanese-style claims as a MEDS dataset",
    "validate": "check a MEDS dataset against the schema and the standard's rules",
    "prepare": "MEDS + tasks -> labels and a tokenized cache for training",
    "pretrain": "pretrain one model size with masked-code modelling",
    "finetune": "fine-tune one model size on a task",
    "baseline": "LightGBM on recent-window code counts, per task",
    "search": "search model sizes per task on Ray Tune + Optuna, tracked in MLflow",
    "frontier": "print each task's accuracy-vs-cost Pareto frontier",
    "trials": "list a search's trials with status and the reason of each failure",
    "recommend": "print the recommended model size per task",
    "predict": "per-patient predictions of a chosen model, to a file (never to MLflow)",
    "sync": "deliver a search's results to MLflow after the tracking server was away",
    "submit": "submit a search to a Ray cluster as a job",
    "jobs": "list the jobs on a Ray cluster",
    "logs": "print or follow a job's logs",
    "stop": "stop a job on a Ray cluster",
}


def _load(name: str):
    return importlib.import_module(f"claims_search.commands.{name}")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the CLI (the
    usage block argparse prints first is what ``--help`` is for)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the command named in ``argv`` is imported for its arguments."""
    parser = _Parser(
        prog="claims-search",
        description="Find the right Transformer size per task on medical claims (MEDS).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name in COMMANDS:
        if name == wanted:
            module = _load(name)
            p = sub.add_parser(name, help=COMMANDS[name], description=module.__doc__)
            module.add_arguments(p)
        else:
            sub.add_parser(name, help=COMMANDS[name], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `claims-search` console script. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(_load(args.command).run(args) or 0)
    except ClaimsSearchError as e:  # one line per problem (most errors have one)
        for line in str(e).splitlines() or [""]:
            print(f"claims-search {args.command}: error: {line}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable --out, disk full, permission denied ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"claims-search {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"claims-search {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
