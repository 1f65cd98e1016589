"""The search: Optuna (TPE) + ASHA over one search space, run by :mod:`fer_tune.search.runner`.

Outputs under ``results/<name>/``: ``manifest.yaml``, ``trials.csv``, ``best_config.yaml``,
``best_model.pt`` and the Ray experiment folder ``ray/`` (TensorBoard event files in every trial).
A search that was interrupted continues when the same command runs again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fer_tune import __version__
from fer_tune.data.fer_data import FerData
from fer_tune.errors import TrialsFailed, UserError
from fer_tune.files import ctrl_c_held
from fer_tune.manifest import SearchManifest, read_manifest
from fer_tune.models import check_pretrained_choice, model_info
from fer_tune.models.vit import resolve_pretrained
from fer_tune.run_folder import (
    check_run_name,
    check_search_folder,
    clear_search_outputs,
    folder_lock,
    make_run_folder,
    removed_if_nothing_ran,
)
from fer_tune.search.base_model import adopt_base_architecture, resolve_base
from fer_tune.search.cluster import Concurrency
from fer_tune.search.continuation import check_search_continues, data_md5, space_hash
from fer_tune.search.disk_guard import check_room
from fer_tune.search.outputs import SearchOutcome, asha_savings, trial_status, write_outputs
from fer_tune.search.runner import Progress, TuneJob, can_resume, finished_trials, run_trials
from fer_tune.search.searcher import optuna_and_asha, sampler_settings
from fer_tune.search.space import Resources, SearchSpace, paper_point
from fer_tune.search.space_file import load_search_space
from fer_tune.search.storage import TrialStorage, remove_experiment
from fer_tune.search.tensorboard_runs import TrialBoard, experiment_columns
from fer_tune.search.trainable import search_trainable
from fer_tune.search.trial_data import TrialData
from fer_tune.search_folder import SearchFolder
from fer_tune.training.transfer import load_base

log = logging.getLogger(__name__)


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
    storage: str | None = None  # where Ray Tune keeps trials (a shared folder or a URI); None: the search folder
    max_concurrent: int | str | None = None  # trials at once (auto: as the cluster places them)
    allow_failed_trials: bool = False  # trials that ended in error still give results (else exit 3)


def configured_space(space_name: str, opts: SearchOptions) -> SearchSpace:
    """The search space with the command line's budget, resources and pretrained folder applied,
    every number checked (nothing has started yet)."""
    space = load_search_space(space_name)
    if opts.smoke:
        space = space.for_smoke()
    budget = space.budget
    if opts.trials is not None:
        budget = replace(budget, num_trials=opts.trials)
    if opts.max_concurrent is not None:
        budget = replace(budget, max_concurrent=opts.max_concurrent)
    if opts.max_epochs is not None:
        budget = replace(budget, max_epochs=opts.max_epochs, grace_period=min(budget.grace_period, opts.max_epochs))
    resources = Resources(
        opts.gpus_per_trial if opts.gpus_per_trial is not None else space.resources.gpus_per_trial,
        opts.cpus_per_trial if opts.cpus_per_trial is not None else space.resources.cpus_per_trial,
    )
    space = replace(
        space, budget=budget.check("command line: budget"), resources=resources.check("command line: resources")
    )
    if opts.pretrained is not None:
        space = space.with_fixed(pretrained_path=opts.pretrained)
    check_pretrained_choice(space.model, space.fixed.get("pretrained_path"), space.path)
    return space


def run_search(space_name: str, data: FerData, opts: SearchOptions) -> SearchOutcome:
    """Run (or resume) one search and write its outputs; see the module docstring."""
    space = configured_space(space_name, opts)
    name = (
        check_run_name(opts.name)
        if opts.name
        else check_run_name(
            f"{space.name}-smoke" if opts.smoke else space.name,
            f"{space.path}: the run name this file's name gives,",
            "give --name NAME, or rename the file",
        )
    )
    pretrained = (
        resolve_pretrained(space.fixed.get("pretrained_path")) if model_info(space.model).recipe == "vit" else None
    )
    if opts.base_checkpoint and space.base is not None:
        load_base(opts.base_checkpoint, space.model)  # before any folder is made
    folder = (opts.results_dir / name).resolve()
    check_search_folder(folder)
    check_room(folder)  # the search folder's files, and the base model trained into it
    with removed_if_nothing_ran(folder, ("progress.csv", "metrics.csv")):
        make_run_folder(folder)
        with folder_lock(folder, "search"):
            return _search_in_folder(space, name, folder, data, pretrained, opts)


def _search_in_folder(
    space: SearchSpace, name: str, folder: Path, data: FerData, pretrained, opts: SearchOptions
) -> SearchOutcome:
    started = time.perf_counter()
    storage = TrialStorage(folder, storage_of_search(folder, opts))
    storage.check_writable()
    if opts.fresh and storage.uri is not None:  # the search folder's own ray/ goes with clear_search_outputs
        for experiment in (SearchFolder.SEARCH_EXPERIMENT, SearchFolder.RETRAIN_EXPERIMENT):
            remove_experiment(storage, experiment)
    manifest = _fresh_manifest(space, name, folder, data, opts, storage)
    restore = can_resume(storage, SearchFolder.SEARCH_EXPERIMENT)
    if opts.resume and not restore:
        raise UserError(
            f"{storage.experiment(SearchFolder.SEARCH_EXPERIMENT)}: nothing to resume (no earlier search named "
            f"{name!r} in {storage.describe()}); drop --resume to start one"
        )
    for warning in data.thin_splits(space.train_config(paper_point(space)).batch_size):  # the first trial's batch
        log.info(f"warning: {warning}")
    base = resolve_base(space, data, opts, folder)
    if base is not None:
        space = adopt_base_architecture(space, base)
        manifest.base_source = base.source
        manifest.write(folder)
    study = {"model": space.model, "data": data.source, "smoke": opts.smoke, "fer_tune_version": __version__}
    job = replace(
        search_job(space, name, folder, TrialData.of(data, base, pretrained), opts.seed, restore, study),
        keep_ray=opts.keep_ray,
        storage=storage,
    )
    if restore:
        log.info(f"resuming search {name} from {job.path}: {finished_trials(job)} trial(s) already finished")
    else:
        log.info(
            f"search {name}: {space.budget.num_trials} trials of {space.model}, up to "
            f"{space.budget.max_epochs} epochs each, ASHA grace {space.budget.grace_period}; data {data.source}; "
            f"trials kept in {storage.describe()}"
        )
    results, resources = run_trials(job, restore)
    manifest.gpus_per_trial = resources["gpu"]  # the share the trials had (auto: what the probe chose)
    manifest.max_concurrent = resources.get("max_concurrent", manifest.max_concurrent)  # trials at once, at the start
    with ctrl_c_held():  # trials.csv, best_model.pt, best_config.yaml and the manifest: all or none
        outcome = write_outputs(results, space, folder, resources, job.data, manifest.base_source, storage)
        failed = outcome.trials[outcome.trials.status == "error"]
        manifest.failed_trials = len(failed)
        manifest.write(folder)
    ran, full = asha_savings(outcome.trials, space.budget.max_epochs)
    log.info(
        f"search {name} {'done' if failed.empty else 'ended with failed trials'} in "
        f"{time.perf_counter() - started:.0f}s: best {space.metric} {outcome.best_score:.4f}; "
        f"ASHA ran {ran} of {full} trial-epochs"
    )
    log.info(
        f"results: {folder}\n  trials:      {outcome.trials_csv}\n  best config: {outcome.best_config}\n"
        f"  TensorBoard: tensorboard --logdir {folder / SearchFolder.TENSORBOARD}   (every trial and retraining run; "
        "HParams compares them)"
    )
    if not failed.empty:
        for row in failed.itertuples():
            log.info(f"  {row.name} (Ray trial {row.trial_id}) failed: {row.error_file}")
        if not opts.allow_failed_trials:
            raise TrialsFailed(
                f"{len(failed)} of {len(outcome.trials)} trials of search {name} ended in error (files above); its "
                "results are incomplete and the retraining did not start. Fix the cause and run the same command "
                f"with --fresh, or go on with these results: --retrain {name} --allow-failed-trials"
            )
    return outcome


def storage_of_search(folder: Path, opts: SearchOptions) -> str | None:
    """The ``--storage`` of this search: the one its manifest recorded (a continuation must not
    change it), else the command line's."""
    manifest = read_manifest(folder) if not opts.fresh else None
    recorded = manifest.storage if manifest is not None else None
    if manifest is not None and opts.storage is not None and opts.storage != recorded:
        raise UserError(
            f"{folder / SearchFolder.MANIFEST}: this search keeps its trials in {recorded or 'the search folder'}, "
            f"not --storage {opts.storage}; give the same --storage (or none) to continue it, or --fresh to start over"
        )
    return recorded if manifest is not None else opts.storage


