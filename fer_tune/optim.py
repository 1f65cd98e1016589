"""Optimizers and learning-rate schedulers by name (the paper's grid), from torch / pytorch-ranger / ranger21."""

from __future__ import annotations

import contextlib
import inspect
import io
import textwrap
from typing import Any, Callable, Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau, StepLR

from fer_tune.config import TrainConfig


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
        from pytorch_ranger import Ranger

        return Ranger(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "ranger21":
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its whole set-up
            return _quiet_ranger21()(
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


# Ranger21 counters that live outside ``Optimizer.state_dict()`` but steer its schedule
RANGER21_COUNTERS = ("lookahead_step", "current_iter", "epoch_count", "current_epoch", "warmup_complete",
                     "warmup_curr_pct", "current_lr", "param_size", "warmdown_displayed")


def _ranger21_step_with_decay_per_parameter() -> Callable:
    """``Ranger21.step`` of ranger21 0.1.0 with its weight-decay / norm-loss block moved into the
    per-parameter loop.

    The released 0.1.0 (the last release) applies stable weight decay and norm loss *after* its
    per-parameter loop, to whatever ``p`` the loop ended on: only the last tensor of the model is
    ever decayed (lessw2020/Ranger21 issue 53, fixed by PR 54, never released). This patch makes
    that one move to the method's source and nothing else; if the source is not the one expected
    it refuses instead of guessing.
    """
    import ranger21.ranger21 as module

    source = textwrap.dedent(inspect.getsource(module.Ranger21.step))
    block_start = source.find("        # stable decay and / or norm loss\n")
    block_end = source.find("        # innner loop, params\n")
    anchor = "            inner_grad = p.grad\n"
    if min(block_start, block_end, source.find(anchor)) < 0 or block_end < block_start:
        raise RuntimeError("ranger21: Ranger21.step is not the 0.1.0 source this fix was written for; "
                           "check whether the installed version already applies weight decay per parameter")
    block = source[block_start:block_end]
    source = source[:block_start] + source[block_end:]
    source = source.replace(anchor, anchor + textwrap.indent(block, "    "), 1)
    namespace: dict[str, Any] = {}
    exec(compile(source, module.__file__, "exec"), dict(vars(module)), namespace)
    return namespace["step"]


def _quiet_ranger21() -> type:
    """Ranger21 with weight decay and norm loss on every parameter (see above), its progress prints
    swallowed, and its schedule counters saved in ``state_dict`` so that a resumed run continues exactly."""
    from ranger21 import Ranger21

    fixed_step = _ranger21_step_with_decay_per_parameter()

    class QuietRanger21(Ranger21):
        def step(self, closure=None):
            with contextlib.redirect_stdout(io.StringIO()):
                return fixed_step(self, closure)

        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(),
                    "ranger21_counters": {k: getattr(self, k) for k in RANGER21_COUNTERS}}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            state_dict = dict(state_dict)
            counters = state_dict.pop("ranger21_counters", {})
            super().load_state_dict(state_dict)
            for key, value in counters.items():
                setattr(self, key, value.item() if isinstance(value, torch.Tensor) else value)

    return QuietRanger21


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> LRScheduler | ReduceLROnPlateau | None:
    """The epoch-level scheduler the config names; ``plateau`` watches validation accuracy (mode max).

    Ranger21 brings its own warm-up / warm-down; TrainConfig refuses an external scheduler with it.
    """
    if config.scheduler == "plateau":
        return ReduceLROnPlateau(
            optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
        )
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
