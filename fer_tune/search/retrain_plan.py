"""What a retraining is: its winners, its plan and its options (top-k x seeds, protocol, epochs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("paper", "trainval")


@dataclass(frozen=True)
class Winner:
    """One configuration chosen for retraining (rank 1 = best validation score in the search)."""

    rank: int
    trial: str
    search_score: float
    config: dict[str, Any]


@dataclass(frozen=True)
class RetrainPlan:
    """What a retraining trial needs beside the shared data: the winners, the protocol, the fine-tune stage."""

    winners: tuple[Winner, ...]
    protocol: str
    finetune: dict[str, Any] = field(default_factory=dict)  # the search space's fine-tune stage
    patience: int = 0  # the selection ends after this many epochs without a better val_acc (0 = never)
    checkpoint_every: int = 0  # the search space's checkpoint schedule (CheckpointSchedule.of)
    checkpoint_every_s: float = 0.0


@dataclass
class RetrainOptions:
    """How to retrain: top-k configurations x seeds, under one protocol (None = the search space's
    value: its retraining preset, resources and epoch budget)."""

    top_k: int | None = None
    seeds: int | None = None
    protocol: str = "paper"
    epochs: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    device: str | None = None  # where the final scoring runs
    pretrained: str | None = None  # ViT: overrides the pretrained folder the search recorded
    allow_failed_trials: bool = False  # retrain a search whose trials partly ended in error
