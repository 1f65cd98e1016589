"""What a search writes when its trials end: ``trials.csv`` (one row per trial: config, scores, how it
ended, time), ``best_config.yaml`` and ``best_model.pt`` (the best trial's best epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fer_tune.errors import TrialsFailed, UserError
from fer_tune.files import write_csv_atomic
from fer_tune.search.in_trial import BEST_FILE, STATE_FILE
from fer_tune.search.space import SearchSpace
from fer_tune.search.storage import TrialStorage
from fer_tune.search.trial_data import TrialData
from fer_tune.search.trial_names import trial_number
from fer_tune.search_folder import (
    ASHA_STATUS,
    PATIENCE_STATUS,
    TIME_BUDGET_STATUS,
    SearchFolder,
    run_history,
    trial_label,
)
from fer_tune.training.checkpoint import load_checkpoint, model_payload, save_checkpoint
from fer_tune.yaml_files import write_yaml


@dataclass
class SearchOutcome:
    """Where a finished search left its files, and its best trial."""

    folder: Path
    trials_csv: Path
    best_config: Path
    best_model: Path
    best_score: float
    trials: pd.DataFrame


# ------------------------------------------------------------------ locking


def trial_status(last: dict[str, Any], max_epochs: int, error: bool = False, rungs: set[int] | None = None) -> str:
    """How a trial ended, from its last reported metrics (trials.csv's status, the study's user attribute).
    ASHA stops a trial only at a rung: with ``rungs`` given, one that stopped elsewhere ran out of time."""
    epochs = int(last.get("epoch", 0) or 0)
    if error:
        return "error"
    if last.get("diverged"):
        return f"diverged at epoch {epochs}"
    if last.get("patience_stop"):
        return PATIENCE_STATUS
    if epochs >= max_epochs:
        return "completed"
    return TIME_BUDGET_STATUS if rungs is not None and epochs not in rungs else ASHA_STATUS


def trials_table(
    results,
    space: SearchSpace,
    max_epochs: int,
    gpus: float,
    cpus: float,
    base_source: str | None = None,
    storage: TrialStorage | None = None,
) -> pd.DataFrame:
    """One row per trial: config, last and best metric, epochs, how it ended, time and GPU/CPU-hours;
    each trial's per-epoch history copied into the search folder (``history/``), where the reports read it."""
    rows = []
    names = [p.name for p in space.params]
    better = max if space.mode == "max" else min
    for result in results:
        history = run_history(result)
        metrics = result.metrics or {}
        number, trial_id = trial_number(result.path), metrics.get("trial_id") or Path(result.path).name
        row: dict[str, Any] = {"trial": number, "name": trial_label(number, trial_id), "trial_id": trial_id}
        row.update({name: result.config.get(name) for name in names})
        if "scheduler" in names and row.get("scheduler") is None:
            row["scheduler"] = result.config.get("scheduler", "none")
        epochs = int(metrics.get("epoch", 0) or 0)
        series = history[space.metric].dropna() if history is not None and space.metric in history else pd.Series([])
        row["epochs_run"] = epochs
        row[f"last_{space.metric}"] = metrics.get(space.metric)
        row[f"best_{space.metric}"] = better(series) if len(series) else None
        row["best_epoch"] = (
            int(history.loc[series.idxmax() if space.mode == "max" else series.idxmin(), "epoch"])
            if len(series)
            else None
        )
        status = trial_status(metrics, max_epochs, error=result.error is not None, rungs=space.budget.asha_rungs())
        row["status"] = status
        row["stopped_early_by_asha"] = status == ASHA_STATUS
        row["epochs_saved_by_patience"] = max_epochs - epochs if status == PATIENCE_STATUS else 0
        row["restarts"] = int(metrics.get("restarts", 0) or 0)
        wall = float(history["epoch_time"].sum()) if history is not None and "epoch_time" in history else 0.0
        row["wall_time_s"] = round(wall, 2)
        steps = history["step_time"].dropna() if history is not None and "step_time" in history else pd.Series([])
        peaks = history["peak_memory_gb"].dropna() if history is not None and "peak_memory_gb" in history else []
        row["step_time_s"] = round(float(steps.median()), 5) if len(steps) else None
        row["peak_memory_gb"] = round(float(max(peaks)), 3) if len(peaks) and max(peaks) > 0 else None  # CUDA only
        row["gpu_hours"] = round(wall / 3600 * gpus, 5)
        row["cpu_hours"] = round(wall / 3600 * cpus, 5)
        row["node"] = metrics.get("node")
        for key in ("transfer_loaded", "transfer_new", "transfer_frozen"):
            row[key] = metrics.get(key)
        row["base_checkpoint"] = base_source
        row["trial_path"] = storage.address(result.path) if storage else result.path
        row["error_file"] = f"{row['trial_path']}/error.txt" if result.error is not None else None
        row["history"] = str(keep_history(history, storage.folder, row["trial"], row["trial_id"])) if storage else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["trial", "trial_id"], kind="stable").reset_index(drop=True)
    return frame


