"""One training run into its own folder (``launch.py train``, and the base a transfer search trains
first): config.yaml, metrics.csv, best.pt (weights of the best validation epoch), last.pt (the state
``train --resume`` continues from)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from fer_tune.data.fer_data import FerData
from fer_tune.errors import UserError
from fer_tune.files import ctrl_c_held, write_csv_atomic
from fer_tune.models import model_info
from fer_tune.run_folder import TRAIN_CONFIG_HEADER, is_train_folder
from fer_tune.training.checkpoint import load_checkpoint, model_payload, save_checkpoint
from fer_tune.training.config import TrainConfig, load_train_config
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
    """Train ``config`` on the train split, select on val, write config.yaml, metrics.csv, best.pt (best val
    accuracy) and last.pt into ``out_dir`` (its caller holds :func:`~fer_tune.run_folder.train_folder` on it)."""
    base_state = load_base_state(config)
    write_yaml(out_dir / "config.yaml", config.to_dict(), header=f"{TRAIN_CONFIG_HEADER}; data: {data.source}\n")
    return _train_into(config, data, out_dir, base_state, device)


def resumable_folder(folder: Path) -> Path:
    """``folder`` if a fer-tune train run made it; else the ``--resume`` error line."""
    if not is_train_folder(folder):
        raise UserError(
            f"--resume {folder}: not the folder of a fer-tune train run (no config.yaml of fer-tune's); give a "
            "folder under results/train/"
        )
    return folder


def resumable_run(folder: Path) -> tuple[TrainConfig, dict]:
    """The config and last.pt state of the train run in ``folder``, checked before any data are read."""
    config = load_train_config(resumable_folder(folder) / "config.yaml")
    if not (folder / "last.pt").is_file():
        raise UserError(f"--resume {folder}: no last.pt, so no epoch of it finished: start a new run instead")
    state = load_checkpoint(folder / "last.pt")
    changed = sorted(k for k, v in config.to_dict().items() if k != "source" and state["config"].get(k) != v)
    if changed:
        raise UserError(
            f"{folder / 'config.yaml'}: {', '.join(changed)} differ(s) from what its last.pt was trained with; a "
            "resumed run keeps its config: put config.yaml back, or start a new run with the changed config"
        )
    return config, state


def resume_training(
    folder: Path, config: TrainConfig, state: dict, data: FerData, *, device: str | None = None
) -> list[EpochResult]:
    """Continue the train run in ``folder`` from its last.pt (:func:`resumable_run`) on the same data."""
    if state.get("data_md5") and data.content_md5 and state["data_md5"] != data.content_md5:
        raise UserError(
            f"--data {data.source}: not the data {folder} was trained on ({state.get('data')}: another content "
            f"md5); give --data {state.get('data')}, or start a new run on this file"
        )
    history = state["history"]
    if state["epoch"] >= config.epochs or (history and history[-1]["diverged"]):
        how = "diverged at" if history and history[-1]["diverged"] else "finished"
        log.info(f"{folder}: this run {how} epoch {state['epoch']}/{config.epochs}; nothing to continue")
        return [EpochResult(**r) for r in history]
    return _train_into(config, data, folder, load_base_state(config), device, state)


def how_to_continue(folder: Path) -> str:
    """What a Ctrl-C during ``launch.py train`` into ``folder`` leaves, and the command that continues it."""
    if not (folder / "last.pt").is_file():
        return "no epoch had finished, so nothing was kept: run the same command again"
    done = len(pd.read_csv(folder / "metrics.csv"))  # written right after last.pt (the one after a full disk)
    return f"{folder}/last.pt holds epoch {done}: continue the run with `python launch.py train --resume {folder}`"


def recorded_data(state: dict, folder: Path) -> str:
    """The data file the run in ``folder`` was trained on (its last.pt says)."""
    if not state.get("data"):
        raise UserError(f"--resume {folder}: its last.pt does not name its data file: give --data PATH")
    return str(state["data"])


def _train_into(
    config: TrainConfig,
    data: FerData,
    out_dir: Path,
    base_state: dict | None,
    device: str | None,
    resume: dict | None = None,
) -> list[EpochResult]:
    trainer = Trainer(config, data.role("train"), data.role("val"), device=device, base_state=base_state)
    if resume is not None:
        trainer.load_state_dict(resume)
    for warning in data.thin_splits(config.batch_size):
        log.info(f"warning: {warning}")
    if trainer.transfer is not None:
        log.info(f"base {config.base_checkpoint}: {trainer.transfer.summary()}")
    started = time.perf_counter()
    images = f"({len(trainer.train_labels)} train / {len(trainer.val_labels)} val images) -> {out_dir}"
    if resume is None:
        log.info(f"training {config.model} on {trainer.device} for {config.epochs} epochs {images}")
    else:
        log.info(f"continuing {config.model} on {trainer.device} at epoch {trainer.epoch + 1}/{config.epochs} {images}")
    about_data = {"data": str(Path(data.source).resolve()), "data_md5": data.content_md5}

    def on_epoch(tr: Trainer, result: EpochResult) -> None:
        with ctrl_c_held():  # metrics.csv, best.pt and last.pt tell of the same epoch
            _write_epoch(tr, result, out_dir, data, about_data)
        _log_epoch(tr, result)

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


def _write_epoch(tr: Trainer, result: EpochResult, out_dir: Path, data: FerData, about_data: dict) -> None:
    """best.pt (when this epoch is the best so far), last.pt (also after a divergence, so that ``--resume``
    knows it), then metrics.csv, after an epoch: in that order, so that a write a full disk stops leaves
    metrics.csv (the run's progress marker) no further than last.pt, and last.pt's best no further than best.pt."""
    if not result.diverged and result.val_acc >= tr.best_val_acc:
        save_checkpoint(
            out_dir / "best.pt",
            model_payload(tr.config.to_dict(), tr.model.state_dict(), result.epoch, result.val_acc, data=data.source),
        )
    save_checkpoint(out_dir / "last.pt", {**tr.state_dict(), **about_data})
    write_csv_atomic(pd.DataFrame([r.as_dict() for r in tr.history], columns=METRIC_FIELDS), out_dir / "metrics.csv")


def _log_epoch(tr: Trainer, result: EpochResult) -> None:
    """The console line of one epoch."""
    epochs = tr.config.epochs
    if result.diverged:
        log.info(
            f"epoch {result.epoch}/{epochs}: loss or weights are not finite: the run diverged "
            f"(lr {tr.config.lr:g} is probably too high); stopped"
        )
        return
    log.info(
        f"epoch {result.epoch:3d}/{epochs}  train loss {result.train_loss:.4f} acc {result.train_acc:.3f}  "
        f"val loss {result.val_loss:.4f} acc {result.val_acc:.3f} (single crop {result.val_acc_single:.3f}) "
        f"F1 {result.val_f1:.3f}  lr {result.lr:.2e}  {result.epoch_time:.1f}s"
        f"{'  *best' if result.val_acc >= tr.best_val_acc else ''}"
    )
