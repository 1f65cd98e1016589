"""The configuration of one training run, as a plain dataclass that round-trips through YAML."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from fer_tune.errors import UserError

OPTIMIZERS = ("sgd_nesterov", "adam", "ranger", "ranger21")
SCHEDULERS = ("plateau", "cosine", "step", "none")
ACTIVATIONS = ("swish", "mish")


@dataclass
class TrainConfig:
    """Everything that defines one training run. Defaults: the public VGGNet recipe (SPEC section 4)."""

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
    channels_last: bool = True  # CUDA only, convolutional models

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "config") -> None:
        """Raise a :class:`UserError` naming the field and the allowed values."""
        from fer_tune.models import MODELS

        checks = [
            ("model", self.model in MODELS, f"one of {', '.join(MODELS)}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("scheduler", self.scheduler in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
            ("activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
            ("lr", self.lr > 0, "a positive number"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("batch_size", self.batch_size >= 1, "1 or more"),
            ("epochs", self.epochs >= 1, "1 or more"),
            ("width", self.width > 0, "a positive number"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise UserError(f"{source}: {name} = {getattr(self, name)!r} is not allowed; use {allowed}")
        if self.optimizer == "ranger21" and self.scheduler != "none":
            raise UserError(
                f"{source}: optimizer ranger21 runs its own warm-up / warm-down schedule, so scheduler "
                f"{self.scheduler!r} would fight it; set scheduler: none (or pick another optimizer)"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
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

    def replace(self, source: str = "config", **changes: Any) -> "TrainConfig":
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


def read_yaml(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of a file, with a :class:`UserError` naming the file and line on failure."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: YAML syntax error ({problem}); fix the file") from None


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file such as ``results/<name>/best_config.yaml``."""
    values = read_yaml(path)
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys (model: ..., lr: ...), got {type(values).__name__}")
    return TrainConfig.from_mapping(values, source=str(path))


def write_yaml(path: str | os.PathLike, values: Any, header: str = "") -> Path:
    """Write plain data as YAML (atomic: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(values, sort_keys=False))
    os.replace(tmp, path)
    return path
