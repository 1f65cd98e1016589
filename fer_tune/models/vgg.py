"""VGGNet of Khaireddin & Chen (the public FER code), and its SpinalNet variants."""

from __future__ import annotations

import torch
from torch import nn

from fer_tune.models.heads import ProgressiveSpinalHead, SpinalHead

VGG_WIDTHS = (64, 128, 256, 512)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """[conv3x3 pad 1 -> BatchNorm -> ReLU] x 2 -> max-pool 2x2 (convolutions keep their bias)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def scaled(width: int, multiplier: float) -> int:
    """A layer width scaled by ``multiplier`` (at least 4); 1.0 keeps the paper's widths."""
    return max(4, int(round(width * multiplier)))


class VGGBackbone(nn.Sequential):
    """Four conv blocks; a 1x40x40 input leaves 512x2x2 = 2048 features (at width 1.0)."""

    def __init__(self, width: float = 1.0, in_channels: int = 1, input_size: int = 40):
        widths = [scaled(w, width) for w in VGG_WIDTHS]
        channels = [in_channels, *widths]
        super().__init__(*(conv_block(a, b) for a, b in zip(channels, channels[1:])), nn.Flatten())
        self.num_features = widths[-1] * (input_size // 16) ** 2


class FerVGG(nn.Module):
    """A VGG backbone with one of three heads: the original MLP, SpinalNet or ProgressiveSpinalNet."""

    def __init__(self, head: str = "mlp", num_classes: int = 7, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        self.backbone = VGGBackbone(width)
        features = self.backbone.num_features
        if head == "mlp":
            hidden = scaled(4096, width)
            self.classifier = nn.Sequential(
                nn.Linear(features, hidden),
                nn.Dropout(dropout),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.Dropout(dropout),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )
        elif head == "spinal":
            self.classifier = SpinalHead(features, num_classes, width=scaled(512, width))
        elif head == "progressive_spinal":
            self.classifier = ProgressiveSpinalHead(features, num_classes, width=scaled(512, width))
        else:
            raise ValueError(f"unknown VGG head {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))
