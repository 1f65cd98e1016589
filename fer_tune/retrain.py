"""``launch.py --retrain NAME``: retrain the top-k configurations of a finished search over several
seeds, as Ray Tune trials, keeping each run's best checkpoint by PublicTest accuracy.

Protocols (named in every output):
- ``paper``: train on Training, select the epoch on PublicTest;
- ``trainval``: as ``paper``, then refit from scratch on Training + PublicTest for the selected
  number of epochs (as Khaireddin & Chen did); the refit's last epoch is the model kept.

Only the train and validation arrays reach a retraining trial; PrivateTest is read later, by
:mod:`fer_tune.scoring`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from fer_tune.checkpoint import load_checkpoint, save_checkpoint
from fer_tune.config import TrainConfig, load_train_config
from fer_tune.data import FerData
from fer_tune.engine import Trainer
from fer_tune.errors import UserError
from fer_tune.models import check_pretrained_choice, model_info
from fer_tune.models.vit import PretrainedViT, resolve_pretrained
from fer_tune.search_space import load_search_space
from fer_tune.transfer import BaseWeights, load_base

PROTOCOLS = ("paper", "trainval")
RETRAIN_EXPERIMENT = "retrain"


@dataclass(frozen=True)
class Winner:
    """One configuration chosen for retraining (rank 1 = best validation score in the search)."""

    rank: int
    trial: str
    search_score: float
    config: dict[str, Any]


@dataclass(frozen=True)
class RetrainData:
    """What every retraining trial shares, through Ray's object store."""

    winners: tuple[Winner, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    base: BaseWeights | None
    pretrained: PretrainedViT | None
    protocol: str


def pick_winners(folder: Path, top_k: int, epochs: int | None = None) -> list[Winner]:
    """The top-k trials of ``folder/trials.csv`` by their best validation score (ties: earlier trial)."""
    trials_csv = folder / "trials.csv"
    if not trials_csv.is_file():
        raise UserError(f"{folder}: no trials.csv, so no finished search to retrain; run --search first")
    table = pd.read_csv(trials_csv)
    best_config = load_train_config(folder / "best_config.yaml")
    space = load_search_space(_space_of(folder, best_config))
    metric_col = f"best_{space.metric}"
    usable = table[table.status.isin(["completed", "stopped by ASHA"]) & table[metric_col].notna()]
    if usable.empty:
        raise UserError(f"{trials_csv}: no trial finished with a score; nothing to retrain")
    usable = usable.sort_values([metric_col, "trial"], ascending=[space.mode == "min", True], kind="stable")
    names = [p.name for p in space.params]
    winners = []
    for rank, (_, row) in enumerate(usable.head(top_k).iterrows(), start=1):
        sampled = {n: _plain(row[n]) for n in names if n in row and not pd.isna(row[n])}
        # the search's own budget (best_config.yaml records it, smoke or not) unless told otherwise
        config = space.train_config(sampled, epochs=epochs or best_config.epochs).to_dict()
        config.update({k: v for k, v in best_config.to_dict().items() if k in ("width", "base_checkpoint")})
        winners.append(Winner(rank, str(row.trial_id), float(row[metric_col]), config))
    return winners


def _space_of(folder: Path, best: TrainConfig) -> str:
    header = (folder / "best_config.yaml").read_text().splitlines()[0]
    # "# best configuration of search 'NAME' (PATH)"
    if "(" in header and header.rstrip().endswith(")"):
        return header[header.rindex("(") + 1 : -1]
    return best.model


def _plain(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def retrain_trainable(config: dict[str, Any], data: RetrainData) -> None:
    """Train one winner with one seed; report per epoch with a checkpoint (best kept by val_acc)."""
    from ray import tune
    from ray.tune import Checkpoint

    winner = data.winners[config["winner"] - 1]
    train_config = TrainConfig.from_mapping({**winner.config, "seed": int(config["seed"])})
    train, val = (data.train_images, data.train_labels), (data.val_images, data.val_labels)
    trainer = Trainer(train_config, train, val, **_starting_points(data))
    for phase, current, stop_epoch in _phases(trainer, train_config, train, val, data):
        while current.epoch < stop_epoch:
            result = current.step_epoch()
            metrics = {**result.as_dict(), "diverged": int(result.diverged), "phase": phase,
                       "winner": winner.rank, "seed": int(config["seed"])}
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / "model.pt", {
                    "config": current.config.to_dict(), "model": current.model.state_dict(),
                    "epoch": result.epoch, "val_acc": result.val_acc, "phase": phase,
                    "protocol": data.protocol})
                # in the refit phase the score is not a selection signal: keep the last epoch
                score = result.val_acc if phase == "select" else 1.0 + result.epoch
                tune.report({**metrics, "keep_score": score}, checkpoint=Checkpoint.from_directory(folder))
            if result.diverged:
                return


def _starting_points(data: RetrainData) -> dict[str, Any]:
    return {"base_state": data.base.state if data.base is not None else None, "pretrained": data.pretrained}


def _phases(trainer: Trainer, config: TrainConfig, train, val, data: RetrainData):
    """(phase, trainer, the epoch it stops at): ``select`` runs the whole budget; under ``trainval`` a
    ``refit`` on Training + PublicTest repeats the selected run's trajectory up to its selected epoch:
    the schedule is built for the whole budget (cosine, step and Ranger21's warm-down depend on it) and
    ReduceLROnPlateau, which cannot watch a validation split that is now training data, is replaced
    by the learning rates the selected run recorded."""
    yield "select", trainer, config.epochs
    if data.protocol == "trainval":
        scored = [r for r in trainer.history if not r.diverged]
        if not scored:
            return
        best = max(scored, key=lambda r: r.val_acc)
        merged = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
        refit = Trainer(config, merged, val, **_starting_points(data))
        if config.scheduler == "plateau":
            refit.replay_learning_rates([r.lr for r in trainer.history[: best.epoch]])
        yield "refit", refit, best.epoch


def run_retrain(
    folder: Path,
    data: FerData,
    *,
    top_k: int = 3,
    seeds: int = 3,
    protocol: str = "paper",
    epochs: int | None = None,
    gpus_per_trial: float = 0.0,
    cpus_per_trial: float = 1.0,
    pretrained: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, list[Winner]]:
    """Retrain the winners of the search in ``folder``; returns one row per (winner, seed) run with
    the path of its kept checkpoint under ``folder/winners/``, and the winners."""
    import ray
    from ray import tune

    from fer_tune.search import init_ray, trial_dirname

    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    winners = pick_winners(folder, top_k, epochs)
    if pretrained is not None:
        winners = [replace(w, config={**w.config, "pretrained_path": pretrained}) for w in winners]
    first = TrainConfig.from_mapping(winners[0].config)
    check_pretrained_choice(first.model, first.pretrained_path, str(folder / "best_config.yaml"))
    base = load_base(first.base_checkpoint, first.model) if first.base_checkpoint else None
    pretrained = resolve_pretrained(first.pretrained_path) if model_info(first.model).recipe == "vit" else None
    train, val = data.role("train"), data.role("val")
    shared = RetrainData(tuple(winners), train[0], train[1], val[0], val[1], base, pretrained, protocol)
    log(f"retraining the top {len(winners)} configurations of {folder.name} with {seeds} seeds each "
        f"({winners[0].config['epochs']} epochs, protocol '{protocol}')")
    for stale in (folder / RETRAIN_EXPERIMENT, folder / "winners"):  # a retraining starts over as a whole
        if stale.exists():
            shutil.rmtree(stale)
    started_ray = init_ray(log)
    try:
        gpus = gpus_per_trial if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        trainable = tune.with_resources(tune.with_parameters(retrain_trainable, data=shared),
                                        {"cpu": cpus_per_trial, "gpu": gpus})
        tuner = tune.Tuner(
            trainable,
            param_space={"winner": tune.grid_search([w.rank for w in winners]),
                         "seed": tune.grid_search(list(range(seeds)))},
            tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=RETRAIN_EXPERIMENT, storage_path=str(folder.resolve()), verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="keep_score",
                                                        checkpoint_score_order="max"),
                failure_config=tune.FailureConfig(max_failures=2),
            ),
        )
        results = tuner.fit()
        rows = []
        for result in results:
            if result.error is not None:
                raise UserError(f"retraining run {result.path} failed: {result.error}")
            rank, seed = int(result.config["winner"]), int(result.config["seed"])
            checkpoint = result.get_best_checkpoint("keep_score", "max")
            with checkpoint.as_directory() as ckpt:
                payload = load_checkpoint(Path(ckpt) / "model.pt")
            kept = save_checkpoint(folder / "winners" / f"winner{rank}_seed{seed}.pt", payload)
            history = result.metrics_dataframe
            rows.append({"winner": rank, "seed": seed, "protocol": protocol, "trial": winners[rank - 1].trial,
                         "search_score": winners[rank - 1].search_score, "checkpoint": str(kept),
                         "selected_epoch": int(payload["epoch"]),
                         "val_acc": float(history[history.phase == "select"].val_acc.max()),
                         "wall_time_s": float(history.epoch_time.sum()), "gpus": gpus, "cpus": cpus_per_trial,
                         "history": str(Path(result.path) / "progress.csv")})
    finally:
        if started_ray:
            ray.shutdown()
    return pd.DataFrame(rows).sort_values(["winner", "seed"]).reset_index(drop=True), winners
