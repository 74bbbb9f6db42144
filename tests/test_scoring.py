"""Scoring a finished model again (claims_search.runs.scoring): what the held-out confirmation and
`predict` use. A re-scored model gives exactly the predictions its run kept, for a fine-tuned
Transformer and for the LightGBM baseline."""

import pytest

from claims_search.runs import predictions, scoring
from claims_search.runs.baseline import baseline
from claims_search.errors import ClaimsSearchError
from claims_search.model.loop import FinetuneSettings, PretrainSettings
from claims_search.runs.training import pretrain_and_finetune
from claims_search.runs.worker import open_cache

TASK = "antihypertensive_start"
PT = PretrainSettings(steps=4, warmup=1, batch_tokens=1024, log_every=2)
FT = FinetuneSettings(steps=6, warmup=1, batch_tokens=1024, log_every=2, lr=1e-3)


@pytest.fixture(scope="module")
def trained(recency_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    done = pretrain_and_finetune(recency_cache, "debug", PT, FT, [TASK], out / "trial", n_boot=50)
    base = baseline(recency_cache, TASK, out / "baseline", n_boot=50)
    return done.finetunes[TASK], base, out / "baseline"


def test_a_checkpoint_scored_again_gives_the_predictions_its_run_kept(recency_cache, trained):
    ft, _, _ = trained
    again = scoring.predict_checkpoint(open_cache(recency_cache), TASK, "tuning", ft.checkpoint)
    kept = predictions.read(ft.predictions["tuning"])
    assert again.equals(kept)


def test_the_baseline_scored_again_gives_its_predictions(recency_cache, trained):
    _, base, folder = trained
    again = scoring.predict_baseline(open_cache(recency_cache), TASK, "tuning", folder)
    assert again.equals(predictions.read(folder / "predictions" / "tuning.parquet"))
    assert again.equals(base.predictions["tuning"])


def test_held_out_scores_are_aggregates_of_the_held_out_patients(recency_cache, trained):
    ft, _, folder = trained
    cache = open_cache(recency_cache)
    for location, is_baseline in ((str(ft.checkpoint), False), (str(folder), True)):
        m = scoring.score(cache, TASK, "held_out", location, is_baseline, n_boot=50)
        assert m["n"] == len(cache.labels(TASK, "held_out")) == 40
        assert m["auprc_low"] <= m["auprc"] <= m["auprc_high"]


def test_a_pretraining_checkpoint_is_not_a_classifier(recency_cache, tmp_path):
    from claims_search.runs.training import pretrain

    pre = pretrain(recency_cache, "debug", PT, tmp_path / "pre")
    with pytest.raises(ClaimsSearchError, match="a pretrain checkpoint, not a fine-tuned classifier"):
        scoring.predict_checkpoint(open_cache(recency_cache), TASK, "tuning", pre.checkpoint)


def test_the_baseline_is_charged_for_training_on_the_cores_it_used(trained):
    _, base, _ = trained
    import os

    assert base.cost.n_devices == len(os.sched_getaffinity(0))
    assert base.cost.device_s == pytest.approx(base.cost.wall_s * base.cost.n_devices)


def test_held_out_scores_carry_meds_evaluations_figures_of_the_file_predict_writes(recency_cache, trained,
                                                                                     tmp_path):
    """The confirmation's meds-evaluation figures are those meds-evaluation-cli gives for the
    table `predict` writes from the same model and split, to the last digit."""
    from claims_search.runs import meds_metrics
    from tests.test_meds_metrics import meds_evaluation_cli

    ft, _, folder = trained
    cache = open_cache(recency_cache)
    for location, is_baseline in ((str(ft.checkpoint), False), (str(folder), True)):
        m = scoring.score(cache, TASK, "held_out", location, is_baseline, n_boot=50)
        table, _ = scoring.meds_predictions(cache, TASK, "held_out", location, is_baseline)
        out = tmp_path / ("baseline" if is_baseline else "transformer")
        out.mkdir()
        theirs = meds_metrics.flat(meds_evaluation_cli(table, out))
        assert {k: m[k] for k in theirs} == theirs
        assert m["meds_samples_roc_auc_score"] == pytest.approx(m["auroc"], abs=1e-4)  # float32 vs float64
