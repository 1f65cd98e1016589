"""One training run into its own folder (``launch.py train``, and the base a transfer search trains
first): config.yaml, metrics.csv, best.pt (weights of the best validation epoch), last.pt."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from fer_tune.data.fer_data import FerData
from fer_tune.errors import UserError
from fer_tune.files import write_csv_atomic
from fer_tune.models import model_info
from fer_tune.run_folder import TRAIN_CONFIG_HEADER, check_train_folder, make_run_folder, removed_if_nothing_ran
from fer_tune.training.checkpoint import model_payload, save_checkpoint
from fer_tune.training.config import TrainConfig
from fer_tune.training.engine import EpochResult, Trainer
from fer_tune.training.transfer import architecture_of_base, load_base
from fer_tune.yaml_files import write_yaml

log = logging.getLogger(__name__)

METRIC_FIELDS = list(EpochResult.__dataclass_fields__)


def load_base_state(config: TrainConfig) -> dict | None:
    """The weights to transfer, from ``config.base_checkpoint``; the base must be the model's base
    (or the model itself) and share its architecture (width, activation)."""
    if not config.base_checkpoint:
        return None
    base = load_base(config.base_checkpoint, config.model)
    for key, value in architecture_of_base(model_info(config.model).options, base.config).items():
        if getattr(config, key) != value:
            raise UserError(
                f"{config.base_checkpoint}: the base was trained with {key} {value!r}, this config asks for "
                f"{getattr(config, key)!r}; a transfer needs the same {key}: set {key}: {value}"
            )
    return base.state


def run_training(
    config: TrainConfig,
    data: FerData,
    out_dir: Path,
    *,
    device: str | None = None,
) -> list[EpochResult]:
    """Train ``config`` on the train split, select on val, write config.yaml, metrics.csv,
    best.pt (best val accuracy) and last.pt into ``out_dir``."""
    check_train_folder(out_dir)
    base_state = load_base_state(config)
    with removed_if_nothing_ran(out_dir, ("metrics.csv",)):
        make_run_folder(out_dir)
        return _train_into(config, data, out_dir, base_state, device)


def _train_into(
    config: TrainConfig,
    data: FerData,
    out_dir: Path,
    base_state: dict | None,
    device: str | None,
) -> list[EpochResult]:
    trainer = Trainer(config, data.role("train"), data.role("val"), device=device, base_state=base_state)
    for warning in data.thin_splits(config.batch_size):
        log.info(f"warning: {warning}")
    if trainer.transfer is not None:
        log.info(f"base {config.base_checkpoint}: {trainer.transfer.summary()}")
    write_yaml(out_dir / "config.yaml", config.to_dict(), header=f"{TRAIN_CONFIG_HEADER}; data: {data.source}\n")
    metrics_path = out_dir / "metrics.csv"
    started = time.perf_counter()
    log.info(
        f"training {config.model} on {trainer.device} for {config.epochs} epochs "
        f"({len(trainer.train_labels)} train / {len(trainer.val_labels)} val images) -> {out_dir}"
    )

    def on_epoch(tr: Trainer, result: EpochResult) -> None:
        write_csv_atomic(pd.DataFrame([r.as_dict() for r in tr.history], columns=METRIC_FIELDS), metrics_path)
        if result.diverged:
            log.info(
                f"epoch {result.epoch}/{config.epochs}: loss is not finite: the run diverged "
                f"(lr {config.lr:g} is probably too high); stopped"
            )
            return
        best = result.val_acc >= tr.best_val_acc
        if best:
            save_checkpoint(
                out_dir / "best.pt",
                model_payload(config.to_dict(), tr.model.state_dict(), result.epoch, result.val_acc, data=data.source),
            )
        save_checkpoint(out_dir / "last.pt", tr.state_dict())
        log.info(
            f"epoch {result.epoch:3d}/{config.epochs}  train loss {result.train_loss:.4f} acc {result.train_acc:.3f}  "
            f"val loss {result.val_loss:.4f} acc {result.val_acc:.3f} (single crop {result.val_acc_single:.3f}) "
            f"F1 {result.val_f1:.3f}  lr {result.lr:.2e}  {result.epoch_time:.1f}s{'  *best' if best else ''}"
        )

    history = trainer.fit(on_epoch)
    if not (out_dir / "best.pt").is_file():
        raise UserError(
            f"{out_dir}: the run diverged at epoch {history[-1].epoch} before any epoch scored, so no model was "
            f"kept (its metrics.csv says so); lower the learning rate (lr {config.lr:g})"
        )
    log.info(
        f"done in {time.perf_counter() - started:.0f}s; best val accuracy {trainer.best_val_acc:.4f}; "
        f"files in {out_dir}"
    )
    return history
