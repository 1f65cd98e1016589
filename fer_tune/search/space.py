"""Search spaces: one plain YAML per model in ``search_spaces/``, validated, sampled by Optuna."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from fer_tune.training.config import OPTIMIZERS, SCHEDULERS, TrainConfig, runs_own_schedule, with_own_schedule
from fer_tune.yaml_files import read_yaml
from fer_tune.errors import UserError
from fer_tune.models import MODELS, model_info

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
METRICS = {"val_acc": "max", "val_acc_single": "max", "val_f1": "max", "val_loss": "min"}
TOP_LEVEL_KEYS = ("description", "model", "metric", "budget", "resources", "fixed", "paper_trial", "space",
                  "finetune", "smoke")
FINETUNE_KEYS = ("epochs", "lr", "scheduler")  # an extra stage after the main run (paper Table 11)
KINDS = ("choice", "loguniform", "uniform", "int")
AUTO = "auto"  # gpus_per_trial: auto
FIXED_ONLY = ("pretrained_path",)  # settings a space may fix for every trial but never sample
TUNABLE = tuple(f.name for f in fields(TrainConfig) if f.name not in ("model", "base_checkpoint", "epochs", "pretrained_path"))


@dataclass(frozen=True)
class Budget:
    """How much a search may spend."""

    max_epochs: int = 30
    grace_period: int = 3
    reduction_factor: int = 3
    num_trials: int = 20
    max_concurrent: int = 4
    patience: int = 0  # a run ends after this many epochs without a better validation score (0 = never)
    checkpoint_every: int = 0  # a run saves its state every N epochs; 0 = by time (below), else automatic
    checkpoint_every_s: float = 0.0  # ... every T seconds of training; 0 = when saving costs under about 5%

    def asha_rungs(self) -> set[int]:
        """The epochs at which ASHA compares a trial with the others (and may stop it)."""
        rungs, epoch = set(), self.grace_period
        while epoch < self.max_epochs:
            rungs.add(epoch)
            epoch *= self.reduction_factor
        return rungs

    def check(self, where: str) -> "Budget":
        """Itself, when every count is in range and consistent; else a :class:`UserError` naming ``where``."""
        _check_rules(where, self, [("grace_period", 1 <= self.grace_period <= self.max_epochs,
                                    f"1 to max_epochs ({self.max_epochs})")])
        return self


GPU_SHARES = "0 to 1 (a share of one GPU), a whole number of GPUs up to 64, or auto"


def gpu_share_ok(value: Any) -> bool:
    """True for a GPU share Ray can place (see :data:`GPU_SHARES`)."""
    if value == AUTO:
        return True
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= 64 and (value <= 1 or value == int(value)))


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for (the GPU share is dropped to 0 where Ray sees no GPU)."""

    gpus_per_trial: float | str = 1.0  # or "auto": sized by a probe of one trial on the GPU (tune_runner)
    cpus_per_trial: float = 2.0

    def check(self, where: str) -> "Resources":
        """Itself, when the shares are finite and Ray can place them; else a :class:`UserError`."""
        _check_rules(where, self, [])
        return self


@dataclass(frozen=True)
class RetrainPreset:
    """How many winners the retraining takes and over how many seeds (``--top-k`` / ``--seeds``)."""

    top_k: int = 3
    seeds: int = 3

    def check(self, where: str) -> "RetrainPreset":
        """Itself, when both counts are 1 to 100; else a :class:`UserError` naming ``where``."""
        _check_rules(where, self, [])
        return self


# The allowed values of every single-number setting, whether it comes from a YAML (budget, resources,
# retrain) or from its command-line option: (what is allowed, the check)
RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "max_epochs": ("a whole number 1 to 100000", lambda v: 1 <= v <= 100_000),
    "num_trials": ("a whole number 1 to 100000", lambda v: 1 <= v <= 100_000),
    "reduction_factor": ("2 to 100 (ASHA keeps 1 in reduction_factor)", lambda v: 2 <= v <= 100),
    "max_concurrent": ("a whole number 1 to 10000", lambda v: 1 <= v <= 10_000),
    "patience": ("0 (off) to 100000 epochs without improvement", lambda v: 0 <= v <= 100_000),
    "checkpoint_every": ("0 (automatic) to 100000 epochs", lambda v: 0 <= v <= 100_000),
    "checkpoint_every_s": ("0 (automatic) to 604800 seconds", lambda v: 0 <= v <= 7 * 86_400),
    "gpus_per_trial": (GPU_SHARES, gpu_share_ok),
    "cpus_per_trial": ("above 0 and at most 1024", lambda v: math.isfinite(v) and 0 < v <= 1024),
    "top_k": ("a whole number 1 to 100", lambda v: 1 <= v <= 100),
    "seeds": ("a whole number 1 to 100", lambda v: 1 <= v <= 100),
}