def _fresh_manifest(
    space: SearchSpace, name: str, folder: Path, data: FerData, opts: SearchOptions, storage: TrialStorage
) -> SearchManifest:
    """Clear the folder first under ``--fresh``, else check that the search agrees with the one this folder
    holds; then write the manifest (what this folder holds)."""
    old = None if opts.fresh else read_manifest(folder)
    if old is not None:
        check_search_continues(folder, old, space, data, name)
    if opts.fresh:
        kept = clear_search_outputs(folder)
        log.info(
            f"--fresh: starting {name} over"
            + (f"; left in place {len(kept)} file(s) fer-tune did not write: {', '.join(kept[:3])}" if kept else "")
        )
    manifest = SearchManifest(
        name=name,
        space=space.path,
        model=space.model,
        base=space.base,
        metric=space.metric,
        mode=space.mode,
        smoke=opts.smoke,
        seed=opts.seed,
        budget=asdict(space.budget),
        finetune=space.finetune,
        pretrained=space.fixed.get("pretrained_path"),
        data=data.source,
        storage=storage.uri,
        sampler=sampler_settings(opts.seed),
        space_hash=space_hash(space),
        data_md5=data_md5(data),
        **({"created": old.created} if old is not None else {}),
    )
    manifest.write(folder)
    return manifest


