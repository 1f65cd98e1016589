"""A model over the evaluation views of uint8 faces (ten crops, or the recipe's one view): per-view logits,
their mean (the paper's ten-crop score) and the centre view (single crop), from one pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fer_tune.training.augment import CENTRE_VIEW, BatchAugmenter


@torch.no_grad()
def predict_view_logits(
    model: nn.Module,
    images: torch.Tensor,
    augmenter: BatchAugmenter,
    crops: str = "ten",
    batch_size: int = 256,
    *,
    autocast: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (N, V, 7) of every evaluation view of uint8 images (on the model's device)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        views = augmenter.eval_views(images[start : start + batch_size], crops)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out.append(view_logits(model, views, channels_last))
    return torch.cat(out)


def predict_logits(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Logits (N, 7), averaged over the evaluation crops; the arguments of :func:`predict_view_logits`."""
    return predict_view_logits(*args, **kwargs).mean(1)


def ten_and_single(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ten-crop logits, single-crop logits) from the logits of the ten views (N, 10, 7): their mean and
    the centre view, computed once; a recipe with one view (ViT) gives it twice."""
    return views.mean(1), views[:, CENTRE_VIEW if views.shape[1] > CENTRE_VIEW else 0]


def view_logits(model: nn.Module, views: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Logits (B, V, 7) of views (B, V, C, H, W): the model sees every view."""
    b, v = views.shape[:2]
    inputs = views.flatten(0, 1)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return model(inputs).float().view(b, v, -1)


def mean_view_logits(model: nn.Module, views: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Logits (B, 7) of views (B, V, C, H, W), averaged over the V views (the paper's ten-crop evaluation)."""
    return view_logits(model, views, channels_last).mean(1)
