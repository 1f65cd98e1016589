"""Search spaces: one plain YAML per model in ``search_spaces/``, validated, sampled by Optuna."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fer_tune.errors import UserError
from fer_tune.rules import Rule, check_fields, whole
from fer_tune.training.config import TrainConfig, runs_own_schedule, with_own_schedule

METRICS = {"val_acc": "max", "val_acc_single": "max", "val_f1": "max", "val_loss": "min"}
KINDS = ("choice", "loguniform", "uniform", "int")
AUTO = "auto"  # gpus_per_trial: auto
FIXED_ONLY = ("pretrained_path",)  # settings a space may fix for every trial but never sample
TUNABLE = tuple(
    f.name for f in fields(TrainConfig) if f.name not in ("model", "base_checkpoint", "epochs", "pretrained_path")
)


@dataclass(frozen=True)
class Budget:
    """How much a search may spend."""

    max_epochs: int = 30
    grace_period: int = 3
    reduction_factor: int = 3
    num_trials: int = 20
    max_concurrent: int | str = AUTO  # trials at once; auto: as many as the cluster places (search/cluster.py)
    patience: int = 0  # a run ends after this many epochs without a better validation score (0 = never)
    checkpoint_every: int = 0  # a run saves its state every N epochs; 0 = by time (below), else automatic
    checkpoint_every_s: float = 0.0  # ... every T seconds of training; 0 = when saving costs under about 5%
    time_budget_s: float = 0.0  # the whole search stops after this many seconds (Tune's time_budget_s); 0 = none

    def asha_rungs(self) -> set[int]:
        """The epochs at which ASHA compares a trial with the others (and may stop it)."""
        rungs, epoch = set(), self.grace_period
        while epoch < self.max_epochs:
            rungs.add(epoch)
            epoch *= self.reduction_factor
        return rungs

    def check(self, where: str) -> Budget:
        """Itself, when every count is in range and consistent; else a :class:`UserError` naming ``where``."""
        _check_fields(
            where, self, {"grace_period": Rule(f"1 to max_epochs ({self.max_epochs})", self.max_epochs.__ge__)}
        )
        return self


GPU_SHARES = "0 (train on the CPU) to 1 (a share of one GPU: a trial trains on one device), or auto"
AUTO_FIELDS = ("gpus_per_trial", "max_concurrent")  # settings that may be "auto"


def gpu_share_ok(value: Any) -> bool:
    """True for a GPU share a trial can use (see :data:`GPU_SHARES`)."""
    if value == AUTO:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def concurrency_ok(value: Any) -> bool:
    """True for ``max_concurrent``: auto, or 1 to 10000 trials at once."""
    return value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000)


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for (the GPU share is dropped to 0 where Ray sees no GPU)."""

    gpus_per_trial: float | str = 1.0  # or "auto": sized by a probe of one trial on the GPU (tune_runner)
    cpus_per_trial: float = 2.0

    def check(self, where: str) -> Resources:
        """Itself, when the shares are finite and Ray can place them; else a :class:`UserError`."""
        _check_fields(where, self)
        return self


@dataclass(frozen=True)
class RetrainPreset:
    """How many winners the retraining takes and over how many seeds (``--top-k`` / ``--seeds``)."""

    top_k: int = 3
    seeds: int = 3

    def check(self, where: str) -> RetrainPreset:
        """Itself, when both counts are 1 to 100; else a :class:`UserError` naming ``where``."""
        _check_fields(where, self)
        return self


# The allowed values of every single-number setting, whether it comes from a YAML (budget, resources,
# retrain) or from its command-line option: (what is allowed, the check)
RANGES: dict[str, Rule] = {
    "max_epochs": whole(1, 100_000),
    "num_trials": whole(1, 100_000),
    "reduction_factor": Rule("2 to 100 (ASHA keeps 1 in reduction_factor)", lambda v: 2 <= v <= 100),
    "max_concurrent": Rule("auto (as many as the cluster places) or a whole number 1 to 10000", concurrency_ok),
    "patience": Rule("0 (off) to 100000 epochs without improvement", lambda v: 0 <= v <= 100_000),
    "checkpoint_every": Rule("0 (automatic) to 100000 epochs", lambda v: 0 <= v <= 100_000),
    "checkpoint_every_s": Rule("0 (automatic) to 604800 seconds", lambda v: 0 <= v <= 7 * 86_400),
    "time_budget_s": Rule("0 (no limit) to 31536000 seconds", lambda v: 0 <= v <= 365 * 86_400),
    "gpus_per_trial": Rule(GPU_SHARES, gpu_share_ok),
    "cpus_per_trial": Rule("above 0 and at most 1024", lambda v: math.isfinite(v) and 0 < v <= 1024),
    "top_k": whole(1, 100),
    "seeds": whole(1, 100),
}


