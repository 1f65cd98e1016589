"""Score a saved model on one split: ten-crop and single-crop accuracy, macro / per-class P/R/F1,
confusion matrix. ``launch.py evaluate`` and the final scoring (:mod:`fer_tune.reporting.scoring`) are its only
callers on the test split (PrivateTest); nothing that trains or selects calls it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fer_tune.data.fer_data import FerData
from fer_tune.errors import UserError
from fer_tune.metrics import Scores, score
from fer_tune.models import create_model, model_info
from fer_tune.training.augment import AugmentConfig, BatchAugmenter
from fer_tune.training.checkpoint import finite_weights, load_checkpoint
from fer_tune.training.config import TrainConfig
from fer_tune.training.device import pick_device
from fer_tune.training.views import predict_view_logits, ten_and_single


@dataclass
class Evaluation:
    """Scores of one model on one split, with the raw predictions kept for re-computation."""

    split: str
    ten_crop: Scores
    single_crop: Scores
    labels: np.ndarray
    predictions: np.ndarray  # ten-crop argmax
    logits: np.ndarray


def model_from_checkpoint(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the model a checkpoint was trained as, with its weights."""
    payload = load_checkpoint(path)
    finite_weights(path, payload["model"])
    config = TrainConfig.from_mapping(payload.get("config", {}), source=f"{path} (stored config)")
    # a ViT fine-tuned from a local pretrained folder has that folder's architecture (read it when present)
    vit_folder = config.pretrained_path if model_info(config.model).recipe == "vit" else None
    architecture = {"pretrained_path": vit_folder} if vit_folder and Path(vit_folder, "config.json").is_file() else {}
    model = create_model(config.model, width=config.width, activation=config.activation, **architecture)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit a {config.model!r} model ({str(exc).splitlines()[0]})") from None
    return model.to(device), config


def model_from_file(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, TrainConfig]:
    """A checkpoint's model, or the ensemble an ``ensemble.yaml`` describes (its first member's config)."""
    from fer_tune.training.ensemble_model import ensemble_from_file, is_ensemble_file

    return ensemble_from_file(path, device) if is_ensemble_file(path) else model_from_checkpoint(path, device)


def evaluate_model(
    model: torch.nn.Module, config: TrainConfig, data: FerData, split: str, device: torch.device
) -> Evaluation:
    """Score ``model`` on ``split`` of ``data`` (ten-crop and single-crop)."""
    images, labels = data.split(split)
    augmenter = BatchAugmenter(AugmentConfig(recipe=model_info(config.model).recipe), torch.Generator(device))
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    autocast = device.type == "cuda" and config.amp
    ten, single = (
        t.cpu()
        for t in ten_and_single(
            predict_view_logits(model, x, augmenter, "ten", config.eval_batch_size, autocast=autocast)
        )
    )
    pred = ten.argmax(1).numpy()
    return Evaluation(split, score(labels, pred), score(labels, single.argmax(1).numpy()), labels, pred, ten.numpy())


def evaluate_checkpoint(path: str | Path, data: FerData, split: str, device: str | None = None) -> Evaluation:
    """Load ``path`` (a checkpoint or an ensemble file) and score it on ``split``."""
    dev = pick_device(device)
    model, config = model_from_file(path, dev)
    return evaluate_model(model, config, data, split, dev)
