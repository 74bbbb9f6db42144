"""Search spaces as data: `search_spaces/*.yaml`, validated on load into pydantic models.

A space names its tasks, primary metric, cost measure, objective, sampler, budget, the model
dimensions and training settings to search, and how to recommend. Each searchable value is
written as one of

    0.1                                  a constant
    [2, 4, 8]                            a choice
    {low: 1.0e-4, high: 1.0e-3, log: true}   a range (ints stay ints; ``step`` for int ranges)

The model is either ``presets: [names]`` (named sizes from ``claims_search.model.sizes.PRESETS``,
searched as a grid: the study's design) or real dimensions ``head_dim × heads = width`` and
``depth``, so that every sample is a valid size. Any problem is one ``ClaimsSearchError`` line
naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from claims_search import named
from claims_search.errors import ClaimsSearchError
from claims_search.results.recommend import MAX_STABILITY_SEEDS

TASKS_DIR = Path(__file__).resolve().parents[1] / "data" / "tasks"
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Range(_Strict):
    """A numeric range; ints if both ends are ints (and no float step), else floats."""

    low: Union[int, float]
    high: Union[int, float]
    log: bool = False
    step: Union[int, float, None] = None

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log range needs low > 0, got {self.low}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int)
        )


Scalar = Union[bool, int, float, str]
Param = Union[Range, list[Scalar], Scalar]
Number = Union[int, float]
NumParam = Union[Range, list[Number], Number]  # model dimensions are numbers


def _check_choices(v: Any) -> Any:
    if isinstance(v, list) and not v:
        raise ValueError("empty choice list")
    return v


class DimsModel(_Strict):
    """Real dimensions: width = head_dim × heads, so every sample is valid; or width + heads as
    choices, each width divisible by each heads."""

    head_dim: NumParam | None = None
    width: list[int] | None = None
    heads: NumParam
    depth: NumParam
    ff_ratio: NumParam = 4.0
    dropout: NumParam = 0.1
    attn_dropout: NumParam = 0.0
    max_len: NumParam = 512

    @field_validator("*", mode="after")
    @classmethod
    def _choices(cls, v: Any) -> Any:
        return _check_choices(v)

    @model_validator(mode="after")
    def _check(self) -> "DimsModel":
        if (self.head_dim is None) == (self.width is None):
            raise ValueError("give exactly one of head_dim (width = head_dim × heads) or width")
        return self

    @field_validator("heads", mode="after")
    @classmethod
    def _divides(cls, heads: Any, info: ValidationInfo) -> Any:
        widths = info.data.get("width") or []
        bad = [(w, h) for w in widths for h in _values(heads) if w % h]
        if bad:
            raise ValueError(f"{bad[0][1]} heads can't divide width {bad[0][0]}")
        return heads


class PresetModel(_Strict):
    """Named sizes from claims_search.model.sizes.PRESETS (the paper's grid)."""

    presets: list[str] = Field(min_length=1)
    dropout: NumParam | None = None
    attn_dropout: NumParam | None = None
    max_len: NumParam | None = None


class Objective(_Strict):
    """``multi``: maximise each task's metric, minimise cost. ``scalar``: one number per trial,
    mean over tasks of ``metric − lambda·log2(cost / reference_cost)``."""

    kind: Literal["multi", "scalar"] = "multi"
    lambda_: float | None = Field(default=None, alias="lambda", ge=0)
    reference_cost: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "Objective":
        if self.kind == "scalar" and (self.lambda_ is None or self.reference_cost is None):
            raise ValueError("a scalar objective needs lambda and reference_cost")
        return self


class Sampler(_Strict):
    """How trials are chosen. ``ladder`` is the size policy (``policy.py``): sizes in order of
    cost, later ones judged at ``rungs`` of their pretraining, done when no untried size can gain
    more than ``delta`` (its other fields: ``policy.Settings``)."""

    kind: Literal["ladder", "tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    delta: float = Field(default=0.01, ge=0, lt=1)
    rungs: list[float] = [0.125, 0.25]
    z: float = Field(default=1.645, gt=0)
    warmup_sizes: int = Field(default=3, ge=2)
    skip_ahead: bool = False

    @model_validator(mode="after")
    def _rungs(self) -> "Sampler":
        if any(not 0 < r < 1 for r in self.rungs) or self.rungs != sorted(set(self.rungs)):
            raise ValueError(f"rungs: increasing fractions of pretraining in (0, 1), got {self.rungs}")
        return self


class Budget(_Strict):
    """``workers_per_trial: 0`` trains in the trial's own process (no Ray Train workers).

    ``driver_resources`` / ``worker_resources``: custom Ray resources (as given to ``ray start
    --resources``, e.g. ``{"accelerator_type:H100": 0.001}`` or a node label) that each trial's
    driver / each Ray Train worker asks for, on top of its CPUs and GPUs.

    ``gpu_memory_gb``: memory of one GPU of the nodes the trials run on (GB, as sold: 24 for an
    A10G); with it, a configuration whose training step cannot fit is refused at load
    (``claims_search.model.memory``)."""

    trials: int = Field(ge=1)
    concurrency: int = Field(default=1, ge=1)
    workers_per_trial: int = Field(default=1, ge=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    time_budget_s: float | None = Field(default=None, gt=0)
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    driver_resources: dict[str, float] = Field(default_factory=dict)
    worker_resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("driver_resources", "worker_resources", mode="after")
    @classmethod
    def _custom(cls, d: dict[str, float]) -> dict[str, float]:
        for k, v in d.items():
            if k.upper() in ("CPU", "GPU", "MEMORY") or not k:
                raise ValueError(f"{k!r}: CPUs and GPUs are set by cpus_per_worker/gpus_per_worker")
            if v <= 0:
                raise ValueError(f"{k}: must be > 0, got {v}")
        return d

    @model_validator(mode="after")
    def _gpu_memory(self) -> "Budget":
        if self.gpu_memory_gb is not None and not self.gpus_per_worker:
            raise ValueError("gpu_memory_gb is the memory of one GPU: set gpus_per_worker too")
        if self.workers_per_trial > 1 and self.gpus_per_worker % 1:
            # Ray may place two ranks of one trial on one GPU, and NCCL refuses two ranks per device.
            raise ValueError(f"gpus_per_worker: {self.gpus_per_worker:g} is a fraction of a GPU, and a trial with "
                             f"{self.workers_per_trial} workers could put two of its ranks on one GPU (NCCL refuses "
                             "that): use whole GPUs, or one worker per trial")
        return self


class Training(_Strict):
    pretrain: dict[str, Param] = Field(default_factory=dict)
    finetune: dict[str, Param] = Field(default_factory=dict)

    @field_validator("pretrain", "finetune", mode="after")
    @classmethod
    def _nonempty(cls, d: dict) -> dict:
        for k, v in d.items():
            if isinstance(v, list) and not v:
                raise ValueError(f"{k}: empty choice list")
        return d


class Reference(_Strict):
    metric: float
    cost: float = Field(gt=0)


class RecommendSettings(_Strict):
    """``margin``: non-inferiority margin δ of the paired rule (the upper 95 % bound of best −
    candidate below δ); null = indistinguishable (that interval contains 0). ``tolerance``:
    the unpaired fallback for records without predictions (null = the best's interval).
    ``stability_seeds``: more bootstrap seeds that decide again, to say how stable the answer is
    (0 = not asked; each costs one more paired bootstrap of every trial)."""

    margin: float | None = Field(default=None, ge=0, lt=1)
    stability_seeds: int = Field(default=4, ge=0, le=MAX_STABILITY_SEEDS)
    tolerance: float | None = Field(default=None, ge=0, lt=1)
    min_gain_per_doubling: float = Field(default=0.005, ge=0)
    reference: Reference | None = None


class Space(_Strict):
    """A validated search space. Load with :func:`load_space`."""

    name: str = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    metric: Literal["auprc", "auroc"] = "auprc"
    cost: Literal["device_seconds", "flops", "wall_seconds"] = "device_seconds"
    objective: Objective = Objective()
    sampler: Sampler = Sampler()
    budget: Budget
    model: Union[PresetModel, DimsModel]
    training: Training = Training()
    recommend: RecommendSettings = RecommendSettings()
    baseline: bool = True
    # Price per device-hour by device kind (claims_search/results/prices.py), used when a task's costs were
    # measured on several kinds; None: the documented defaults.
    prices: dict[str, float] | None = None
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("prices", mode="after")
    @classmethod
    def _prices(cls, d: dict[str, float] | None) -> dict[str, float] | None:
        for k, v in (d or {}).items():
            if not k or not v > 0:
                raise ValueError(f"{k!r}: a price per device-hour must be > 0, got {v}")
        return d

    @field_validator("objective", "sampler", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "Space":
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks: a task is listed twice")
        if self.sampler.kind == "grid":
            for key, p in self._params():
                if isinstance(p, Range):
                    raise ValueError(f"{key}: the grid sampler needs choices, not a range")
        if self.sampler.kind == "ladder":
            points = self.distinct_points()
            if points is None:
                raise ValueError("sampler: the ladder policy needs finitely many sizes (choices or integer "
                                 "ranges), not a continuous range")
            sizes = {"model/head_dim", "model/width", "model/heads", "model/depth", "model/preset"}
            other = sorted({k.replace("/", ".") for p in points for k in p} - {k.replace("/", ".") for k in sizes})
            if other:
                raise ValueError(f"sampler: the ladder policy searches sizes (width, heads, depth or presets) "
                                 f"only; {', '.join(other)} vary: fix them, or use sampler tpe")
        return self

    # ---- the parameters, flat -------------------------------------------------------------
    def _params(self) -> list[tuple[str, Any]]:
        m = self.model
        out: list[tuple[str, Any]] = []
        if isinstance(m, PresetModel):
            out.append(("model.preset", list(m.presets)))
            out += [(f"model.{k}", v) for k in ("dropout", "attn_dropout", "max_len")
                    if (v := getattr(m, k)) is not None]
        else:
            for k in ("head_dim", "width", "heads", "depth", "ff_ratio", "dropout", "attn_dropout", "max_len"):
                if (v := getattr(m, k)) is not None:
                    out.append((f"model.{k}", v))
        out += [(f"pretrain.{k}", v) for k, v in self.training.pretrain.items()]
        out += [(f"finetune.{k}", v) for k, v in self.training.finetune.items()]
        return out

    @property
    def is_grid(self) -> bool:
        """True when trials are the grid of choices (presets or sampler: grid), not samples. A
        space with nothing to choose is a grid of one point: one trial, not ``budget.trials``
        copies of the same configuration (and no sampler, which would have nothing to sample)."""
        free = any((isinstance(p, Range) and p.low < p.high) or (isinstance(p, list) and len(p) > 1)
                   for _, p in self._params())
        return self.sampler.kind == "grid" or isinstance(self.model, PresetModel) or not free

    def grid_samples(self) -> list[dict[str, Any]]:
        """Every point of the grid as a nested sample (only meaningful when ``is_grid``)."""
        keys, values = zip(*[(k, _values(p) if isinstance(p, list) else [p]) for k, p in self._params()])
        return [_nest(dict(zip(keys, combo))) for combo in itertools.product(*values)]

    def distinct_points(self) -> list[dict[str, Any]] | None:
        """Every distinct configuration of the searched dimensions, as flat ``{"model/depth": v}``
        points (Optuna's names), when they are finitely many (choices and integer ranges); None
        when a dimension is continuous. Constants are left out: they never vary."""
        free = []
        for key, p in self._params():
            if isinstance(p, Range) and not p.is_int and p.low < p.high:
                return None
            values = _values(p) if isinstance(p, (Range, list)) else [p]
            if len(values) > 1:
                free.append((key.replace(".", "/"), values))
        if not free:
            return []
        keys, lists = zip(*free)
        return [dict(zip(keys, combo)) for combo in itertools.product(*lists)]

    def full_samples(self) -> list[dict[str, Any]]:
        """Every distinct configuration of :meth:`distinct_points` as a nested sample with the
        space's constants filled in: what a trial of that configuration is given. A space with
        nothing to choose gives one; a continuous dimension stays out of the samples (the
        sampler's to draw). The ladder policy's sizes are these."""
        base = {}
        for key, p in self._params():
            if isinstance(p, list):
                if len(p) == 1:
                    base[key] = p[0]
            elif not isinstance(p, Range):
                base[key] = p
        return [_nest({**base, **{k.replace("/", "."): v for k, v in point.items()}})
                for point in self.distinct_points() or [{}]]

    def num_samples(self) -> int:
        """Ray Tune's ``num_samples``: 1 pass over a grid, else ``budget.trials``."""
        return 1 if self.is_grid else self.budget.trials

    def tune_param_space(self) -> dict[str, Any]:
        """Nested ``param_space`` for Ray Tune: ``{"model": {...}, "pretrain": {...}, ...}``.

        Ranges become ``tune.uniform/loguniform/randint/lograndint/qrandint``, choices
        ``tune.choice`` (``tune.grid_search`` when ``is_grid``), constants stay constants.
        OptunaSearch takes it as is (it flattens nested keys); a grid runs without a searcher.
        """
        from ray import tune

        def domain(p: Any) -> Any:
            if isinstance(p, Range):
                if p.is_int:
                    if p.step not in (None, 1):
                        return tune.qrandint(p.low, p.high, p.step)
                    return (tune.lograndint if p.log else tune.randint)(p.low, p.high + 1)
                if p.log:
                    return tune.loguniform(p.low, p.high)
                if p.step is not None:
                    return tune.quniform(p.low, p.high, p.step)
                return tune.uniform(p.low, p.high)
            if isinstance(p, list):
                if len(p) == 1:
                    return p[0]
                return tune.grid_search(p) if self.is_grid else tune.choice(p)
            return p

        return _nest({k: domain(p) for k, p in self._params()})

    def sample_to_trial_config(self, sample: dict[str, Any]) -> dict[str, Any]:
        """A (nested, or flat with '.'/'/' keys) sample -> the design doc's trial config
        ``{"model": ModelSize kwargs, "pretrain": {...}, "finetune": {...}}``."""
        flat = _flatten(sample)
        model = {k[6:]: v for k, v in flat.items() if k.startswith("model.")}
        if "preset" in model:
            from claims_search.model import sizes

            size = dataclasses.asdict(sizes.PRESETS[model.pop("preset")])
            size.update(model)
            model = size
        elif "head_dim" in model:
            model["width"] = int(model.pop("head_dim")) * int(model["heads"])
        for k in ("width", "heads", "depth", "max_len"):
            if k in model:
                model[k] = int(model[k])
        return {
            "model": model,
            "pretrain": {k[9:]: v for k, v in flat.items() if k.startswith("pretrain.")},
            "finetune": {k[9:]: v for k, v in flat.items() if k.startswith("finetune.")},
        }

    def task_paths(self) -> dict[str, Path]:
        """Task name -> ACES config file (built-in name, or a path relative to the space)."""
        return {Path(t).stem if t.endswith((".yaml", ".yml")) else t: _task_path(t, self.path) for t in self.tasks}

    @property
    def task_names(self) -> list[str]:
        return list(self.task_paths())


def _values(p: Any) -> list:
    if isinstance(p, list):
        return list(p)
    if isinstance(p, Range):
        if p.is_int:
            return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        return [p.low, p.high]
    return [p]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"model": {}, "pretrain": {}, "finetune": {}}
    for k, v in flat.items():
        head, _, tail = k.partition(".")
        out.setdefault(head, {})[tail] = v
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{str(k).replace('/', '.')}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _task_path(task: str, space_path: Path | None) -> Path | None:
    builtin = TASKS_DIR / f"{task}.yaml"
    if builtin.exists():
        return builtin
    for base in ([space_path.parent] if space_path else []) + [Path.cwd()]:
        p = base / task
        if p.suffix in (".yaml", ".yml") and p.is_file():
            return p
    return None


# YAML 1.1 reads 1e-4 as a string; accept it as a float like everyone expects.
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


_TYPES = {"int", "float", "str", "bool", "none"}


def _first_error(e: ValidationError) -> str:
    def key(err: dict) -> list[str]:
        # Drop pydantic's union-branch names (e.g. "Range", "list[...]") from the key path.
        return [str(x) for x in err["loc"] if not (isinstance(x, str) and (x[:1].isupper() or "[" in x or x in _TYPES))]

    errors = e.errors()
    err, loc = errors[0], key(errors[0])
    if len(errors) > 1 and all(key(x) == loc for x in errors):  # every branch of a union failed
        # Report the branch the value was meant for: a dict is a range, a list a choice.
        branch = "Range" if isinstance(err["input"], dict) else "list[" if isinstance(err["input"], list) else None
        meant = [x for x in errors if branch and any(branch in str(p) for p in x["loc"])]
        if not meant:
            return f"{'.'.join(loc)}: {err['input']!r} is not a value, a list of choices or {{low, high}}"
        err = meant[0]
        loc = key(err)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def parse_space(data: Any, path: str | Path = "<space>") -> Space:
    """Validate an already-parsed YAML mapping; errors name ``path`` and the key."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ClaimsSearchError(f"{path}: a search space must be a mapping")
    model = data.get("model")
    # Pick the model branch by its keys so errors talk about the right one.
    if isinstance(model, dict):
        data = dict(data)
        cls = PresetModel if "presets" in model else DimsModel
        try:
            data["model"] = cls.model_validate(model)
        except ValidationError as e:
            raise ClaimsSearchError(f"{path}: model.{_first_error(e)}") from None
    try:
        space = Space.model_validate({**data, "path": path})
    except ValidationError as e:
        raise ClaimsSearchError(f"{path}: {_first_error(e)}") from None
    for t in space.tasks:
        # A bare name may be any task prepared into the cache (checked against the cache when the
        # search starts); a file name must exist here.
        looks_like_file = t.endswith((".yaml", ".yml")) or "/" in t or os.sep in t
        if looks_like_file and _task_path(t, path) is None:
            builtin = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
            raise ClaimsSearchError(
                f"{path}: tasks: unknown task {t!r}: no such file (a task is a built-in name "
                f"({', '.join(builtin)}), a task prepared into the cache (the stem of a prepare --task file), "
                "or a path to an ACES .yaml)"
            )
        if not looks_like_file and not re.fullmatch(r"[A-Za-z0-9_.-]+", t):
            raise ClaimsSearchError(f"{path}: tasks: {t!r} is not a task name (letters, digits, '_', '-', '.')")
    _check_lazy(space, path)
    return space


def _check_lazy(space: Space, path: Path) -> None:
    """Checks that need the model and the loop (imported late: they import torch): preset names,
    and every size and training setting at the corners of the space (ends of ranges, every
    choice) must build."""
    from claims_search.model import loop, sizes

    if isinstance(space.model, PresetModel):
        for name in space.model.presets:
            if name not in sizes.PRESETS:
                raise ClaimsSearchError(
                    f"{path}: model.presets: unknown preset {name!r} (known: {', '.join(sizes.PRESETS)})"
                )
    model = [(k, p) for k, p in space._params() if k.startswith("model.")]
    ends = [[(k, v) for v in ([p.low, p.high] if isinstance(p, Range) else _values(p))] for k, p in model]
    for corner in itertools.islice(itertools.product(*ends), 256):
        try:
            sizes.ModelSize(**space.sample_to_trial_config(_nest(dict(corner)))["model"])
        except (ClaimsSearchError, TypeError, ValueError) as e:
            raise ClaimsSearchError(f"{path}: model: {e}") from None
    for section, cls in (("pretrain", loop.PretrainSettings), ("finetune", loop.FinetuneSettings)):
        settings = getattr(space.training, section)
        known = {f.name for f in dataclasses.fields(cls)}
        for k in settings:
            if k not in known:
                raise ClaimsSearchError(f"{path}: training.{section}.{k}: unknown key")
        ends = {k: [p.low, p.high] if isinstance(p, Range) else _values(p) for k, p in settings.items()}
        corners = itertools.product(*[[(k, v) for v in vs] for k, vs in ends.items()])
        for corner in itertools.islice(corners, 256):
            try:
                cls(**dict(corner))
            except (ClaimsSearchError, TypeError, ValueError) as e:
                raise ClaimsSearchError(f"{path}: training.{section}: {e}") from None
    if space.budget.gpu_memory_gb is not None:  # every configuration's step must fit the GPU
        check_memory(space, space.budget.gpu_memory_gb)


def check_memory(space, gpu_memory_gb: float, vocab_size: int | None = None) -> float:
    """Refuse (``ClaimsSearchError``) a space with any configuration (size x batch_tokens x
    grad_accum, at every corner of the space: the ends of ranges and every choice) whose bf16
    step cannot fit ``gpu_memory_gb`` per GPU; a fractional ``gpus_per_worker`` gets its share.
    The vocabulary is not known before the data: ``sizes.REFERENCE_VOCAB`` stands for it.
    Returns the largest estimate, in GiB."""
    import itertools

    from claims_search.model import loop, sizes
    from claims_search.model.memory import check_fits

    vocab = sizes.REFERENCE_VOCAB if vocab_size is None else vocab_size
    share = gpu_memory_gb * min(1.0, space.budget.gpus_per_worker or 1.0)
    where = space.path or "<space>"

    def ends(p):
        return [p.low, p.high] if isinstance(p, Range) else (_values(p) if isinstance(p, list) else [p])

    model = [[(k, v) for v in ends(p)] for k, p in space._params() if k.startswith("model.")]
    largest = 0.0
    for section, masked, cls in (("pretrain", None, loop.PretrainSettings),
                                 ("finetune", 0.0, loop.FinetuneSettings)):
        settings = getattr(space.training, section)
        tokens = ends(settings["batch_tokens"]) if "batch_tokens" in settings else [cls.batch_tokens]
        accum = ends(settings["grad_accum"]) if "grad_accum" in settings else [1]
        mask = ends(settings["mask_prob"]) if section == "pretrain" and "mask_prob" in settings else [0.15]
        for corner in itertools.islice(itertools.product(*model), 4096):
            cfg = space.sample_to_trial_config(_nest(dict(corner)))["model"]
            size = sizes.ModelSize(**cfg)
            label = f"{where}: training.{section}: size {_describe(size)}"
            for bt, k, m in itertools.product(tokens, accum, mask):
                frac = m if masked is None else masked
                est = check_fits(label, size, vocab, int(bt), share, masked_fraction=frac,
                                 grad_accum=int(k))
                largest = max(largest, est.gib())
    return largest


def _describe(size) -> str:
    from claims_search.model.sizes import PRESETS

    names = [n for n, p in PRESETS.items() if p == size]
    shape = f"width {size.width}, depth {size.depth}, max_len {size.max_len}"
    return f"{names[0]} ({shape})" if names else shape


def load_space(path: str | Path) -> Space:
    """Load and validate a search space YAML: a file, else a shipped space's name like 'smoke'
    (``named.resolve``: a folder of that name never counts)."""
    p = named.resolve(path, SPACES_DIR / f"{path}.yaml", "search space")
    if p is None:
        shipped = ", ".join(sorted(f.stem for f in SPACES_DIR.glob("*.yaml")))
        raise ClaimsSearchError(f"{path}: no such search space file or shipped space ({shipped})")
    p = p.resolve()  # trials run in other working directories (and on other nodes)
    try:
        data = yaml.load(p.read_bytes().decode("utf-8"), Loader=_Loader)
    except UnicodeDecodeError as e:
        raise ClaimsSearchError(f"{p}: not UTF-8 text (byte at offset {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ClaimsSearchError(f"{p}: not valid YAML: {problem}{where}") from None
    if data is None:
        raise ClaimsSearchError(f"{p}: empty search space file")
    return parse_space(data, p)


def validate_against_cluster(space: Space, resources: dict[str, float]) -> int:
    """Check one trial fits the cluster (``ray.cluster_resources()``-style dict); return the
    concurrency to use: the space's, lowered to what the cluster can run at once."""
    b = space.budget
    workers = max(b.workers_per_trial, 1)
    need = {"GPU": workers * b.gpus_per_worker, "CPU": workers * b.cpus_per_worker}
    keys = {"GPU": "budget.gpus_per_worker", "CPU": "budget.cpus_per_worker"}
    for k, v in b.worker_resources.items():
        need[k] = need.get(k, 0.0) + workers * v
        keys[k] = f"budget.worker_resources.{k}"
    for k, v in b.driver_resources.items():
        need[k] = need.get(k, 0.0) + v
        keys.setdefault(k, f"budget.driver_resources.{k}")
    where = space.path or "<space>"
    fits = [b.concurrency, b.trials]
    for res, n in need.items():
        have = float(resources.get(res, 0))
        if n > have + 1e-9:
            raise ClaimsSearchError(
                f"{where}: {keys[res]}: a trial needs {n:g} {res} "
                f"({workers} worker(s)) but the cluster has {have:g}"
            )
        if n > 0:
            fits.append(math.floor(have / n + 1e-9))
    return max(1, min(fits))
