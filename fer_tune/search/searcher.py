"""The search's sampler and scheduler: Optuna's TPE through Ray's ``OptunaSearch`` (each trial marked in the
study with how it ended) and ASHA."""

from __future__ import annotations

import logging
import math
import numbers
import time
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from fer_tune.compat import intermediate_steps, optuna_trial_of
from fer_tune.search.cluster import Concurrency, node_resources
from fer_tune.search.outputs import trial_status
from fer_tune.search.space import AUTO, SearchSpace, SpaceSampler, paper_point
from fer_tune.search_folder import (
    ASHA_STATUS,
    MIN_TRIALS_FOR_IMPORTANCE,
    MIN_TRIALS_WHY,
    TIME_BUDGET_STATUS,
    SearchFolder,
    trial_label,
)

log = logging.getLogger(__name__)

STATUS_ATTR = "fer_tune_status"  # each Optuna trial's user attribute: how it ended
TRUNCATED = (ASHA_STATUS, TIME_BUDGET_STATUS)  # a trial stopped before it ended by itself: PRUNED
REREAD_S = 30.0  # how often max_concurrent auto looks for nodes that joined


def labelled_study(space: SearchSpace, name: str, storage: Any, attributes: dict[str, Any]) -> None:
    """Create (or open) the search's study before Ray's OptunaSearch loads it, and say what it is:
    the metric's name (optuna-dashboard shows it instead of "Objective 0") and ``attributes`` (model,
    data file, smoke flag, fer-tune version) as study attributes."""
    import warnings

    import optuna

    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize" if space.mode == "max" else "minimize",
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([space.metric])
    for key, value in attributes.items():
        study.set_user_attr(key, value)
    dashboard_note(study, study_note(space, name, attributes))


def study_note(space: SearchSpace, name: str, attributes: dict[str, Any]) -> str:
    """The study's note in optuna-dashboard: the data, the objective's split, smoke or not, how trials are
    named, and below how many finished trials its importances are not to be read."""
    from fer_tune.data.describe import data_identity

    smoke = bool(attributes.get("smoke"))
    data, _ = data_identity(attributes.get("data"), smoke)
    return "\n".join(
        [
            f"## fer-tune search {name} ({space.model})",
            "",
            f"- {data}",
            f"- Objective: `{space.metric}`, each trial's best epoch on **PublicTest** (the validation split); "
            "PrivateTest is never seen by the search.",
            f"- {'**Smoke run** (`--smoke`): demo budgets, for plumbing, not results.' if smoke else 'Full budget.'}",
            "- Each trial's name (`t03`) is its user attribute `name`, as in trials.csv, report.md, analysis.md, "
            "TensorBoard and the console (Optuna's own numbers count from 0).",
            f"- **Hyperparameter importances from fewer than {MIN_TRIALS_FOR_IMPORTANCE} finished trials are not to "
            f"be read**: below that, fANOVA named the parameter that mattered in at most {MIN_TRIALS_WHY} "
            "(bench/bench_importance.py); analysis.md refuses them.",
            "- A Ranger21 trial has no `scheduler` parameter here (Ranger21 runs its own warm-up and warm-down; "
            "trials.csv says `none`): Optuna keeps each parameter's choices fixed per study.",
        ]
    )


def dashboard_note(study_or_trial: Any, body: str) -> None:
    """``body`` as optuna-dashboard's note of a study or trial (nothing where optuna-dashboard is not
    installed: it is an optional extra, ``pip install fer-tune[dashboard]``)."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    save_note(study_or_trial, body)


def sampler_settings(seed: int) -> dict[str, Any]:
    """The TPE sampler's settings, as the manifest records them: multivariate TPE with the constant
    liar (trials running in parallel are counted as bad, so they are not sampled twice), the first
    ``n_startup_trials`` random; ``group`` stays off (experimental in Optuna 5, and it warns)."""
    return {"sampler": "TPESampler", "seed": seed, "multivariate": True, "constant_liar": True, "n_startup_trials": 10}


def tpe_sampler(settings: dict[str, Any]):
    """Optuna's TPESampler with ``settings`` (:func:`sampler_settings`)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(**{k: v for k, v in settings.items() if k != "sampler"})


