"""The MEDS-DEV commands of claims-search (model.yaml calls this script with the placeholders
MEDS-DEV fills in). It only runs claims-search's own commands, in the Python that runs it:

  pretrain  (unsupervised train): `prepare --meds {dataset_dir}` into {output_dir}/prepared,
            then `pretrain` at the size chosen below into {output_dir}/pretrain
  finetune  (supervised train):   `prepare --meds {dataset_dir} --labels` the task's labels
            ({labels_dir}, MEDS label schema, any folder of Parquet shards) into
            {output_dir}/prepared, then `finetune --init {model_initialization_dir}/pretrain`
            into {output_dir}/finetune
  predict   (supervised predict): `predict` of {model_initialization_dir}/finetune on {split}
            -> {output_dir}/predictions.parquet, in the MEDS prediction schema

The size: $CLAIMS_SEARCH_SIZE (a preset: debug, 2.2M, 4.9M, 11M, 33M, 101M), or the model a
search recommended: $CLAIMS_SEARCH_RECOMMENDATION, a `claims-search recommend --json` file
(with $CLAIMS_SEARCH_RECOMMENDATION_TASK naming the task when it holds several); default 2.2M.
$CLAIMS_SEARCH_PRETRAIN_STEPS and $CLAIMS_SEARCH_FINETUNE_STEPS override the steps. demo=True:
the debug size, 20 + 30 steps, sequences of 64 events: minutes on a CPU. A GPU is used where
torch sees one. Each step's settings are written to {output_dir}/claims_search_meds_dev.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

STATE = "claims_search_meds_dev.json"
DEMO = {"size": "debug", "pretrain_steps": 20, "finetune_steps": 30, "max_len": 64, "bootstrap": 100}
DEFAULT_SIZE = "2.2M"


def truthy(text: str) -> bool:
    if text.strip().lower() in ("true", "1", "yes"):
        return True
    if text.strip().lower() in ("false", "0", "no", "none", ""):
        return False
    raise SystemExit(f"demo={text!r}: expected True or False")


def claims_search(*argv: str) -> None:
    """One claims-search command, in this Python; its failure is ours."""
    cmd = [sys.executable, "-m", "claims_search.cli", *argv]
    print("+ claims-search " + " ".join(argv), flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"claims-search {argv[0]} failed (exit {done.returncode})")


def gpu() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    return ["--gpu"] if torch.cuda.is_available() else []


def recommended(path: str, task: str | None) -> dict:
    """The recommended Transformer of a `recommend --json` file: ``{"trial_id", "task", "model"}``
    (its width, depth, heads, ...; a baseline recommendation: the best Transformer, said on stdout)."""
    got = json.loads(Path(path).read_text())
    tasks = {t: r for t, r in got.items() if r}
    if task is None:
        if len(tasks) != 1:
            raise SystemExit(f"{path}: recommendations for {', '.join(sorted(tasks)) or 'no task'}; "
                             "name one with CLAIMS_SEARCH_RECOMMENDATION_TASK")
        task = next(iter(tasks))
    if task not in tasks:
        raise SystemExit(f"{path}: no recommendation for task {task!r} (has: {', '.join(sorted(tasks))})")
    rec = tasks[task]
    pick = rec.get("recommended")
    if rec.get("choice") == "baseline" or not pick or "width" not in (pick.get("model") or {}):
        pick = rec.get("best")
        print(f"{path}: {task}'s recommendation is the LightGBM baseline; pretraining its best Transformer, "
              f"trial {pick and pick.get('trial_id')}")
    if not pick or "width" not in (pick.get("model") or {}):
        raise SystemExit(f"{path}: no Transformer recommended for task {task!r}")
    return {"trial_id": pick.get("trial_id"), "task": task, "model": pick["model"]}


def size_arguments(choice: dict) -> list[str]:
    if "preset" in choice:
        return ["--size", choice["preset"]]
    m = choice["model"]
    args = ["--width", str(m["width"]), "--depth", str(m["depth"]), "--heads", str(m["heads"])]
    for key, flag in (("max_len", "--max-len"), ("dropout", "--dropout"), ("ff_ratio", "--ff-ratio")):
        if m.get(key) is not None:
            args += [flag, str(m[key])]
    return args


def choose_size(demo: bool) -> dict:
    if demo:
        return {"preset": DEMO["size"], "source": "demo"}
    if os.environ.get("CLAIMS_SEARCH_RECOMMENDATION"):
        path = os.environ["CLAIMS_SEARCH_RECOMMENDATION"]
        return {**recommended(path, os.environ.get("CLAIMS_SEARCH_RECOMMENDATION_TASK")), "source": path}
    size = os.environ.get("CLAIMS_SEARCH_SIZE", DEFAULT_SIZE)
    return {"preset": size, "source": "CLAIMS_SEARCH_SIZE" if "CLAIMS_SEARCH_SIZE" in os.environ else "default"}


def steps(kind: str, demo: bool) -> list[str]:
    """``--steps`` for pretrain or finetune: the environment's, the demo's, else the command's
    own default (pretrain 1000, finetune 300)."""
    env = os.environ.get(f"CLAIMS_SEARCH_{kind.upper()}_STEPS")
    if env:
        return ["--steps", env]
    return ["--steps", str(DEMO[f"{kind}_steps"])] if demo else []


def prepare_arguments(demo: bool) -> list[str]:
    return ["--max-len", str(DEMO["max_len"]), "--min-count", "1"] if demo else []


def task_name(labels_dir: Path) -> str:
    """The task's name in the cache: the labels folder's name (MEDS-DEV: the task's last part),
    or a single table's file name without .parquet."""
    path = labels_dir.resolve()
    name = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "task"


def write_state(output_dir: Path, state: dict) -> None:
    (output_dir / STATE).write_text(json.dumps(state, indent=2) + "\n")


def read_state(folder: Path, stage: str) -> dict:
    f = folder / STATE
    if not f.exists():
        raise SystemExit(f"model_initialization_dir={folder}: not a claims-search {stage} output (no {STATE})")
    state = json.loads(f.read_text())
    if state.get("stage") != stage:
        raise SystemExit(f"model_initialization_dir={folder}: a {state.get('stage')} output, not a {stage} one")
    return state


def prepare_with_labels(dataset_dir: str, labels_dir: str, out: Path, demo: bool) -> str:
    """The cache of the data with the task's labels as its only task; returns the task's name.
    The labels go in as ``labels/<task>`` (a link to {labels_dir}; ``labels/<task>.parquet`` for
    a single table): prepare --labels names each folder's task after it, whatever shards
    (train/0.parquet, ...) it holds."""
    labels = Path(labels_dir).resolve()
    if not labels.exists():
        raise SystemExit(f"labels_dir={labels_dir}: no such folder or file")
    task = task_name(labels)
    tables = out / "labels"
    if tables.is_dir():
        for old in tables.iterdir():  # a rerun's links, perhaps to other labels
            old.unlink()
    tables.mkdir(parents=True, exist_ok=True)
    link = tables / (task + (".parquet" if labels.is_file() else ""))
    link.symlink_to(labels, target_is_directory=labels.is_dir())
    claims_search("prepare", "--meds", dataset_dir, "--out", str(out / "prepared"), "--labels", str(tables),
                  "--only-tasks", *prepare_arguments(demo))
    return task


def pretrain(a) -> None:
    out, demo = Path(a.output_dir), truthy(a.demo)
    out.mkdir(parents=True, exist_ok=True)
    choice = choose_size(demo)
    claims_search("prepare", "--meds", a.dataset_dir, "--out", str(out / "prepared"), *prepare_arguments(demo))
    claims_search("pretrain", "--data", str(out / "prepared"), "--out", str(out / "pretrain"),
                  *size_arguments(choice), *steps("pretrain", demo), *gpu())
    write_state(out, {"stage": "pretrain", "demo": demo, "size": choice, "dataset_dir": str(Path(a.dataset_dir).resolve())})


def finetune(a) -> None:
    out, demo, init = Path(a.output_dir), truthy(a.demo), Path(a.model_initialization_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre = read_state(init, "pretrain")
    task = prepare_with_labels(a.dataset_dir, a.labels_dir, out, demo)
    claims_search("finetune", "--data", str(out / "prepared"), "--task", task, "--init", str(init / "pretrain"),
                  "--out", str(out / "finetune"), *steps("finetune", demo),
                  *(["--bootstrap", str(DEMO["bootstrap"])] if demo else []), *gpu())
    write_state(out, {"stage": "finetune", "demo": demo, "task": task, "size": pre["size"],
                      "labels_dir": str(Path(a.labels_dir).resolve()),
                      "dataset_dir": str(Path(a.dataset_dir).resolve())})


def predict(a) -> None:
    out, demo, init = Path(a.output_dir), truthy(a.demo), Path(a.model_initialization_dir)
    out.mkdir(parents=True, exist_ok=True)
    ft = read_state(init, "finetune")
    same = (ft["labels_dir"] == str(Path(a.labels_dir).resolve())
            and ft["dataset_dir"] == str(Path(a.dataset_dir).resolve()))
    if same:
        data, task = init / "prepared", ft["task"]
    else:  # other labels or data than fine-tuning saw: a cache of their own, same settings
        task = prepare_with_labels(a.dataset_dir, a.labels_dir, out, ft["demo"])
        data = out / "prepared"
    target = out / "predictions.parquet"
    if target.exists():
        target.unlink()  # a rerun of this step replaces its own file
    claims_search("predict", "--model", str(init / "finetune"), "--data", str(data), "--task", task,
                  "--split", a.split, "--out", str(target))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, needs in (("pretrain", ()), ("finetune", ("labels_dir", "model_initialization_dir")),
                        ("predict", ("labels_dir", "model_initialization_dir", "split"))):
        p = sub.add_parser(name)
        for arg in ("dataset_dir", "output_dir", *needs):
            p.add_argument(f"--{arg.replace('_', '-')}", dest=arg, required=True)
        p.add_argument("--demo", default="False")
    a = parser.parse_args(argv)
    {"pretrain": pretrain, "finetune": finetune, "predict": predict}[a.command](a)


if __name__ == "__main__":
    main()
