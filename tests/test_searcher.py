"""Issue 22, part 1: what Optuna is told of each trial (multi-fidelity TPE), through the real
``MarkedOptunaSearch`` driven as Tune drives it (suggest, one result per epoch, complete)."""

from __future__ import annotations

import optuna
import pytest

from fer_tune.search.searcher import MarkedOptunaSearch, sampler_settings, tpe_sampler
from fer_tune.search.space import Param, SpaceSampler

MAX_EPOCHS = 4


def _searcher(storage) -> MarkedOptunaSearch:
    params = (Param("lr", "loguniform", low=1e-4, high=1e-1),)
    return MarkedOptunaSearch(
        max_epochs=MAX_EPOCHS,
        rungs={1, 2},
        space=SpaceSampler(params),
        metric="val_acc",
        mode="max",
        sampler=tpe_sampler(sampler_settings(0)),
        study_name="s",
        storage=storage,
    )


def _run(searcher, trial_id: str, scores: list[float], **last) -> None:
    assert searcher.suggest(trial_id) is not None
    for epoch, score in enumerate(scores, 1):
        result = {"val_acc": score, "epoch": epoch, "training_iteration": epoch}
        if epoch < len(scores):
            searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result={**result, **last})


def test_asha_stopped_and_diverged_trials_are_pruned_finished_ones_told_their_best(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    searcher = _searcher(storage)
    _run(searcher, "full", [0.30, 0.50, 0.45, 0.40])  # ran its budget; best 0.50 at epoch 2, last 0.40
    _run(searcher, "asha", [0.60])  # stopped by ASHA at the rung of epoch 1, with a higher score
    _run(searcher, "patience", [0.20, 0.35, 0.30], patience_stop=True)
    _run(searcher, "nan", [0.25, float("nan")], diverged=True)
    _run(searcher, "clock", [0.10, 0.20, 0.22])  # epoch 3 is no rung: the time budget stopped it
    study = optuna.load_study(study_name="s", storage=storage)
    told = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    state = optuna.trial.TrialState
    assert {k: t.state for k, t in told.items()} == {
        "full": state.COMPLETE,
        "asha": state.PRUNED,
        "patience": state.COMPLETE,
        "nan": state.PRUNED,
        "clock": state.PRUNED,
    }
    assert told["full"].value == pytest.approx(0.50) and told["patience"].value == pytest.approx(0.35)
    # a pruned trial keeps its per-epoch values (Optuna shows the last as its value); TPE ranks it by its step
    assert told["asha"].intermediate_values == {1: pytest.approx(0.60)}
    assert sorted(told["full"].intermediate_values) == [1, 2, 3, 4]  # every epoch, for TPE's pruned ranking
    assert told["full"].user_attrs["best_epoch"] == 2
    assert study.best_trial.user_attrs["ray_trial_id"] == "full"  # not the 1-epoch 0.60