def _check_rules(where: str, values: Any, rules: list[tuple[str, bool, str]]) -> None:
    """A :class:`UserError` for the first field of ``values`` outside :data:`RANGES`, or the first
    of ``rules`` (name, ok, allowed) that fails."""
    ranged = [(f.name, RANGES[f.name][1](getattr(values, f.name)), RANGES[f.name][0])
              for f in fields(values) if f.name in RANGES]
    for name, ok, allowed in ranged + rules:
        if not ok:
            raise UserError(f"{where}.{name} = {getattr(values, name)!r} is not allowed; use {allowed}")


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: ``choice`` over values, or a (log-)uniform / int range."""

    name: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file."""

    name: str
    path: str
    model: str
    description: str
    base: str | None
    metric: str
    mode: str
    budget: Budget
    resources: Resources
    fixed: dict[str, Any]
    paper_trial: dict[str, Any]
    params: tuple[Param, ...]
    smoke: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)  # epochs, lr, scheduler; empty = no stage
    retrain: RetrainPreset = RetrainPreset()  # the retraining's top-k x seeds (a smoke run: smoke.retrain)

    def train_config(self, sampled: dict[str, Any], epochs: int | None = None) -> TrainConfig:
        """The full training config of one trial: fixed values + sampled ones."""
        values = {**self.fixed, **sampled, "model": self.model, "epochs": epochs or self.budget.max_epochs}
        return TrainConfig.from_mapping(with_own_schedule(values), source=f"{self.path} (trial config)")

    def largest_trial(self) -> TrainConfig:
        """The paper's trial at the space's largest batch size: what ``gpus_per_trial: auto`` measures."""
        sizes = [v for p in self.params if p.name == "batch_size" for v in (p.values or (p.high,))]
        config = self.train_config(paper_point(self))
        return config.replace(batch_size=int(max(sizes + [config.batch_size])))

    def with_fixed(self, **values: Any) -> "SearchSpace":
        """The same space with some settings fixed for every trial (e.g. taken from the base checkpoint)."""
        sampled = sorted(set(values) & {p.name for p in self.params})
        if sampled:
            raise UserError(f"{self.path}: space.{sampled[0]} is sampled, but it must be {values[sampled[0]]!r} "
                            "here (taken from the base checkpoint); remove it from space:")
        return replace(self, fixed={**self.fixed, **values})

    def for_smoke(self) -> "SearchSpace":
        """The same space with the file's ``smoke:`` presets (budget, fixed values, resources, fine-tune,
        retraining): tiny, on the CPU."""
        budget = replace(self.budget, **self.smoke.get("budget", {}))
        finetune = {**self.finetune, **self.smoke.get("finetune", {})} if self.finetune else {}
        resources = replace(self.resources, **{"gpus_per_trial": 0.0, **self.smoke.get("resources", {})})
        return replace(self, budget=budget, fixed={**self.fixed, **self.smoke.get("fixed", {})}, finetune=finetune,
                       resources=resources, retrain=replace(self.retrain, **self.smoke.get("retrain", {})),
                       paper_trial={**self.paper_trial, **self.smoke.get("paper_trial", {})})


class SpaceSampler:
    """Optuna define-by-run sampler for a space (a picklable class, so Ray can checkpoint the searcher).

    Conditional rule (:func:`~fer_tune.training.config.runs_own_schedule`): when an optimizer with its own
    warm-up / warm-down (Ranger21) is drawn, the scheduler is not sampled and is set to ``none``.
    """

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.name == "scheduler" and runs_own_schedule(chosen.get("optimizer")):
                continue
            if p.kind == "choice":
                chosen[p.name] = trial.suggest_categorical(p.name, list(p.values))
            elif p.kind == "int":
                chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
            else:
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "loguniform")
        return {"scheduler": "none"} if runs_own_schedule(chosen.get("optimizer")) else {}


def available_spaces() -> list[str]:
    """Names of the search spaces shipped in ``search_spaces/``."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space_path(name_or_path: str) -> Path:
    """``vgg_spinal`` -> search_spaces/vgg_spinal.yaml; a path to a .yaml file is taken as is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise UserError(f"{candidate}: search-space file not found")
        return candidate
    path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(
            f"unknown search {name_or_path!r}; available: {', '.join(available_spaces())} "
            "(or give the path of a .yaml file); see `launch.py --list`"
        )
    return path


