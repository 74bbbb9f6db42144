"""A finished model as an MLflow model folder, ready to register: a fine-tuned Transformer as a
pyfunc (``pyfunc_model.py``, with a signature; its threshold is in the checkpoint's
``meta.json``), the LightGBM baseline in MLflow's lightgbm flavour plus its ``threshold.json``.
And the reverse: what to score from a downloaded model folder. No tracking calls here
(``tracking.py`` logs and registers what this builds).

Each model carries its environment: its ``requirements.txt`` pins the exact releases of what it
needs at predict time, as installed where it was saved (:func:`requirements`), and the pyfunc
carries the project's own code (the ``claims_search`` package, as MLflow's ``code_paths``: copied
to ``code/claims_search`` in the model folder and put first on ``sys.path`` when it is loaded).
So ``python -m venv`` + ``pip install -r requirements.txt`` is enough to load it and predict
(``mlflow models serve`` does the same); claims-search itself is on no package index and need not
be installed (tests/test_model_env.py does this)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from claims_search.errors import ClaimsSearchError

# What each kind of model imports to predict, by distribution. The pyfunc (pyfunc_model.py):
# mlflow and pandas; then claims_search.runs.scoring, .worker.open_cache, .cache, .storage, .batches,
# .model, .loop, .cost, .predictions, .meds_predictions: torch, numpy, pandas, pyarrow (read
# in a fresh process: sys.modules after predict). No ray, polars, lightgbm or fsspec: s3:// and
# gs:// caches are read with pyarrow's own filesystems; another scheme would need fsspec and its
# filesystem package, which the caller installs. The baseline (mlflow.lightgbm): lightgbm, with
# numpy and pandas for the pyfunc's input.
PYFUNC_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "pyarrow")
LIGHTGBM_PACKAGES = ("mlflow", "lightgbm", "numpy", "pandas")


def requirements(packages) -> list[str]:
    """``name==version`` for each of ``packages`` as installed in this process's environment.

    A local version label is dropped (torch ``2.13.0+cpu`` or ``+cu128`` -> ``torch==2.13.0``):
    ``==2.13.0`` matches every local build of that release (PEP 440), so a CPU machine whose pip
    offers the CPU wheel (constraints/cpu.txt's machines, PyTorch's CPU index) takes it, and a
    GPU machine gets PyPI's CUDA build; ``==2.13.0+cpu`` is on no default index (PyPI hosts no
    local versions), and a looser spec (``torch``, ``torch>=2.4``) lets pip choose a newer
    release, which on PyPI is a multi-GB CUDA build even on a CPU machine.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name).split('+', 1)[0]}")
        except PackageNotFoundError:
            raise ClaimsSearchError(f"{name} is not installed: it is needed to save this model") from None
    return pins


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

        from claims_search.runs.meds_predictions import THRESHOLD_FILE

        mlflow.lightgbm.save_model(lgb.Booster(model_file=str(folder / "model.txt")), str(dest),
                                   pip_requirements=requirements(LIGHTGBM_PACKAGES))
        if (folder / THRESHOLD_FILE).exists():  # the predicted-class cut travels with the trees
            shutil.copyfile(folder / THRESHOLD_FILE, dest / THRESHOLD_FILE)
        return "lightgbm"
    if not (folder / "meta.json").exists():
        raise ClaimsSearchError(f"{folder}: neither a fine-tuned checkpoint nor a baseline folder")
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(str(dest), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts={"checkpoint": str(folder)}, signature=_signature(),
                                 pip_requirements=requirements(PYFUNC_PACKAGES),
                                 code_paths=[str(Path(__file__).parents[1])])  # -> code/claims_search
    return "transformer"


def scorable(model_dir: str | os.PathLike) -> tuple[str, bool]:
    """``(location, is_baseline)`` for ``scoring`` from a downloaded MLflow model folder."""
    model_dir = Path(model_dir)
    if (model_dir / "artifacts" / "checkpoint" / "meta.json").exists():
        return str(model_dir / "artifacts" / "checkpoint"), False
    if (model_dir / "model.lgb").exists():
        return str(model_dir), True
    raise ClaimsSearchError(f"{model_dir}: not a claims-search model (no checkpoint artifact, no model.lgb)")
