"""Optimizers and learning-rate schedulers by name (the paper's grid), from torch / pytorch-ranger / ranger21."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau, StepLR

from fer_tune.training.config import TrainConfig


def build_optimizer(
    config: TrainConfig, params: Iterable[torch.nn.Parameter], batches_per_epoch: int
) -> torch.optim.Optimizer:
    """The optimizer the config names, over the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "sgd_nesterov":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "ranger":
        from fer_tune.training.fused_optim import FusedRanger

        return FusedRanger(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "ranger21":
        from fer_tune.training.fused_optim import FusedRanger21

        return FusedRanger21(
            params,
            lr=config.lr,
            weight_decay=config.weight_decay,
            num_epochs=config.epochs,
            num_batches_per_epoch=batches_per_epoch,
            use_warmup=config.ranger21_warmup,
            lookahead_active=config.ranger21_lookahead,
            normloss_active=config.ranger21_norm_loss_factor > 0,
            normloss_factor=config.ranger21_norm_loss_factor,
            warmdown_active=config.ranger21_warmdown,
            warmdown_start_pct=config.ranger21_warmdown_start,
            warmdown_min_lr=config.ranger21_warmdown_min_lr,
            momentum_type="pnm",
            pnm_momentum_factor=config.ranger21_pnm_momentum,
            momentum=config.momentum,
            logging_active=False,
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> LRScheduler | ReduceLROnPlateau | None:
    """The epoch-level scheduler the config names; ``plateau`` watches validation accuracy (mode max).

    Ranger21 brings its own warm-up / warm-down; TrainConfig refuses an external scheduler with it.
    """
    if config.scheduler == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience)
    if config.scheduler == "cosine":
        return CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.step_gamma)
    return None


def step_scheduler(scheduler: LRScheduler | ReduceLROnPlateau | None, val_accuracy: float) -> None:
    """Advance the scheduler by one epoch."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_accuracy)
    elif scheduler is not None:
        scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate in force: Ranger21's own schedule value, else the first parameter group's."""
    return float(getattr(optimizer, "current_lr", optimizer.param_groups[0]["lr"]))
