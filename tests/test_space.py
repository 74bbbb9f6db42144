"""Search spaces: every shipped YAML parses, every sample is a valid size, bad spaces fail clearly."""

import copy
import itertools
from pathlib import Path

import pytest
import yaml

from claims_search.errors import ClaimsSearchError
from claims_search.model.sizes import ModelSize
from claims_search.search.space import load_space, validate_against_cluster

SHIPPED = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))

GOOD = {
    "name": "tiny",
    "tasks": ["ckd_incidence"],
    "budget": {"trials": 2},
    "model": {"head_dim": [8], "heads": [2, 4], "depth": {"low": 1, "high": 2}},
    "training": {"pretrain": {"lr": {"low": 1.0e-4, "high": 1.0e-3, "log": True}, "steps": 5, "warmup": 1}},
}


def write(tmp_path, space, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_space_parses_and_yields_valid_trial_configs(path):
    space = load_space(path)
    assert space.name == path.stem
    assert set(space.task_names) == {"ckd_incidence", "antihypertensive_start"}
    # Enumerate the model grid (choices and int ranges): every point must be a valid ModelSize.
    samples = space.grid_samples() if space.is_grid else _model_grid(space)
    assert samples
    for sample in samples:
        config = space.sample_to_trial_config(sample)
        ModelSize(**config["model"])
        assert set(config) == {"model", "pretrain", "finetune"}


def _model_grid(space):
    from claims_search.search.space import _values

    dims = {k: _values(v) for k, v in space.model.model_dump(exclude_none=True).items()
            if not isinstance(getattr(space.model, k), dict)}
    for k in ("heads", "depth", "dropout", "head_dim"):
        dims[k] = _values(getattr(space.model, k)) if getattr(space.model, k) is not None else [None]
    keys = list(dims)
    return [{"model": dict(zip(keys, combo))} for combo in itertools.product(*dims.values())]


def test_shipped_spaces_by_name_and_the_paper_grid_is_the_five_presets():
    paper = load_space("paper")
    assert paper.is_grid and paper.num_samples() == 1
    assert [s["model"]["preset"] for s in paper.grid_samples()] == ["2.2M", "4.9M", "11M", "33M", "101M"]
    assert load_space("smoke").budget.trials <= 3


def test_tune_param_space_has_ray_domains_and_the_sample_becomes_a_trial_config(tmp_path):
    from ray import tune

    space = load_space(write(tmp_path, GOOD))
    ps = space.tune_param_space()
    assert isinstance(ps["model"]["heads"], tune.search.sample.Categorical)
    assert isinstance(ps["pretrain"]["lr"], tune.search.sample.Float)
    assert ps["pretrain"]["steps"] == 5
    sample = {"model": {"head_dim": 8, "heads": 4, "depth": 2}, "pretrain": {"lr": 3e-4, "steps": 5}}
    assert space.sample_to_trial_config(sample) == {
        "model": {"width": 32, "heads": 4, "depth": 2},  # width = head_dim x heads
        "pretrain": {"lr": 3e-4, "steps": 5},
        "finetune": {},
    }
    # Optuna-style flat keys give the same config.
    flat = {"model/head_dim": 8, "model/heads": 4, "model/depth": 2, "pretrain/lr": 3e-4, "pretrain/steps": 5}
    assert space.sample_to_trial_config(flat) == space.sample_to_trial_config(sample)


def mutate(**changes):
    space = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = space
        for p in parents:
            node = node[p]
        node[last] = value
    return space


BAD = {
    "unknown top-level key": (mutate(learning_rate=0.1), "learning_rate: unknown key"),
    "unknown model key": (mutate(model__width_mult=2), "model.width_mult: unknown key"),
    "empty range": (mutate(model__depth={"low": 4, "high": 2}), "model.depth: empty range"),
    "empty choices": (mutate(model__heads=[]), "model.heads: empty choice list"),
    "heads can't divide width": (
        mutate(model={"width": [64, 96], "heads": [4, 5], "depth": 2}),
        "model.heads: 5 heads can't divide width 64",
    ),
    "unknown task file": (mutate(tasks=["diabetes_onset.yaml"]), "tasks: unknown task 'diabetes_onset.yaml': no such file"),
    "unknown metric": (mutate(metric="accuracy"), "metric: Input should be 'auprc' or 'auroc'"),
    "scalar without lambda": (mutate(objective={"kind": "scalar"}), "objective: a scalar objective needs lambda"),
    "grid over a range": (mutate(sampler="grid"), "the grid sampler needs choices"),
    "unknown preset": (mutate(model={"presets": ["huge"]}), "model.presets: unknown preset 'huge'"),
    "negative stability seeds": (mutate(recommend={"stability_seeds": -1}),
                                 "recommend.stability_seeds: Input should be greater than or equal to 0"),
    "unknown training key": (mutate(training={"pretrain": {"learning_rate": 1.0e-3}}), "training.pretrain.learning_rate: unknown key"),
    "ladder over a learning rate": (
        mutate(sampler={"kind": "ladder"}, model={"width": [32, 64], "heads": [2], "depth": [1, 2]},
               training={"pretrain": {"lr": [1.0e-3, 3.0e-4]}}),
        "the ladder policy searches sizes (width, heads, depth or presets) only; pretrain.lr vary",
    ),
    "ladder rungs out of order": (mutate(sampler={"kind": "ladder", "rungs": [0.5, 0.25]}),
                                  "sampler: rungs: increasing fractions of pretraining in (0, 1)"),
    "settings that can't train": (
        mutate(training={"pretrain": {"steps": [5, 500], "warmup": 100}}),
        "training.pretrain: PretrainSettings: warmup (100) must be in [0, steps=5]",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_spaces_fail_with_one_line_naming_file_and_key(tmp_path, case):
    space, expected = BAD[case]
    path = write(tmp_path, space)
    with pytest.raises(ClaimsSearchError) as e:
        load_space(path)
    message = str(e.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_a_task_may_be_an_aces_file_beside_the_space(tmp_path):
    (tmp_path / "my_task.yaml").write_text("predicates: {}\n")
    space = load_space(write(tmp_path, mutate(tasks=["my_task.yaml", "ckd_incidence"])))
    assert space.task_names == ["my_task", "ckd_incidence"]


def test_budget_checked_against_the_cluster(tmp_path):
    space = load_space(write(tmp_path, mutate(budget={"trials": 8, "concurrency": 4, "workers_per_trial": 2, "gpus_per_worker": 1})))
    assert validate_against_cluster(space, {"CPU": 64, "GPU": 8}) == 4
    assert validate_against_cluster(space, {"CPU": 64, "GPU": 4}) == 2  # concurrency lowered to fit
    with pytest.raises(ClaimsSearchError, match=r"budget.gpus_per_worker: a trial needs 2 GPU .* cluster has 1"):
        validate_against_cluster(space, {"CPU": 64, "GPU": 1})


def test_custom_resources_for_drivers_and_workers_are_checked_against_the_cluster(tmp_path):
    space = load_space(write(tmp_path, mutate(budget={
        "trials": 4, "concurrency": 4, "workers_per_trial": 2, "cpus_per_worker": 1,
        "driver_resources": {"trial_driver": 1}, "worker_resources": {"accelerator_type:H100": 0.001}})))
    assert validate_against_cluster(space, {"CPU": 64, "trial_driver": 2, "accelerator_type:H100": 8}) == 2
    with pytest.raises(ClaimsSearchError, match=r"budget.worker_resources.accelerator_type:H100: a trial needs 0.002"):
        validate_against_cluster(space, {"CPU": 64, "trial_driver": 2})
    with pytest.raises(ClaimsSearchError, match=r"budget.driver_resources.trial_driver: a trial needs 1 "):
        validate_against_cluster(space, {"CPU": 64, "accelerator_type:H100": 8})
    with pytest.raises(ClaimsSearchError, match="budget.worker_resources: .GPU.: CPUs and GPUs are set by cpus_per_worker"):
        load_space(write(tmp_path, mutate(budget={"trials": 1, "worker_resources": {"GPU": 1}})))


def test_a_space_with_nothing_to_choose_is_one_trial(tmp_path):
    fixed = mutate(model={"head_dim": [8], "heads": [2], "depth": 1}, training={})
    space = load_space(write(tmp_path, fixed))
    assert space.is_grid and space.num_samples() == 1 and len(space.grid_samples()) == 1


def test_a_folder_named_like_a_shipped_space_never_shadows_it(tmp_path, monkeypatch, capsys):
    """`make demo` writes ./demo/ beside the shipped `demo` space: the name still means the space."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_space("demo").path.name == "demo.yaml"
    assert capsys.readouterr().err == ""  # no file matched: nothing to note


def test_a_file_named_like_a_shipped_space_wins_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, GOOD).rename(tmp_path / "smoke")
    space = load_space("smoke")
    assert space.path == (tmp_path / "smoke").resolve()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "using the file smoke, not the shipped search space" in err[0]


def test_a_task_file_named_like_a_builtin_task_wins_and_says_so(tmp_path, monkeypatch, capsys):
    from claims_search.data.labels import task_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "complexity_k0").mkdir()  # a folder: never a task file
    assert task_path("complexity_k0").parent.name == "complexity"
    (tmp_path / "ckd_incidence").write_text("mine")
    assert task_path("ckd_incidence") == Path("ckd_incidence")
    assert "using the file ckd_incidence, not the shipped task" in capsys.readouterr().err


def test_a_relative_space_path_is_resolved_when_loaded(tmp_path, monkeypatch):
    """Trials run in other working directories: the space they get must not depend on ours."""
    monkeypatch.chdir(tmp_path)
    space = load_space(write(tmp_path, GOOD).name)
    assert space.path.is_absolute() and space.path == (tmp_path / space.path.name).resolve()


def test_yaml_exponent_floats_and_missing_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD).replace("0.0001", "1e-4"))
    assert load_space(path).training.pretrain["lr"].low == pytest.approx(1e-4)
    with pytest.raises(ClaimsSearchError, match="no such search space file or shipped space"):
        load_space(tmp_path / "nope.yaml")


def test_a_bare_task_name_may_be_any_task_prepared_into_the_cache(tmp_path):
    """`prepare --task mytask.yaml` puts `mytask` in the cache; a space may name it. Whether the
    cache has it is checked when the search starts, before any trial."""
    space = load_space(write(tmp_path, mutate(tasks=["mytask", "ckd_incidence"])))
    assert space.task_names == ["mytask", "ckd_incidence"]


def test_fractional_gpus_with_several_workers_per_trial_are_refused(tmp_path):
    bad = mutate(budget={**GOOD["budget"], "workers_per_trial": 2, "gpus_per_worker": 0.5})
    with pytest.raises(ClaimsSearchError, match="gpus_per_worker: 0.5 is a fraction of a GPU, and a trial with 2 workers"):
        load_space(write(tmp_path, bad))
    one = mutate(budget={**GOOD["budget"], "workers_per_trial": 1, "gpus_per_worker": 0.5})
    assert load_space(write(tmp_path, one)).budget.gpus_per_worker == 0.5  # two trials share a GPU: fine


def test_prices_per_device_kind_are_read_and_checked(tmp_path):
    from claims_search.results.summary import SummarySettings

    space = load_space(write(tmp_path, mutate(prices={"H100": 4.0, "cpu": 0.05})))
    assert SummarySettings.from_space(space).prices == {"H100": 4.0, "cpu": 0.05}
    with pytest.raises(ClaimsSearchError, match="must be > 0"):
        load_space(write(tmp_path, mutate(prices={"H100": 0})))


def test_a_ladder_space_lists_every_size_as_a_whole_trial_config():
    """The ladder policy's sizes: each distinct configuration with the space's constants filled
    in (the demo's: head_dim 8/16/32 x depth 1/3, two heads, the same training settings)."""
    space = load_space("demo")
    samples = space.full_samples()
    configs = [space.sample_to_trial_config(s) for s in samples]
    assert len(samples) == len(space.distinct_points()) == 6
    assert {(c["model"]["width"], c["model"]["depth"]) for c in configs} == {
        (w, d) for w in (16, 32, 64) for d in (1, 3)}
    assert all(c["model"]["heads"] == 2 and c["pretrain"] == configs[0]["pretrain"] for c in configs)


def test_a_space_with_nothing_to_choose_has_one_whole_sample(tmp_path):
    space = load_space(write(tmp_path, mutate(model={"head_dim": [8], "heads": [2], "depth": 1}, training={})))
    (sample,) = space.full_samples()
    config = space.sample_to_trial_config(sample)
    assert config == space.sample_to_trial_config(space.grid_samples()[0]) and config["model"]["width"] == 16
