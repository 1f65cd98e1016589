"""The one Ray Tune runner, used by the search and by the retraining.

It owns what both need once: Ray start-up (quiet: Ray's own text stays in its log files), the
data every trial shares (:class:`TrialData`, through Ray's object store), trial resources (GPU
share 0 on a CPU-only cluster), trial folder names, the failure and checkpoint policy, the
per-epoch report + checkpoint of a trial, and one progress-line format with an estimate of the
time left. A trial receives only the train and validation arrays: the test split never reaches it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from fer_tune.training.checkpoint import load_checkpoint, save_checkpoint
from fer_tune.clock import clock, stamp
from fer_tune.training.config import TrainConfig
from fer_tune.data.fer2013 import FerData
from fer_tune.models.vit import PretrainedViT
from fer_tune.search.space import AUTO
from fer_tune.training.transfer import BaseWeights

STATE_FILE = "state.pt"  # what a restarted trial continues from
BEST_FILE = "best.pt"  # a search trial's best epoch: trainable weights only, no optimizer state
MAX_TRIALS_PER_GPU = 8
MEMORY_HEADROOM = 1.25  # a trial's measured peak memory x this must fit, for each trial on a GPU
MAX_FAILURES = 2  # a trial whose worker dies is retried this many times from its last checkpoint
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Ray's "Configuration for experiment" boxes and TensorBoard hint: off
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # noise for epoch-level checkpoints
    "RAY_DEDUP_LOGS": "0",
}


@dataclass(frozen=True)
class TrialData:
    """What every trial shares, shipped once through Ray's object store: the train and validation
    arrays and the weights trials start from (a base model's, a pretrained ViT's)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    base: BaseWeights | None = None
    pretrained: PretrainedViT | None = None

    @classmethod
    def of(cls, data: FerData, base: BaseWeights | None, pretrained: PretrainedViT | None) -> "TrialData":
        """The train and validation roles of ``data`` (never the test split) with the starting weights."""
        (train_x, train_y), (val_x, val_y) = data.role("train"), data.role("val")
        return cls(train_x, train_y, val_x, val_y, base, pretrained)

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.train_images, self.train_labels

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.val_images, self.val_labels

    @property
    def train_and_val(self) -> tuple[np.ndarray, np.ndarray]:
        """Training + validation as one training set (the ``trainval`` refit)."""
        return np.concatenate([self.train_images, self.val_images]), np.concatenate([self.train_labels, self.val_labels])

    def trainer(self, config: TrainConfig, train: tuple[np.ndarray, np.ndarray] | None = None):
        """A :class:`~fer_tune.training.engine.Trainer` of ``config`` from these starting weights."""
        from fer_tune.training.engine import Trainer

        if self.base is not None and config.base_checkpoint is None:
            config = config.replace(base_checkpoint=self.base.source)
        return Trainer(config, train or self.train, self.val, base_state=self.base.state if self.base else None,
                       pretrained=self.pretrained)

    def head(self, train: int, val: int) -> "TrialData":
        """The first ``train`` / ``val`` images only, with the same starting weights (for a probe)."""
        return replace(self, train_images=self.train_images[:train], train_labels=self.train_labels[:train],
                       val_images=self.val_images[:val], val_labels=self.val_labels[:val])

    def full_weights(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Every weight of the model a trial saved (its ``config`` and trainable ``model`` tensors:
        the frozen ones are the starting weights', left out of trial checkpoints)."""
        config = TrainConfig.from_mapping(saved["config"], source="a trial's saved weights")
        trainer = self.head(1, 1).trainer(config)  # the model and its starting weights, not the data
        trainer.load_weights(saved["model"])
        return trainer.model.state_dict()


# ------------------------------------------------------------------ inside a trial


def restored_state(name: str = STATE_FILE) -> dict[str, Any] | None:
    """The file ``name`` of the checkpoint a restarted trial continues from (its last), else None."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / name
        return load_checkpoint(path) if path.is_file() else None


def report_epoch(metrics: dict[str, Any], files: dict[str, dict[str, Any]] | None) -> float:
    """Report one epoch's scalars to Tune, with a checkpoint holding ``files`` (name -> payload) when
    given; returns the seconds the checkpoint took to write (0 without one)."""
    from ray import tune
    from ray.tune import Checkpoint

    if not files:
        tune.report(metrics)
        return 0.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name, payload in files.items():
            save_checkpoint(Path(folder) / name, payload)
        tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))
    return time.perf_counter() - started


@dataclass
class CheckpointSchedule:
    """When a run writes its resumption state: at the end, and otherwise every ``every`` epochs, or
    every ``every_s`` seconds of training, or (both 0) once the training time since the last write is
    :data:`COST_RATIO` times what that write cost, so that writing stays under about 5% of the
    training time. An improvement forces no write: the best weights ride along in the next one."""

    every: int = 0
    every_s: float = 0.0
    last_epoch: int = 0
    last_cost: float = 0.0
    training_since: float = 0.0

    COST_RATIO = 20.0

    @classmethod
    def of(cls, budget: Any, epoch: int = 0) -> "CheckpointSchedule":
        """The schedule a search space's ``budget`` asks for, starting after ``epoch``."""
        return cls(every=budget.checkpoint_every, every_s=budget.checkpoint_every_s, last_epoch=epoch)

    def due(self, epoch: int, epoch_time: float, final: bool) -> bool:
        """True when the state after ``epoch`` (which trained for ``epoch_time`` seconds) is to be written."""
        self.training_since += epoch_time
        if final:
            return True
        if self.every:
            return epoch - self.last_epoch >= self.every
        if self.every_s:
            return self.training_since >= self.every_s
        return self.training_since >= self.COST_RATIO * self.last_cost

    def written(self, epoch: int, cost: float) -> None:
        """Record a write of the state after ``epoch`` that took ``cost`` seconds."""
        if cost > 0:
            self.last_epoch, self.last_cost, self.training_since = epoch, cost, 0.0


def finite(value: float) -> float:
    """``value``, or +inf when it is NaN / infinite (Tune's tables and CSVs stay numeric)."""
    return value if math.isfinite(value) else float("inf")


def epoch_rows(history: pd.DataFrame | None) -> pd.DataFrame | None:
    """A run's per-epoch reports, each epoch once (per phase). A driver killed after an epoch's report
    but before Ray recorded that epoch's checkpoint makes the resumed run repeat the epoch, and Tune's
    logs (``progress.csv``, ``result.json``) may then hold it twice: the later row, the one the run
    went on from, is kept."""
    if history is None or "epoch" not in history:
        return history
    keys = [key for key in ("phase", "epoch") if key in history]
    return history.drop_duplicates(keys, keep="last").reset_index(drop=True)


def run_history(result) -> pd.DataFrame | None:
    """The per-epoch history of a Tune ``Result`` (read from its logs), each epoch once."""
    return epoch_rows(result.metrics_dataframe)


def read_history(progress_csv: Path) -> pd.DataFrame:
    """A run's ``progress.csv``, each epoch once."""
    return epoch_rows(pd.read_csv(progress_csv))


# ------------------------------------------------------------------ the driver


def _quiet_ray() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("ray", "ray.tune", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # a failed trial: Tune logs its traceback here; fer-tune's progress callback says it in one line,
    # with the path of the trial's error.txt (where the traceback is kept)
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    _ray_errors_to_its_logger()


def _ray_errors_to_its_logger() -> None:
    """Ray's driver prints every error its cluster publishes ("(raylet) A worker died or was killed
    ...") straight to stdout, whatever ``log_to_driver`` says; fer-tune's progress line reports a
    failed trial itself and the raylet's log file keeps the text, so those go to the 'ray' logger."""
    import ray._private.worker as ray_worker

    if hasattr(ray_worker, "print_to_stdstream"):  # the name Ray's error listener prints through
        ray_worker.print_to_stdstream = _log_ray_message


def ray_logs_folder() -> str:
    """This node's Ray log folder (where the raylet says why a worker died)."""
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else "session_latest/logs of Ray's temp folder"


def _log_ray_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    logging.getLogger("ray").warning("(%s) %s", data.get("pid"), "\n".join(map(str, data.get("lines", []))))


@contextmanager
def ray_session(log: Callable[[str], None], keep: bool = False) -> Iterator[None]:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray (dashboard off); shut it down at the
    end only if it was started here and ``keep`` is off (a search keeps it for its retraining)."""
    import ray

    _quiet_ray()
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or None, include_dashboard=False, configure_logging=False,
             log_to_driver=False, logging_level="ERROR")
    resources = ray.cluster_resources()
    log(f"Ray: {f'cluster at {address}' if address else 'a local Ray instance'}; "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    try:
        yield
    finally:
        if not keep:
            ray.shutdown()


def trial_resources(job: "TuneJob", log: Callable[[str], None]) -> dict[str, float]:
    """What one trial asks Ray for: no GPU where the cluster has none (a GPU request would leave every
    trial PENDING forever), no more CPUs than the cluster has, and with ``gpus_per_trial: auto`` the
    share a probe of one trial measured."""
    import ray

    cluster = ray.cluster_resources()
    cpus = min(job.cpus, max(cluster.get("CPU", 1), 1))
    if cluster.get("GPU", 0) <= 0:
        if job.gpus == AUTO:
            log("gpus_per_trial auto: Ray sees no GPU, so the trials run on CPUs")
        return {"cpu": cpus, "gpu": 0.0}
    return {"cpu": cpus, "gpu": probe_gpu_share(job, log) if job.gpus == AUTO else float(job.gpus)}


def trials_per_gpu(peak_bytes: int, total_bytes: int) -> int:
    """How many trials fit on one GPU by memory, each with :data:`MEMORY_HEADROOM` over its measured
    peak: 1 to :data:`MAX_TRIALS_PER_GPU`."""
    return max(1, min(MAX_TRIALS_PER_GPU, int(total_bytes // max(peak_bytes * MEMORY_HEADROOM, 1))))


def probe_gpu_share(job: "TuneJob", log: Callable[[str], None]) -> float:
    """``gpus_per_trial: auto``: train a few batches of one trial (the job's largest batch) alone on a
    whole GPU, measure its peak memory and speed, and give each trial 1/k of a GPU, k as many as fit."""
    import ray

    probe = ray.remote(num_gpus=1, num_cpus=1)(_probe_trial)
    peak, total, rate = ray.get(probe.remote(job.shared["data"], job.probe))
    k = trials_per_gpu(peak, total)
    log(f"gpus_per_trial auto: one {job.probe.model} trial (batch {job.probe.batch_size}) peaks at "
        f"{peak / 1e9:.2f} GB of {total / 1e9:.0f} GB and trains {rate:.0f} images/s alone; {k} trial(s) per GPU, "
        f"a share of {1 / k:.4g} each")
    return round(1 / k, 4)


def _probe_trial(data: TrialData, config: TrainConfig, steps: int = 3) -> tuple[int, int, float]:
    """(peak bytes, total bytes, training images/s) of ``config`` on this task's GPU."""
    import torch

    trainer = data.head(config.batch_size * (steps + 1), config.eval_batch_size).trainer(config)
    torch.cuda.reset_peak_memory_stats()
    trainer.train_one_epoch(max_batches=1)  # warm-up: one batch of the recipe's real size
    torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train_one_epoch(max_batches=steps)
    torch.cuda.synchronize()
    rate = steps * config.batch_size / (time.perf_counter() - started)
    trainer.validate()  # evaluation batches are larger: their peak counts too
    return torch.cuda.max_memory_allocated(), torch.cuda.get_device_properties(0).total_memory, rate


def trial_dirname(trial) -> str:
    """Short trial folder names in creation order, ``trial_001_<id>`` (Ray's default spells out the config)."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(number):03d}_{trial.trial_id}" if number.isdigit() else f"trial_{trial.trial_id}"


def trial_number(path: str) -> int | None:
    """The creation order of a trial from its folder name (1 = the first trial)."""
    parts = Path(path).name.split("_")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


@dataclass
class Progress:
    """One line per trial epoch, the same for the search and the retraining: time, elapsed, an
    estimate of the time left, the trial, its score, the trials' states and the best so far.

    The estimate assumes every trial still to come runs all ``epochs_per_trial`` epochs, so for a
    search (where ASHA stops some trials early) it is an upper bound, marked ``<=``."""

    label: str
    metric: str
    mode: str
    trials: int
    epochs_per_trial: int
    log: Callable[[str], None]
    upper_bound: bool = False
    started: float = field(default_factory=time.monotonic)
    epochs_done: dict[str, int] = field(default_factory=dict)
    ended: set = field(default_factory=set)
    best: tuple[float, str] | None = None

    def left(self) -> str:
        done = sum(self.epochs_done.values())
        elapsed = time.monotonic() - self.started
        still = sum(self.epochs_per_trial - n for t, n in self.epochs_done.items() if t not in self.ended)
        still += max(self.trials - len(self.epochs_done), 0) * self.epochs_per_trial
        if done == 0:
            return "left ?"
        return f"left {'<=' if self.upper_bound else '~'}{clock(elapsed / done * still)}"

    def line(self, trial: str, epoch: int, value: float | None, states: dict[str, int], note: str = "") -> str:
        """The progress line after ``trial`` reported ``epoch``."""
        if value is not None and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (value, trial)
        self.epochs_done[trial] = max(epoch, self.epochs_done.get(trial, 0))
        state = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        best = f" | best {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        shown = f"{value:.4f}" if value is not None else "-"
        return (f"{stamp(self.started, self.left())} {self.label} {trial} epoch {epoch}/{self.epochs_per_trial}: "
                f"{self.metric} {shown}{note} | {state}{best}")


def progress_callback(progress: Progress):
    """The Tune callback that logs :class:`Progress` lines and trial failures."""
    from ray.tune import Callback

    class ProgressLines(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            states: dict[str, int] = {}
            for t in trials:
                name = {"TERMINATED": "done", "ERROR": "failed"}.get(t.status, t.status.lower())
                states[name] = states.get(name, 0) + 1
            note = " DIVERGED" if result.get("diverged") else ""
            progress.log(progress.line(trial.trial_id, int(result.get("epoch", 0)), result.get(progress.metric),
                                       states, note))

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.ended.add(trial.trial_id)

        def on_trial_recover(self, iteration, trials, trial, **info):
            progress.log(f"[{time.strftime('%H:%M:%S')}] {trial.trial_id} failed; Ray retries it from its last "
                         f"checkpoint (why: Ray's logs in {ray_logs_folder()} on the node that ran it)")

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.ended.add(trial.trial_id)
            progress.log(f"[{time.strftime('%H:%M:%S')}] {trial.trial_id} failed and has no retries left; "
                         f"its error is in {trial.local_path}/error.txt")

    return ProgressLines()


@dataclass
class TuneJob:
    """One Tune experiment: a search or a retraining, in ``folder/experiment``."""

    experiment: str
    folder: Path
    trainable: Callable
    shared: dict[str, Any]  # passed to every trial through the object store (tune.with_parameters)
    gpus: float | str  # a share, or "auto"
    cpus: float
    progress: Progress
    param_space: dict[str, Any] | None = None
    tune_config: dict[str, Any] = field(default_factory=dict)  # search_alg, scheduler, num_samples, ...
    probe: TrainConfig | None = None  # gpus "auto": the trial a probe measures
    keep_ray: bool = False  # leave a Ray started here running (the retraining follows)

    @property
    def path(self) -> Path:
        return self.folder / self.experiment


def can_resume(experiment: Path) -> bool:
    """True when ``experiment`` holds a Tune experiment that can be restored."""
    from ray import tune

    return experiment.is_dir() and tune.Tuner.can_restore(str(experiment))


def finished_trials(experiment: Path) -> int:
    """How many trials of an earlier run ended (for the resume message)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(experiment))
    except Exception:  # an experiment killed very early may have no readable state yet
        return 0
    return sum(1 for t in analysis.trials if t.status in ("TERMINATED", "ERROR"))


def run_trials(job: TuneJob, restore: bool, log: Callable[[str], None]) -> tuple[Any, dict[str, float]]:
    """Run (or continue) ``job``; return Tune's ResultGrid once every trial ended, and the resources
    each trial had. A Ctrl-C that stopped it early is a KeyboardInterrupt (Tune saved its state: the
    same command continues)."""
    from ray import tune

    with ray_session(log, keep=job.keep_ray):
        resources = trial_resources(job, log)
        trainable = tune.with_resources(tune.with_parameters(job.trainable, **job.shared), resources)
        if restore:
            tuner = tune.Tuner.restore(str(job.path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=job.param_space,
                tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname, reuse_actors=True,
                                            **job.tune_config),
                run_config=tune.RunConfig(
                    name=job.experiment, storage_path=str(job.folder.resolve()), verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest: it carries the best
                    failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                    callbacks=[progress_callback(job.progress)],
                ),
            )
        results = tuner.fit()
    ended = results.num_terminated + results.num_errors
    if ended < job.progress.trials:
        raise KeyboardInterrupt(f"{ended} of {job.progress.trials} trials of {job.experiment} ended")
    return results, resources
