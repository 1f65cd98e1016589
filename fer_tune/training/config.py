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
from fer_tune.yaml_files import read_yaml

OPTIMIZERS = ("sgd_nesterov", "adam", "ranger", "ranger21")
SCHEDULERS = ("plateau", "cosine", "step", "none")
ACTIVATIONS = ("swish", "mish")
OWN_SCHEDULE = ("ranger21",)  # optimizers that run their own warm-up / warm-down: no scheduler beside them


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
        checks = [
            ("model", self.model in MODELS, f"one of {', '.join(MODELS)}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("scheduler", self.scheduler in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
            ("activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
            ("lr", self.lr > 0, "a number above 0"),
            ("weight_decay", 0 <= self.weight_decay <= 1, "0 to 1"),
            ("momentum", 0 <= self.momentum < 1, "0 or more and below 1"),
            ("batch_size", 1 <= self.batch_size <= 65536, "1 to 65536"),
            ("eval_batch_size", 1 <= self.eval_batch_size <= 65536, "1 to 65536"),
            ("epochs", 1 <= self.epochs <= 100_000, "1 to 100000"),
            ("seed", 0 <= self.seed < 2**32, "0 to 2**32 - 1"),
            ("width", 0 < self.width <= 8, "above 0 and at most 8 (1 = the paper's widths)"),
            ("plateau_factor", 0 < self.plateau_factor < 1, "above 0 and below 1"),
            ("plateau_patience", self.plateau_patience >= 0, "0 or more"),
            ("step_size", self.step_size >= 1, "1 or more"),
            ("step_gamma", 0 < self.step_gamma <= 1, "above 0 and at most 1"),
            ("ranger21_norm_loss_factor", 0 <= self.ranger21_norm_loss_factor <= 1, "0 to 1"),
            ("ranger21_warmdown_start", 0 < self.ranger21_warmdown_start < 1, "above 0 and below 1"),
            ("ranger21_warmdown_min_lr", 0 <= self.ranger21_warmdown_min_lr <= 1, "0 to 1"),
            (
                "ranger21_pnm_momentum",
                self.ranger21_pnm_momentum == 1.0,
                "1 (ranger21 0.1.0 weighs positive-negative momentum by 1 whatever this says)",
            ),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise UserError(f"{source}: {name} = {getattr(self, name)!r} is not allowed; use {allowed}")
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