def keep_history(history: pd.DataFrame | None, folder: Path, number: int | None, trial_id: str) -> Path:
    """A search trial's per-epoch history as ``history/search_trial_NNN.csv`` in the search folder."""
    name = f"search_trial_{number:03d}.csv" if number is not None else f"search_{trial_id}.csv"
    return write_csv_atomic(history if history is not None else pd.DataFrame(), folder / SearchFolder.HISTORY / name)


def _best_epoch_in(checkpoint: Path) -> dict[str, Any]:
    """A trial's best epoch: ``best.pt`` (weights only), which every checkpoint carries; a search begun
    by an older fer-tune has only ``state.pt`` in its best checkpoint (that epoch's whole state)."""
    if (checkpoint / BEST_FILE).is_file():
        return load_checkpoint(checkpoint / BEST_FILE)
    state = load_checkpoint(checkpoint / STATE_FILE)
    return {**state, "val_acc": state["best_val_acc"]}


def write_outputs(
    results,
    space: SearchSpace,
    folder: Path,
    resources: dict[str, float],
    trial_data: TrialData,
    base_source: str | None,
    storage: TrialStorage,
) -> SearchOutcome:
    """trials.csv, best_config.yaml, best_model.pt (the best trial's best checkpoint)."""
    table = trials_table(
        results, space, space.budget.max_epochs, resources["gpu"], resources["cpu"], base_source, storage
    )
    trials_csv = write_csv_atomic(table, folder / SearchFolder.TRIALS)
    scored = [
        r
        for r in results
        if r.error is None
        and r.metrics_dataframe is not None
        and space.metric in r.metrics_dataframe
        and not r.metrics.get("diverged")
    ]
    if not scored:
        errors = table[table.status == "error"]
        if len(errors) == len(table):
            raise TrialsFailed(
                f"all {len(table)} trials of search {folder.name} ended in error; the first one's error is in "
                f"{errors.error_file.iloc[0]} (every one's in trials.csv, column error_file)"
            )
        ray_logs = storage.address(storage.experiment(SearchFolder.SEARCH_EXPERIMENT))
        raise UserError(f"{folder}: no trial produced a score (see trials.csv and the Ray logs in {ray_logs})")
    best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all", filter_nan_and_inf=True)
    series = run_history(best)[space.metric]
    best_score = float(series.max() if space.mode == "max" else series.min())
    with best.checkpoint.as_directory() as ckpt_dir:  # a trial keeps one checkpoint, its last: it carries best.pt
        kept = _best_epoch_in(Path(ckpt_dir))
    best_model = save_checkpoint(
        folder / SearchFolder.BEST_MODEL,
        model_payload(kept["config"], trial_data.full_weights(kept), kept["epoch"], kept["val_acc"], search=space.name),
    )
    config = space.train_config(best.config).to_dict()
    config["base_checkpoint"] = base_source
    header = (
        f"# best configuration of search '{folder.name}' ({space.path})\n"
        f"# best {space.metric} = {best_score:.4f} (validation split; PrivateTest not used), trial "
        f"{Path(best.path).name}\n# base weights: {base_source or 'none (trained from scratch)'}\n"
        f"# train it again: python launch.py train --config {folder / 'best_config.yaml'}\n"
    )
    best_config = write_yaml(folder / SearchFolder.BEST_CONFIG, config, header=header)
    return SearchOutcome(folder, trials_csv, best_config, best_model, best_score, table)


def asha_savings(table: pd.DataFrame, max_epochs: int) -> tuple[int, int]:
    """(epochs actually run, epochs had every trial run to the end)."""
    return int(table["epochs_run"].sum()), int(len(table) * max_epochs)


# ------------------------------------------------------------------ the search
