"""What the bench scripts share: synthetic data, the settings guard on ``--out``, markdown tables.

- :func:`data` synthesises MEDS data (``claims-search synth``) and prepares its tokenized cache
  (``claims-search prepare``) under a folder, once; :func:`quick_data` is the one tiny dataset
  every ``--quick`` mode reads (``QUICK_PATIENTS`` patients, seed 0, 128 events), so a test can
  make it once and lend it to every script.
- :func:`guard` makes an output folder record the settings it was made with
  (``settings.json``) and refuses, in one line and before writing anything, a run with other
  settings, quick against full in particular: cached units of two settings never mix.
- :func:`table` renders the markdown tables the reports print.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# The --quick modes' data: enough patients for every split of both built-in tasks to hold both
# classes, few enough that synth + prepare take seconds.
QUICK_PATIENTS = 300
QUICK_MAX_LEN = 128
QUICK_WORKERS = ("--workers", "1")  # a second worker process costs more than it saves on 300 patients


def claims_search(*args: str, log=None, env: dict | None = None, quiet: bool = False) -> None:
    """Run this venv's ``claims-search`` CLI as its own process; fail loudly if it fails
    (``quiet``: its output is kept back, and only its tail shown, in one exit message, on failure)."""
    exe = Path(sys.executable).with_name("claims-search")
    if log is not None:
        log(" ".join(["claims-search", *args]))
    if not quiet:
        subprocess.run([str(exe), *args], check=True, env=env)
        return
    done = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"claims-search {args[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


def synth(meds: Path, patients: int, seed: int = 0, args: tuple = (), log=None, env: dict | None = None,
          quiet: bool = False) -> bool:
    """``claims-search synth`` into ``meds`` unless a whole dataset is there; True if it ran."""
    meds = Path(meds)
    if (meds / "metadata" / "dataset.json").exists() and (meds / "oracle" / "summary.json").exists():
        return False
    claims_search("synth", "--patients", str(patients), "--seed", str(seed), "--out", str(meds), *args,
                  "--overwrite", log=log, env=env, quiet=quiet)
    return True


def prepare(meds: Path, prepared: Path, max_len: int = 128, args: tuple = (), log=None,
            env: dict | None = None, quiet: bool = False) -> bool:
    """``claims-search prepare`` of ``meds`` into ``prepared`` unless its cache is there; True if it ran."""
    if (Path(prepared) / "manifest.json").exists():
        return False
    claims_search("prepare", "--meds", str(meds), "--out", str(prepared), "--max-len", str(max_len), *args,
                  log=log, env=env, quiet=quiet)
    return True


def data(out: Path, patients: int, seed: int = 0, max_len: int = 128, synth_args: tuple = (),
         prepare_args: tuple = (), log=None, env: dict | None = None, quiet: bool = False) -> Path:
    """``out/meds`` (synthesised) and ``out/prepared`` (its cache at ``max_len`` events), each
    made only if missing; returns the prepared folder."""
    meds, prepared = Path(out) / "meds", Path(out) / "prepared"
    synth(meds, patients, seed, synth_args, log, env, quiet)
    prepare(meds, prepared, max_len, prepare_args, log, env, quiet)
    return prepared


def quick_data(out: Path, log=None, quiet: bool = False) -> Path:
    """The ``--quick`` modes' dataset under ``out`` (one worker each: faster on tiny data)."""
    return data(out, QUICK_PATIENTS, 0, QUICK_MAX_LEN, QUICK_WORKERS, QUICK_WORKERS, log=log, quiet=quiet)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(recorded: dict, settings: dict) -> list[str]:
    """``"key: recorded -> now"`` for every setting that differs (nested keys dotted)."""
    a, b = _flat(recorded), _flat(json.loads(json.dumps(settings)))  # tuples compare as the lists read back
    missing = object()
    return [f"{k}: {json.dumps(a.get(k)) if k in a else 'unset'} -> {json.dumps(b.get(k)) if k in b else 'unset'}"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def guard(out: Path, settings: dict, script: str) -> None:
    """Record ``settings`` (``quick`` among them) in ``out/settings.json``, or refuse if the folder was
    made with others: one line on stderr naming the folder and what differs, exit status 2, and
    nothing written. A folder recorded before the guard knew ``quick`` holds a full run."""
    f = Path(out) / "settings.json"
    if f.exists():
        recorded = json.loads(f.read_text())
        if "quick" in settings:
            recorded.setdefault("quick", False)
        diff = differences(recorded, settings)
        if diff:
            print(f"{script}: refused: {out} holds results made with other settings ({'; '.join(diff)}); "
                  "use another --out", file=sys.stderr)
            sys.exit(2)
    write_json(f, settings)


def write_json(path: Path, obj) -> None:
    """Atomic: the file exists only once written whole (a unit's summary marks the unit done)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def row(cells) -> str:
    """One markdown table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def rule(align: str) -> str:
    """The rule under a header, one character per column: ``l`` -> ``---``, ``r`` -> ``---:``."""
    return "|" + "".join("---:|" if a == "r" else "---|" for a in align)


def table(header, rows, align: str | None = None) -> list[str]:
    """A markdown table's lines: header, rule (left-aligned unless ``align`` says), rows."""
    return [row(header), rule(align or "l" * len(header)), *(row(r) for r in rows)]


def machine() -> str:
    """``"<CPU model>, <n> cores, Python <version>"`` for a report's first line."""
    cpu = platform.processor()
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
