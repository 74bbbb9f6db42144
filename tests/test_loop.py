"""The one training loop: pretraining learns, fine-tuning learns, a resumed run is the same run."""

import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from claims_search.model.batches import pretrain_batches, task_batches
from claims_search.model.cost import Cost
from claims_search.errors import ClaimsSearchError
from claims_search.model.loop import (FinetuneSettings, PretrainSettings, TrainLoop, evaluate_loss,
                                predict)
from claims_search.model.model import classification_model, pretraining_model
from claims_search.model.sizes import ModelSize
from tests.test_batches import CODES, write_cache

SIZE = ModelSize(width=32, depth=2, heads=2, dropout=0.1, max_len=24)

# Two kinds of patient repeat their own rhythm of codes: a hypertensive one (checkup, I10,
# ARB) and a pre-diabetic one (checkup, suspected E11, a procedure). The masked code is
# predictable from its neighbours; the task label is the kind.
RHYTHMS = {True: ["HC//SPECIFIC_CHECKUP", "DX//ICD10//I10", "DRUG//ATC//C09AA05"],
           False: ["HC//SPECIFIC_CHECKUP", "DX_SUSPECTED//ICD10//E11", "PROC//JP//140000610"]}


def rhythm_cache(root, n=40, seed=0):
    rng = np.random.default_rng(seed)
    charts, splits, samples = [], {}, []
    for sid in range(1, n + 1):
        kind = bool(sid % 2)
        charts.append((sid, "1960-01-01", "MEDS_BIRTH"))
        day = np.datetime64("2015-01-01") + int(rng.integers(0, 300))
        for k in range(int(rng.integers(6, 30))):
            charts.append((sid, str(day), RHYTHMS[kind][k % 3]))
            day += int(rng.integers(1, 40))
        splits[sid] = "train" if sid <= 30 else "tuning"
        samples.append((sid, str(day), kind))
    return write_cache(root, charts, splits, samples, CODES, max_len=24)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: a second intra-op thread only adds contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache(tmp_path):
    return rhythm_cache(tmp_path / "prepared")


def pretrain_stream(cache, settings, split="train"):
    return lambda epoch: pretrain_batches(cache, split, batch_tokens=settings.batch_tokens,
                                          mask_prob=settings.mask_prob, seed=settings.seed, epoch=epoch)


def test_pretraining_loss_falls_and_the_cost_adds_up(cache):
    torch.manual_seed(0)
    model = pretraining_model(SIZE, cache.vocab_size)
    settings = PretrainSettings(lr=3e-3, batch_tokens=200, steps=60, warmup=5, log_every=10)
    reports = []
    loop = TrainLoop(model, pretrain_stream(cache, settings), settings,
                     on_report=lambda step, m: reports.append((step, m)))
    val_before = evaluate_loss(model, pretrain_batches(cache, "tuning", batch_tokens=200))
    cost = loop.run()
    val_after = evaluate_loss(model, pretrain_batches(cache, "tuning", batch_tokens=200))
    assert [s for s, _ in reports] == [10, 20, 30, 40, 50, 60]
    assert reports[-1][1]["loss"] < 0.6 * reports[0][1]["loss"]
    assert val_after < 0.6 * val_before
    assert reports[-1][1]["lr"] == pytest.approx(0.1 * settings.lr)  # cosine ends at 10 %
    assert cost.tokens == reports[-1][1]["tokens"] > 0
    assert cost.flops > 6 * SIZE.n_matmul_params() * cost.tokens
    assert cost.device_s == cost.wall_s > 0 and cost.n_devices == 1
    assert cost.n_params == SIZE.n_params(cache.vocab_size) and cost.peak_mem_bytes > 0


def test_a_resumed_run_continues_the_step_count_and_matches_an_uninterrupted_one(cache):
    settings = PretrainSettings(lr=1e-3, batch_tokens=120, steps=8, warmup=2, log_every=1)

    def fresh_loop(seed, **kw):
        torch.manual_seed(seed)
        return TrainLoop(pretraining_model(SIZE, cache.vocab_size), pretrain_stream(cache, settings),
                         settings, **kw)

    saved = {}
    whole = fresh_loop(0, checkpoint_every=5,
                       on_checkpoint=lambda state: saved.setdefault(state["step"], copy.deepcopy(state)))
    whole_cost = whole.run()
    assert sorted(saved) == [5, 8]  # every 5 steps and at the end

    steps = []
    resumed = fresh_loop(123, on_report=lambda step, m: steps.append(step))  # other init: must be overwritten
    resumed.load_state_dict(saved[5])
    resumed_cost = resumed.run()
    assert steps == [6, 7, 8] and resumed.step == 8
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert resumed_cost.tokens == whole_cost.tokens


