"""What every trial shares, shipped once through Ray's object store: the train and validation arrays
(never the test split) and the weights trials start from."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fer_tune.data.fer_data import FerData
from fer_tune.models.vit import PretrainedViT
from fer_tune.training.config import TrainConfig
from fer_tune.training.transfer import BaseWeights


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
    def of(cls, data: FerData, base: BaseWeights | None, pretrained: PretrainedViT | None) -> TrialData:
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
        return np.concatenate([self.train_images, self.val_images]), np.concatenate(
            [self.train_labels, self.val_labels]
        )

    def trainer(
        self, config: TrainConfig, train: tuple[np.ndarray, np.ndarray] | None = None, device: str | None = None
    ):
        """A :class:`~fer_tune.training.engine.Trainer` of ``config`` from these starting weights, on
        ``device`` (None: CUDA when there)."""
        from fer_tune.training.engine import Trainer

        if self.base is not None and config.base_checkpoint is None:
            config = config.replace(base_checkpoint=self.base.source)
        return Trainer(
            config,
            train or self.train,
            self.val,
            base_state=self.base.state if self.base else None,
            pretrained=self.pretrained,
            device=device,
        )

    def head(self, train: int, val: int) -> TrialData:
        """The first ``train`` / ``val`` images only, with the same starting weights (for a probe)."""
        return replace(
            self,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            val_images=self.val_images[:val],
            val_labels=self.val_labels[:val],
        )

    def full_weights(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Every weight of the model a trial saved (its ``config`` and trainable ``model`` tensors:
        the frozen ones are the starting weights', left out of trial checkpoints)."""
        config = TrainConfig.from_mapping(saved["config"], source="a trial's saved weights")
        trainer = self.head(1, 1).trainer(config, device="cpu")  # the model and its starting weights, not the data
        trainer.load_weights(saved["model"])
        return trainer.model.state_dict()
