"""The docs are tests: every fenced command and YAML block of README.md, docs/data.md and
docs/synthetic.md runs (or, where marked, is parsed) as written.

The marker: an HTML comment on the line before a block's opening fence, invisible on GitHub,

    <!-- docs-test: parse-only (why) -->

says the block is only parsed: its lines split with shlex, every ``claims-search`` command
parsed by the real CLI parser (a flag that no longer exists fails), every ``make`` target looked
up in the Makefile. Unmarked ``bash`` blocks run, in order, in a fresh folder per document, with
one substitution: ``--patients N`` becomes ``--patients 300``. An unmarked block may run only the
data-side commands (:data:`RUNNABLE`); one that needs a cloud, a cluster, a server or a long
search (``submit``, ``aws``, ``kubectl``, ``gcloud``, ``ray up``, ``search``, ``mlflow ui``,
``make``) must be marked, or this test fails saying so. Two tools of the MEDS ecosystem may run
too (:data:`TOOLS`), in a subprocess: ``aces-cli`` (installed with claims-search) and
``meds-evaluation-cli`` (its own venv, ``make meds-eval``; `make test` requires it, a hand-run
pytest without it skips that command alone). YAML blocks are parsed; an ACES task
(``predicates`` + ``windows``) is loaded with ``labels.load_task`` and its labels extracted on the
README flow's data. The other docs in docs/ have their YAML blocks parsed only.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN_DOCS = ("README.md", "docs/data.md", "docs/synthetic.md")
PATIENTS = "300"
MARKER = re.compile(r"<!--\s*docs-test:\s*parse-only\s*\((?P<why>[^)]+)\)\s*-->")
# claims-search commands a docs block may run here: local data work, seconds each on small data.
RUNNABLE = {"synth", "validate", "prepare", "baseline", "pretrain", "finetune", "predict"}
# The MEDS ecosystem's own programs a docs block may run: name -> where it is installed.
TOOLS = {"aces-cli": lambda: Path(sys.executable).parent / "aces-cli",
         "meds-evaluation-cli": lambda: Path(os.environ.get("MEDS_EVAL_VENV") or ROOT / ".venv-meds-eval")
         / "bin" / "meds-evaluation-cli"}
SHELL = {"bash", "sh", "shell", "console"}


@dataclass
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    parse_only: str | None  # the marker's reason

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    """The fenced blocks of ``doc`` with their info string and marker."""
    lines = (ROOT / doc).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)", lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(prev)
        out.append(Block(doc, start + 1, m.group(1).lower(), "\n".join(body) + "\n",
                         marker.group("why") if marker else None))
    return out


def commands(block: Block) -> list[list[str]]:
    """The block's commands as argv lists (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", block.text)
    out = []
    for line in joined.splitlines():
        try:
            argv = shlex.split(line, comments=True)
        except ValueError as e:
            pytest.fail(f"{block.where}: shell line does not parse ({e}): {line}")
        if argv:
            out.append(argv)
    return out


def shell_blocks(doc: str) -> list[Block]:
    return [b for b in blocks(doc) if b.lang in SHELL]


def all_run_doc_blocks() -> list[Block]:
    return [b for d in RUN_DOCS for b in blocks(d)]


def needs_marker(argv: list[str]) -> bool:
    """A command this test may not run (cloud, cluster, server, long search, the suite)."""
    return not (argv[0] in TOOLS or argv[0] == "claims-search" and len(argv) > 1 and argv[1] in RUNNABLE)


def check_parses(block: Block) -> None:
    """Every command of ``block`` parses: claims-search by its own parser, make by its target."""
    from claims_search.cli import build_parser

    makefile = (ROOT / "Makefile").read_text()
    for argv in commands(block):
        if argv[0] == "claims-search":
            args = argv[1:]
            inner = args[args.index("--") + 1:] if args[:1] == ["submit"] and "--" in args else None
            for a in [args] + ([inner] if inner else []):
                try:
                    build_parser(a).parse_args(a)
                except SystemExit:
                    pytest.fail(f"{block.where}: claims-search does not accept: {shlex.join(a)}")
        elif argv[0] == "make":
            for target in argv[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), \
                    f"{block.where}: no Makefile target {target!r}"