def test_finetuning_beats_chance_and_predicts_in_sample_order(cache):
    torch.manual_seed(0)
    settings = FinetuneSettings(lr=3e-3, batch_tokens=200, steps=40, warmup=4)
    model = classification_model(pretraining_model(SIZE, cache.vocab_size).encoder, pool=settings.pool)
    stream = lambda epoch: task_batches(cache, "ckd_incidence", "train", batch_tokens=200,  # noqa: E731
                                        shuffle=True, seed=settings.seed, epoch=epoch)
    cost = TrainLoop(model, stream, settings).run()
    probs, index = predict(model, task_batches(cache, "ckd_incidence", "tuning", batch_tokens=50))
    labels = cache.labels("ckd_incidence", "tuning")
    assert index.tolist() == list(range(len(labels)))
    assert ((probs >= 0) & (probs <= 1)).all()
    assert roc_auc_score(labels["label"], probs) > 0.9
    # Rows of max_len + 1 = 25 positions, padded to 32 at most; no masked-code decoder.
    assert cost.flops <= cost.tokens * SIZE.flops_per_token(cache.vocab_size, 32)


def test_on_step_can_end_the_run_early_and_a_resumed_run_stays_ended(cache):
    settings = PretrainSettings(lr=1e-3, batch_tokens=120, steps=10, warmup=2, log_every=4)
    reports, saved = [], {}
    torch.manual_seed(0)
    loop = TrainLoop(pretraining_model(SIZE, cache.vocab_size), pretrain_stream(cache, settings), settings,
                     on_report=lambda step, m: reports.append(step), on_step=lambda step: step == 6,
                     on_checkpoint=lambda state: saved.setdefault(state["step"], copy.deepcopy(state)))
    cost = loop.run()
    assert loop.step == 6 and loop.stopped and cost.tokens > 0
    assert reports == [4, 6] and sorted(saved) == [6]  # the early last step reports and checkpoints
    again = TrainLoop(pretraining_model(SIZE, cache.vocab_size), pretrain_stream(cache, settings), settings)
    again.load_state_dict(saved[6])
    assert again.run().tokens == cost.tokens and again.step == 6  # nothing more to train


def test_evaluations_and_checkpoints_are_recorded_beside_the_training_time_not_in_it(cache):
    import time

    settings = PretrainSettings(batch_tokens=120, steps=4, warmup=1)

    def evaluate(step):  # a best-step evaluation that takes 0.2 s
        time.sleep(0.2)

    def save(state):  # a checkpoint upload that takes 0.3 s
        time.sleep(0.3)

    loop = TrainLoop(pretraining_model(SIZE, cache.vocab_size), pretrain_stream(cache, settings), settings,
                     n_devices=0.5, on_step=evaluate, on_checkpoint=save, checkpoint_every=2)
    started = time.perf_counter()
    cost = loop.run()
    elapsed = time.perf_counter() - started
    assert cost.eval_s >= 4 * 0.2 and cost.checkpoint_s >= 2 * 0.3
    assert cost.wall_s + cost.eval_s + cost.checkpoint_s <= elapsed
    assert cost.wall_s < elapsed - 4 * 0.2 - 2 * 0.3
    # Half a GPU held (two trials share one): half the wall time is charged.
    assert cost.device_s == pytest.approx(0.5 * cost.wall_s) and cost.n_devices == 0.5
    both = cost + cost
    assert both.eval_s == pytest.approx(2 * cost.eval_s) and both.checkpoint_s == pytest.approx(2 * cost.checkpoint_s)


def test_a_worker_is_charged_for_what_it_holds():
    from claims_search.model.cost import devices_held

    assert devices_held({"CPU": 0.99}) == 1  # Ray Train's one core
    assert devices_held({"CPU": 3.96, "trainer": 1}) == 4  # cpus_per_worker 4 (x 0.99)
    assert devices_held({"CPU": 4, "GPU": 0.5}) == 0.5  # two trials share one GPU: each pays half
    assert devices_held({"CPU": 4, "GPU": 2}) == 2  # two GPUs held, two charged


