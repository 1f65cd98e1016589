"""Weight transfer by name: load every parameter whose name and shape match, optionally freeze it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TransferReport:
    """What a transfer loaded, and why the rest was not."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    not_in_base: list[str] = field(default_factory=list)
    unused_from_base: list[str] = field(default_factory=list)
    frozen: int = 0

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
    model.load_state_dict(matched, strict=False)
    if freeze:
        for name, param in model.named_parameters():
            if name in matched:
                param.requires_grad_(False)
                report.frozen += 1
    return report


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but BatchNorm layers whose parameters are all frozen stay in eval mode,
    so their running statistics are frozen too."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model
