"""One retraining run as a Ray Tune trainable: the main run, then the trainval refit or the fine-tune stage,
each epoch reported and checkpointed; the kept model is the best validation epoch (paper protocol)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fer_tune.search.cluster import this_trial_device
from fer_tune.search.in_trial import STATE_FILE, CheckpointSchedule, report_epoch, restored_state, start_scores
from fer_tune.search.retrain_plan import RetrainPlan, retrain_seed
from fer_tune.search.trial_data import TrialData
from fer_tune.training.checkpoint import model_payload
from fer_tune.training.config import TrainConfig
from fer_tune.training.engine import EpochResult, Trainer, stalled


def _kept(trainer: Trainer, result: EpochResult, phase: str, protocol: str) -> dict[str, Any]:
    """What a retraining keeps of one epoch: weights only, with the config that rebuilds the model."""
    return model_payload(
        trainer.config.to_dict(),
        trainer.model.state_dict(),
        result.epoch,
        result.val_acc,
        phase=phase,
        protocol=protocol,
    )


def retrain_trainable(config: dict[str, Any], data: TrialData, plan: RetrainPlan) -> None:
    """Train one winner with one seed, reporting once per epoch; a checkpoint when the space's schedule
    says so (everything needed to continue, ``state.pt``, with the kept model inside it) and at the end
    of each phase, which adds the kept model (``model.pt``: the best epoch by validation accuracy, or
    the refit's last), so that a restarted retraining resumes at its last checkpoint.

    With a ``finetune`` stage (paper Table 11), the kept main-run weights train on at the fine-tune
    learning rate; its last checkpoint adds ``finetune.pt``, so that each model is scored on its own."""
    winner = plan.winners[config["winner"] - 1]
    seed = int(config["seed"])  # the run's number among the winner's seeds
    train_seed = retrain_seed(winner.config.get("seed", 0), seed)
    trainer = data.trainer(TrainConfig.from_mapping({**winner.config, "seed": train_seed}), device=this_trial_device())
    resume = restored_state()
    kept: dict[str, Any] | None = resume["kept"] if resume else None
    restarts = resume["restarts"] + 1 if resume else 0
    start = resume.get("start", start_scores()) if resume else start_scores(trainer)  # epoch 0 of the curves
    if resume and resume["phase"] != "select":  # the selection ended before the restart
        trainer.history = [EpochResult(**r) for r in resume["select_history"]]
        trainer.epoch = trainer.config.epochs
    for phase, current, stop_epoch in _stages(trainer, data, plan, lambda: kept):  # noqa: B023 (kept is read while this loop runs)
        if resume is not None:
            if phase != resume["phase"]:
                continue  # a phase that ended before the restart
            current.load_state_dict(resume)
            resume = None
        schedule = CheckpointSchedule.of(plan, current.epoch)
        while current.epoch < stop_epoch and not _no_better(phase, current, plan.patience):
            result = current.step_epoch()
            if (
                phase != "finetune"
                and not result.diverged
                and (kept is None or phase == "refit" or result.val_acc > kept["val_acc"])
            ):
                kept = _kept(current, result, phase, plan.protocol)
            ends = current.epoch >= stop_epoch or result.diverged or _no_better(phase, current, plan.patience)
            files = None
            if schedule.due(current.epoch, result.epoch_time, ends):
                files = {
                    STATE_FILE: {
                        **current.state_dict(),
                        "phase": phase,
                        "kept": kept,
                        "restarts": restarts,
                        "start": start,
                        "select_history": [r.as_dict() for r in trainer.history],
                    }
                }
                if ends:
                    files["model.pt"] = kept or _kept(current, result, phase, plan.protocol)
                if ends and phase == "finetune":
                    files["finetune.pt"] = _kept(current, result, phase, plan.protocol)
            cost = report_epoch(
                {
                    **start,
                    **result.as_dict(),
                    "diverged": int(result.diverged),
                    "phase": phase,
                    "patience_stop": int(_no_better(phase, current, plan.patience)),
                    "winner": winner.rank,
                    "seed": seed,
                    "train_seed": train_seed,
                    "restarts": restarts,
                },
                files,
            )
            schedule.written(current.epoch, cost)
            if result.diverged:
                return


def _no_better(phase: str, trainer: Trainer, patience: int) -> bool:
    """Early stopping of the selection phase: no better val_acc within ``patience`` epochs."""
    return phase == "select" and stalled([r.val_acc for r in trainer.history], patience)


def _stages(trainer: Trainer, data: TrialData, plan: RetrainPlan, kept: Callable[[], dict[str, Any] | None]):
    """The main phases (:func:`_phases`), then the optional fine-tune from the kept main-run weights
    (``kept()``), on the data the kept model trained on."""
    yield from _phases(trainer, data, plan.protocol)
    if not plan.finetune or kept() is None:
        return
    finetune_config = trainer.config.replace(source="finetune", **{"scheduler": "none", **plan.finetune})
    finetune = data.trainer(
        finetune_config, data.train_and_val if plan.protocol == "trainval" else None, device=trainer.device.type
    )
    finetune.model.load_state_dict(kept()["model"])
    yield "finetune", finetune, finetune_config.epochs


def _phases(trainer: Trainer, data: TrialData, protocol: str):
    """(phase, trainer, the epoch it stops at): ``select`` runs the whole budget; under ``trainval`` a
    ``refit`` on Training + PublicTest repeats the selected run's trajectory up to its selected epoch:
    the schedule is built for the whole budget (cosine, step and Ranger21's warm-down depend on it) and
    ReduceLROnPlateau, which cannot watch a validation split that is now training data, is replaced
    by the learning rates the selected run recorded."""
    yield "select", trainer, trainer.config.epochs
    if protocol == "trainval":
        scored = [r for r in trainer.history if not r.diverged]
        if not scored:
            return
        best = max(scored, key=lambda r: r.val_acc)
        refit = data.trainer(trainer.config, data.train_and_val, device=trainer.device.type)
        if trainer.config.scheduler == "plateau":
            refit.replay_learning_rates([r.lr for r in trainer.history[: best.epoch]])
        yield "refit", refit, best.epoch
