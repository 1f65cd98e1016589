"""The search: Optuna (TPE) + ASHA over one search space, run by :mod:`fer_tune.search.runner`.

Outputs under ``results/<name>/``: ``manifest.yaml``, ``trials.csv``, ``best_config.yaml``,
``best_model.pt`` and the Ray experiment folder ``ray/`` (TensorBoard event files in every trial).
A search that was interrupted continues when the same command runs again.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
from ray.tune.search.optuna import OptunaSearch

from fer_tune.training.checkpoint import load_checkpoint, model_payload, save_checkpoint
from fer_tune.yaml_files import write_yaml
from fer_tune.data.fer_data import FerData
from fer_tune.errors import UserError
from fer_tune.files import write_csv_atomic
from fer_tune.manifest import SearchManifest
from fer_tune.models import check_pretrained_choice, create_model, model_info
from fer_tune.models.vit import resolve_pretrained
from fer_tune.run_folder import (check_run_name, check_search_folder, clear_search_outputs, make_run_folder,
                                 removed_if_nothing_ran)
from fer_tune.search.space import Resources, SearchSpace, SpaceSampler, load_search_space, paper_point
from fer_tune.training.single_run import run_training
from fer_tune.search.trainable import search_trainable
from fer_tune.training.transfer import BaseWeights, architecture_of_base, load_base, transfer_weights
from fer_tune.search.in_trial import BEST_FILE, STATE_FILE
from fer_tune.search.runner import Progress, TuneJob, can_resume, finished_trials, run_trials, trial_number
from fer_tune.search.trial_data import TrialData
from fer_tune.search_folder import run_history
from fer_tune.search_folder import PATIENCE_STATUS, SearchFolder
from fer_tune.compat import intermediate_steps, optuna_trial_of

EXPERIMENT = "ray"
STATUS_ATTR = "fer_tune_status"  # each Optuna trial's user attribute: how it ended


@dataclass
class SearchOptions:
    """Command-line choices that shape one search (None = take the YAML's value)."""

    results_dir: Path = Path("results")
    name: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    seed: int = 0
    fresh: bool = False
    resume: bool = False
    smoke: bool = False
    base_checkpoint: str | None = None
    pretrained: str | None = None  # ViT: a local pretrained folder, or "from_scratch"
    keep_ray: bool = False  # leave the Ray the search started running, for the retraining that follows
    log: Callable[[str], None] = field(default=print)


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


@contextmanager
def search_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` for the life of one search process (released even by SIGKILL)."""
    lock_path = folder / ".lock"
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"{folder}: another search with this name is running ({holder}); wait for it to finish, "
            "or give this one another --name"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# ------------------------------------------------------------------ base model


def resolve_base(space: SearchSpace, data: FerData, opts: SearchOptions, folder: Path) -> BaseWeights | None:
    """The weights a transfer search starts from.

    Order: ``--base-checkpoint``; the best model of a finished search of the base
    (``results/<base>/best_model.pt``); else the base is trained first with its paper recipe.
    """
    if space.base is None:
        if opts.base_checkpoint:
            opts.log(f"note: {space.model} trains from scratch; --base-checkpoint is ignored")
        return None
    if opts.base_checkpoint:
        source = Path(opts.base_checkpoint)
    else:
        base_name = f"{space.base}-smoke" if opts.smoke else space.base
        source = opts.results_dir / base_name / "best_model.pt"
        if not source.is_file():
            source = _train_base(space, data, opts, folder)
    base = load_base(source, space.model)
    opts.log(f"base model: {source} ({base.config.get('model')})")
    return base


def adopt_base_architecture(space: SearchSpace, base: BaseWeights, log: Callable[[str], None]) -> SearchSpace:
    """Fix the base's width / activation for every trial (a transfer needs the same architecture),
    then check on one model that the base fits, and log what a transfer moves."""
    inherited = architecture_of_base(model_info(space.model).options, base.config)
    for key, value in inherited.items():
        if key in space.fixed and space.fixed[key] != value:
            log(f"note: {space.path} fixes {key} {space.fixed[key]!r}, but the base was trained with {value!r}; "
                f"the trials use {value!r}")
    space = space.with_fixed(**inherited)
    config = space.train_config(paper_point(space))
    model = create_model(space.model, width=config.width, activation=config.activation)
    report = transfer_weights(model, base.state, freeze=True)
    log(f"base {base.source}: {report.summary()} (frozen only in trials with freeze on)")
    return space


def _train_base(space: SearchSpace, data: FerData, opts: SearchOptions, folder: Path) -> Path:
    base_space = load_search_space(space.base)
    if opts.smoke:
        base_space = base_space.for_smoke()
    base_dir = folder / "base"
    best = base_dir / "best.pt"
    if best.is_file():
        return best
    config = base_space.train_config(paper_point(base_space))
    config = config.replace(seed=opts.seed, **{k: v for k, v in space.fixed.items()
                                                 if k in ("width", "pretrained_path")})
    opts.log(
        f"no finished '{space.base}' search under {opts.results_dir} and no --base-checkpoint: training the "
        f"base {space.base} first with the paper's recipe{' (smoke preset)' if opts.smoke else ''} "
        f"({config.epochs} epochs, {config.optimizer}, "
        f"lr {config.lr:g}) into {base_dir}; the per-epoch lines below show how long each epoch takes"
    )
    run_training(config, data, base_dir, log=opts.log)
    return best


# ------------------------------------------------------------------ outputs


def trial_status(last: dict[str, Any], max_epochs: int, error: bool = False) -> str:
    """How a trial ended, from its last reported metrics (trials.csv's status, the study's user attribute)."""
    epochs = int(last.get("epoch", 0) or 0)
    if error:
        return "error"
    if last.get("diverged"):
        return f"diverged at epoch {epochs}"
    if last.get("patience_stop"):
        return PATIENCE_STATUS
    return "stopped by ASHA" if epochs < max_epochs else "completed"


def trials_table(results, space: SearchSpace, max_epochs: int, gpus: float, cpus: float,
                 base_source: str | None = None) -> pd.DataFrame:
    """One row per trial: config, last and best metric, epochs, how it ended, time and GPU/CPU-hours."""
    rows = []
    names = [p.name for p in space.params]
    better = max if space.mode == "max" else min
    for result in results:
        history = run_history(result)
        metrics = result.metrics or {}
        row: dict[str, Any] = {"trial": trial_number(result.path),
                               "trial_id": metrics.get("trial_id") or Path(result.path).name}
        row.update({name: result.config.get(name) for name in names})
        if "scheduler" in names and row.get("scheduler") is None:
            row["scheduler"] = result.config.get("scheduler", "none")
        epochs = int(metrics.get("epoch", 0) or 0)
        series = history[space.metric].dropna() if history is not None and space.metric in history else pd.Series([])
        row["epochs_run"] = epochs
        row[f"last_{space.metric}"] = metrics.get(space.metric)
        row[f"best_{space.metric}"] = better(series) if len(series) else None
        row["best_epoch"] = int(history.loc[series.idxmax() if space.mode == "max" else series.idxmin(), "epoch"]) if len(series) else None
        status = trial_status(metrics, max_epochs, error=result.error is not None)
        row["status"] = status
        row["stopped_early_by_asha"] = status == "stopped by ASHA"
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
        row["trial_path"] = result.path
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["trial", "trial_id"], kind="stable").reset_index(drop=True)
    return frame


def _best_epoch_in(checkpoint: Path) -> dict[str, Any]:
    """A trial's best epoch: ``best.pt`` (weights only), which every checkpoint carries; a search begun
    by an older fer-tune has only ``state.pt`` in its best checkpoint (that epoch's whole state)."""
    if (checkpoint / BEST_FILE).is_file():
        return load_checkpoint(checkpoint / BEST_FILE)
    state = load_checkpoint(checkpoint / STATE_FILE)
    return {**state, "val_acc": state["best_val_acc"]}


def write_outputs(results, space: SearchSpace, folder: Path, resources: dict[str, float], trial_data: TrialData,
                  base_source: str | None) -> SearchOutcome:
    """trials.csv, best_config.yaml, best_model.pt (the best trial's best checkpoint)."""
    table = trials_table(results, space, space.budget.max_epochs, resources["gpu"], resources["cpu"], base_source)
    trials_csv = write_csv_atomic(table, folder / "trials.csv")
    scored = [r for r in results if r.error is None and r.metrics_dataframe is not None
              and space.metric in r.metrics_dataframe and not r.metrics.get("diverged")]
    if not scored:
        raise UserError(f"{folder}: no trial produced a score (see trials.csv and the Ray logs in {folder / EXPERIMENT})")
    best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all", filter_nan_and_inf=True)
    series = run_history(best)[space.metric]
    best_score = float(series.max() if space.mode == "max" else series.min())
    with best.checkpoint.as_directory() as ckpt_dir:  # a trial keeps one checkpoint, its last: it carries best.pt
        kept = _best_epoch_in(Path(ckpt_dir))
    best_model = save_checkpoint(folder / "best_model.pt", model_payload(
        kept["config"], trial_data.full_weights(kept), kept["epoch"], kept["val_acc"], search=space.name))
    config = space.train_config(best.config).to_dict()
    config["base_checkpoint"] = base_source
    header = (
        f"# best configuration of search '{folder.name}' ({space.path})\n"
        f"# best {space.metric} = {best_score:.4f} (validation split; PrivateTest not used), trial "
        f"{Path(best.path).name}\n# base weights: {base_source or 'none (trained from scratch)'}\n"
        f"# train it again: python launch.py train --config {folder / 'best_config.yaml'}\n"
    )
    best_config = write_yaml(folder / "best_config.yaml", config, header=header)
    return SearchOutcome(folder, trials_csv, best_config, best_model, best_score, table)


def asha_savings(table: pd.DataFrame, max_epochs: int) -> tuple[int, int]:
    """(epochs actually run, epochs had every trial run to the end)."""
    return int(table["epochs_run"].sum()), int(len(table) * max_epochs)


# ------------------------------------------------------------------ the search


def configured_space(space_name: str, opts: SearchOptions) -> SearchSpace:
    """The search space with the command line's budget, resources and pretrained folder applied,
    every number checked (nothing has started yet)."""
    space = load_search_space(space_name)
    if opts.smoke:
        space = space.for_smoke()
    budget = space.budget
    if opts.trials is not None:
        budget = replace(budget, num_trials=opts.trials)
    if opts.max_epochs is not None:
        budget = replace(budget, max_epochs=opts.max_epochs, grace_period=min(budget.grace_period, opts.max_epochs))
    resources = Resources(
        opts.gpus_per_trial if opts.gpus_per_trial is not None else space.resources.gpus_per_trial,
        opts.cpus_per_trial if opts.cpus_per_trial is not None else space.resources.cpus_per_trial,
    )
    space = replace(space, budget=budget.check("command line: budget"),
                    resources=resources.check("command line: resources"))
    if opts.pretrained is not None:
        space = space.with_fixed(pretrained_path=opts.pretrained)
    check_pretrained_choice(space.model, space.fixed.get("pretrained_path"), space.path)
    return space



def run_search(space_name: str, data: FerData, opts: SearchOptions) -> SearchOutcome:
    """Run (or resume) one search and write its outputs; see the module docstring."""
    space = configured_space(space_name, opts)
    name = check_run_name(opts.name or (f"{space.name}-smoke" if opts.smoke else space.name))
    pretrained = resolve_pretrained(space.fixed.get("pretrained_path")) if model_info(space.model).recipe == "vit" else None
    if opts.base_checkpoint and space.base is not None:
        load_base(opts.base_checkpoint, space.model)  # before any folder is made
    folder = (opts.results_dir / name).resolve()
    check_search_folder(folder)
    with removed_if_nothing_ran(folder, ("progress.csv", "metrics.csv")):
        make_run_folder(folder)
        with search_lock(folder):
            return _search_in_folder(space, name, folder, data, pretrained, opts)


def _search_in_folder(space: SearchSpace, name: str, folder: Path, data: FerData, pretrained, opts: SearchOptions
                      ) -> SearchOutcome:
    started = time.perf_counter()
    manifest = _fresh_manifest(space, name, folder, data, opts)
    restore = can_resume(folder / EXPERIMENT)
    if opts.resume and not restore:
        raise UserError(f"{folder / EXPERIMENT}: nothing to resume (no earlier search named {name!r}); "
                        "drop --resume to start one")
    base = resolve_base(space, data, opts, folder)
    if base is not None:
        space = adopt_base_architecture(space, base, opts.log)
        manifest.base_source = base.source
        manifest.write(folder)
    job = replace(search_job(space, name, folder, TrialData.of(data, base, pretrained), opts.seed, opts.log,
                             restore), keep_ray=opts.keep_ray)
    if restore:
        opts.log(f"resuming search {name} from {job.path}: {finished_trials(job.path)} trial(s) already finished")
    else:
        opts.log(f"search {name}: {space.budget.num_trials} trials of {space.model}, up to "
                 f"{space.budget.max_epochs} epochs each, ASHA grace {space.budget.grace_period}; data {data.source}")
    results, resources = run_trials(job, restore, opts.log)
    manifest.gpus_per_trial = resources["gpu"]  # the share the trials had (auto: what the probe chose)
    manifest.write(folder)
    outcome = write_outputs(results, space, folder, resources, job.shared["data"], manifest.base_source)
    ran, full = asha_savings(outcome.trials, space.budget.max_epochs)
    opts.log(f"search {name} done in {time.perf_counter() - started:.0f}s: best {space.metric} "
             f"{outcome.best_score:.4f}; ASHA ran {ran} of {full} trial-epochs")
    opts.log(f"results: {folder}\n  trials:      {outcome.trials_csv}\n  best config: {outcome.best_config}\n"
             f"  TensorBoard: tensorboard --logdir {folder}   (every trial in ray/, the retraining in retrain/)")
    return outcome


def _fresh_manifest(space: SearchSpace, name: str, folder: Path, data: FerData, opts: SearchOptions
                    ) -> SearchManifest:
    """Clear the folder first under ``--fresh``, then write the manifest (what this folder holds)."""
    if opts.fresh:
        kept = clear_search_outputs(folder)
        opts.log(f"--fresh: starting {name} over" + (
            f"; left in place {len(kept)} file(s) fer-tune did not write: {', '.join(kept[:3])}" if kept else ""))
    manifest = SearchManifest(
        name=name, space=space.path, model=space.model, base=space.base, metric=space.metric, mode=space.mode,
        smoke=opts.smoke, seed=opts.seed, budget=asdict(space.budget), finetune=space.finetune,
        pretrained=space.fixed.get("pretrained_path"), data=data.source)
    manifest.write(folder)
    return manifest


def search_job(space: SearchSpace, name: str, folder: Path, trial_data: TrialData, seed: int,
               log: Callable[[str], None], restore: bool = False) -> TuneJob:
    """The Tune experiment of a search: OptunaSearch (seeded TPE, the paper's settings first, its study
    kept in ``optuna.db`` under the search's name) + ASHA. A restored search keeps its own searcher."""
    budget = space.budget
    progress = Progress(f"search {name}", space.metric, space.mode, budget.num_trials, budget.max_epochs, log,
                        upper_bound=True)
    return TuneJob(
        EXPERIMENT, folder, search_trainable, {"data": trial_data, "space": space},
        space.resources.gpus_per_trial, space.resources.cpus_per_trial, progress,
        tune_config={} if restore else _optuna_and_asha(space, name, folder, seed),
        probe=space.largest_trial())


def _optuna_and_asha(space: SearchSpace, name: str, folder: Path, seed: int) -> dict[str, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = space.budget
    searcher = MarkedOptunaSearch(
        max_epochs=budget.max_epochs,
        space=SpaceSampler(space.params),
        points_to_evaluate=[paper_point(space)] if space.paper_trial else None,
        metric=space.metric,  # a define-by-run space needs metric / mode on the searcher itself
        mode=space.mode,
        seed=seed,
        study_name=name,
        storage=optuna.storages.RDBStorage(SearchFolder(folder).study_storage()),
    )
    scheduler = ASHAScheduler(time_attr="epoch", max_t=budget.max_epochs, grace_period=budget.grace_period,
                              reduction_factor=budget.reduction_factor)
    return {"metric": space.metric, "mode": space.mode, "search_alg": searcher, "scheduler": scheduler,
            "num_samples": budget.num_trials, "max_concurrent_trials": budget.max_concurrent}


class MarkedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch that, before a trial is told, marks it in the study with how it ended
    (user attribute ``fer_tune_status``: completed, stopped by ASHA, stopped by patience, diverged), so
    that a truncated trial is never mistaken for a finished one; its value is its score at that epoch."""

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any):
        self.max_epochs = max_epochs
        super().__init__(*args, **kwargs)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = optuna_trial_of(self, trial_id)
        if trial is not None:
            trial.set_user_attr(STATUS_ATTR, trial_status(result or {}, self.max_epochs, error or not result))
            value, step = (result or {}).get(self.metric), (result or {}).get("training_iteration")
            if value is not None and step is not None and step not in intermediate_steps(trial):
                trial.report(value, step)  # Tune hands the last epoch to on_trial_complete only
        super().on_trial_complete(trial_id, result=result, error=error)



