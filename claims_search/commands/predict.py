"""Per-patient predictions of a chosen model on a task's split, written to a local file or to
storage (never to MLflow: they are patient-level).

The model is a registered one (``models:/<search>-<task>@recommended``), an MLflow run's model
(``runs:/<id>/model``), or a model folder (a fine-tuned checkpoint, a baseline folder) on disk
or storage. The output is Parquet in the MEDS prediction schema, which meds-evaluation scores as
written: ``subject_id`` int64, ``prediction_time`` timestamp[us], ``boolean_value`` bool (the
label), ``predicted_boolean_value`` bool and ``predicted_boolean_probability`` float32. The
predicted class is probability >= the threshold kept with the model: the cut that maximised F1
on the tuning split when it was trained (claims_search/runs/meds_predictions.py says why).

Examples:
  claims-search predict --model models:/demo-ckd_incidence@recommended --data prepared/ \\
      --task ckd_incidence --out ckd_predictions.parquet
  claims-search predict --model runs/demo/trials/abc_00001/finetune-ckd_incidence/checkpoint \\
      --data prepared/ --task ckd_incidence --split tuning --out s3://bucket/preds/ckd.parquet
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `claims-search predict`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/ID/model, or a model folder")
    data = os.environ.get("CLAIMS_SEARCH_DATA")
    parser.add_argument("--data", required=data is None, default=data,
                        help="prepared cache, path or URI (default: $CLAIMS_SEARCH_DATA)")
    parser.add_argument("--task", required=True, help="task name in the prepared cache")
    parser.add_argument("--split", default="held_out", help="split to predict (default: held_out)")
    parser.add_argument("--out", required=True, help="output Parquet file, path or URI (must not exist)")
    parser.add_argument("--tracking-uri", help="MLflow URI for models:/ and runs:/ (default: $MLFLOW_TRACKING_URI "
                        "or sqlite:///mlflow.db)")


def _resolve(model: str, tracking_uri: str | None) -> tuple[str, bool]:
    """``(location, is_baseline)`` of what ``--model`` names."""
    from claims_search.tracking import packaging
    from claims_search import storage
    from claims_search.errors import ClaimsSearchError

    if model.startswith(("models:/", "runs:/")):
        import mlflow.artifacts

        from claims_search.tracking.tracker import default_tracking_uri

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        uri = tracking_uri or default_tracking_uri()
        # models:/ resolves through the registry URI, which MLflow takes from the environment
        # unless told: the one given here must win over a stray $MLFLOW_TRACKING_URI.
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model, tracking_uri=uri)
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a missing model
            raise ClaimsSearchError(f"--model {model}: cannot be downloaded: {storage.one_line(e)}") from None
        return packaging.scorable(local)
    folder = storage.localize(model)
    if (folder / "model.txt").exists() or (folder / "model.lgb").exists():
        return str(folder), True
    if (folder / "checkpoint" / "meta.json").exists():
        folder = folder / "checkpoint"
    if not (folder / "meta.json").exists():
        raise ClaimsSearchError(f"--model {model}: not a fine-tuned checkpoint or a baseline folder")
    return str(folder), False


def run(args: argparse.Namespace) -> int:
    """Predict, write the file, print a one-line summary (aggregates only)."""
    from claims_search.runs import meds_predictions, scoring
    from claims_search import storage
    from claims_search.errors import ClaimsSearchError
    from claims_search.runs.worker import open_cache

    if storage.exists(args.out):
        raise ClaimsSearchError(f"--out {args.out}: exists; choose another file")
    cache = open_cache(storage.require(args.data, "prepared cache"))
    if args.task not in cache.tasks:
        raise ClaimsSearchError(f"--task {args.task}: not in the prepared cache (has: {', '.join(cache.tasks)})")
    if len(cache.labels(args.task, args.split)) == 0:
        raise ClaimsSearchError(f"--split {args.split}: no samples of task {args.task} in that split")
    location, is_baseline = _resolve(args.model, args.tracking_uri)
    out, threshold = scoring.meds_predictions(cache, args.task, args.split, location, is_baseline)
    storage.write_bytes(args.out, meds_predictions.to_parquet_bytes(out))
    chosen = " (chosen now on tuning: the model predates kept thresholds)" if threshold.get("chosen_at") else ""
    print(f"{len(out)} predictions of {args.task}/{args.split} ({int(out['boolean_value'].sum())} positive; "
          f"predicted positive at probability >= {threshold['value']:.4g}, the F1-maximising cut on "
          f"tuning{chosen}) -> {args.out}")
    return 0
