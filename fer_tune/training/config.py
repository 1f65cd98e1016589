"""The configuration of one training run, as a plain dataclass that round-trips through YAML."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fer_tune.errors import UserError
from fer_tune.rules import Rule, check_fields, one_of, whole
from fer_tune.yaml_files import read_yaml

OPTIMIZERS = ("sgd_nesterov", "adam", "ranger", "ranger21")
SCHEDULERS = ("plateau", "cosine", "step", "none")
ACTIVATIONS = ("swish", "mish")
OWN_SCHEDULE = ("ranger21",)  # optimizers that run their own warm-up / warm-down: no scheduler beside them
SEED = Rule("0 to 2**32 - 1", lambda v: 0 <= v < 2**32)

# what each TrainConfig field may be (the model's names are the registry's, checked where it is imported)
TRAIN_RULES: dict[str, Rule] = {
    "optimizer": one_of(OPTIMIZERS),
    "scheduler": one_of(SCHEDULERS),
    "activation": one_of(ACTIVATIONS),
    "lr": Rule("a number above 0", lambda v: v > 0),
    "weight_decay": Rule("0 to 1", lambda v: 0 <= v <= 1),
    "momentum": Rule("0 or more and below 1", lambda v: 0 <= v < 1),
    "batch_size": whole(1, 65536, what=""),
    "eval_batch_size": whole(1, 65536, what=""),
    "epochs": whole(1, 100_000, what=""),
    "seed": SEED,
    "width": Rule("above 0 and at most 8 (1 = the paper's widths)", lambda v: 0 < v <= 8),
    "plateau_factor": Rule("above 0 and below 1", lambda v: 0 < v < 1),
    "plateau_patience": Rule("0 or more", lambda v: v >= 0),
    "step_size": Rule("1 or more", lambda v: v >= 1),
    "step_gamma": Rule("above 0 and at most 1", lambda v: 0 < v <= 1),
    "ranger21_norm_loss_factor": Rule("0 to 1", lambda v: 0 <= v <= 1),
    "ranger21_warmdown_start": Rule("above 0 and below 1", lambda v: 0 < v < 1),
    "ranger21_warmdown_min_lr": Rule("0 to 1", lambda v: 0 <= v <= 1),
    "ranger21_pnm_momentum": Rule(
        "1 (ranger21 0.1.0 weighs positive-negative momentum by 1 whatever this says)", lambda v: v == 1.0
    ),
}


def runs_own_schedule(optimizer: Any) -> bool:
    """True for an optimizer that schedules its own learning rate (Ranger21), so ``scheduler`` is ``none``."""
    return optimizer in OWN_SCHEDULE


def with_own_schedule(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``scheduler: none`` where the optimizer runs its own schedule (Ranger21)."""
    return {**values, "scheduler": "none"} if runs_own_schedule(values.get("optimizer")) else dict(values)


