"""``launch.py --retrain NAME``: retrain the top-k configurations of a finished search over several
seeds, as Ray Tune trials, keeping each run's best checkpoint by PublicTest accuracy.

Protocols (named in every output):
- ``paper``: train on Training, select the epoch on PublicTest;
- ``trainval``: as ``paper``, then refit from scratch on Training + PublicTest for the selected
  number of epochs (as Khaireddin & Chen did); the refit's last epoch is the model kept.

Only the train and validation arrays reach a retraining trial; PrivateTest is read later, by
:mod:`fer_tune.reporting.scoring`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from fer_tune.data.fer_data import FerData
from fer_tune.errors import UserError
from fer_tune.files import write_csv_atomic
from fer_tune.manifest import read_manifest
from fer_tune.models import check_pretrained_choice, model_info
from fer_tune.models.vit import resolve_pretrained
from fer_tune.run_folder import require_search_folder
from fer_tune.search.continuation import check_retrain_data
from fer_tune.search.retrain_plan import (
    PROTOCOLS,
    RetrainOptions,
    RetrainPlan,
    Winner,
    retrain_seed,
)
from fer_tune.search.retrain_trial import retrain_trainable
from fer_tune.search.runner import Progress, TuneJob, can_resume, finished_trials, run_trials
from fer_tune.search.space import SearchSpace
from fer_tune.search.space_file import load_search_space
from fer_tune.search.storage import TrialStorage, remove_experiment
from fer_tune.search.tensorboard_runs import TrialBoard, experiment_columns
from fer_tune.search.trial_data import TrialData
from fer_tune.search_folder import SCORED_STATUSES, SearchFolder, retrain_label, run_history, trial_label
from fer_tune.training.checkpoint import load_checkpoint, save_checkpoint
from fer_tune.training.config import TrainConfig, load_train_config
from fer_tune.training.transfer import load_base
from fer_tune.yaml_files import read_yaml, write_yaml, yaml_plain

log = logging.getLogger(__name__)


def pick_winners(folder: Path, space: SearchSpace, top_k: int, epochs: int | None = None) -> list[Winner]:
    """The top-k trials of ``folder/trials.csv`` by their best validation score (ties: earlier trial)."""
    trials_csv = folder / SearchFolder.TRIALS
    table = SearchFolder(folder).trials(space.metric, "trial", "trial_id")
    best_config = load_train_config(folder / SearchFolder.BEST_CONFIG)
    metric_col = f"best_{space.metric}"
    usable = table[table.status.isin(SCORED_STATUSES) & table[metric_col].notna()]
    if usable.empty:
        raise UserError(f"{trials_csv}: no trial finished with a score; nothing to retrain")
    usable = usable.sort_values([metric_col, "trial"], ascending=[space.mode == "min", True], kind="stable")
    names = [p.name for p in space.params]
    winners = []
    for rank, (_, row) in enumerate(usable.head(top_k).iterrows(), start=1):
        sampled = yaml_plain({n: row[n] for n in names if n in row and not pd.isna(row[n])})
        # the search's own budget (best_config.yaml records it, smoke or not) unless told otherwise
        config = space.train_config(sampled, epochs=epochs or best_config.epochs).to_dict()
        config.update({k: v for k, v in best_config.to_dict().items() if k in ("width", "base_checkpoint")})
        winners.append(Winner(rank, str(row.trial_id), float(row[metric_col]), config))
    return winners


def search_space_of(folder: Path) -> SearchSpace:
    """The search space the search in ``folder`` ran (with its smoke overlay when it was a smoke
    run), as its manifest records it."""
    manifest = read_manifest(folder)
    if manifest is None:
        require_search_folder(folder)  # raises: a folder without a manifest is not fer-tune's
    space = load_search_space(manifest.space)
    return space.for_smoke() if manifest.smoke else space


def _same_retraining(folder: Path, settings: dict[str, Any], storage: TrialStorage) -> bool:
    """True when ``folder`` holds an interrupted retraining with these settings (so it resumes)."""
    recorded = folder / SearchFolder.RETRAIN_SETTINGS
    if not (recorded.is_file() and can_resume(storage, SearchFolder.RETRAIN_EXPERIMENT)):
        return False
    return read_yaml(recorded) == yaml_plain(settings)


def run_retrain(folder: Path, data: FerData, opts: RetrainOptions) -> tuple[pd.DataFrame, list[Winner]]:
    """Retrain the winners of the search in ``folder``; returns one row per (winner, seed, stage) with
    the path of its kept checkpoint under ``folder/winners/``, and the winners."""
    if opts.protocol not in PROTOCOLS:
        raise UserError(f"--protocol {opts.protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    require_search_folder(folder)
    space = search_space_of(folder)
    manifest = read_manifest(folder)
    check_retrain_data(folder, manifest, data)
    if manifest.failed_trials and not opts.allow_failed_trials:
        raise UserError(
            f"{folder / SearchFolder.TRIALS}: {manifest.failed_trials} trial(s) of this search ended in error, so its "
            "results are incomplete; run the search again (--fresh), or retrain anyway with --allow-failed-trials"
        )
    storage = TrialStorage(folder, manifest.storage)
    opts = replace(opts, top_k=opts.top_k or space.retrain.top_k, seeds=opts.seeds or space.retrain.seeds)
    winners = pick_winners(folder, space, opts.top_k, opts.epochs)
    if opts.pretrained is not None:
        winners = [replace(w, config={**w.config, "pretrained_path": opts.pretrained}) for w in winners]
    plan = RetrainPlan(
        tuple(winners),
        opts.protocol,
        space.finetune,
        space.budget.patience,
        space.budget.checkpoint_every,
        space.budget.checkpoint_every_s,
    )
    job = replace(retrain_job(folder, space, plan, _trial_data(folder, data, winners[0]), opts), storage=storage)
    settings = {
        "top_k": len(winners),
        "seeds": opts.seeds,
        "protocol": opts.protocol,
        "epochs": winners[0].config["epochs"],
        "trials": [w.trial for w in winners],
        "finetune": space.finetune,
        "pretrained": winners[0].config.get("pretrained_path"),
    }
    resume = _same_retraining(folder, settings, storage)
    if resume:
        log.info(
            f"resuming the retraining of {folder.name}: {finished_trials(job)} of {job.progress.trials} runs "
            "already finished"
        )
    else:  # a retraining with other settings starts over as a whole
        remove_experiment(storage, SearchFolder.RETRAIN_EXPERIMENT)
        if (folder / "winners").exists():
            shutil.rmtree(folder / "winners")
        write_yaml(folder / SearchFolder.RETRAIN_SETTINGS, settings, header="# what the retraining in retrain/ runs\n")
        stage = (
            f"; then a fine-tune of {space.finetune['epochs']} epochs at lr {space.finetune['lr']:g}, scored separately"
            if space.finetune
            else ""
        )
        log.info(
            f"retraining the top {len(winners)} configurations of {folder.name} with {opts.seeds} seeds each "
            f"({winners[0].config['epochs']} epochs, protocol '{opts.protocol}'{stage})"
        )
    results, resources = run_trials(job, resume)
    return _kept_runs(results, storage, plan, resources), winners


def _trial_data(folder: Path, data: FerData, first: Winner) -> TrialData:
    """The shared data of the retraining trials, with the base and pretrained weights the search used."""
    config = TrainConfig.from_mapping(first.config)
    check_pretrained_choice(config.model, config.pretrained_path, str(folder / SearchFolder.BEST_CONFIG))
    base = load_base(config.base_checkpoint, config.model) if config.base_checkpoint else None
    weights = resolve_pretrained(config.pretrained_path) if model_info(config.model).recipe == "vit" else None
    return TrialData.of(data, base, weights)


def retrain_job(
    folder: Path,
    space: SearchSpace,
    plan: RetrainPlan,
    trial_data: TrialData,
    opts: RetrainOptions,
) -> TuneJob:
    """The Tune experiment of a retraining: every winner x every seed, the latest checkpoint kept
    (it holds the kept model)."""
    from ray import tune

    runs = len(plan.winners) * opts.seeds
    epochs = plan.winners[0].config["epochs"] + (plan.finetune.get("epochs", 0) if plan.finetune else 0)
    gpus = space.resources.gpus_per_trial if opts.gpus_per_trial is None else opts.gpus_per_trial
    cpus = space.resources.cpus_per_trial if opts.cpus_per_trial is None else opts.cpus_per_trial
    return TuneJob(
        SearchFolder.RETRAIN_EXPERIMENT,
        folder,
        retrain_trainable,
        trial_data,
        {"plan": plan},
        gpus,
        cpus,
        Progress(f"retraining {folder.name}", "val_acc", "max", runs, epochs),
        probe=max((TrainConfig.from_mapping(w.config) for w in plan.winners), key=lambda c: c.batch_size),
        param_space={
            "winner": tune.grid_search([w.rank for w in plan.winners]),
            "seed": tune.grid_search(list(range(opts.seeds))),
        },
        board=TrialBoard(
            folder,
            "retrain",
            experiment_columns(space),
            sources=_trial_labels(folder, plan.winners),
            sampled={w.rank: {p.name: w.config.get(p.name) for p in space.params} for w in plan.winners},
        ),
    )


def _trial_labels(folder: Path, winners: tuple[Winner, ...]) -> dict[int, str]:
    """Each winner's rank -> its search trial as run names show it (``t04``), from trials.csv."""
    numbers = pd.read_csv(folder / SearchFolder.TRIALS).astype({"trial_id": str})
    by_id = dict(zip(numbers.trial_id, numbers.trial))
    return {w.rank: trial_label(by_id.get(w.trial), w.trial) for w in winners}


