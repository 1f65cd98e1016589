"""Weight transfer by name: load every parameter whose name and shape match, optionally freeze it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_tune.errors import UserError


@dataclass
class TransferReport:
    """What a transfer loaded, and why the rest was not."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    not_in_base: list[str] = field(default_factory=list)
    unused_from_base: list[str] = field(default_factory=list)
    frozen: int = 0

    def counts(self) -> dict[str, int]:
        """Tensors moved / left new / frozen (what trials.csv records)."""
        return {
            "transfer_loaded": len(self.loaded),
            "transfer_new": len(self.not_in_base),
            "transfer_frozen": self.frozen,
        }

    def summary(self) -> str:
        """One line for a person."""
        return (
            f"transfer: loaded {len(self.loaded)} tensors, {len(self.not_in_base)} new "
            f"(not in base), {len(self.shape_mismatch)} shape mismatches, "
            f"{len(self.unused_from_base)} base tensors unused, {self.frozen} parameters frozen"
        )


def transfer_weights(model: nn.Module, base_state: dict[str, torch.Tensor], freeze: bool = False) -> TransferReport:
    """Copy tensors of ``base_state`` into ``model`` where name and shape agree; freeze them if asked."""
    own = model.state_dict()
    report = TransferReport()
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if name not in base_state:
            report.not_in_base.append(name)
        elif base_state[name].shape != tensor.shape:
            report.shape_mismatch.append(name)
        else:
            matched[name] = base_state[name]
    report.loaded = sorted(matched)
    report.unused_from_base = sorted(set(base_state) - set(own))
    if report.shape_mismatch:
        first = report.shape_mismatch[0]
        raise UserError(
            f"the base checkpoint does not fit this model: {len(report.shape_mismatch)} tensors have other "
            f"shapes (first: {first} {tuple(base_state[first].shape)} in the base, {tuple(own[first].shape)} "
            "here); the base was trained at another width or size: give a base of the same architecture"
        )
    if not matched:
        raise UserError(
            "no tensor of the base checkpoint matches this model by name and shape; "
            "give a checkpoint of the model this one transfers from"
        )
    model.load_state_dict(matched, strict=False)
    if freeze:
        for name, param in model.named_parameters():
            if name in matched:
                param.requires_grad_(False)
                report.frozen += 1
    return report


@dataclass(frozen=True)
class BaseWeights:
    """The weights a transfer starts from, the config they were trained with, and their file."""

    source: str
    state: dict[str, torch.Tensor]
    config: dict[str, Any]


def load_base(path: str | Path, model: str) -> BaseWeights:
    """The checkpoint at ``path``, after checking that it is a model ``model`` may transfer from
    (its registered base, or the same model)."""
    from fer_tune.models import model_info
    from fer_tune.training.checkpoint import model_state_from

    state, config = model_state_from(path)
    expected = model_info(model).base or model
    if config.get("model") not in (expected, model):
        raise UserError(
            f"{path}: this checkpoint is a {config.get('model')!r} model, but {model!r} transfers from "
            f"{expected!r}; give a {expected} checkpoint"
        )
    return BaseWeights(str(Path(path).resolve()), state, config)


# the architecture settings a transfer must share with its base, per model option
ARCHITECTURE_KEYS = ("width", "activation")


def architecture_of_base(model_options: tuple[str, ...], base_config: dict[str, Any]) -> dict[str, Any]:
    """The architecture settings (width, activation) a model transferring from ``base_config`` must use."""
    return {k: base_config[k] for k in ARCHITECTURE_KEYS if k in model_options and base_config.get(k) is not None}


def frozen_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The BatchNorm layers (by name) whose parameters are all frozen: their statistics stay frozen too."""
    frozen = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                frozen[name] = module
    return frozen


def frozen_tensors(model: nn.Module) -> set[str]:
    """Names in ``model.state_dict()`` that training never changes: frozen parameters and the
    statistics of frozen BatchNorm layers (they are the base's, which every run of it starts from)."""
    names = {name for name, param in model.named_parameters() if not param.requires_grad}
    for layer, module in frozen_batchnorms(model).items():
        names |= {f"{layer}.{buffer}" for buffer, _ in module.named_buffers(recurse=False)}
    return names


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but BatchNorm layers whose parameters are all frozen stay in eval mode,
    so their running statistics are frozen too."""
    model.train()
    for module in frozen_batchnorms(model).values():
        module.eval()
    return model
