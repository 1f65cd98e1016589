"""A trained model as one function of face crops: (B, 1, 48, 48) grayscale, 0..255 -> seven logits.

The scaling to 0..1, the checkpoint's own evaluation views (ten 40x40 crops averaged for the VGG and
EfficientNet recipes, the one upscaled face for ViT) and the averaging all live inside the module, so
``launch.py predict`` and an exported ONNX graph compute exactly what ``evaluate`` scored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fer_tune.augment import AugmentConfig, eval_inputs
from fer_tune.config import TrainConfig
from fer_tune.engine import mean_view_logits
from fer_tune.models import model_info

CROPS = ("ten", "single")
INPUT_RANGE = "0..255"  # what the classifier (and its ONNX graph) takes: raw grayscale pixel values


class FaceClassifier(nn.Module):
    """Face crops (B, 1, 48, 48), float pixel values 0..255 -> logits (B, 7) over the evaluation views."""

    def __init__(self, model: nn.Module, recipe: str, crops: str = "ten"):
        super().__init__()
        if crops not in CROPS:
            raise ValueError(f"crops must be one of {CROPS}, not {crops!r}")
        self.model = model.eval()
        self.views = AugmentConfig(recipe=recipe)
        self.crops = crops

    @property
    def view_count(self) -> int:
        """How many views of each face the model sees (10 for ten-crop, 1 otherwise)."""
        return 10 if self.crops == "ten" and self.views.recipe != "vit" else 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return mean_view_logits(self.model, eval_inputs(images / 255.0, self.views, self.crops))


def load_face_classifier(checkpoint: str | Path, device: torch.device, crops: str = "ten"
                         ) -> tuple[FaceClassifier, TrainConfig]:
    """The classifier a fer-tune checkpoint holds (a :class:`~fer_tune.errors.UserError` for anything
    else), on ``device``, in evaluation mode."""
    from fer_tune.evaluate import model_from_checkpoint

    model, config = model_from_checkpoint(checkpoint, device)
    return FaceClassifier(model, model_info(config.model).recipe, crops).to(device).eval(), config


@torch.inference_mode()
def classify(classifier: FaceClassifier, faces: torch.Tensor) -> torch.Tensor:
    """Probabilities (N, 7) of uint8 face crops (N, 48, 48) already on the classifier's device."""
    return classifier(faces.unsqueeze(1).float()).softmax(1)
