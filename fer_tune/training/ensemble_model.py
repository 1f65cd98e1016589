"""An ensemble of trained networks as one model: the weighted mean of its members' logits, read from
``ensemble.yaml`` (written by the retraining's ensemble selection). ``evaluate``, ``predict`` and
``export`` take it wherever they take a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_tune.errors import UserError
from fer_tune.training.config import TrainConfig
from fer_tune.yaml_files import read_yaml

ENSEMBLE_KIND = "fer-tune ensemble"
ENSEMBLE_SUFFIXES = (".yaml", ".yml")


class WeightedEnsemble(nn.Module):
    """Members' logits, averaged with ``weights`` (normalised to sum 1)."""

    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weights[0] * self.members[0](x)
        for weight, member in zip(self.weights[1:], self.members[1:]):
            out = out + weight * member(x)
        return out


def is_ensemble_file(path: str | Path) -> bool:
    """True for a path named like an ensemble file (``.yaml``)."""
    return Path(path).suffix.lower() in ENSEMBLE_SUFFIXES


def read_ensemble(path: str | Path) -> dict[str, Any]:
    """The validated contents of an ensemble file: members (checkpoint paths resolved against the file's
    folder) with positive weights; anything else is a :class:`UserError`."""
    path = Path(path)
    values = read_yaml(path)
    if not isinstance(values, dict) or values.get("kind") != ENSEMBLE_KIND:
        raise UserError(f"{path}: not an ensemble file fer-tune wrote (kind: {ENSEMBLE_KIND!r} missing)")
    members = values.get("members")
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: members is missing or empty; re-create it with --retrain")
    for i, member in enumerate(members, 1):
        if not isinstance(member, dict) or not isinstance(member.get("checkpoint"), str):
            raise UserError(f"{path}: member {i} has no checkpoint; re-create the file with --retrain")
        weight = member.get("weight")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise UserError(f"{path}: member {i} weight = {weight!r} is not allowed; use a number above 0")
        checkpoint = path.parent / member["checkpoint"]
        if is_ensemble_file(checkpoint):
            raise UserError(
                f"{path}: member {i}'s checkpoint {checkpoint} is itself an ensemble file; a member is one trained "
                "checkpoint (.pt): list that file's members in its place, or re-create the file with --retrain"
            )
        if not checkpoint.is_file():
            raise UserError(f"{path}: member {i}'s checkpoint {checkpoint} is not there; re-create it with --retrain")
        member["path"] = checkpoint
    return values


def ensemble_from_file(path: str | Path, device: torch.device) -> tuple[WeightedEnsemble, TrainConfig]:
    """The ensemble ``path`` describes, on ``device``, and its first member's config (every member is
    the same model, so recipe and evaluation views agree)."""
    from fer_tune.training.evaluate import model_from_checkpoint

    values = read_ensemble(path)
    built = [model_from_checkpoint(m["path"], device) for m in values["members"]]
    models = {config.model for _, config in built}
    if len(models) != 1:
        raise UserError(f"{path}: members of more than one model ({', '.join(sorted(models))}); one model per ensemble")
    ensemble = WeightedEnsemble([m for m, _ in built], [m["weight"] for m in values["members"]])
    return ensemble.to(device).eval(), built[0][1]
