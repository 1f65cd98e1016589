"""An image's size from its header, read before any pixel is decoded: a picture too large to decode
(a decompression bomb) is named, never decoded."""

from __future__ import annotations

import warnings
from pathlib import Path

MAX_PIXELS = 100_000_000  # fer-tune decodes at most this many pixels of one image (a 12,000 x 8,000 photo fits)


def too_large(path: Path) -> str | None:
    """Why ``path`` is not decoded (its header says more than :data:`MAX_PIXELS` pixels), else None
    (also when Pillow does not know the format: OpenCV may, and keeps its own limit)."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:  # lazy: reads the header only
                width, height = img.size
        except Image.DecompressionBombError:  # Pillow's own limit, above fer-tune's
            width = height = None
        except (UnidentifiedImageError, OSError, ValueError):
            return None
    if width is not None and width * height <= MAX_PIXELS:
        return None
    size = f"{width}x{height} ({width * height / 1e6:.0f} megapixels)" if width else "larger than Pillow reads"
    return f"image is {size}, more than the {MAX_PIXELS / 1e6:.0f} megapixels fer-tune decodes; shrink it first"
