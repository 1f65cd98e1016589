"""Where a run trains and how: the device (CUDA when there), its backend switches, the seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from fer_tune.errors import UserError
from fer_tune.training.config import TrainConfig


def pick_device(requested: str | None = None) -> torch.device:
    """``cuda`` when available, else ``cpu``; a requested device must exist here."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {requested!r}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise UserError(
                f"--device {requested}: this machine has {count} CUDA device(s); use --device cpu "
                "or leave --device out (fer-tune takes CUDA when it is there)"
            )
    elif device.type != "cpu":
        raise UserError(f"--device {requested}: fer-tune trains on cpu or cuda; use one of those")
    return device


def backend_settings(config: TrainConfig, device: torch.device) -> dict[str, bool]:
    """The CUDA backend switches a run uses (applied by :class:`Trainer`; none on the CPU): cuDNN autotuning
    (its first batch of each shape tries the algorithms), and TF32 matmuls / convolutions where the run is
    fp32 (``amp: false``); ``deterministic`` turns both off and asks cuDNN for deterministic algorithms."""
    on_cuda = device.type == "cuda"
    fast = on_cuda and not config.deterministic
    return {
        "cudnn_benchmark": fast,
        "tf32": fast and not config.amp,
        "cudnn_deterministic": on_cuda and config.deterministic,
    }


def apply_backend_settings(settings: dict[str, bool]) -> None:
    """Set torch's CUDA backend switches (process-wide: one trial per process, as Ray runs them)."""
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = settings["cudnn_deterministic"]
    torch.backends.cuda.matmul.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.allow_tf32 = settings["tf32"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