def _check_fields(where: str, values: Any, more: dict[str, Rule] | None = None) -> None:
    """A :class:`UserError` for the first field of ``values`` outside :data:`RANGES` (or ``more``)."""
    rules = {f.name: RANGES[f.name] for f in fields(values) if f.name in RANGES} | (more or {})
    check_fields(rules, values, lambda name, value: f"{where}.{name} = {value!r}")


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: ``choice`` over values, or a (log-)uniform / int range."""

    name: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file."""

    name: str
    path: str
    model: str
    description: str
    base: str | None
    metric: str
    mode: str
    budget: Budget
    resources: Resources
    fixed: dict[str, Any]
    paper_trial: dict[str, Any]
    params: tuple[Param, ...]
    smoke: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)  # epochs, lr, scheduler; empty = no stage
    retrain: RetrainPreset = RetrainPreset()  # the retraining's top-k x seeds (a smoke run: smoke.retrain)

    def train_config(self, sampled: dict[str, Any], epochs: int | None = None) -> TrainConfig:
        """The full training config of one trial: fixed values + sampled ones."""
        values = {**self.fixed, **sampled, "model": self.model, "epochs": epochs or self.budget.max_epochs}
        return TrainConfig.from_mapping(with_own_schedule(values), source=f"{self.path} (trial config)")

    def largest_trial(self) -> TrainConfig:
        """The paper's trial at the space's largest batch size: what ``gpus_per_trial: auto`` measures."""
        sizes = [v for p in self.params if p.name == "batch_size" for v in (p.values or (p.high,))]
        config = self.train_config(paper_point(self))
        return config.replace(batch_size=int(max(sizes + [config.batch_size])))

    def with_fixed(self, **values: Any) -> SearchSpace:
        """The same space with some settings fixed for every trial (e.g. taken from the base checkpoint)."""
        sampled = sorted(set(values) & {p.name for p in self.params})
        if sampled:
            raise UserError(
                f"{self.path}: space.{sampled[0]} is sampled, but it must be {values[sampled[0]]!r} "
                "here (taken from the base checkpoint); remove it from space:"
            )
        return replace(self, fixed={**self.fixed, **values})

    def for_smoke(self) -> SearchSpace:
        """The same space with the file's ``smoke:`` presets (budget, fixed values, resources, fine-tune,
        retraining): tiny, on the CPU."""
        budget = replace(self.budget, **self.smoke.get("budget", {}))
        finetune = {**self.finetune, **self.smoke.get("finetune", {})} if self.finetune else {}
        resources = replace(self.resources, **{"gpus_per_trial": 0.0, **self.smoke.get("resources", {})})
        return replace(
            self,
            budget=budget,
            fixed={**self.fixed, **self.smoke.get("fixed", {})},
            finetune=finetune,
            resources=resources,
            retrain=replace(self.retrain, **self.smoke.get("retrain", {})),
            paper_trial={**self.paper_trial, **self.smoke.get("paper_trial", {})},
        )


class SpaceSampler:
    """Optuna define-by-run sampler for a space (a picklable class, so Ray can checkpoint the searcher).

    Conditional rule (:func:`~fer_tune.training.config.runs_own_schedule`): when an optimizer with its own
    warm-up / warm-down (Ranger21) is drawn, the scheduler is not sampled and is set to ``none``.
    """

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.name == "scheduler" and runs_own_schedule(chosen.get("optimizer")):
                continue
            if p.kind == "choice":
                chosen[p.name] = trial.suggest_categorical(p.name, list(p.values))
            elif p.kind == "int":
                chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
            else:
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "loguniform")
        return {"scheduler": "none"} if runs_own_schedule(chosen.get("optimizer")) else {}


def paper_point(space: SearchSpace) -> dict[str, Any]:
    """The paper's trial as an Optuna point: only the parameters the sampler will ask for."""
    sampled = {p.name for p in space.params}
    if runs_own_schedule(space.paper_trial.get("optimizer")):
        sampled.discard("scheduler")  # the sampler does not ask for it
    return {k: v for k, v in space.paper_trial.items() if k in sampled}
