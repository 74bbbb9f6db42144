"""The bad-input corpus: every case in tests/bad_inputs/ runs through the real CLI and must end
the way the README promises: a non-zero exit, exactly one line on stderr that names what is
wrong, no traceback anywhere, and no output left behind.

A case is a small YAML file (the format is in tests/bad_inputs/README.md): the command line,
how its inputs differ from a good MEDS dataset (literal rows, or a mutation of the Parquet
files made here: binary files stay out of git), files to write (task files, search spaces),
and the words the error must contain. Most cases run in-process through ``cli.main`` (fast);
those marked ``console: true`` run the installed ``claims-search`` script in a subprocess, to
show that the exit status and the absence of a traceback hold there too.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from claims_search.data import meds
from claims_search.cli import main

CASES_DIR = Path(__file__).parent / "bad_inputs"
CASES = sorted(CASES_DIR.glob("*.yaml"))
REPO = Path(__file__).resolve().parent.parent

# The good dataset every data case starts from: three patients around a health checkup.
# ckd_incidence: subject 1 positive, 2 and 3 negative; antihypertensive_start: 2 positive.
GOOD_ROWS = [
    (1, None, "GENDER//F"), (1, "1960-05-01", "MEDS_BIRTH"),
    (1, "2020-04-01", "HC//SPECIFIC_CHECKUP"), (1, "2020-04-01", "HC//SBP", 152.0),
    (1, "2020-09-01", "DX//ICD10//N18.2"),
    (2, None, "GENDER//M"), (2, "1970-01-15", "MEDS_BIRTH"),
    (2, "2020-04-01", "HC//SPECIFIC_CHECKUP"), (2, "2020-05-01", "DRUG//ATC//C08CA01"),
    (3, None, "GENDER//M"), (3, "1975-03-03", "MEDS_BIRTH"),
    (3, "2020-04-01", "HC//SPECIFIC_CHECKUP"),
]
GOOD_SPLITS = {1: "train", 2: "train", 3: "tuning"}


def _codes(shards: dict) -> list[str]:
    return sorted({r[2] for rows in shards.values() for r in rows if r[2] is not None})


def write_meds(root: Path, case: dict) -> Path:
    """The case's MEDS dataset: its ``shards``/``splits`` (literal rows) or the good one."""
    shards = {k: [tuple(r) for r in v] for k, v in (case.get("shards") or {"0": GOOD_ROWS}).items()}
    splits = {int(k): v for k, v in (case.get("splits") or GOOD_SPLITS).items()}
    return meds.write_dataset(root, shards, splits, _codes(shards))


# ---- mutations of the written files (binary damage that literal rows cannot express) ------

def _rewrite(path: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def retype(root: Path, file: str, column: str, to: str) -> None:
    """Store ``column`` as another Arrow type (``string``, ``timestamp[us, tz=UTC]`` ...)."""
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "timestamp[us, tz=UTC]": pa.timestamp("us", tz="UTC")}
    _rewrite(root / file, lambda t: t.set_column(
        t.schema.get_field_index(column), column, t.column(column).cast(types[to])))


def set_null(root: Path, file: str, column: str, row: int) -> None:
    """Make one value null."""
    def fn(t):
        values = t.column(column).to_pylist()
        values[row] = None
        return t.set_column(t.schema.get_field_index(column), column,
                            pa.array(values, t.schema.field(column).type))
    _rewrite(root / file, fn)


def set_time_us(root: Path, file: str, row: int, value: int) -> None:
    """Set one ``time`` to ``value`` microseconds since 1970 (beyond what ``datetime`` holds)."""
    def fn(t):
        us = t.column("time").cast(pa.int64()).to_pylist()
        us[row] = value
        return t.set_column(t.schema.get_field_index("time"), "time",
                            pa.array(us, pa.int64()).cast(pa.timestamp("us")))
    _rewrite(root / file, fn)


def non_utf8(root: Path, file: str, column: str, row: int, latin1: str) -> None:
    """Put ``latin1`` encoded as Latin-1 (not UTF-8) into a string column; Parquet allows it."""
    def fn(t):
        raw = [v.encode() for v in t.column(column).to_pylist()]
        raw[row] = latin1.encode("latin-1")
        offsets = pa.array([0, *itertools.accumulate(map(len, raw))], pa.int32())
        arr = pa.Array.from_buffers(pa.string(), len(raw), [None, offsets.buffers()[1],
                                                            pa.py_buffer(b"".join(raw))])
        return t.set_column(t.schema.get_field_index(column), column, arr)
    _rewrite(root / file, fn)


def truncate(root: Path, file: str, keep: float) -> None:
    """Keep only the first ``keep`` share of the file's bytes (an interrupted copy)."""
    data = (root / file).read_bytes()
    (root / file).write_bytes(data[: int(len(data) * keep)])


def scribble(root: Path, file: str) -> None:
    """Overwrite the data pages but keep the footer: the schema reads, the rows do not."""
    data = bytearray((root / file).read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):
        data[i] = 0xFF
    (root / file).write_bytes(bytes(data))


def delete(root: Path, file: str) -> None:
    """Remove a file or folder of the dataset."""
    p = root / file
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def write_text(root: Path, file: str, text: str) -> None:
    """Replace a file of the dataset with text."""
    (root / file).write_text(text)


def write_splits(root: Path, rows: list) -> None:
    """subject_splits.parquet from literal ``[subject_id, split]`` rows (duplicates allowed)."""
    pq.write_table(pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                             "split": pa.array([r[1] for r in rows], pa.string())}),
                   root / "metadata" / "subject_splits.parquet")


MUTATIONS = {f.__name__: f for f in (retype, set_null, set_time_us, non_utf8, truncate, scribble,
                                     delete, write_text, write_splits)}


