"""Read a search-space YAML (``search_spaces/NAME.yaml`` or a path) into a validated :class:`SearchSpace`:
unknown keys, values out of range and inconsistent budgets are one :class:`UserError` naming the key."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from fer_tune.errors import UserError
from fer_tune.models import MODELS, model_info
from fer_tune.search.space import (
    AUTO,
    AUTO_FIELDS,
    FIXED_ONLY,
    KINDS,
    METRICS,
    TUNABLE,
    Budget,
    Param,
    Resources,
    RetrainPreset,
    SearchSpace,
)
from fer_tune.training.config import OPTIMIZERS, SCHEDULERS, TrainConfig, runs_own_schedule, with_own_schedule
from fer_tune.yaml_files import read_yaml

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


TOP_LEVEL_KEYS = (
    "description",
    "model",
    "metric",
    "budget",
    "resources",
    "fixed",
    "paper_trial",
    "space",
    "finetune",
    "smoke",
)


FINETUNE_KEYS = ("epochs", "lr", "scheduler")  # an extra stage after the main run (paper Table 11)

# settings that do not change what a trial learns: sampling them makes trials differ by luck or not at all
NOT_SAMPLED = {
    "seed": "the search's --seed sets every trial's seed; a sampled seed makes trials differ by luck, not settings",
    "amp": "bf16 autocast changes speed, not the configuration being compared",
    "channels_last": "the memory layout changes speed, not the configuration being compared",
    "deterministic": "exact repeats change speed, not the configuration being compared",
    "eval_batch_size": "it changes only how many images are scored at once",
}
MODEL_OPTIONS = ("width", "activation")  # TrainConfig fields only some models use (the registry's options)


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
        raise UserError(
            f"{src}: base: is not set in a search space: the model registry says which model each "
            "model transfers from (launch.py --list shows it); remove base:"
        )
    _no_unknown(src, "", raw, TOP_LEVEL_KEYS)
    model = raw.get("model")
    if not isinstance(model, str) or model not in MODELS:
        raise UserError(f"{src}: model = {model!r} is unknown; allowed: {', '.join(MODELS)}")
    base = model_info(model).base  # the registry says which model a transfer starts from
    metric = raw.get("metric", "val_acc")
    if not isinstance(metric, str) or metric not in METRICS:
        raise UserError(f"{src}: metric = {metric!r} is unknown; allowed: {', '.join(METRICS)}")
    budget = _dataclass_from(src, "budget", Budget, raw.get("budget", {})).check(f"{src}: budget")
    resources = _dataclass_from(src, "resources", Resources, raw.get("resources", {})).check(f"{src}: resources")
    fixed = _config_values(src, "fixed", raw.get("fixed", {}))
    paper_trial = _config_values(src, "paper_trial", raw.get("paper_trial", {}))
    params = _params(src, raw.get("space", {}))
    _check_meaningful(src, model, params)
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
        name=path.stem,
        path=src,
        model=model,
        description=str(raw.get("description", "")).strip(),
        base=base,
        metric=metric,
        mode=METRICS[metric],
        budget=budget,
        resources=resources,
        fixed=fixed,
        paper_trial=paper_trial,
        params=params,
        smoke=smoke,
        finetune=finetune,
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
            if f.name in AUTO_FIELDS and value == AUTO:
                converted[f.name] = AUTO
                continue
            kind = "int" if f.type.startswith("int") else "float"
            try:
                if isinstance(value, bool):
                    raise ValueError
                converted[f.name] = int(value) if kind == "int" else float(value)
                if kind == "int" and float(value) != int(value):
                    raise ValueError
                if not math.isfinite(converted[f.name]):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise UserError(f"{src}: {key}.{f.name} = {value!r} is not a valid {kind}") from None
            if converted[f.name] < 0:
                raise UserError(f"{src}: {key}.{f.name} = {value!r} must not be negative")
    return cls(**converted)


def _config_values(src: str, key: str, values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise UserError(f"{src}: {key} must be a mapping of training settings")
    _no_unknown(src, f"{key}.", values, TUNABLE + (FIXED_ONLY if key.endswith("fixed") else ()))
    optimizer, scheduler = values.get("optimizer"), values.get("scheduler", "none")
    if runs_own_schedule(optimizer) and scheduler != "none":
        raise UserError(
            f"{src}: {key} has optimizer {optimizer} with scheduler {scheduler}, but {optimizer} runs its own "
            f"learning-rate schedule (warm-up and warm-down) and takes no scheduler; drop {key}.scheduler"
        )
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
            raise UserError(
                f"{where} must be one of {{choice: [...]}}, {{loguniform: [low, high]}}, "
                "{uniform: [low, high]}, {int: [low, high]}"
            )
        kind, value = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise UserError(f"{where}.choice must be a non-empty list")
            params.append(Param(name, kind, values=tuple(_check_value(src, name, v) for v in value)))
            continue
        if not isinstance(value, list) or len(value) != 2:
            raise UserError(f"{where}.{kind} must be [low, high]")
        _check_kind(where, name, kind, value)
        try:
            low, high = float(value[0]), float(value[1])
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError
            if kind == "int" and (isinstance(value[0], bool) or low != int(low) or high != int(high)):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(
                f"{where}.{kind} = {value!r}: low and high must be finite numbers"
                f"{' (whole numbers for int)' if kind == 'int' else ''}"
            ) from None
        if not low < high:
            raise UserError(f"{where}.{kind}: low {value[0]} is not below high {value[1]}; swap them")
        if kind == "loguniform" and low <= 0:
            raise UserError(f"{where}.loguniform: low must be above 0 for a log scale")
        for bound in (low, high):
            _check_value(src, name, bound if kind != "int" else int(bound))
        params.append(Param(name, kind, low=low, high=high))
    return tuple(params)


def _check_kind(where: str, name: str, kind: str, value: list) -> None:
    """Whole numbers only from ``int`` or ``choice``, named values (and switches) only from ``choice``."""
    takes = type(getattr(TrainConfig(), name))
    if takes in (bool, str):
        raise UserError(f"{where}.{kind}: {name} takes named values; sample it with {{choice: [...]}}")
    if takes is int and kind in ("uniform", "loguniform"):
        raise UserError(
            f"{where}.{kind}: {name} is a whole number and {kind} draws fractions; "
            f"use {{int: [{value[0]}, {value[1]}]}} or {{choice: [...]}}"
        )


def _check_meaningful(src: str, model: str, params: tuple[Param, ...]) -> None:
    """Every sampled key changes what this model's trials learn (or the space is refused, naming the keys
    it uses)."""
    info = model_info(model)
    used = [k for k in TUNABLE if k not in NOT_SAMPLED and (k not in MODEL_OPTIONS or k in info.options)]
    used = [k for k in used if k != "freeze" or info.base is not None]
    for p in params:
        where = f"{src}: space.{p.name}"
        if p.name in NOT_SAMPLED:
            raise UserError(f"{where} is not sampled: {NOT_SAMPLED[p.name]}; set it under fixed: if at all")
        if p.name not in used:
            why = "trains from scratch (no base to freeze)" if p.name == "freeze" else f"has no {p.name} option"
            raise UserError(f"{where}: model {model} {why}; the keys it uses: {', '.join(used)}")


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
        if p.kind != "choice" and not (
            p.low <= value <= p.high or math.isclose(value, p.low) or math.isclose(value, p.high)
        ):
            raise UserError(f"{space.path}: paper_trial.{key} = {value} is outside space.{key} [{p.low}, {p.high}]")
