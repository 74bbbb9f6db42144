"""Score a finished model on one split of a task: a fine-tuned Transformer checkpoint or a
LightGBM baseline folder, local or on storage. Plain Python (torch, LightGBM); no Ray.

The search uses it once, after the recommendation, to confirm the recommended model, the best
Transformer and the baseline on ``held_out`` (a split no trial and no rule ever read before):
the figures that chose them are optimistic (the best of N noisy scores on the split the search
optimised), the held-out ones are not. ``predict`` (the command) uses the same functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from claims_search.errors import ClaimsSearchError


def predict_checkpoint(cache, task: str, split: str, checkpoint: str | os.PathLike) -> pd.DataFrame:
    """Per-sample predictions (``predictions.COLUMNS``) of a fine-tuned checkpoint folder
    (``meta.json`` + ``state.pt``; a URI is copied to this node first)."""
    import torch

    from claims_search.model import batches as B
    from claims_search.model import model as M
    from claims_search.runs import predictions as P
    from claims_search.model.loop import FinetuneSettings, predict
    from claims_search.model.sizes import ModelSize
    from claims_search.storage import localize

    folder = localize(checkpoint)
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("kind") != "finetune":
        raise ClaimsSearchError(f"{checkpoint}: a {meta.get('kind')} checkpoint, not a fine-tuned classifier")
    size, settings = ModelSize(**meta["size"]), FinetuneSettings(**meta["settings"])
    if meta["vocab"]["size"] != cache.vocab_size:
        raise ClaimsSearchError(f"{checkpoint}: trained on {meta['vocab']['size']} codes, the data has {cache.vocab_size}")
    model = M.classification_model(M.ClaimsEncoder(size, cache.vocab_size), pool=settings.pool)
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.to(scoring_device())  # a GPU where this process holds one (the search's confirmation does)
    labels = cache.labels(task, split)
    prob, index = predict(model, B.task_batches(cache, task, split, batch_tokens=settings.batch_tokens,
                                                max_len=size.max_len))
    return P.frame(index, labels["subject_idx"].to_numpy()[index], labels["label"].to_numpy()[index], prob)


def scoring_device():
    """CUDA when this process sees a GPU (Ray gives a task only the GPUs it asked for), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict_baseline(cache, task: str, split: str, folder: str | os.PathLike) -> pd.DataFrame:
    """Per-sample predictions of a LightGBM baseline folder (``model.txt``)."""
    import lightgbm as lgb

    from claims_search.runs import predictions as P
    from claims_search.runs.baseline import count_features
    from claims_search.storage import localize

    local = Path(localize(folder))  # model.txt (a search's baseline folder) or model.lgb (MLflow's flavour)
    model = lgb.Booster(model_file=str(local / "model.txt" if (local / "model.txt").exists() else local / "model.lgb"))
    rows = cache.labels(task, split=split).reset_index(drop=True)
    X, _ = count_features(cache, rows)
    prob = model.predict(X, num_iteration=model.best_iteration if model.best_iteration > 0 else None)
    return P.frame(np.arange(len(rows)), rows["subject_idx"].to_numpy(), rows["label"].to_numpy(), prob)


def score(cache, task: str, split: str, location: str, is_baseline: bool, *, n_boot: int = 1000,
          seed: int = 0) -> dict:
    """``metrics.evaluate`` of one model on ``split`` (AUROC, AUPRC, their patient-bootstrap
    intervals, n, positives) and meds-evaluation's figures of the same predictions
    (``meds_metrics.flat``: ``meds_samples_*`` and ``meds_subjects_*``, computed on the table
    ``predict`` writes, so that meds-evaluation-cli on that file gives the same numbers).
    Aggregates only."""
    from claims_search.runs import meds_metrics
    from claims_search.metrics import evaluate

    df = (predict_baseline if is_baseline else predict_checkpoint)(cache, task, split, location)
    out = evaluate(df["label"], df["prob"], df["subject_idx"], where=f"{task}/{split}", n_boot=n_boot, seed=seed)
    ids = with_ids(cache, task, split, df)
    return {**out, **meds_metrics.flat(meds_metrics.evaluate(ids["subject_id"].to_numpy(), df["label"], df["prob"]))}


def with_ids(cache, task: str, split: str, df: pd.DataFrame) -> pd.DataFrame:
    """Predictions with each sample's ``subject_id`` and ``prediction_time`` (for the caller's own
    file: patient-level, never tracked)."""
    labels = cache.labels(task, split).reset_index(drop=True)
    ids = labels.loc[df["row"].to_numpy(), ["subject_id", "prediction_time"]].reset_index(drop=True)
    return pd.concat([ids, df.reset_index(drop=True)], axis=1)


def meds_predictions(cache, task: str, split: str, location: str, is_baseline: bool) -> tuple[pd.DataFrame, dict]:
    """``(table, threshold)``: the model's predictions on ``split`` in the MEDS prediction schema
    (``meds_predictions.COLUMNS``; patient-level, for the caller's own file) and the threshold
    record that gave ``predicted_boolean_value``: the one kept with the model, or, for a model
    trained before thresholds were kept, one chosen now on tuning by the same rule (marked
    ``"chosen_at": "predict"``)."""
    from claims_search.runs import meds_predictions as MP

    run = predict_baseline if is_baseline else predict_checkpoint
    df = run(cache, task, split, location)
    threshold = MP.recorded_threshold(location, is_baseline)
    if threshold is None:
        tuning = df if split == "tuning" else run(cache, task, "tuning", location)
        threshold = {**MP.choose_threshold(tuning["label"], tuning["prob"]), "chosen_at": "predict"}
    ids = with_ids(cache, task, split, df)
    return MP.table(ids, df["label"], df["prob"], threshold["value"]), threshold
