"""The search's Ray Tune trainable: one trial = one :class:`~fer_tune.training.engine.Trainer` run of a sampled
configuration, reporting once per epoch through :func:`fer_tune.search.runner.report_epoch`.

Everything a trial needs arrives through ``tune.with_parameters`` (Ray's object store), so a trial
runs the same on any node of a cluster; the test split never reaches it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fer_tune.search.cluster import this_trial_device
from fer_tune.search.in_trial import (
    BEST_FILE,
    STATE_FILE,
    CheckpointSchedule,
    finite,
    report_epoch,
    restored_state,
    start_scores,
)
from fer_tune.search.space import SearchSpace
from fer_tune.search.trial_data import TrialData
from fer_tune.training.checkpoint import model_payload
from fer_tune.training.engine import Trainer, stalled

CRASH_ENV = "FER_TUNE_TEST_CRASH_ONCE_DIR"  # test-only: a trial process dies once at its 2nd epoch
FAIL_ENV = "FER_TUNE_TEST_FAIL_IF"  # test-only: "key=value": trials sampled with that value raise


def _maybe_crash_for_test(trial_id: str, epoch: int) -> None:
    """Test-only fault injection: with ``FER_TUNE_TEST_CRASH_ONCE_DIR`` set, the first trial to
    reach epoch 2 kills its own process once (a marker file makes it happen only once)."""
    folder = os.environ.get(CRASH_ENV)
    if not folder or epoch != 1:
        return
    marker = Path(folder) / "crashed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, trial_id.encode())
    os.close(fd)
    os._exit(1)


def _maybe_fail_for_test(config: dict[str, Any]) -> None:
    """Test-only fault injection: with ``FER_TUNE_TEST_FAIL_IF=key=value`` set, a trial whose sampled
    ``key`` prints as ``value`` raises (an error Ray's retries cannot cure)."""
    key, _, value = os.environ.get(FAIL_ENV, "").partition("=")
    if key and str(config.get(key)) == value:
        raise RuntimeError(f"test fault: {key} = {value}")


def search_trainable(config: dict[str, Any], data: TrialData, space: SearchSpace) -> None:
    """Train one sampled configuration of ``space``, reporting scalars once per epoch; a checkpoint
    (resumption state + the best epoch's weights) when the budget's schedule says so, and at the end."""
    import ray
    from ray import tune

    _maybe_fail_for_test(config)
    trainer = data.trainer(space.train_config(config), device=this_trial_device())
    transfer = trainer.transfer.counts() if trainer.transfer is not None else {}
    state = restored_state()
    restarts = 0
    best: dict[str, Any] | None = None
    start = start_scores(trainer) if state is None else state.get("start", start_scores())  # epoch 0 of the curves
    if state is not None:
        trainer.load_state_dict(state)
        restarts = int(state.get("restarts", 0)) + 1
        best = restored_state(BEST_FILE)
    node = ray.get_runtime_context().get_node_id()
    trial_id = tune.get_context().get_trial_id() or "trial"
    schedule = CheckpointSchedule.of(space.budget, trainer.epoch)
    rungs = space.budget.asha_rungs()
    while trainer.epoch < trainer.config.epochs:
        _maybe_crash_for_test(trial_id, trainer.epoch)
        result = trainer.step_epoch()
        scores = [getattr(r, space.metric) for r in trainer.history]
        no_better = stalled(scores, space.budget.patience, space.mode)
        if not result.diverged and not stalled(scores, 1, space.mode):  # the (first) best epoch so far
            best = best_weights(trainer, result.val_acc)
        ends = result.diverged or no_better or trainer.epoch >= trainer.config.epochs
        at_rung = trainer.epoch in rungs  # ASHA may stop the trial after this report: its best weights are kept
        metrics = {
            **start,
            **result.as_dict(),
            "train_loss": finite(result.train_loss),
            "val_loss": finite(result.val_loss),
            "best_val_acc": max(trainer.best_val_acc, 0.0),
            "diverged": int(result.diverged),
            "patience_stop": int(no_better and not result.diverged),
            "restarts": restarts,
            "node": node,
            **transfer,
        }
        files = None
        if schedule.due(trainer.epoch, result.epoch_time, ends or at_rung):
            state_file = {**trainer.state_dict(), "restarts": restarts, "start": start}
            files = {STATE_FILE: state_file, **({BEST_FILE: best} if best else {})}
        schedule.written(trainer.epoch, report_epoch(metrics, files))
        if result.diverged or no_better:
            return


def best_weights(trainer: Trainer, val_acc: float) -> dict[str, Any]:
    """The trial's best epoch so far: its trainable weights (a CPU copy, no optimizer state), config,
    epoch and validation accuracy."""
    return model_payload(trainer.config.to_dict(), trainer.trainable_weights(), trainer.epoch, val_acc)
