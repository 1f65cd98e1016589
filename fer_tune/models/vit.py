"""ViT-L/32 from a transformers ``ViTConfig``: random weights, or pretrained ones from a local folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from fer_tune.errors import UserError
from fer_tune.models.heads import SpinalHead

VIT_L32 = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    patch_size=32,
    image_size=224,
    num_channels=3,
)


def build_vit(pretrained_path: str | None = None, **overrides) -> ViTModel:
    """ViT-L/32 with random weights, or from ``pretrained_path`` (a local ``save_pretrained`` folder,
    e.g. a copy of ``google/vit-large-patch32-224-in21k``); nothing is downloaded."""
    if pretrained_path is None:
        return ViTModel(ViTConfig(**{**VIT_L32, **overrides}), add_pooling_layer=False)
    folder = Path(pretrained_path)
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{folder}: no pretrained ViT here (config.json missing); give a local folder saved with "
            "save_pretrained(), e.g. a download of google/vit-large-patch32-224-in21k"
        )
    try:
        return ViTModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: cannot load the pretrained ViT ({exc})") from None


class FerViT(nn.Module):
    """ViT encoder -> [CLS] token -> a linear classifier or a SpinalNet head."""

    def __init__(self, head: str = "linear", num_classes: int = 7, pretrained_path: str | None = None, **overrides):
        super().__init__()
        self.backbone = build_vit(pretrained_path, **overrides)
        hidden = self.backbone.config.hidden_size
        if head == "linear":
            self.classifier: nn.Module = nn.Linear(hidden, num_classes)
        elif head == "spinal":
            self.classifier = SpinalHead(hidden, num_classes)
        else:
            raise ValueError(f"unknown ViT head {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(pixel_values=x).last_hidden_state[:, 0])
