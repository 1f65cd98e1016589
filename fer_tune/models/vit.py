"""ViT-L/32 from a transformers ``ViTConfig``: random weights, or pretrained ones from a local folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


FROM_SCRATCH = "from_scratch"  # the explicit ``pretrained_path`` value for random initial weights


@dataclass(frozen=True)
class PretrainedViT:
    """Pretrained ViT weights read once on the driver and shipped to every trial (any node)."""

    source: str
    config: dict[str, Any]
    state: dict[str, torch.Tensor]


def check_pretrained_folder(pretrained_path: str) -> Path:
    """The folder, if it holds a saved ViT (its config.json); else a :class:`UserError`."""
    folder = Path(pretrained_path)
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{folder}: no pretrained ViT here (config.json missing); give a local folder saved with "
            "save_pretrained(), e.g. a download of google/vit-large-patch32-224-in21k"
        )
    return folder


def resolve_pretrained(pretrained_path: str | None) -> PretrainedViT | None:
    """The weights in a local ``save_pretrained`` folder (e.g. a copy of
    ``google/vit-large-patch32-224-in21k``); None for no path or ``from_scratch``. Nothing is downloaded."""
    if pretrained_path is None or pretrained_path == FROM_SCRATCH:
        return None
    folder = check_pretrained_folder(pretrained_path)
    from transformers import ViTModel

    try:
        model = ViTModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: cannot load the pretrained ViT ({exc})") from None
    return PretrainedViT(str(folder.resolve()), model.config.to_dict(), model.state_dict())


def build_vit(pretrained: PretrainedViT | None = None, **overrides) -> nn.Module:
    """ViT-L/32 with random weights, or the architecture and weights of ``pretrained``."""
    from transformers import ViTConfig, ViTModel  # here: a VGG trial does not pay for importing transformers

    if pretrained is None:
        return ViTModel(ViTConfig(**{**VIT_L32, **overrides}), add_pooling_layer=False)
    model = ViTModel(ViTConfig.from_dict(pretrained.config), add_pooling_layer=False)
    model.load_state_dict(pretrained.state)
    return model


class FerViT(nn.Module):
    """ViT encoder -> [CLS] token -> a linear classifier or a SpinalNet head."""

    def __init__(
        self,
        head: str = "linear",
        num_classes: int = 7,
        pretrained: PretrainedViT | None = None,
        pretrained_path: str | None = None,
        **overrides,
    ):
        super().__init__()
        self.backbone = build_vit(pretrained or resolve_pretrained(pretrained_path), **overrides)
        hidden = self.backbone.config.hidden_size
        if head == "linear":
            self.classifier: nn.Module = nn.Linear(hidden, num_classes)
        elif head == "spinal":
            self.classifier = SpinalHead(hidden, num_classes)
        else:
            raise ValueError(f"unknown ViT head {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(pixel_values=x).last_hidden_state[:, 0])