def search_job(
    space: SearchSpace,
    name: str,
    folder: Path,
    trial_data: TrialData,
    seed: int,
    restore: bool = False,
    study_attributes: dict[str, Any] | None = None,
) -> TuneJob:
    """The Tune experiment of a search: OptunaSearch (seeded TPE, the paper's settings first, its study
    kept in ``optuna.db`` under the search's name) + ASHA. A restored search keeps its own searcher."""
    budget = space.budget
    progress = Progress(
        f"search {name}", space.metric, space.mode, budget.num_trials, budget.max_epochs, upper_bound=True
    )
    return TuneJob(
        SearchFolder.SEARCH_EXPERIMENT,
        folder,
        search_trainable,
        trial_data,
        {"space": space},
        space.resources.gpus_per_trial,
        space.resources.cpus_per_trial,
        progress,
        tune_config={} if restore else optuna_and_asha(space, name, folder, seed, study_attributes),
        probe=space.largest_trial(),
        concurrency=Concurrency(budget.max_concurrent, budget.num_trials, 0.0, 0.0),
        board=TrialBoard(
            folder,
            "search",
            experiment_columns(space),
            status=lambda last, error: trial_status(last, budget.max_epochs, error, budget.asha_rungs()),
            seed=seed,
        ),
        time_budget_s=budget.time_budget_s,
    )
