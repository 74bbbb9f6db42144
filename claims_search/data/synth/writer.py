"""Write the synthetic world as a MEDS 0.4 dataset: shards simulated and written independently
(in ``workers`` processes), metadata and the oracle written at the end, all atomically.

Each shard is seeded from (seed, shard index) only, so the bytes are the same whatever the
number of workers; they do depend on ``shard_size``, which sets the shard boundaries.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from claims_search.atomic import atomic_dir
from claims_search.errors import ClaimsSearchError
from claims_search.data.synth.codes import catalogue
from claims_search.data.synth.complexity import TASKS as COMPLEXITY_TASKS
from claims_search.data.synth.calibrate import build_family, build_world
from claims_search.data.synth.emit import CHECKUP_US, STATIC
from claims_search.data.synth.people import START
from claims_search.data.synth.world import WORLD_SEED, World

log = logging.getLogger(__name__)

SPLITS = ("train", "tuning", "held_out")  # meds.train_split, meds.tuning_split, meds.held_out_split
SPLIT_P = (0.8, 0.1, 0.1)
TASKS = ("ckd_incidence", "antihypertensive_start")
DEFAULT_SHARD_SIZE = 25_000
_EPOCH_DAY = int((START - np.datetime64("1970-01-01", "D")).astype(np.int64))
_US_PER_DAY = 86_400 * 10**6

DATA_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("time", pa.timestamp("us")),
    pa.field("code", pa.string(), nullable=False),
    pa.field("numeric_value", pa.float32()),
])
ORACLE_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("prediction_time", pa.timestamp("us"), nullable=False),
    pa.field("probability", pa.float64(), nullable=False),
    pa.field("label", pa.bool_(), nullable=False),
])


def _timestamps(day: np.ndarray, us: np.ndarray) -> np.ndarray:
    return ((day + _EPOCH_DAY) * _US_PER_DAY + us).view("datetime64[us]")


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20)


def simulate_and_write(root: Path, world: World, seed: int, shard: int, n: int, first_id: int,
                       family=None) -> dict:
    """Simulate shard ``shard`` (``n`` subjects, ids from ``first_id + 1``) and write its files
    under ``root/data/<split>/``. Returns counts, the subjects' splits and the oracle rows.
    ``family`` (complexity.Family) adds the complexity tasks from a third, separate stream."""
    from claims_search.data.synth.simulate import simulate

    # spawn(3)'s first two children are spawn(2)'s: the family leaves the other draws alone.
    sim_seq, split_seq, family_seq = np.random.SeedSequence([seed, shard]).spawn(3)
    sim = simulate(world, n, np.random.default_rng(sim_seq), family=family,
                   family_rng=np.random.default_rng(family_seq))
    split = np.random.default_rng(split_seq).choice(len(SPLITS), n, p=SPLIT_P)
    subject = first_id + 1 + np.arange(n, dtype=np.int64)
    row, day, us, code, value = sim.events
    codes = pa.array(catalogue(complexity=family is not None).codes, pa.string())
    counts = {}
    for s, name in enumerate(SPLITS):
        keep = split[row] == s
        counts[name] = {"subjects": int((split == s).sum()), "events": int(keep.sum())}
        if not keep.any():
            continue
        d = day[keep]
        table = pa.Table.from_arrays([
            pa.array(subject[row[keep]]),
            pa.array(_timestamps(np.where(d == STATIC, 0, d), us[keep]), pa.timestamp("us"),
                     mask=d == STATIC),
            codes.take(pa.array(code[keep])),
            pa.array(value[keep], pa.float32(), mask=np.isnan(value[keep])),
        ], schema=DATA_SCHEMA)
        _write_parquet(table, root / "data" / name / f"{shard:05d}.parquet")
    oracle = {t: {"subject_id": subject[o.row], "time": _timestamps(o.day, np.int64(CHECKUP_US)),
                  "probability": o.prob.astype(np.float64), "label": o.label.astype(bool),
                  "split": split[o.row]}
              for t, o in sim.oracle.items()}
    return {"counts": counts, "subject_id": subject, "split": split, "oracle": oracle}


def _check_args(out_dir: Path, patients: int, seed: int, workers: int, shard_size: int,
                overwrite: bool) -> None:
    if not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ClaimsSearchError(f"--patients: must be a whole number >= 1, got {patients!r}")
    if workers < 1:
        raise ClaimsSearchError(f"--workers: must be >= 1, got {workers!r}")
    if shard_size < 1:
        raise ClaimsSearchError(f"--shard-size: must be >= 1, got {shard_size!r}")
    if seed < 0:
        raise ClaimsSearchError(f"--seed: must be >= 0, got {seed!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ClaimsSearchError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ClaimsSearchError(f"{out_dir}: folder exists and is not empty (use --overwrite)")


def _metrics(label: np.ndarray, prob: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    from claims_search.metrics import expected_average_precision

    out = {"samples": int(label.size), "positives": int(label.sum()),
           "prevalence": round(float(label.mean()), 4) if label.size else None,
           "oracle_auroc": None, "oracle_auprc": None}
    if 0 < label.sum() < label.size:
        out["oracle_auroc"] = round(float(roc_auc_score(label, prob)), 4)
        out["oracle_auprc"] = round(expected_average_precision(label, prob), 4)  # ties: see there
    return out


def _finish(root: Path, results: list[dict], patients: int, seed: int, shard_size: int,
            complexity: bool = False) -> dict:
    """Metadata, splits and oracle files; returns the summary."""
    import meds

    import claims_search

    cat = catalogue(complexity)
    tasks = TASKS + (COMPLEXITY_TASKS if complexity else ())
    _write_parquet(pa.table({
        "code": pa.array(cat.codes, pa.string()),
        "description": pa.array(cat.descriptions, pa.string()),
        "parent_codes": pa.array([list(p) for p in cat.parents], pa.list_(pa.string())),
    }), root / "metadata" / "codes.parquet")
    subject = np.concatenate([r["subject_id"] for r in results])
    split = np.concatenate([r["split"] for r in results])
    _write_parquet(pa.table({"subject_id": pa.array(subject, pa.int64()),
                             "split": pa.array(np.array(SPLITS)[split], pa.string())}),
                   root / "metadata" / "subject_splits.parquet")
    splits = {s: {k: sum(r["counts"][s][k] for r in results) for k in ("subjects", "events")}
              for s in SPLITS}
    summary = {"patients": patients, "seed": seed, "shards": len(results), "splits": splits,
               "events": sum(v["events"] for v in splits.values()), "tasks": {}}
    for task in tasks:
        o = {k: np.concatenate([r["oracle"][task][k] for r in results])
             for k in ("subject_id", "time", "probability", "label", "split")}
        order = np.lexsort((o["time"], o["subject_id"]))
        _write_parquet(pa.Table.from_arrays([
            pa.array(o["subject_id"][order]), pa.array(o["time"][order], pa.timestamp("us")),
            pa.array(o["probability"][order]), pa.array(o["label"][order]),
        ], schema=ORACLE_SCHEMA), root / "oracle" / f"{task}.parquet")
        summary["tasks"][task] = _metrics(o["label"], o["probability"])
        summary["tasks"][task]["splits"] = {
            s: _metrics(o["label"][o["split"] == i], o["probability"][o["split"] == i])
            for i, s in enumerate(SPLITS)}
    dataset = {  # no creation time: the same seed must give the same bytes
        "dataset_name": "claims-search synthetic Japanese claims",
        "dataset_version": f"seed={seed},patients={patients},shard_size={shard_size}",
        "etl_name": "claims-search synth", "etl_version": claims_search.__version__,
        "meds_version": meds.__version__, "license": "CC0-1.0",
        "claims_search_synth": {"seed": seed, "patients": patients, "shard_size": shard_size,
                                "world_seed": WORLD_SEED, "tasks": list(tasks)},
    }
    if complexity:  # absent when off: the same bytes as before the family existed
        dataset["claims_search_synth"]["complexity_tasks"] = True
    (root / "metadata" / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    (root / "oracle" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def generate(out_dir, patients: int, seed: int, *, workers: int = 2,
             shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False, first_id: int = 0,
             complexity: bool = False) -> dict:
    """Generate ``patients`` synthetic patients as a MEDS dataset in ``out_dir`` (atomically).

    ``complexity=True`` adds the complexity family (``complexity_k0`` .. ``complexity_k3``: their
    outcome codes in the timelines, their oracle files); every other file's content is the same
    as without it, apart from the new codes.

    Returns a summary: subjects and events per split, and per task the number of labelled
    samples, positives, prevalence and oracle AUROC/AUPRC (overall and per split). Raises
    ClaimsSearchError for bad arguments or a non-empty ``out_dir`` without ``overwrite``.
    """
    out_dir = Path(out_dir)
    _check_args(out_dir, patients, seed, workers, shard_size, overwrite)
    t0 = time.perf_counter()
    world = build_world()
    family = build_family() if complexity else None
    n_shards = math.ceil(patients / shard_size)
    # Subject ids first_id + 1, first_id + 2, ...; the draws depend on the shard, not on the ids.
    jobs = [(s, min(shard_size, patients - s * shard_size), first_id + s * shard_size) for s in range(n_shards)]
    with atomic_dir(out_dir) as root:
        results = []
        if workers == 1 or n_shards == 1:
            for s, n, first in jobs:
                results.append(simulate_and_write(root, world, seed, s, n, first, family))
                log.info("synth: shard %d/%d written", s + 1, n_shards)
        else:
            ctx = multiprocessing.get_context("spawn")  # no forked copies of pyarrow's threads
            with ProcessPoolExecutor(min(workers, n_shards), mp_context=ctx) as pool:
                futures = [pool.submit(simulate_and_write, root, world, seed, s, n, first, family)
                           for s, n, first in jobs]
                for s, f in enumerate(futures):
                    results.append(f.result())
                    log.info("synth: shard %d/%d written", s + 1, n_shards)
        summary = _finish(root, results, patients, seed, shard_size, complexity)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
