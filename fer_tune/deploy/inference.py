"""A trained model as one function of face crops: (B, 1, 48, 48) grayscale, 0..255 -> seven logits.

The scaling to 0..1, the checkpoint's own evaluation views (ten 40x40 crops averaged for the VGG and
EfficientNet recipes, the one upscaled face for ViT) and the averaging all live inside the module, so
``launch.py predict`` and an exported ONNX graph compute exactly what ``evaluate`` scored.
:func:`open_face_model` runs either: a fer-tune checkpoint in PyTorch, or an ONNX file fer-tune
exported in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_tune.errors import DEPLOY_INSTALL, UserError
from fer_tune.models import model_info
from fer_tune.training.augment import AugmentConfig, eval_inputs
from fer_tune.training.config import TrainConfig
from fer_tune.training.views import mean_view_logits

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


def load_face_classifier(
    checkpoint: str | Path, device: torch.device, crops: str = "ten"
) -> tuple[FaceClassifier, TrainConfig]:
    """The classifier a fer-tune checkpoint (or ensemble file) holds (a :class:`~fer_tune.errors.UserError`
    for anything else), on ``device``, in evaluation mode."""
    from fer_tune.training.evaluate import model_from_file

    model, config = model_from_file(checkpoint, device)
    return FaceClassifier(model, model_info(config.model).recipe, crops).to(device).eval(), config


ONNX_METADATA = {"model": "fer_tune_model", "crops": "fer_tune_crops", "views": "fer_tune_views"}


@dataclass
class FaceModel:
    """Probabilities of uint8 face crops, from PyTorch or ONNX Runtime; ``about`` says which."""

    model: str
    views: int
    about: str
    probabilities: Callable[[np.ndarray], np.ndarray]  # uint8 (N, 48, 48) -> probabilities (N, 7)


def open_face_model(path: Path, device: str | None = None, crops: str | None = None) -> FaceModel:
    """A fer-tune checkpoint (.pt) on ``device``, or an ONNX file fer-tune exported (.onnx, its views
    are inside the graph); anything else is a :class:`~fer_tune.errors.UserError`."""
    if path.suffix.lower() == ".onnx":
        return _onnx_face_model(path, crops)
    from fer_tune.training.device import pick_device

    dev = pick_device(device)
    classifier, config = load_face_classifier(path, dev, crops or "ten")

    @torch.inference_mode()
    def run(faces: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(faces).to(dev).unsqueeze(1).float()
        return classifier(x).softmax(1).cpu().numpy()

    return FaceModel(config.model, classifier.view_count, f"PyTorch on {dev}", run)


def _onnx_face_model(path: Path, crops: str | None) -> FaceModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"{path}: running an ONNX file needs onnxruntime; run {DEPLOY_INSTALL}") from None
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise UserError(f"{path}: not an ONNX model ONNX Runtime can read ({str(exc).splitlines()[0][:160]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if ONNX_METADATA["model"] not in meta:
        raise UserError(
            f"{path}: not an ONNX model fer-tune exported (no {ONNX_METADATA['model']} metadata); export "
            "one with `launch.py export`"
        )
    if crops is not None and crops != meta[ONNX_METADATA["crops"]]:
        raise UserError(
            f"--crops {crops}: {path} was exported with {meta[ONNX_METADATA['crops']]}-crop views inside "
            f"its graph; export it again with --crops {crops}, or leave --crops out"
        )

    def run(faces: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"images": faces[:, None].astype(np.float32)})[0]

    return FaceModel(meta[ONNX_METADATA["model"]], int(meta[ONNX_METADATA["views"]]), "ONNX Runtime on cpu", run)
