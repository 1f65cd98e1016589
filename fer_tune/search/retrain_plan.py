"""What a retraining is: its winners, its plan and its options (top-k x seeds, protocol, epochs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("paper", "trainval")
RETRAIN_SEED_STRIDE = 1_000_003  # a prime: retraining seeds never meet the search's seed


def retrain_seed(search_seed: int, run: int) -> int:
    """The training seed of retraining run ``run`` (0, 1, ...) of a configuration the search trained with
    ``search_seed``: a new seed, never the search's own, so that "N seeds" are N new runs and the
    validation mean that picks the headline is not the one the search's winner was chosen on."""
    return (int(search_seed) + RETRAIN_SEED_STRIDE * (run + 1)) % 2**32


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
