"""The paper's augmentation (Santoso & Kusuma; the VGGNet recipe of Khaireddin & Chen) as batched
tensor ops on the training device.

Input is always a uint8 batch ``(B, 48, 48)`` already on the device; no PIL, no worker processes.

- ``vgg``: random rescale +-20%, shift +-20%, rotation +-10 deg (each p=0.5), horizontal flip
  p=0.5, ten-crop 40x40 with every crop trained, random erasing p=0.5 per crop, /255.
  Evaluation: ten-crop 40x40, logits averaged (or a single centre crop).
- ``effnet``: random crop 40x40 + horizontal flip; evaluation as ``vgg``.
- ``vit``: bicubic upscale to 224x224, 3 channels, horizontal flip p=0.5 in training,
  normalised to [-1, 1] as the ViT-21k checkpoints expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RECIPES = ("vgg", "effnet", "vit")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of one recipe; ``p_*`` = 0 turns a step into the identity."""

    recipe: str = "vgg"
    crop: int = 40
    p_rescale: float = 0.5
    rescale: float = 0.2
    p_shift: float = 0.5
    shift: float = 0.2
    p_rotate: float = 0.5
    degrees: float = 10.0
    p_flip: float = 0.5
    p_erase: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    vit_size: int = 224


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _coin(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def random_affine(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-image random rescale / shift / rotation, each with its own probability, in one grid_sample."""
    if cfg.p_rescale == 0 and cfg.p_shift == 0 and cfg.p_rotate == 0:
        return x  # decided from the config: no device value is read back (no host sync per batch)
    n, device = x.shape[0], x.device
    scale = torch.where(
        _coin(n, cfg.p_rescale, g, device), _uniform(n, 1 - cfg.rescale, 1 + cfg.rescale, g, device), 1.0
    )
    use_shift = _coin(n, cfg.p_shift, g, device)
    tx = torch.where(use_shift, _uniform(n, -cfg.shift, cfg.shift, g, device), 0.0)
    ty = torch.where(use_shift, _uniform(n, -cfg.shift, cfg.shift, g, device), 0.0)
    angle = torch.where(_coin(n, cfg.p_rotate, g, device), _uniform(n, -cfg.degrees, cfg.degrees, g, device), 0.0) * (
        math.pi / 180
    )
    # output pixel p samples input at R^-1 (p / s) - t  (normalised coordinates, align_corners=False)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, sin, -tx * 2], 1), torch.stack([-sin, cos, -ty * 2], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_hflip(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = _coin(x.shape[0], p, g, x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


CENTRE_VIEW = 4  # the centre crop's place among the ten crops (the single-crop view)


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 10, C, size, size): 4 corners + centre, then the same of the mirror image
    (torchvision's TenCrop order)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    boxes = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    crops = [x[..., i : i + size, j : j + size] for i, j in boxes]
    mirrored = x.flip(-1)
    crops += [mirrored[..., i : i + size, j : j + size] for i, j in boxes]
    return torch.stack(crops, 1)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size) from the centre."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` window per image, gathered in one indexing op."""
    n, _, h, w = x.shape
    offsets = torch.arange(size, device=x.device)
    rows = torch.randint(0, h - size + 1, (n, 1), generator=g, device=x.device) + offsets
    cols = torch.randint(0, w - size + 1, (n, 1), generator=g, device=x.device) + offsets
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_erasing(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """torchvision's RandomErasing (value 0) on every image independently, as one masked fill."""
    n, device = x.shape[0], x.device
    h, w = x.shape[-2:]
    area = _uniform(n, *cfg.erase_scale, g, device) * (h * w)
    log_ratio = _uniform(n, math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1]), g, device)
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(area * ratio).round().clamp(1, h - 1).long()
    ew = torch.sqrt(area / ratio).round().clamp(1, w - 1).long()
    top = (torch.rand(n, generator=g, device=device) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=g, device=device) * (w - ew + 1)).long()
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    in_rows = (ys[None] >= top[:, None]) & (ys[None] < (top + eh)[:, None])
    in_cols = (xs[None] >= left[:, None]) & (xs[None] < (left + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & _coin(n, cfg.p_erase, g, device)[:, None, None]
    return x.masked_fill(mask.view(n, *([1] * (x.dim() - 3)), h, w), 0.0)


class BatchAugmenter:
    """Turns uint8 batches into network inputs for one recipe, on whatever device they live on."""

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator):
        if cfg.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {cfg.recipe!r}; choose from {RECIPES}")
        self.cfg = cfg
        self.g = generator

    @property
    def train_views(self) -> int:
        """How many network inputs one training image becomes (10 for the ten-crop recipe)."""
        return 10 if self.cfg.recipe == "vgg" else 1

    @property
    def single_view_only(self) -> bool:
        """True when evaluation has one view whatever is asked (ViT: the whole upscaled face)."""
        return self.cfg.recipe == "vit"

    def train(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 48, 48) + labels -> (inputs, targets); ten-crop repeats each label 10 times."""
        x = images.unsqueeze(1).float() / 255.0
        cfg = self.cfg
        if cfg.recipe == "vgg":
            x = random_affine(x, cfg, self.g)
            x = random_hflip(x, cfg.p_flip, self.g)
            crops = ten_crop(x, cfg.crop).flatten(0, 1)  # (B*10, 1, crop, crop), image-major
            return random_erasing(crops, cfg, self.g), labels.repeat_interleave(10)
        if cfg.recipe == "effnet":
            return random_hflip(random_crop(x, cfg.crop, self.g), cfg.p_flip, self.g), labels
        return vit_input(random_hflip(x, cfg.p_flip, self.g), cfg.vit_size), labels

    def eval_views(self, images: torch.Tensor, crops: str = "ten") -> torch.Tensor:
        """uint8 (B, 48, 48) -> (B, V, C, H, W): V=10 for ``ten`` crops, V=1 for ``single``."""
        return eval_inputs(images.unsqueeze(1).float() / 255.0, self.cfg, crops)


def vit_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) in 0..1 -> (B, 3, size, size) bicubic-upscaled, normalised to [-1, 1]."""
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x.expand(-1, 3, -1, -1) - 0.5) / 0.5


def eval_inputs(x: torch.Tensor, cfg: AugmentConfig, crops: str = "ten") -> torch.Tensor:
    """The evaluation views of (B, 1, 48, 48) images in 0..1 -> (B, V, C, H, W): V=10 for ``ten``
    crops, V=1 for ``single``; the ViT recipe has one view (the whole upscaled face) whatever is asked.
    Plain tensor ops with fixed shapes, so an exported graph carries them."""
    if crops not in ("ten", "single"):
        raise ValueError(f"crops must be 'ten' or 'single', not {crops!r}")
    if cfg.recipe == "vit":
        return vit_input(x, cfg.vit_size).unsqueeze(1)
    if crops == "ten":
        return ten_crop(x, cfg.crop)
    return center_crop(x, cfg.crop).unsqueeze(1)
