"""The search's sampler and scheduler: Optuna's TPE through Ray's ``OptunaSearch`` (each trial marked in the
study with how it ended) and ASHA."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from fer_tune.compat import intermediate_steps, optuna_trial_of
from fer_tune.search.cluster import Concurrency, node_resources
from fer_tune.search.outputs import trial_status
from fer_tune.search.space import AUTO, SearchSpace, SpaceSampler, paper_point
from fer_tune.search_folder import SearchFolder

STATUS_ATTR = "fer_tune_status"  # each Optuna trial's user attribute: how it ended
REREAD_S = 30.0  # how often max_concurrent auto looks for nodes that joined


def optuna_and_asha(space: SearchSpace, name: str, folder: Path, seed: int) -> dict[str, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = space.budget
    searcher = MarkedOptunaSearch(
        max_epochs=budget.max_epochs,
        rungs=budget.asha_rungs(),
        space=SpaceSampler(space.params),
        points_to_evaluate=[paper_point(space)] if space.paper_trial else None,
        metric=space.metric,  # a define-by-run space needs metric / mode on the searcher itself
        mode=space.mode,
        seed=seed,
        study_name=name,
        storage=optuna.storages.RDBStorage(SearchFolder(folder).study_storage()),
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
    """Ray's OptunaSearch that, before a trial is told, marks it in the study with how it ended
    (user attribute ``fer_tune_status``: completed, stopped by ASHA, stopped by patience, diverged), so
    that a truncated trial is never mistaken for a finished one; its value is its score at that epoch."""

    def __init__(self, *args: Any, max_epochs: int, rungs: set[int] | None = None, **kwargs: Any):
        self.max_epochs = max_epochs
        self.rungs = rungs
        super().__init__(*args, **kwargs)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = optuna_trial_of(self, trial_id)
        if trial is not None and result.get("training_iteration") in intermediate_steps(trial):
            return  # an epoch trained again after a restart: the study keeps its first report
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = optuna_trial_of(self, trial_id)
        if trial is not None:
            trial.set_user_attr(
                STATUS_ATTR, trial_status(result or {}, self.max_epochs, error or not result, self.rungs)
            )
            value, step = (result or {}).get(self.metric), (result or {}).get("training_iteration")
            if value is not None and step is not None and step not in intermediate_steps(trial):
                trial.report(value, step)  # Tune hands the last epoch to on_trial_complete only
        super().on_trial_complete(trial_id, result=result, error=error)