@dataclass
class TrainConfig:
    """Everything that defines one training run. Defaults: the public VGGNet recipe (Khaireddin & Chen:
    SGD-Nesterov lr 0.01, momentum 0.9, weight decay 1e-4, ReduceLROnPlateau x0.75 after 5 epochs)."""

    model: str = "vgg"
    width: float = 1.0  # VGG family only: multiplies every layer width (1.0 = the paper's)
    activation: str = "swish"  # EfficientNet only: swish | mish
    pretrained_path: str | None = None  # ViT only: a local folder of pretrained weights
    base_checkpoint: str | None = None  # weights transferred by name before training
    freeze: bool = False  # freeze the transferred parameters
    optimizer: str = "sgd_nesterov"
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "plateau"
    plateau_factor: float = 0.75
    plateau_patience: int = 5
    step_size: int = 5
    step_gamma: float = 0.9
    ranger21_warmup: bool = True
    ranger21_lookahead: bool = True
    ranger21_norm_loss_factor: float = 1e-4  # 0 turns norm loss off
    ranger21_warmdown: bool = True
    ranger21_warmdown_start: float = 0.72
    ranger21_warmdown_min_lr: float = 3e-5
    ranger21_pnm_momentum: float = 1.0
    batch_size: int = 64
    epochs: int = 30
    seed: int = 0
    eval_batch_size: int = 256
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # convolutional models, on every device
    # CUDA: False = cuDNN autotuning and TF32 matmuls in fp32 runs (fast); True = exact repeats (no
    # autotuning, no TF32, deterministic cuDNN algorithms). No effect on the CPU, which repeats exactly.
    deterministic: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "config") -> None:
        """Raise a :class:`UserError` naming the field and the allowed values."""
        from fer_tune.models import MODELS

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{source}: {f.name} = {value!r} is not allowed; use a finite number")
        rules = {"model": one_of(list(MODELS)), **TRAIN_RULES}
        check_fields(rules, self, lambda name, value: f"{source}: {name} = {value!r}")
        if runs_own_schedule(self.optimizer) and self.scheduler != "none":
            raise UserError(
                f"{source}: optimizer ranger21 runs its own warm-up / warm-down schedule, so scheduler "
                f"{self.scheduler!r} would fight it; set scheduler: none (or pick another optimizer)"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict (e.g. YAML); unknown keys and wrong types are a :class:`UserError`."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
        converted = {name: _coerce(value, known[name], source) for name, value in values.items()}
        config = cls.__new__(cls)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            setattr(config, f.name, converted.get(f.name, default))
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only."""
        return dataclasses.asdict(self)

    def replace(self, source: str = "config", **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated; errors name ``source``)."""
        return TrainConfig.from_mapping({**self.to_dict(), **changes}, source=source)


def _coerce(value: Any, field: dataclasses.Field, source: str) -> Any:
    kind = str(field.type)
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"{source}: {field.name} must not be empty")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "on", "yes", "1"):
                return True
            if str(value).lower() in ("false", "off", "no", "0"):
                return False
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        expected = kind.split(" ")[0].replace("|", "")
        raise UserError(f"{source}: {field.name} = {value!r} is not a valid {expected}") from None


SMOKE_TRAIN = {"epochs": 2, "batch_size": 32, "width": 0.125}  # `train --smoke`: at most these (width: VGG only)


def smoke_train_overrides(config: TrainConfig) -> dict[str, Any]:
    """What ``train --smoke`` changes in ``config``: the :data:`SMOKE_TRAIN` preset (never larger than the
    config's own batch and width), and no base checkpoint where its file is missing."""
    overrides: dict[str, Any] = {
        "epochs": SMOKE_TRAIN["epochs"],
        "batch_size": min(config.batch_size, SMOKE_TRAIN["batch_size"]),
    }
    if config.model.startswith("vgg"):
        overrides["width"] = min(config.width, SMOKE_TRAIN["width"])
    if config.base_checkpoint and not Path(config.base_checkpoint).is_file():
        overrides["base_checkpoint"] = None
    return overrides


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file such as ``results/<name>/best_config.yaml``."""
    values = read_yaml(path)
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys (model: ..., lr: ...), got {type(values).__name__}")
    return TrainConfig.from_mapping(values, source=str(path))


def train_overrides(config: TrainConfig, given: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``launch.py train``'s options change in ``config`` (``given``: the parsed options): those
    set, ``scheduler: none`` beside Ranger21 unless one is given, and the smoke preset under ``smoke``."""
    overrides = {k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    if "scheduler" not in overrides:
        overrides = with_own_schedule(overrides)
    if given.get("smoke"):
        overrides = {**smoke_train_overrides(config.replace(**overrides)), **overrides}
    return overrides


def check_train_options(config: TrainConfig, given: Mapping[str, Any]) -> None:
    """Options the model ignores, and ``--freeze`` with nothing to freeze, are refused rather than recorded."""
    from fer_tune.models import model_info

    options = model_info(config.model).options
    for key in ("width", "activation"):
        if given.get(key) is not None and key not in options:
            raise UserError(
                f"--{key} {given[key]}: model {config.model} has no {key} option "
                f"(its options: {', '.join(options)}); drop --{key}"
            )
    if given.get("freeze") and not config.base_checkpoint:
        raise UserError(
            "--freeze: nothing to freeze without --base-checkpoint (freeze keeps the transferred layers fixed); "
            "give a base checkpoint or drop --freeze"
        )