def optuna_and_asha(
    space: SearchSpace, name: str, folder: Path, seed: int, attributes: dict[str, Any] | None = None
) -> dict[str, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = space.budget
    storage = optuna.storages.RDBStorage(SearchFolder(folder).study_storage())
    labelled_study(space, name, storage, attributes or {})
    searcher = MarkedOptunaSearch(
        max_epochs=budget.max_epochs,
        rungs=budget.asha_rungs(),
        paper_first=bool(space.paper_trial),
        space=SpaceSampler(space.params),
        points_to_evaluate=[paper_point(space)] if space.paper_trial else None,
        metric=space.metric,  # a define-by-run space needs metric / mode on the searcher itself
        mode=space.mode,
        sampler=tpe_sampler(sampler_settings(seed)),
        study_name=name,
        storage=storage,
    )
    log.info(
        f"sampler: Optuna TPE, multivariate with the constant liar, seed {seed}, the first "
        f"{sampler_settings(seed)['n_startup_trials']} trials random; trials ASHA stops are told PRUNED; "
        f"ASHA: grace {budget.grace_period}, reduction {budget.reduction_factor}, up to {budget.max_epochs} epochs"
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=budget.max_epochs,
        grace_period=budget.grace_period,
        reduction_factor=budget.reduction_factor,
    )
    return {
        "metric": space.metric,
        "mode": space.mode,
        "search_alg": searcher,
        "scheduler": scheduler,
        "num_samples": budget.num_trials,
    }


class ClusterConcurrencyLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter whose limit follows the cluster (:class:`Concurrency`, re-read every
    :data:`REREAD_S` seconds, so that nodes that join are used)."""

    def __init__(self, searcher: Searcher, concurrency: Concurrency):
        self.concurrency = concurrency
        self.read_at = time.monotonic()
        super().__init__(searcher, max_concurrent=concurrency.limit(node_resources()))

    def suggest(self, trial_id: str) -> dict | None:
        if self.concurrency.setting == AUTO and time.monotonic() - self.read_at > REREAD_S:
            self.read_at = time.monotonic()
            self.set_max_concurrency(self.concurrency.limit(node_resources()))
        return super().suggest(trial_id)


class MarkedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch that tells Optuna the truth about each trial (multi-fidelity TPE): a trial ASHA
    (or the time budget) stopped, or one that diverged, is PRUNED at the epoch it reached (its per-epoch
    values are in the study, and TPE ranks pruned trials by the step they reached); a trial that ran its
    budget or stopped by patience is COMPLETE with its **best** score (the one trials.csv and the winners
    use). Each trial is marked with how it ended (user attribute ``fer_tune_status``), its name
    (``t03``, user attribute ``name`` and its dashboard note), Ray id, trials.csv number, best epoch and whether
    it is the paper's."""

    def __init__(
        self, *args: Any, max_epochs: int, rungs: set[int] | None = None, paper_first: bool = False, **kwargs: Any
    ):
        self.max_epochs = max_epochs
        self.rungs = rungs
        self.paper_first = paper_first  # the first trial is the paper's settings
        self.numbers: dict[str, int] = {}  # Tune trial id -> its trials.csv number (creation order)
        self.best: dict[str, tuple[float, int]] = {}  # Tune trial id -> (best score, its epoch)
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str) -> dict | None:
        suggestion = super().suggest(trial_id)
        if suggestion is not None and trial_id not in self.numbers:
            self.numbers[trial_id] = len(self.numbers) + 1
        return suggestion

    def _track_best(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if isinstance(value, numbers.Real) and math.isfinite(value) and epoch is not None:
            best = self.best.get(trial_id)
            if best is None or (value > best[0] if self.mode == "max" else value < best[0]):
                self.best[trial_id] = (float(value), int(epoch))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._track_best(trial_id, result)
        trial = optuna_trial_of(self, trial_id)
        if trial is not None and result.get("training_iteration") in intermediate_steps(trial):
            return  # an epoch trained again after a restart: the study keeps its first report
        super().on_trial_result(trial_id, result)

    def told(self, trial_id: str, result: dict, status: str) -> dict:
        """What Optuna is told of a trial that ended with ``status``: without the metric for a truncated
        trial (Ray's OptunaSearch then tells it PRUNED), with its best score for a finished one."""
        if status in TRUNCATED or status.startswith("diverged"):
            return {k: v for k, v in result.items() if k != self.metric}
        if trial_id in self.best:
            return {**result, self.metric: self.best[trial_id][0]}
        return result

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        self._track_best(trial_id, result)  # Tune hands a trial's last epoch to on_trial_complete only
        trial = optuna_trial_of(self, trial_id)
        status = trial_status(result, self.max_epochs, error or not result, self.rungs)
        if trial is not None:
            trial.set_user_attr(STATUS_ATTR, status)
            number = self.numbers.get(trial_id)
            trial.set_user_attr("name", trial_label(number, trial_id))
            trial.set_user_attr("ray_trial_id", trial_id)
            trial.set_user_attr("trials_csv_trial", number)
            trial.set_user_attr("paper_trial", number == 1 and self.paper_first)
            if trial_id in self.best:
                trial.set_user_attr("best_epoch", self.best[trial_id][1])
            best = self.best.get(trial_id)
            scored = f"best {self.metric} {best[0]:.4f} at epoch {best[1]}" if best else "no epoch scored"
            dashboard_note(trial, f"**{trial_label(number, trial_id)}** (Ray trial `{trial_id}`): {status}; {scored}")
            value, step = result.get(self.metric), result.get("training_iteration")
            if value is not None and step is not None and step not in intermediate_steps(trial):
                trial.report(value, step)  # Tune hands the last epoch to on_trial_complete only
        super().on_trial_complete(
            trial_id, result=self.told(trial_id, result, status) if not error else result, error=error
        )