def substituted(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a == "--patients":
            out[i + 1] = PATIENTS
    return out


def cli() -> list[str]:
    script = Path(sys.executable).parent / "claims-search"
    return [str(script)] if script.exists() else [sys.executable, "-m", "claims_search.cli"]


def run_block(block: Block, cwd: Path) -> None:
    """Run the block's commands in ``cwd`` through the console script's entry point
    (``claims_search.cli:main``), in this process: one start-up for all of them."""
    import contextlib
    import io

    from claims_search.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for argv in commands(block):
            if argv[0] in TOOLS:
                run_tool(block, argv, cwd)
                continue
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(substituted(argv)[1:])
            assert rc == 0, (f"{block.where}: `{shlex.join(argv)}` exited {rc}:\n"
                             f"{out.getvalue()[-2000:]}\n{err.getvalue()[-3000:]}")


def run_tool(block: Block, argv: list[str], cwd: Path) -> None:
    """One of :data:`TOOLS`, as written, in ``cwd``."""
    import warnings

    program = TOOLS[argv[0]]()
    if not program.exists():
        why = f"{block.where}: {program} is missing (make meds-eval installs meds-evaluation-cli)"
        if os.environ.get("CLAIMS_SEARCH_REQUIRE_MEDS_EVAL"):
            pytest.fail(why)
        warnings.warn(f"{why}: `{shlex.join(argv)}` not run")
        return
    got = subprocess.run([str(program), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, f"{block.where}: `{shlex.join(argv)}` exited {got.returncode}:\n{got.stderr[-3000:]}"


# ------------------------------------------------------------------ the marker and parsing


def test_the_docs_have_blocks_and_the_marker_is_used():
    readme = blocks("README.md")
    assert sum(b.lang in SHELL for b in readme) >= 3 and any(b.lang == "yaml" for b in readme)
    assert any(b.parse_only for b in readme)
    assert blocks("docs/synthetic.md") and blocks("docs/data.md")


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_blocks_that_need_a_cloud_a_cluster_or_a_search_are_marked(doc):
    for b in shell_blocks(doc):
        for argv in commands(b):
            if needs_marker(argv):
                assert b.parse_only, (
                    f"{b.where}: `{shlex.join(argv)}` cannot run in the docs test; put "
                    "<!-- docs-test: parse-only (why) --> on the line before the block")


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_every_command_parses(doc):
    for b in shell_blocks(doc):
        check_parses(b)


def test_yaml_blocks_of_every_doc_parse():
    docs = sorted({str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} | {"README.md"})
    n = 0
    for doc in docs:
        for b in blocks(doc):
            if b.lang in ("yaml", "yml"):
                try:
                    yaml.safe_load(b.text)
                except yaml.YAMLError as e:
                    pytest.fail(f"{b.where}: YAML does not parse: {str(e).splitlines()[0]}")
                n += 1
    assert n >= 2


def test_no_doc_points_to_files_users_do_not_have():
    for doc in RUN_DOCS:
        text = (ROOT / doc).read_text()
        assert "SYNTHETIC.md" not in text and "shared/" not in text, doc


def test_the_marker_parser_on_an_example(tmp_path, monkeypatch):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- docs-test: parse-only (needs a Ray cluster) -->\n```bash\nray up c.yaml\n```\n\n"
                   "```bash\nclaims-search validate meds/\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    a, b = blocks("x.md")
    assert (a.parse_only, a.line, commands(a)) == ("needs a Ray cluster", 2, [["ray", "up", "c.yaml"]])
    assert b.parse_only is None and not needs_marker(commands(b)[0])
    assert needs_marker(["claims-search", "search", "--space", "smoke"])


# ------------------------------------------------------------------ running them


@pytest.fixture(scope="module")
def readme_flow(tmp_path_factory) -> Path:
    """The README's runnable blocks, in order, as written (fewer patients)."""
    cwd = tmp_path_factory.mktemp("readme")
    runnable = [b for b in shell_blocks("README.md") if not b.parse_only]
    assert runnable, "README.md: no runnable command block"
    for b in runnable:
        run_block(b, cwd)
    return cwd


def test_the_readme_flow_runs_as_written(readme_flow):
    flow = blocks("README.md")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The flow, one command per step"):text.index("\n## ", text.index("## The flow") + 5)]
    first = next(b for b in flow if b.lang in SHELL and not b.parse_only
                 and b.text.strip() in section)
    steps = [argv[1] for argv in commands(first)]
    assert steps == ["synth", "validate", "prepare", "baseline", "pretrain", "finetune"]
    for out in ("meds/metadata/subject_splits.parquet", "prepared/manifest.json",
                "runs/lgbm/result.json", "runs/pre/result.json", "runs/ft/result.json"):
        assert (readme_flow / out).exists(), out


def test_the_readme_meds_section_runs_in_and_out(readme_flow):
    """"With the MEDS tools you already use": a label table from aces-cli became a task, and
    meds-evaluation scored what predict wrote (where its venv is installed)."""
    import json

    import pyarrow.parquet as pq

    manifest = json.loads((readme_flow / "prepared-labels" / "manifest.json").read_text())
    assert list(manifest["tasks"]) == ["ckd_from_aces"] and "label_table" in manifest["tasks"]["ckd_from_aces"]
    assert (readme_flow / "runs" / "lgbm-labels" / "result.json").exists()
    assert pq.read_schema(readme_flow / "ckd_held_out.parquet").names == [
        "subject_id", "prediction_time", "boolean_value", "predicted_boolean_value", "predicted_boolean_probability"]
    if TOOLS["meds-evaluation-cli"]().exists():
        scored = json.loads((readme_flow / "ckd_held_out.json").read_text())
        assert 0 <= scored["samples_equally_weighted"]["roc_auc_score"] <= 1


@pytest.mark.parametrize("doc", [d for d in RUN_DOCS if d != "README.md"])
def test_the_other_docs_commands_run_as_written(doc, tmp_path):
    runnable = [b for b in shell_blocks(doc) if not b.parse_only]
    for b in runnable:
        run_block(b, tmp_path)
    if doc == "docs/synthetic.md":
        assert runnable and (tmp_path / "meds" / "metadata" / "dataset.json").exists()


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_task_yaml_blocks_load_and_label_the_readme_data(doc, readme_flow, tmp_path):
    tasks = [b for b in blocks(doc) if b.lang in ("yaml", "yml")
             and {"predicates", "windows"} <= set(yaml.safe_load(b.text) or {})]
    if doc != "docs/synthetic.md":
        assert tasks, f"{doc}: no ACES task example"
    for i, b in enumerate(tasks):
        path = tmp_path / f"example_{i}.yaml"
        path.write_text(b.text)
        got = subprocess.run(cli() + ["validate", str(readme_flow / "meds"), "--task", str(path)],
                             capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, f"{b.where}: {got.stderr.strip()}"
        assert re.search(r"task example_\d: [\d,]+ samples, [1-9][\d,]* positive", got.stdout)


def test_the_benchmarks_page_is_results_not_a_journal():
    """At most 400 lines, and no issue numbers in the user docs (git keeps the history)."""
    import re

    root = Path(__file__).resolve().parent.parent
    assert len((root / "docs" / "benchmarks.md").read_text().splitlines()) <= 400
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues? \d+\b", page.read_text(), re.I), page.name
