"""The Ray Tune function trainable: one trial = one :class:`~fer_tune.engine.Trainer` run.

Everything a trial needs arrives through ``tune.with_parameters`` (Ray's object store): the
train and validation arrays, the base weights, the search space. Nothing is read from the
driver's disk, so a trial runs the same on any node of a cluster. The test split never
reaches a trial.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_tune.checkpoint import load_checkpoint, save_checkpoint
from fer_tune.engine import Trainer
from fer_tune.models.vit import PretrainedViT
from fer_tune.search_space import SearchSpace
from fer_tune.transfer import BaseWeights

CRASH_ENV = "FER_TUNE_TEST_CRASH_ONCE_DIR"  # test-only: a trial process dies once at its 2nd epoch


@dataclass(frozen=True)
class TrialData:
    """What every trial of a search shares, shipped once through the object store."""

    space: SearchSpace
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    base: BaseWeights | None
    pretrained: PretrainedViT | None
    max_epochs: int


def _maybe_crash_for_test(trial_id: str, epoch: int) -> None:
    """Test-only fault injection: with ``FER_TUNE_TEST_CRASH_ONCE_DIR`` set, the first trial to
    reach epoch 2 kills its own process once (a marker file makes it happen only once)."""
    folder = os.environ.get(CRASH_ENV)
    if not folder or epoch != 1:
        return
    marker = Path(folder) / "crashed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, trial_id.encode())
    os.close(fd)
    os._exit(1)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("inf")


def fer_trainable(config: dict[str, Any], data: TrialData) -> None:
    """Train one sampled configuration, reporting scalars and a checkpoint once per epoch."""
    import ray
    from ray import tune
    from ray.tune import Checkpoint

    train_config = data.space.train_config(config, epochs=data.max_epochs)
    if data.base is not None:
        train_config = train_config.replace(base_checkpoint=data.base.source)
    trainer = Trainer(
        train_config,
        (data.train_images, data.train_labels),
        (data.val_images, data.val_labels),
        base_state=data.base.state if data.base is not None else None,
        pretrained=data.pretrained,
    )
    transfer = trainer.transfer.counts() if trainer.transfer is not None else {}
    restarts = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / "state.pt")
        trainer.load_state_dict(state)
        restarts = int(state.get("restarts", 0)) + 1
    node = ray.get_runtime_context().get_node_id()
    trial_id = tune.get_context().get_trial_id() or "trial"
    while trainer.epoch < train_config.epochs:
        _maybe_crash_for_test(trial_id, trainer.epoch)
        result = trainer.step_epoch()
        metrics = {
            "epoch": result.epoch,
            "train_loss": _finite(result.train_loss),
            "train_acc": result.train_acc,
            "val_loss": _finite(result.val_loss),
            "val_acc": result.val_acc,
            "val_acc_single": result.val_acc_single,
            "val_f1": result.val_f1,
            "lr": result.lr,
            "epoch_time": result.epoch_time,
            "best_val_acc": max(trainer.best_val_acc, 0.0),
            "diverged": int(result.diverged),
            "restarts": restarts,
            "node": node,
            **transfer,
        }
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / "state.pt", {**trainer.state_dict(), "restarts": restarts})
            tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        if result.diverged:
            return
