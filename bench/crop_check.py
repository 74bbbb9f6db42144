"""How much of each task's signal lies beyond the model's crop.

The Transformer reads the last ``max_len`` events before the prediction time; LightGBM counts
the whole history. On the held-out samples of a size-ladder study (``bench/scaling_study.py``),
split by whether the history at prediction time fits the crop, this reports the AUROC of the
generator's oracle, of LightGBM and of the recommended size:

    python bench/crop_check.py --study runs/pilot-lr [--report docs/crop_check.md] [--split-at N]
    python bench/crop_check.py --quick [--data DIR]   # seconds: the oracle alone, on tiny data

``--quick`` needs no study: it splits the held-out samples of ``common.quick_data``'s cache
(made under ``--data``, or a temporary folder) and scores the oracle only (no models trained).

Aggregates only: counts and AUROCs, never a sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import scaling_study as S  # noqa: E402


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC, NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def by_crop(held, preds, max_len: int) -> dict:
    """``{"fits"|"cut": {"n", "positives", name: AUROC}}`` of the oracle (``held.true_prob``) and
    of each ``preds[name]`` (frames with ``row``, ``label``, ``prob``; rows of ``held``)."""
    cut = held["end"].to_numpy() > max_len
    y = held["label"].to_numpy()
    out = {}
    for part, mask in (("fits", ~cut), ("cut", cut)):
        out[part] = {"n": int(mask.sum()), "positives": int(y[mask].sum()),
                     "oracle": auroc(y[mask], held["true_prob"].to_numpy()[mask])}
        for name, p in preds.items():
            rows = p["row"].to_numpy()
            if not np.array_equal(y[rows], p["label"].to_numpy()):
                raise ValueError(f"{name}: its predictions do not line up with the held-out labels")
            m = mask[rows]
            out[part][name] = auroc(p["label"].to_numpy()[m], p["prob"].to_numpy()[m])
    return out


def main(argv=None) -> int:
    from claims_search.runs import predictions as P
    from claims_search.data.cache import Cache

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="runs/bench-scaling")
    p.add_argument("--report", default=None)
    p.add_argument("--split-at", type=int, default=None,
                   help="split at this many events instead of the study's crop (e.g. a study at another crop)")
    p.add_argument("--quick", action="store_true", help="no study: the oracle on a tiny dataset, in seconds")
    p.add_argument("--data", default=None, help="--quick: its dataset's folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.quick:  # the folder of the tiny data stands in for a study without units
        study = Path(args.data or tempfile.mkdtemp(prefix="crop-check-quick-"))
        cache = Cache.open(common.quick_data(study))
        crop = cache.max_len
        tables = [{"task": t, "n_labelled": 0, "recommended": None, "rows": []}
                  for t in sorted(cache.manifest["tasks"])]
    else:
        study = Path(args.study)
        crop = json.loads((study / "settings.json").read_text())["max_len"]
        cache = Cache.open(study / "prepared")
        tables = json.loads((study / "report.json").read_text())["tables"]
    max_len = args.split_at or crop
    lines = [f"`python bench/crop_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
             f"{datetime.date.today().isoformat()}; {S.machine()}. Held-out AUROC on the samples whose history at prediction time has at most "
             f"{max_len} events and on the longer ones (fits / cut); the study's crop: "
             f"{crop} events.", "",
             *common.table(["task", "labelled", "longer: samples (positives)", "oracle", "LightGBM", "recommended"],
                           [], "lrllll")]
    result = []
    for t in tables:
        held = cache.labels(t["task"], "held_out").reset_index(drop=True)
        rec = next((r for r in t["rows"] if r["size"] == t["recommended"] and "pre" in r), None)
        base = study / "lightgbm" / t["task"] / f"n{t['n_labelled']}" / "summary.json"
        preds = {}
        if base.exists():
            preds["lightgbm"] = P.read(json.loads(base.read_text())["predictions"]["held_out"])
        if rec:
            unit = S.units_of(study, t, rec)[0]
            preds["recommended"] = P.read(json.loads((unit / "summary.json").read_text())["predictions"]["held_out"])
        s = by_crop(held, preds, max_len)
        result.append({"task": t["task"], "n_labelled": t["n_labelled"], "recommended": t["recommended"], **s})

        def pair(name: str) -> str:
            return f"{s['fits'].get(name, np.nan):.3f} / {s['cut'].get(name, np.nan):.3f}"

        longer = f"{s['cut']['n']} of {s['cut']['n'] + s['fits']['n']} ({s['cut']['positives']})"
        lines.append(common.row([t["task"], f"{t['n_labelled']:,}", longer, pair("oracle"), pair("lightgbm"),
                                 f"{t['recommended'] or '-'}: {pair('recommended')}"]))
    common.write_json(study / "crop_check.json", result)
    if args.report:
        Path(args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
