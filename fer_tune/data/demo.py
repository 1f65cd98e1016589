"""Built-in demo data: procedurally drawn 48x48 faces with seven expressions, in FER2013's CSV format.

This is *not* FER2013. It exists so that the tests and a newcomer's first run need no download:
each expression is a distribution over mouth curve and opening, brow angle and height, and eye
opening; every face also gets a random position, scale, rotation, brightness, contrast and noise,
and the class distributions overlap, so a model must learn the shapes to score well above chance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_tune import EMOTIONS
from fer_tune.data.fer_data import IMAGE_SIZE, OFFICIAL_SPLITS
from fer_tune.errors import UserError, os_cause
from fer_tune.files import cache_dir, write_text_atomic

# mouth curve (+ = smile), mouth opening, brow slope (+ = inner ends down), brow raise, eye opening
_EXPRESSIONS: dict[str, tuple[float, float, float, float, float]] = {
    "angry": (-0.25, 0.05, 0.9, -0.05, 0.6),
    "disgust": (-0.55, 0.15, 0.5, -0.1, 0.35),
    "fear": (-0.15, 0.35, -0.6, 0.12, 1.35),
    "happy": (0.7, 0.25, 0.0, 0.0, 0.8),
    "sad": (-0.6, 0.0, -0.8, 0.0, 0.75),
    "surprise": (0.0, 0.75, 0.0, 0.2, 1.5),
    "neutral": (0.0, 0.0, 0.0, 0.0, 1.0),
}
_JITTER = np.array([0.16, 0.09, 0.28, 0.05, 0.18])


@dataclass(frozen=True)
class DemoSpec:
    """How much demo data to draw; the split sizes are per class."""

    train_per_class: int = 160
    val_per_class: int = 40
    test_per_class: int = 40
    seed: int = 0


def draw_faces(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one face per label as uint8 (N, 48, 48), vectorised over the batch."""
    n = len(labels)
    params = np.array([_EXPRESSIONS[EMOTIONS[k]] for k in labels]) + rng.normal(size=(n, 5)) * _JITTER
    curve, opening, slope, raise_, eye_open = (params[:, i, None, None] for i in range(5))
    opening = np.clip(opening, 0.0, None)
    eye_open = np.clip(eye_open, 0.2, None)

    # face pose: centre, scale, rotation -> face coordinates (u, v) in roughly [-1, 1]
    cx = 23.5 + rng.uniform(-3, 3, n)
    cy = 23.5 + rng.uniform(-3, 3, n)
    scale = rng.uniform(17, 22, n)
    angle = np.deg2rad(rng.uniform(-12, 12, n))
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (dx * cos + dy * sin) / scale[:, None, None]
    v = (-dx * sin + dy * cos) / scale[:, None, None]
    side = np.abs(u)

    face = (u / 0.8) ** 2 + (v / 1.0) ** 2 < 1.0
    eyes = ((side - 0.33) / 0.17) ** 2 + ((v + 0.22) / (0.09 * eye_open)) ** 2 < 1.0
    brow_line = -0.5 - raise_ + slope * 0.25 * (0.35 - side)
    brows = (np.abs(v - brow_line) < 0.06) & (np.abs(side - 0.35) < 0.2)
    mouth_line = 0.45 + curve * 2.2 * (0.1225 - u**2)
    mouth_height = opening * 0.3 * np.clip(1 - (u / 0.4) ** 2, 0, None)
    mouth = (v > mouth_line - 0.05 - mouth_height) & (v < mouth_line + 0.05) & (side < 0.4)

    brightness = rng.uniform(0.35, 0.75, n)[:, None, None]
    contrast = rng.uniform(0.25, 0.45, n)[:, None, None]
    gradient = rng.uniform(-0.15, 0.15, (n, 1, 1)) * (xs[None] / IMAGE_SIZE - 0.5)
    image = np.full((n, IMAGE_SIZE, IMAGE_SIZE), 0.15) + gradient
    image = np.where(face, brightness + contrast * 0.5, image)
    image = np.where(eyes | brows | mouth, brightness - contrast * 0.6, image)
    image += rng.normal(0, 0.06, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_demo_csv(path: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> Path:
    """Write a FER2013-format CSV (``emotion,pixels,Usage``) of demo faces; same seed, same bytes."""
    rng = np.random.default_rng(spec.seed)
    lines = ["emotion,pixels,Usage"]
    for usage, per_class in zip(OFFICIAL_SPLITS, (spec.train_per_class, spec.val_per_class, spec.test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(EMOTIONS)), per_class))
        images = draw_faces(labels, rng).reshape(len(labels), -1)
        pixel_text = [" ".join(map(str, row)) for row in images.tolist()]
        lines += [f"{label},{pixels},{usage}" for label, pixels in zip(labels.tolist(), pixel_text)]
    return write_text_atomic(path, "\n".join(lines) + "\n")


SMOKE_DEMO = DemoSpec(train_per_class=100, val_per_class=25, test_per_class=25)  # what --smoke runs on


def default_demo_csv(spec: DemoSpec = DemoSpec()) -> Path:
    """The demo CSV under ``~/.cache/fer-tune/`` (written on first use), keyed by its spec."""
    root = cache_dir()
    name = f"demo-{spec.train_per_class}-{spec.val_per_class}-{spec.test_per_class}-s{spec.seed}.csv"
    path = root / name
    if not path.is_file():
        try:
            write_demo_csv(path, spec)
        except OSError as exc:
            raise UserError(
                f"{path}: cannot write the demo faces there ({os_cause(exc)}); set XDG_CACHE_HOME to a folder you "
                "may write, or give --data PATH"
            ) from None
    return path
