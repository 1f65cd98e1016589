"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fer_tune.errors import UserError
from fer_tune.files import write_atomic

FORMAT = "fer-tune/1"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain types) to ``path`` atomically and fsync'd, so a crash
    mid-write never leaves a half file under the real name."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)

    return write_atomic(path, write, sync=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a fer-tune checkpoint; anything unreadable is a :class:`UserError` naming the file and why."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; give the path of a .pt file written by fer-tune")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise UserError(
            f"{path}: not a readable checkpoint ({reason[:200]}); it may be truncated or not written by "
            "fer-tune: re-create it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise UserError(f"{path}: not a fer-tune checkpoint (no '{FORMAT}' format tag); re-create it")
    weights, config = payload["model"], payload.get("config", {})
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise UserError(f"{path}: its 'model' is not a set of named weight tensors; re-create the checkpoint")
    if not isinstance(config, dict):
        raise UserError(f"{path}: its stored config is a {type(config).__name__}, not a mapping; re-create it")
    return payload


def finite_weights(path: str | os.PathLike, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights``, when every value is finite; else a :class:`UserError` naming how many tensors are not
    (a diverged run's weights score chance and predict one class: never evaluated, exported or transferred)."""
    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); the run that "
            "wrote it diverged: use a checkpoint of a run that did not"
        )
    return weights


def model_state_from(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights (checked finite) and the training config stored in a checkpoint."""
    payload = load_checkpoint(path)
    return finite_weights(path, payload["model"]), payload.get("config", {})


def model_payload(
    config: dict[str, Any], model_state: dict[str, torch.Tensor], epoch: int, val_acc: float, **about: Any
) -> dict[str, Any]:
    """A kept model: its weights only (on the CPU, no optimizer state), the config that rebuilds it,
    the epoch and validation accuracy it was kept at, and ``about`` (where it came from)."""
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model_state.items()}
    return {"config": config, "model": weights, "epoch": int(epoch), "val_acc": float(val_acc), **about}
