"""The registered form of a fine-tuned claims-search checkpoint: an MLflow pyfunc model (from
code: MLflow copies this file into the model and runs it on load).

Input (its signature): a table with one row per request, columns ``data`` (a prepared cache:
path or URI), ``task`` and ``split``. Output: one row per labelled sample of that task and split,
in the MEDS prediction schema (claims_search/runs/meds_predictions.py): ``subject_id``,
``prediction_time``, ``boolean_value``, ``predicted_boolean_value`` (at the threshold kept in the
checkpoint's meta.json), ``predicted_boolean_probability``. Per-patient output stays with the
caller: nothing here logs it.

Its environment (packaging.save_model): the model's requirements.txt pins
``packaging.PYFUNC_PACKAGES`` (mlflow, torch, numpy, pandas, pyarrow), and ``claims_search`` comes
from the model's own ``code/`` folder, which MLflow puts first on ``sys.path`` before it runs
this file; a process that has already imported ``claims_search`` (the project's own) keeps that
one. So what ``predict`` imports, here and in the modules it reaches, must stay within those
packages (no Ray: tests/test_model_env.py predicts in a fresh environment and checks).
"""

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


class ClaimsSearchCheckpoint(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.checkpoint = context.artifacts["checkpoint"]

    # A DataFrame hint is one MLflow infers no schema from: the logged signature describes the
    # input (without any hint MLflow warns at every definition, past any filter of ours).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from claims_search.runs import scoring
        from claims_search.runs.worker import open_cache

        frames = []
        for req in pd.DataFrame(model_input).to_dict("records"):
            cache = open_cache(req["data"])
            table, _ = scoring.meds_predictions(cache, req["task"], req["split"], self.checkpoint, False)
            frames.append(table)
        return pd.concat(frames, ignore_index=True)


set_model(ClaimsSearchCheckpoint())
