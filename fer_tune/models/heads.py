"""Classifier heads of the paper: SpinalNet and ProgressiveSpinalNet (Santoso & Kusuma's heads on
VGGNet, EfficientNetV2-S and ViT-L/32 features)."""

from __future__ import annotations

import torch
from torch import nn


def spinal_layer(in_features: int, width: int, dropout: float) -> nn.Sequential:
    """Dropout (if any) -> Linear -> BatchNorm1d -> ReLU."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SpinalHead(nn.Module):
    """SpinalNet: the features are split in halves A, B; layer k sees one half plus layer k-1.

    x1 = L1(A); x2 = L2([B, x1]); x3 = L3([A, x2]); x4 = L4([B, x3]); out = Linear([x1..x4]).
    """

    def __init__(self, in_features: int, num_classes: int = 7, width: int = 512, dropout: float = 0.5):
        super().__init__()
        self.half = in_features // 2
        self.layer1 = spinal_layer(self.half, width, dropout)
        self.layer2 = spinal_layer(in_features - self.half + width, width, dropout)
        self.layer3 = spinal_layer(self.half + width, width, dropout)
        self.layer4 = spinal_layer(in_features - self.half + width, width, dropout)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        a, b = features[:, : self.half], features[:, self.half :]
        x1 = self.layer1(a)
        x2 = self.layer2(torch.cat([b, x1], 1))
        x3 = self.layer3(torch.cat([a, x2], 1))
        x4 = self.layer4(torch.cat([b, x3], 1))
        return self.out(torch.cat([x1, x2, x3, x4], 1))


class ProgressiveSpinalHead(nn.Module):
    """ProgressiveSpinalNet: each layer sees the (dropped-out) features and every earlier layer.

    x1 = L1(F); X = [Dropout(F), x1]; xk = Lk(X), X = [X, xk] for k = 2..4; out = Linear(X).
    """

    def __init__(self, in_features: int, num_classes: int = 7, width: int = 512, dropout: float = 0.5):
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(spinal_layer(in_features + k * width, width, dropout) for k in range(4))
        self.out = nn.Linear(in_features + 4 * width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](features)
        stacked = torch.cat([self.input_dropout(features), x], 1)
        for layer in self.layers[1:]:
            stacked = torch.cat([stacked, layer(stacked)], 1)
        return self.out(stacked)