def load_search_space(name_or_path: str) -> SearchSpace:
    """Read and validate a search-space YAML; every problem names the file, the key and what is allowed."""
    path = resolve_space_path(name_or_path)
    raw = read_yaml(path)
    src = str(path)
    if not isinstance(raw, dict):
        raise UserError(f"{src}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    if "base" in raw:
        raise UserError(f"{src}: base: is not set in a search space: the model registry says which model each "
                        "model transfers from (launch.py --list shows it); remove base:")
    _no_unknown(src, "", raw, TOP_LEVEL_KEYS)
    model = raw.get("model")
    if model not in MODELS:
        raise UserError(f"{src}: model = {model!r} is unknown; allowed: {', '.join(MODELS)}")
    base = model_info(model).base  # the registry says which model a transfer starts from
    metric = raw.get("metric", "val_acc")
    if metric not in METRICS:
        raise UserError(f"{src}: metric = {metric!r} is unknown; allowed: {', '.join(METRICS)}")
    budget = _dataclass_from(src, "budget", Budget, raw.get("budget", {})).check(f"{src}: budget")
    resources = _dataclass_from(src, "resources", Resources, raw.get("resources", {})).check(f"{src}: resources")
    fixed = _config_values(src, "fixed", raw.get("fixed", {}))
    paper_trial = _config_values(src, "paper_trial", raw.get("paper_trial", {}))
    params = _params(src, raw.get("space", {}))
    smoke = raw.get("smoke", {}) or {}
    if not isinstance(smoke, dict):
        raise UserError(f"{src}: smoke must be a mapping with budget: and fixed:")
    _no_unknown(src, "smoke.", smoke, ("budget", "fixed", "paper_trial", "finetune", "resources", "retrain"))
    smoke_budget = _dataclass_from(src, "smoke.budget", Budget, smoke.get("budget", {}))
    _dataclass_from(src, "smoke.resources", Resources, smoke.get("resources", {})).check(f"{src}: smoke.resources")
    _dataclass_from(src, "smoke.retrain", RetrainPreset, smoke.get("retrain", {})).check(f"{src}: smoke.retrain")
    replace(budget, **{k: getattr(smoke_budget, k) for k in smoke.get("budget", {})}).check(f"{src}: smoke.budget")
    _config_values(src, "smoke.fixed", smoke.get("fixed", {}))
    _config_values(src, "smoke.paper_trial", smoke.get("paper_trial", {}))
    finetune = _finetune(src, "finetune", raw.get("finetune", {}))
    _finetune(src, "smoke.finetune", smoke.get("finetune", {}))
    space = SearchSpace(
        name=path.stem, path=src, model=model, description=str(raw.get("description", "")).strip(),
        base=base, metric=metric, mode=METRICS[metric], budget=budget, resources=resources,
        fixed=fixed, paper_trial=paper_trial, params=params, smoke=smoke, finetune=finetune,
    )
    _check_paper_trial(space)
    _check_paper_trial(space.for_smoke())
    return space


def _finetune(src: str, key: str, values: Any) -> dict[str, Any]:
    """``finetune: {epochs: 20, lr: 1.0e-5}``: more epochs from the main run's selected weights, at
    that learning rate (scheduler ``none`` unless given), same optimizer."""
    if not values:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{src}: {key} must be a mapping such as {{epochs: 20, lr: 1.0e-5}}")
    _no_unknown(src, f"{key}.", values, FINETUNE_KEYS)
    if key == "finetune" and not {"epochs", "lr"} <= set(values):
        raise UserError(f"{src}: finetune needs epochs and lr, e.g. {{epochs: 20, lr: 1.0e-5}}")
    probe = TrainConfig.from_mapping({"scheduler": "none", **values}, source=f"{src} ({key})")
    return {k: getattr(probe, k) for k in values}


def _no_unknown(src: str, prefix: str, mapping: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise UserError(f"{src}: unknown key {prefix}{unknown[0]}; allowed: {', '.join(allowed)}")


def _dataclass_from(src: str, key: str, cls, values: Any):
    if not isinstance(values, dict):
        raise UserError(f"{src}: {key} must be a mapping")
    allowed = tuple(f.name for f in fields(cls))
    _no_unknown(src, f"{key}.", values, allowed)
    converted = {}
    for f in fields(cls):
        if f.name in values:
            value = values[f.name]
            if f.name == "gpus_per_trial" and value == AUTO:
                converted[f.name] = AUTO
                continue
            try:
                if isinstance(value, bool):
                    raise ValueError
                converted[f.name] = int(value) if f.type == "int" else float(value)
                if f.type == "int" and float(value) != int(value):
                    raise ValueError
                if not math.isfinite(converted[f.name]):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise UserError(f"{src}: {key}.{f.name} = {value!r} is not a valid {f.type}") from None
            if converted[f.name] < 0:
                raise UserError(f"{src}: {key}.{f.name} = {value!r} must not be negative")
    return cls(**converted)


def _config_values(src: str, key: str, values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise UserError(f"{src}: {key} must be a mapping of training settings")
    _no_unknown(src, f"{key}.", values, TUNABLE + (FIXED_ONLY if key.endswith("fixed") else ()))
    probe = TrainConfig.from_mapping(with_own_schedule(values), source=f"{src} ({key})")
    return {k: getattr(probe, k) for k in values}


def _params(src: str, space: Any) -> tuple[Param, ...]:
    if not isinstance(space, dict):
        raise UserError(f"{src}: space must be a mapping of name: {{choice: [...]}} or {{loguniform: [low, high]}}")
    _no_unknown(src, "space.", space, TUNABLE)
    params = []
    for name, spec in space.items():
        where = f"{src}: space.{name}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise UserError(f"{where} must be one of {{choice: [...]}}, {{loguniform: [low, high]}}, "
                            "{uniform: [low, high]}, {int: [low, high]}")
        kind, value = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise UserError(f"{where}.choice must be a non-empty list")
            params.append(Param(name, kind, values=tuple(_check_value(src, name, v) for v in value)))
            continue
        if not isinstance(value, list) or len(value) != 2:
            raise UserError(f"{where}.{kind} must be [low, high]")
        try:
            low, high = float(value[0]), float(value[1])
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError
            if kind == "int" and (isinstance(value[0], bool) or low != int(low) or high != int(high)):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{where}.{kind} = {value!r}: low and high must be finite numbers"
                            f"{' (whole numbers for int)' if kind == 'int' else ''}") from None
        if not low < high:
            raise UserError(f"{where}.{kind}: low {value[0]} is not below high {value[1]}; swap them")
        if kind == "loguniform" and low <= 0:
            raise UserError(f"{where}.loguniform: low must be above 0 for a log scale")
        for bound in (low, high):
            _check_value(src, name, bound if kind != "int" else int(bound))
        params.append(Param(name, kind, low=low, high=high))
    return tuple(params)


def _check_value(src: str, name: str, value: Any) -> Any:
    if name == "optimizer" and value not in OPTIMIZERS:
        raise UserError(f"{src}: space.optimizer has {value!r}; allowed: {', '.join(OPTIMIZERS)}")
    if name == "scheduler" and value not in SCHEDULERS:
        raise UserError(f"{src}: space.scheduler has {value!r}; allowed: {', '.join(SCHEDULERS)}")
    return getattr(TrainConfig.from_mapping(with_own_schedule({name: value}), source=f"{src} (space.{name})"), name)


def _check_paper_trial(space: SearchSpace) -> None:
    """The paper's settings must be a point of the space (Optuna enqueues them as trial 1)."""
    by_name = {p.name: p for p in space.params}
    for key, value in space.paper_trial.items():
        p = by_name.get(key)
        if p is None:
            raise UserError(f"{space.path}: paper_trial.{key} is not in space:; add it to space or move it to fixed")
        if p.kind == "choice" and value not in p.values:
            raise UserError(f"{space.path}: paper_trial.{key} = {value!r} is not one of space.{key}.choice")
        if p.kind != "choice" and not (p.low <= value <= p.high or math.isclose(value, p.low) or math.isclose(value, p.high)):
            raise UserError(f"{space.path}: paper_trial.{key} = {value} is outside space.{key} [{p.low}, {p.high}]")


def paper_point(space: SearchSpace) -> dict[str, Any]:
    """The paper's trial as an Optuna point: only the parameters the sampler will ask for."""
    sampled = {p.name for p in space.params}
    if runs_own_schedule(space.paper_trial.get("optimizer")):
        sampled.discard("scheduler")  # the sampler does not ask for it
    return {k: v for k, v in space.paper_trial.items() if k in sampled}
