"""A finished model as an MLflow model folder, ready to register: a fine-tuned Transformer as a
pyfunc (``pyfunc_model.py``, with a signature; its threshold is in the checkpoint's
``meta.json``), the LightGBM baseline in MLflow's lightgbm flavour plus its ``threshold.json``.
And the reverse: what to score from a downloaded model folder. No tracking calls here
(``tracking.py`` logs and registers what this builds)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from claims_search.errors import ClaimsSearchError

PIP = ["claims-search", "torch", "mlflow"]


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "data"), ColSpec("string", "task"), ColSpec("string", "split")]),
        outputs=Schema([ColSpec("long", "subject_id"), ColSpec("datetime", "prediction_time"),
                        ColSpec("boolean", "boolean_value"), ColSpec("boolean", "predicted_boolean_value"),
                        ColSpec("float", "predicted_boolean_probability")]))


def save_model(folder: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Save the model in ``folder`` (a local fine-tuned checkpoint folder, or a baseline folder
    with ``model.txt``) as an MLflow model at ``dest``; returns its kind."""
    folder, dest = Path(folder), Path(dest)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if (folder / "model.txt").exists():
        import lightgbm as lgb
        import mlflow.lightgbm

        from claims_search.meds_predictions import THRESHOLD_FILE

        mlflow.lightgbm.save_model(lgb.Booster(model_file=str(folder / "model.txt")), str(dest))
        if (folder / THRESHOLD_FILE).exists():  # the predicted-class cut travels with the trees
            shutil.copyfile(folder / THRESHOLD_FILE, dest / THRESHOLD_FILE)
        return "lightgbm"
    if not (folder / "meta.json").exists():
        raise ClaimsSearchError(f"{folder}: neither a fine-tuned checkpoint nor a baseline folder")
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(str(dest), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts={"checkpoint": str(folder)}, signature=_signature(), pip_requirements=PIP)
    return "transformer"


def scorable(model_dir: str | os.PathLike) -> tuple[str, bool]:
    """``(location, is_baseline)`` for ``scoring`` from a downloaded MLflow model folder."""
    model_dir = Path(model_dir)
    if (model_dir / "artifacts" / "checkpoint" / "meta.json").exists():
        return str(model_dir / "artifacts" / "checkpoint"), False
    if (model_dir / "model.lgb").exists():
        return str(model_dir), True
    raise ClaimsSearchError(f"{model_dir}: not a claims-search model (no checkpoint artifact, no model.lgb)")
