"""EfficientNetV2-S (timm's ``efficientnetv2_rw_s``: 1792 features, as in the paper), grayscale, from scratch."""

from __future__ import annotations

import torch
from torch import nn

from fer_tune.models.heads import SpinalHead

ACTIVATIONS = {"swish": "silu", "mish": "mish"}


class FerEfficientNetV2(nn.Module):
    """timm EfficientNetV2-S with 1 input channel and either its own linear classifier or a SpinalNet head."""

    def __init__(self, head: str = "linear", num_classes: int = 7, activation: str = "swish"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        own_classes = num_classes if head == "linear" else 0
        import timm  # imported here: a trial of another model family does not pay for it

        self.backbone = timm.create_model(
            "efficientnetv2_rw_s",
            pretrained=False,
            in_chans=1,
            num_classes=own_classes,
            act_layer=ACTIVATIONS[activation],
        )
        if head == "spinal":
            self.classifier: nn.Module = SpinalHead(self.backbone.num_features, num_classes)
        elif head == "linear":
            self.classifier = nn.Identity()
        else:
            raise ValueError(f"unknown EfficientNet head {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))
