"""What runs inside a trial: its last checkpoint, the per-epoch report + checkpoint, and when to write it."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_tune.training.checkpoint import load_checkpoint, save_checkpoint

STATE_FILE = "state.pt"  # what a restarted trial continues from
BEST_FILE = "best.pt"  # a search trial's best epoch: trainable weights only, no optimizer state


def restored_state(name: str = STATE_FILE) -> dict[str, Any] | None:
    """The file ``name`` of the checkpoint a restarted trial continues from (its last), else None."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / name
        return load_checkpoint(path) if path.is_file() else None


START_KEYS = ("val_loss", "val_acc", "val_acc_single", "val_f1")  # scored before the first epoch, as ``start_<key>``


def start_scores(trainer: Any = None) -> dict[str, float]:
    """The validation scores of the model before its first epoch (``start_val_acc``, ...: one evaluation),
    reported with every epoch of the run (Ray's progress.csv takes its columns from the first report), so
    that every curve starts at epoch 0: a trial stopped after one epoch is a line from its starting point,
    not a lone point TensorBoard drops from the chart's range as an outlier. Without ``trainer`` (a run that
    resumed from a checkpoint that lacks them): NaN."""
    scores = trainer.validate() if trainer is not None else (math.nan,) * len(START_KEYS)
    return {f"start_{k}": float(v) for k, v in zip(START_KEYS, scores, strict=True)}


def report_epoch(metrics: dict[str, Any], files: dict[str, dict[str, Any]] | None) -> float:
    """Report one epoch's scalars to Tune, with a checkpoint holding ``files`` (name -> payload) when
    given; returns the seconds the checkpoint took to write (0 without one)."""
    from ray import tune
    from ray.tune import Checkpoint

    if not files:
        tune.report(metrics)
        return 0.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name, payload in files.items():
            save_checkpoint(Path(folder) / name, payload)
        tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))
    return time.perf_counter() - started


@dataclass
class CheckpointSchedule:
    """When a run writes its resumption state: at the end, and otherwise every ``every`` epochs, or
    every ``every_s`` seconds of training, or (both 0) once the training time since the last write is
    :data:`COST_RATIO` times what that write cost, so that writing stays under about 5% of the
    training time. An improvement forces no write: the best weights ride along in the next one."""

    every: int = 0
    every_s: float = 0.0
    last_epoch: int = 0
    last_cost: float = 0.0
    training_since: float = 0.0

    COST_RATIO = 20.0

    @classmethod
    def of(cls, budget: Any, epoch: int = 0) -> CheckpointSchedule:
        """The schedule a search space's ``budget`` asks for, starting after ``epoch``."""
        return cls(every=budget.checkpoint_every, every_s=budget.checkpoint_every_s, last_epoch=epoch)

    def due(self, epoch: int, epoch_time: float, final: bool) -> bool:
        """True when the state after ``epoch`` (which trained for ``epoch_time`` seconds) is to be written."""
        self.training_since += epoch_time
        if final:
            return True
        if self.every:
            return epoch - self.last_epoch >= self.every
        if self.every_s:
            return self.training_since >= self.every_s
        return self.training_since >= self.COST_RATIO * self.last_cost

    def written(self, epoch: int, cost: float) -> None:
        """Record a write of the state after ``epoch`` that took ``cost`` seconds."""
        if cost > 0:
            self.last_epoch, self.last_cost, self.training_since = epoch, cost, 0.0


def finite(value: float) -> float:
    """``value``, or +inf when it is NaN / infinite (Tune's tables and CSVs stay numeric)."""
    return value if math.isfinite(value) else float("inf")