def _kept_runs(results, storage: TrialStorage, plan: RetrainPlan, resources: dict[str, float]) -> pd.DataFrame:
    """Copy each run's kept model(s) to ``folder/winners/`` and its history to ``folder/history/``; one row
    per (winner, seed, stage)."""
    folder = storage.folder
    rows, sources = [], _trial_labels(folder, plan.winners)
    for result in results:
        if result.error is not None:
            raise UserError(f"retraining run {storage.address(result.path)} failed: {result.error}")
        rank, seed = int(result.config["winner"]), int(result.config["seed"])
        winner, history = plan.winners[rank - 1], run_history(result)
        history_csv = write_csv_atomic(history, folder / SearchFolder.HISTORY / f"retrain_winner{rank}_seed{seed}.csv")
        with result.checkpoint.as_directory() as ckpt:
            for stage, file in (("main", "model.pt"), ("finetune", "finetune.pt")):
                if not (Path(ckpt) / file).is_file():
                    continue
                payload = load_checkpoint(Path(ckpt) / file)
                suffix = "" if stage == "main" else "_finetune"
                kept = save_checkpoint(folder / "winners" / f"winner{rank}_seed{seed}{suffix}.pt", payload)
                phase = history[history.phase == ("finetune" if stage == "finetune" else "select")]
                selection = history[history.phase == "select"]
                rows.append(
                    {
                        "name": retrain_label(rank, seed),
                        "winner": rank,
                        "seed": seed,
                        "train_seed": retrain_seed(winner.config.get("seed", 0), seed),
                        "stage": stage,
                        "protocol": plan.protocol,
                        "trial": winner.trial,
                        "source_trial": sources[rank],
                        "search_score": winner.search_score,
                        "checkpoint": str(kept),
                        "selected_epoch": int(payload["epoch"]),
                        "epochs_run": len(selection),
                        "epochs_saved_by_patience": winner.config["epochs"] - len(selection)
                        if selection.patience_stop.iloc[-1]
                        else 0,
                        "val_acc": float(phase.val_acc.max() if stage == "main" else phase.val_acc.iloc[-1]),
                        "wall_time_s": float(history.epoch_time.sum()),
                        "gpus": resources["gpu"],
                        "cpus": resources["cpu"],
                        "history": str(history_csv),
                    }
                )
    return pd.DataFrame(rows).sort_values(["stage", "winner", "seed"]).reset_index(drop=True)