def test_cost_of_pretraining_plus_finetuning():
    pre = Cost(wall_s=10, device_s=20, tokens=100, flops=1e9, n_params=5, peak_mem_bytes=7,
               device="NVIDIA H100", n_devices=2)
    fine = Cost(wall_s=1, device_s=1, tokens=10, flops=1e8, n_params=5, peak_mem_bytes=9,
                device="NVIDIA H100", n_devices=1)
    both = pre + fine
    assert (both.wall_s, both.device_s, both.tokens, both.peak_mem_bytes) == (11, 21, 110, 9)
    assert both.device == "NVIDIA H100" and Cost.from_dict(both.to_dict()) == both


def test_training_on_a_ddp_wrapped_model(cache, tmp_path):
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(pretraining_model(SIZE, cache.vocab_size))
        settings = PretrainSettings(batch_tokens=120, steps=3, warmup=1)
        loop = TrainLoop(model, pretrain_stream(cache, settings), settings, n_devices=1)
        cost = loop.run()
        assert loop.step == 3 and cost.tokens > 0
        assert not any(k.startswith("module.") for k in loop.state_dict()["model"])
    finally:
        dist.destroy_process_group()


def test_bad_settings_are_refused_before_training():
    with pytest.raises(ClaimsSearchError, match=r"warmup \(50\) must be in \[0, steps=10\]"):
        PretrainSettings(steps=10, warmup=50)
    with pytest.raises(ClaimsSearchError, match="mask_prob"):
        PretrainSettings(mask_prob=0.0)
    with pytest.raises(ClaimsSearchError, match="pool"):
        FinetuneSettings(pool="max")
    with pytest.raises(ClaimsSearchError, match="patience must be >= 0"):
        FinetuneSettings(patience=-1)
    with pytest.raises(ClaimsSearchError, match="patience needs best_step"):
        FinetuneSettings(patience=2, best_step=False)


def prefetch_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "batch-prefetch" and t.is_alive()]


def test_batches_built_ahead_in_a_thread_train_exactly_as_batches_built_in_the_loop(cache):
    """Prefetching changes when batches are built, not which: same batches, same seeds, same
    weights after a run that ends mid-epoch (the producer is stopped, not left running)."""
    settings = PretrainSettings(lr=1e-3, batch_tokens=120, steps=7, warmup=2, log_every=1, grad_accum=2)
    seen, weights = {}, {}
    for prefetch in (0, 4):
        torch.manual_seed(0)
        stream = pretrain_stream(cache, settings)
        built = seen.setdefault(prefetch, [])
        loop = TrainLoop(pretraining_model(SIZE, cache.vocab_size),
                         lambda e, stream=stream, built=built: (built.append(b.tokens) or b for b in stream(e)),
                         settings, prefetch=prefetch)
        loop.run()
        weights[prefetch] = loop.model.state_dict()
        assert prefetch_threads() == []
    assert len(seen[0]) >= 7 and all(torch.equal(a, b) for a, b in zip(seen[0], seen[4][:len(seen[0])]))
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[4][name], w, rtol=0, atol=0, msg=name)


def test_an_error_while_building_batches_reaches_the_loop_and_no_thread_is_left(cache):
    settings = PretrainSettings(lr=1e-3, batch_tokens=120, steps=20, warmup=2)

    def broken(epoch):
        for i, batch in enumerate(pretrain_stream(cache, settings)(epoch)):
            if i == 2:
                raise OSError("cache read failed")
            yield batch

    loop = TrainLoop(pretraining_model(SIZE, cache.vocab_size), broken, settings)
    with pytest.raises(OSError, match="cache read failed"):
        loop.run()
    assert loop.step == 2 and prefetch_threads() == []


def test_windows_built_in_worker_processes_train_like_windows_built_here_and_stop_with_the_run(cache):
    import multiprocessing
    import threading

    settings = PretrainSettings(lr=1e-3, batch_tokens=120, steps=6, warmup=2, log_every=1)
    weights = []
    for workers in (0, 1):
        torch.manual_seed(0)
        stream = lambda e, w=workers: pretrain_batches(cache, "train", batch_tokens=120, seed=0, epoch=e,  # noqa: E731
                                                       draws="window", workers=w)
        loop = TrainLoop(pretraining_model(SIZE, cache.vocab_size), stream, settings)
        loop.run()
        weights.append(loop.model.state_dict())
        assert multiprocessing.active_children() == [] and prefetch_threads() == []
        assert not [t for t in threading.enumerate() if "ExecutorManager" in type(t).__name__]
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, rtol=0, atol=0, msg=name)
