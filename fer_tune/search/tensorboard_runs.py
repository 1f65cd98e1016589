"""fer-tune's own TensorBoard events for the search trials and the retraining runs, written by the driver
into the search folder's ``tensorboard/`` (Ray's TensorBoard logger is off, so that no second HParams
experiment reaches the logdir; the trials may live in a remote storage, the events never do).

- tags grouped: ``val/acc``, ``val/acc_single``, ``val/loss``, ``val/f1``, ``train/acc``, ``train/loss``,
  ``lr``, ``time/epoch_s`` and ``best_val_acc`` (the best ``val/acc`` so far); the ``val/`` curves start at
  step 0, the scores of the model before its first epoch (:func:`~fer_tune.search.in_trial.start_scores`): TensorBoard's
  outlier filter leaves each chart's lowest points out of its range, which hid a trial stopped after one
  epoch, a lone low point; now it is a line from its start, and the lowest points are every run's start;
- short run names that say what ran: ``t04-adam-cosine-lr7e-4-bs32`` (search trial 4), ``w1-s0-from-t04``
  (winner 1's retraining with seed 0; a refit or fine-tune phase: ``.../refit``, ``.../finetune``, scalars
  only): the HParams table cuts its run column at about 16 characters;
- one HParams experiment for the folder: every sampled key plus ``stage``, ``winner`` (0 for a search
  trial), ``seed`` (a search trial's: the search's), ``source_trial`` and ``stop`` (how the run ended:
  HParams' own status knows only success and failure), each with its domain (a choice's values, a range's
  bounds), metrics ``val/acc`` (last epoch) and ``best_val_acc``. TensorBoard 2.21's dashboard opens on 5
  columns, the first of those marked as differing across runs (then by name): :data:`SHOWN_FIRST` are so
  marked, the others are one click away. Every run's event file carries the same copy (no empty root run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Callback

from fer_tune.search.space import SearchSpace
from fer_tune.search.trial_names import creation_number
from fer_tune.search_folder import (
    ASHA_STATUS,
    PATIENCE_STATUS,
    TIME_BUDGET_STATUS,
    SearchFolder,
    retrain_label,
    trial_label,
)
from fer_tune.training.config import runs_own_schedule

TAGS = {
    "val_acc": "val/acc",
    "val_acc_single": "val/acc_single",
    "val_loss": "val/loss",
    "val_f1": "val/f1",
    "train_acc": "train/acc",
    "train_loss": "train/loss",
    "lr": "lr",
    "epoch_time": "time/epoch_s",
}
BEST = "best_val_acc"
METRICS = ("val/acc", BEST)
RUN_COLUMNS = ("stage", "winner", "seed", "source_trial", "stop")  # the columns that say which run is which
STOPS = ("completed", ASHA_STATUS, PATIENCE_STATUS, TIME_BUDGET_STATUS, "diverged", "error")  # the stop column
NAMED_KEYS = ("optimizer", "scheduler", "lr", "batch_size")  # the sampled keys a search run's name shows
SHOWN_FIRST = (*NAMED_KEYS, "stop")  # the dashboard's 5 default columns; the run name says stage, trial, seed


def short_number(value: float) -> str:
    """``7e-4`` for 0.0007, ``0.5`` for 0.5: a number as short as a run name needs."""
    if value and (abs(value) < 1e-2 or abs(value) >= 1e4):
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.2g}"


def search_run_name(number: int | None, trial_id: str, config: dict[str, Any]) -> str:
    """``t04-adam-cosine-lr7e-4-bs32`` (what was sampled, in a few words)."""
    parts = [trial_label(number, trial_id)]
    for key in NAMED_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if key == "lr":
            parts.append(f"lr{short_number(float(value))}")
        elif key == "batch_size":
            parts.append(f"bs{int(value)}")
        else:
            parts.append(str(value))
    return "-".join(parts)


def retrain_run_name(winner: int, seed: int, source: str) -> str:
    """``w1-s0-from-t04``."""
    return f"{retrain_label(winner, seed)}-from-{source}"


def _hparam_value(value: Any) -> Any:
    """A value as its HParams column shows it: a switch as "true" / "false" (torch's ``hparams`` would
    write a bool as the number 1.0), a finite number as a float, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return str(value)


Domain = tuple[Any, ...] | tuple[float, float]  # a choice's values, or a range's (low, high)


