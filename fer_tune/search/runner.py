"""The one Ray Tune runner, used by the search and by the retraining: trial resources (GPU share 0 on
a CPU-only cluster; ``auto`` measured by a probe), the failure policy, one
progress-line format with an estimate of the time left, and the Tuner. A trial receives only the
train and validation arrays: the test split never reaches it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fer_tune.clock import clock, stamp
from fer_tune.compat import ray_logs_folder, tune_ctrl_c
from fer_tune.errors import disk_trouble
from fer_tune.search.cluster import (
    Concurrency,
    check_nodes_see,
    cpus_one_node_holds,
    node_resources,
    share_for,
)
from fer_tune.search.disk_guard import check_room, disk_guard
from fer_tune.search.ray_setup import quiet_ray, ray_session
from fer_tune.search.space import AUTO
from fer_tune.search.storage import TrialStorage
from fer_tune.search.trial_data import TrialData
from fer_tune.search.trial_names import trial_dirname, trial_name
from fer_tune.training.config import TrainConfig

log = logging.getLogger(__name__)

MAX_TRIALS_PER_GPU = 8
MEMORY_HEADROOM = 1.25  # a trial's measured peak memory x this must fit, for each trial on a GPU
MAX_FAILURES = 2  # a trial whose worker dies is retried this many times from its last checkpoint


def trial_resources(job: TuneJob) -> dict[str, float]:
    """What one trial asks Ray for: no GPU where the cluster has none (a GPU request would leave every
    trial PENDING forever), no more CPUs than one node that can hold it has, and with
    ``gpus_per_trial: auto`` the share a probe of one trial measured. Each change to what was asked is
    said in a line."""
    nodes = node_resources()
    if not any(node.get("GPU", 0) > 0 for node in nodes):
        if job.gpus == AUTO or float(job.gpus) > 0:
            log.info(f"gpus_per_trial {job.gpus}: Ray sees no GPU, so the trials run on CPUs")
        gpus = 0.0
    else:
        gpus = probe_gpu_share(job) if job.gpus == AUTO else float(job.gpus)
    cpus = cpus_one_node_holds(nodes, job.cpus, gpus)
    if cpus < job.cpus:
        where = "with a GPU " if gpus > 0 else ""
        log.info(
            f"cpus_per_trial {job.cpus:g}: no node {where}has that many CPUs (the most, {cpus:g}), "
            f"so each trial asks {cpus:g}"
        )
    return {"cpu": cpus, "gpu": gpus}


def trials_per_gpu(peak_bytes: int, total_bytes: int) -> int:
    """How many trials fit on one GPU by memory, each with :data:`MEMORY_HEADROOM` over its measured
    peak: 1 to :data:`MAX_TRIALS_PER_GPU`."""
    return max(1, min(MAX_TRIALS_PER_GPU, int(total_bytes // max(peak_bytes * MEMORY_HEADROOM, 1))))


def probe_gpu_share(job: TuneJob) -> float:
    """``gpus_per_trial: auto``: train a few batches of one trial (the job's largest batch) alone on a
    whole GPU, measure its peak memory and speed, and give each trial 1/k of a GPU, k as many as fit."""
    import ray

    probe = ray.remote(num_gpus=1, num_cpus=1)(_probe_trial)
    peak, total, rate = ray.get(probe.remote(job.data, job.probe))
    k = trials_per_gpu(peak, total)
    log.info(
        f"gpus_per_trial auto: one {job.probe.model} trial (batch {job.probe.batch_size}) peaks at "
        f"{peak / 1e9:.2f} GB of {total / 1e9:.0f} GB and trains {rate:.0f} images/s alone; {k} trial(s) per GPU, "
        f"a share of {1 / k:.4g} each"
    )
    return share_for(k)


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
        return (
            f"{stamp(self.started, self.left())} {self.label} {trial} epoch {epoch}/{self.epochs_per_trial}: "
            f"{self.metric} {shown}{note} | {state}{best}"
        )


def progress_callback(progress: Progress, storage: TrialStorage):
    """The Tune callback that logs :class:`Progress` lines and trial failures (with the trial's error
    file in ``storage``)."""
    from ray.tune import Callback

    class ProgressLines(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            states: dict[str, int] = {}
            for t in trials:
                name = {"TERMINATED": "done", "ERROR": "failed"}.get(t.status, t.status.lower())
                states[name] = states.get(name, 0) + 1
            note = " DIVERGED" if result.get("diverged") else ""
            log.info(
                progress.line(trial_name(trial), int(result.get("epoch", 0)), result.get(progress.metric), states, note)
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.ended.add(trial_name(trial))

        def on_trial_recover(self, iteration, trials, trial, **info):
            log.info(
                f"[{time.strftime('%H:%M:%S')}] {trial_name(trial)} (Ray trial {trial.trial_id}) failed; Ray "
                f"retries it from its last checkpoint (why: Ray's logs in {ray_logs_folder()} on the node that ran it)"
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.ended.add(trial_name(trial))
            log.info(
                f"[{time.strftime('%H:%M:%S')}] {trial_name(trial)} (Ray trial {trial.trial_id}) failed and has "
                "no retries left; "
                f"its error is in {storage.address(trial.path)}/error.txt"
            )

    return ProgressLines()


@dataclass
class TuneJob:
    """One Tune experiment: a search or a retraining, in ``folder/experiment``."""

    experiment: str
    folder: Path
    trainable: Callable
    data: TrialData  # every trial's arrays and starting weights, through the object store
    extra: dict[str, Any]  # the trainable's other parameters (the space, or the retraining plan), likewise
    gpus: float | str  # a share, or "auto"
    cpus: float
    progress: Progress
    param_space: dict[str, Any] | None = None
    tune_config: dict[str, Any] = field(default_factory=dict)  # search_alg, scheduler, num_samples, ...
    probe: TrainConfig | None = None  # gpus "auto": the trial a probe measures
    keep_ray: bool = False  # leave a Ray started here running (the retraining follows)
    storage: TrialStorage | None = None  # where Tune keeps the trials (None: the search folder)
    concurrency: Concurrency | None = None  # a search: how many trials at once (a retraining: all that fit)
    time_budget_s: float = 0.0  # the experiment stops after this long (0: no limit)
    board: Any = None  # fer-tune's TensorBoard callback (search.tensorboard_runs.TrialBoard)

    @property
    def trial_storage(self) -> TrialStorage:
        return self.storage or TrialStorage(self.folder)

    @property
    def path(self) -> str:
        """The experiment's path inside the storage's filesystem."""
        return self.trial_storage.experiment(self.experiment)


def can_resume(storage: TrialStorage, experiment: str) -> bool:
    """True when the storage holds the Tune experiment ``experiment`` and it can be restored."""
    from ray import tune

    quiet_ray()
    filesystem, _ = storage.filesystem()
    path = storage.experiment(experiment)
    if filesystem is None and not Path(path).is_dir():
        return False
    try:
        return tune.Tuner.can_restore(path, storage_filesystem=filesystem)
    except OSError:  # an unreachable URI: nothing to continue from there
        return False


def finished_trials(job: TuneJob) -> int:
    """How many trials of an earlier run ended (for the resume message)."""
    from ray.tune import ExperimentAnalysis

    quiet_ray()
    try:
        analysis = ExperimentAnalysis(job.path, storage_filesystem=job.trial_storage.filesystem()[0])
    except Exception:  # an experiment killed very early may have no readable state yet
        return 0
    return sum(1 for t in analysis.trials if t.status in ("TERMINATED", "ERROR"))


def time_budget_spent(job: TuneJob, started: float) -> bool:
    """True when ``job`` has a time budget and it ran out."""
    return bool(job.time_budget_s) and time.monotonic() - started >= job.time_budget_s


@contextmanager
def disk_trouble_named(where: str) -> Iterator[None]:
    """A full or read-only disk behind an error of Tune, Optuna's study or a trial (which name no file) is an
    ``OSError`` naming ``where``, the experiment's folder."""
    try:
        yield
    except Exception as exc:
        trouble = disk_trouble(exc)
        if trouble is None:
            raise
        raise OSError(trouble.errno, trouble.strerror, trouble.filename or where) from exc


def run_trials(job: TuneJob, restore: bool) -> tuple[Any, dict[str, float]]:
    """Run (or continue) ``job``; return Tune's ResultGrid once every trial ended, and the resources
    each trial had. A Ctrl-C (Tune stops gracefully and saves its state: the same command continues) is a
    KeyboardInterrupt, whether trials were left to start or not; a spent time budget is not."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # Ray's TensorBoard logger off: fer-tune writes its own
    callbacks = [progress_callback(job.progress, job.trial_storage), CSVLoggerCallback(), JsonLoggerCallback()]
    storage = job.trial_storage
    local = storage.local_root()
    guard = None
    if local is not None:
        check_room(local)
        callbacks.append(guard := disk_guard(local))
    with ray_session(keep=job.keep_ray):
        if local is not None:
            check_nodes_see(local)
        resources = trial_resources(job)
        trainable = tune.with_resources(tune.with_parameters(job.trainable, data=job.data, **job.extra), resources)
        started = time.monotonic()
        if restore:
            tuner = tune.Tuner.restore(
                job.path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=storage.filesystem()[0],
            )
        else:
            tune_config = dict(job.tune_config)
            if job.concurrency is not None:
                from fer_tune.search.searcher import ClusterConcurrencyLimiter

                concurrency = replace(job.concurrency, cpus=resources["cpu"], gpus=resources["gpu"])
                resources["max_concurrent"] = concurrency.limit(node_resources())  # at the start (auto follows)
                log.info(f"{job.progress.label}: {concurrency.why(node_resources())}")
                tune_config["search_alg"] = ClusterConcurrencyLimiter(tune_config["search_alg"], concurrency)
            if job.time_budget_s:
                tune_config["time_budget_s"] = job.time_budget_s
            tuner = tune.Tuner(
                trainable,
                param_space=job.param_space,
                tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname, reuse_actors=True, **tune_config),
                run_config=tune.RunConfig(
                    name=job.experiment,
                    **storage.ray_arguments(),
                    verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest: it carries the best
                    failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                    callbacks=callbacks + ([job.board] if job.board is not None else []),
                ),
            )
        with tune_ctrl_c() as caught_ctrl_c, disk_trouble_named(job.path):
            results = tuner.fit()
            interrupted = caught_ctrl_c()
            for error in results.errors:  # a trial a full disk stopped: the disk, not "trials failed"
                if disk_trouble(error) is not None:
                    raise error
    if guard is not None and guard.stopped is not None:
        raise guard.stopped
    ended = results.num_terminated + results.num_errors
    if interrupted or (ended < job.progress.trials and not time_budget_spent(job, started)):
        raise KeyboardInterrupt(f"{job.experiment} stopped by Ctrl-C; Ray Tune saved its state in {job.path}")
    return results, resources