# ---- files, spaces and caches ----------------------------------------------------------------

def write_files(tmp: Path, files: dict) -> None:
    """``files``: name -> text, or {text, encoding} for a file saved in another encoding."""
    for name, spec in files.items():
        text, enc = (spec, "utf-8") if isinstance(spec, str) else (spec["text"], spec["encoding"])
        (tmp / name).write_bytes(text.encode(enc))


LABEL_TYPES = {"subject_id": pa.int64(), "prediction_time": pa.timestamp("us"), "boolean_value": pa.bool_()}


def write_labels(tmp: Path, tables: dict) -> None:
    """``{tmp}/labels/NAME.parquet`` per table: ``{columns: [...], rows: [[...], ...]}`` (columns
    default to the MEDS label schema's three, typed as it says; ``types`` overrides a type)."""
    (tmp / "labels").mkdir()
    for name, spec in tables.items():
        cols = spec.get("columns", list(LABEL_TYPES))
        types = {**LABEL_TYPES, **{c: pa.type_for_alias(t) for c, t in spec.get("types", {}).items()}}
        data = {c: [r[i] for r in spec["rows"]] for i, c in enumerate(cols)}
        times = lambda vals: pa.array([v and datetime.fromisoformat(v) for v in vals], pa.timestamp("us"))  # noqa: E731
        arrays = {c: times(vals).cast(types[c]) if c == "prediction_time" else pa.array(vals, types[c])
                  for c, vals in data.items()}
        pq.write_table(pa.table(arrays), tmp / "labels" / f"{name}.parquet")


def write_space(tmp: Path, overrides: dict) -> None:
    """``space.yaml``: the shipped smoke space on the task the test cache has, with dotted-key
    overrides (``budget.gpus_per_worker: 1``)."""
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space["tasks"] = ["antihypertensive_start"]
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = space
        for k in parents:
            node = node[k]
        node[leaf] = value
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))


def copy_cache(src: Path, dst: Path, change: dict) -> None:
    """A copy of a prepared cache with its manifest changed (``format_version``) or replaced
    (``manifest_text``)."""
    shutil.copytree(src, dst)
    manifest = dst / "manifest.json"
    if "manifest_text" in change:
        manifest.write_text(change["manifest_text"])
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **change}))


def build(case: dict, tmp: Path, request) -> dict[str, str]:
    """Write the case's inputs under ``tmp``; return the values of the argv placeholders."""
    where = {"tmp": str(tmp), "out": str(tmp / "out"), "meds": str(tmp / "meds"),
             "cache": str(tmp / "cache")}
    root = write_meds(tmp / "meds", case)
    for m in case.get("mutate", []):
        (name, kwargs), = m.items()
        MUTATIONS[name](root, **kwargs)
    write_files(tmp, case.get("files", {}))
    if "labels" in case:
        write_labels(tmp, case["labels"])
    if "space" in case:
        write_space(tmp, case["space"])
    if "cache" in case:
        copy_cache(request.getfixturevalue("recency_cache"), tmp / "cache", case["cache"])
    elif any("{cache}" in a for a in case["run"]):
        where["cache"] = str(request.getfixturevalue("recency_cache"))
    return where


def run_case(argv: list[str], env: dict, console: bool, capfd) -> tuple[int, str, str]:
    """Run the CLI in-process (or the console script); return exit status, stdout, stderr."""
    if console:
        script = Path(sys.executable).parent / "claims-search"
        got = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
        return got.returncode, got.stdout, got.stderr
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_input_is_one_line_a_nonzero_exit_and_no_output(path, tmp_path, capfd, monkeypatch,
                                                             request):
    case = yaml.safe_load(path.read_text())
    if case.get("xfail"):
        request.applymarker(pytest.mark.xfail(reason=case["xfail"], strict=True))
    work = tmp_path / "work"
    work.mkdir()
    where = build(case, work, request)
    argv = [a.format(**where) for a in case["run"]]
    env = {k: str(v).format(**where) for k, v in case.get("env", {}).items()}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(work)  # a default like ./runs or ./mlflow.db lands where we look
    before = sorted(p.name for p in work.iterdir())

    code, out, err = run_case(argv, env, case.get("console", False), capfd)

    assert code == case.get("exit", 2), (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("claims-search"), err
    for word in case["error"]:
        assert word.format(**where) in lines[0], f"{word!r} not in: {lines[0]}"
    assert "Traceback" not in out + err
    # Nothing half-written: no new file or folder next to the inputs (outputs, temporary
    # folders, a default ./runs or ./mlflow.db).
    assert sorted(p.name for p in work.iterdir()) == before


def test_the_corpus_is_big_and_every_case_says_what_the_user_sees():
    assert len(CASES) >= 30
    for path in CASES:
        case = yaml.safe_load(path.read_text())
        assert case.get("what") and case.get("error") and "run" in case, path.name
        unknown = set(case) - {"what", "run", "error", "exit", "shards", "splits", "mutate",
                               "files", "labels", "space", "cache", "env", "console", "xfail"}
        assert not unknown, f"{path.name}: unknown keys {unknown}"
    assert sum(bool(yaml.safe_load(p.read_text()).get("console")) for p in CASES) >= 3


def test_the_good_inputs_the_cases_start_from_pass(tmp_path, capfd):
    """Each case fails because of what it changed: unchanged, the same inputs succeed."""
    root = write_meds(tmp_path / "meds", {})
    assert main(["validate", str(root), "--strict", "--task", "ckd_incidence",
                 "--task", "antihypertensive_start"]) == 0
    assert main(["prepare", "--meds", str(root), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--min-count", "1"]) == 0
    assert "error" not in capfd.readouterr().err