def experiment_summary(columns: dict[str, tuple[str, Domain]]):
    """The folder's one HParams experiment: ``columns`` maps each column to ``("discrete", values)`` or
    ``("interval", (low, high))``; the columns of :data:`SHOWN_FIRST` are marked as differing (shown)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    def domain(kind: str, values: Domain):
        if kind == "interval":
            return hp.RealInterval(float(values[0]), float(values[1]))
        return hp.Discrete([_hparam_value(v) for v in values])

    summary = hp.hparams_config_pb(
        [hp.HParam(name, domain(kind, values)) for name, (kind, values) in columns.items()],
        [hp.Metric(tag) for tag in METRICS],
        time_created_secs=0.0,  # every run's copy the same bytes
    )
    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in SHOWN_FIRST
    value.metadata.CopyFrom(metadata.create_summary_metadata(data))
    return summary


@dataclass
class RunLog:
    """What the board knows of one run: its writers (per phase), best score so far, how it ended."""

    name: str
    hparams: dict[str, Any]
    writers: dict[str, Any] = field(default_factory=dict)
    best: float = -math.inf
    patience_stop: bool = False
    last: dict[str, Any] = field(default_factory=dict)


def experiment_columns(space: SearchSpace) -> dict[str, tuple[str, Domain]]:
    """The HParams columns of ``space``'s search and retraining: its sampled keys with their domains, and
    the columns that say which run is which (see the module's docstring)."""
    sampled = {
        p.name: ("discrete", tuple(p.values)) if p.kind == "choice" else ("interval", (p.low, p.high))
        for p in space.params
    }
    optimizers = next((p.values for p in space.params if p.name == "optimizer"), (space.fixed.get("optimizer"),))
    if "scheduler" in sampled and any(runs_own_schedule(o) for o in optimizers):  # its trials say "none"
        sampled["scheduler"] = ("discrete", (*sampled["scheduler"][1], "none"))
    trials = tuple(trial_label(n) for n in range(1, space.budget.num_trials + 1))
    return {
        **sampled,
        "stage": ("discrete", ("search", "retrain")),
        "winner": ("interval", (0, space.budget.num_trials)),
        "seed": ("interval", (0, 2**32 - 1)),
        "source_trial": ("discrete", trials),
        "stop": ("discrete", STOPS),
    }


def stop_column(status: str) -> str:
    """A run's status as the ``stop`` column shows it: one of :data:`STOPS` (the epoch of a divergence is in
    trials.csv)."""
    return "diverged" if status.startswith("diverged") else status


class TrialBoard(Callback):
    """The Tune callback that writes each trial's epochs and, when it ends, its HParams session.

    ``stage`` is ``search`` or ``retrain``; ``columns`` are :func:`experiment_columns`; a search gives
    its ``seed`` (a search trial's seed column), a retraining ``sources`` (a winner's rank -> its search
    trial, ``t04``) and ``sampled`` (rank -> the winner's sampled values); ``status`` gives a search
    trial's stop reason from its last result."""

    def __init__(
        self,
        folder: Path,
        stage: str,
        columns: dict[str, tuple[str, Domain]],
        sources: dict[int, str] | None = None,
        sampled: dict[int, dict[str, Any]] | None = None,
        status: Callable[[dict[str, Any], bool], str] | None = None,
        seed: int = 0,
    ):
        self.logdir = Path(folder) / SearchFolder.TENSORBOARD
        self.stage, self.columns, self.status, self.seed = stage, columns, status, seed
        self.sources, self.sampled = sources or {}, sampled or {}
        self.runs: dict[str, RunLog] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the experiment: no open files
        return {**self.__dict__, "runs": {}}

    def setup(self, **info: Any) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)

    def _run(self, trial) -> RunLog:
        if trial.trial_id not in self.runs:
            config = trial.config
            if self.stage == "search":
                number = creation_number(trial)
                name = search_run_name(number, trial.trial_id, config)
                values = {p: config.get(p) for p, _ in self.sampled_columns()}
                label = trial_label(number, trial.trial_id)
                extra = {"stage": "search", "winner": 0, "seed": self.seed, "source_trial": label}
            else:
                winner, seed = int(config["winner"]), int(config["seed"])
                source = self.sources.get(winner, f"w{winner}")
                name = retrain_run_name(winner, seed, source)
                values = dict(self.sampled.get(winner, {}))
                extra = {"stage": "retrain", "winner": winner, "seed": seed, "source_trial": source}
            hparams = {k: _hparam_value(v) for k, v in {**values, **extra}.items() if v is not None}
            self.runs[trial.trial_id] = RunLog(name, hparams)
        return self.runs[trial.trial_id]

    def sampled_columns(self) -> list[tuple[str, tuple[str, Domain]]]:
        """The columns of the space's sampled keys (not the ones that say which run is which)."""
        return [(k, v) for k, v in self.columns.items() if k not in RUN_COLUMNS]

    def _writer(self, run: RunLog, phase: str):
        from torch.utils.tensorboard import SummaryWriter

        if phase not in run.writers:
            suffix = "" if phase == "select" else f"/{phase}"
            run.writers[phase] = SummaryWriter(str(self.logdir / f"{run.name}{suffix}"))
            if phase == "select":  # the run's own copy of the folder's one experiment
                run.writers[phase].file_writer.add_summary(experiment_summary(self.columns))
        return run.writers[phase]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run = self._run(trial)
        phase = str(result.get("phase", "select"))
        epoch = int(result.get("epoch", 0) or 0)
        writer = self._writer(run, phase)
        first = phase == "select" and epoch == 1  # a fresh run: its curves start at step 0
        for step, prefix in ((0, "start_"), (epoch, "")) if first else ((epoch, ""),):
            for key, tag in TAGS.items():  # every step-0 point first: a step back would purge (TensorBoard)
                value = result.get(f"{prefix}{key}")
                if isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(tag, float(value), step)
        value = result.get("val_acc")
        if phase == "select" and isinstance(value, (int, float)) and math.isfinite(value):
            run.best = max(run.best, float(value))
        if phase == "select" and run.best > -math.inf:
            writer.add_scalar(BEST, run.best, epoch)
        run.patience_stop |= bool(result.get("patience_stop"))
        run.last = dict(result)
        writer.flush()

    def _end(self, trial, error: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        run = self._run(trial)
        if self.status is not None and self.stage == "search":
            stop = self.status(run.last, error)
        else:
            stop = "error" if error else (PATIENCE_STATUS if run.patience_stop else "completed")
        _, start, end = hparams({**run.hparams, "stop": stop_column(stop)}, dict.fromkeys(METRICS, 0.0))
        writer = self._writer(run, "select")
        writer.file_writer.add_summary(start)
        if error:
            end.value[0].metadata.plugin_data.content = _failed_end(end.value[0].metadata.plugin_data.content)
        writer.file_writer.add_summary(end)
        for w in run.writers.values():
            w.close()
        run.writers.clear()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=True)


def _failed_end(content: bytes) -> bytes:
    """A session-end record marked STATUS_FAILURE (torch writes STATUS_SUCCESS)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    data.session_end_info.status = api_pb2.STATUS_FAILURE
    return data.SerializeToString()
