"""The image-folder re-upload of FER2013: ``train/<emotion>/*`` + ``test/<emotion>/*``."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from fer_tune import EMOTIONS
from fer_tune.data.csv_layout import _with_held_out_validation
from fer_tune.data.fer_data import _IMAGE_SUFFIXES, HELD_OUT_FRACTION, HELD_OUT_VALIDATION, IMAGE_SIZE, FerData
from fer_tune.errors import UserError


def _read_image_folder(root: Path) -> FerData:
    skipped: list[str] = []
    train = _read_image_split(root / "train", skipped)
    test = _read_image_split(root / "test", skipped) if (root / "test").is_dir() else None
    data = _with_held_out_validation(
        *train,
        source=str(root),
        test=test,
        note=f"image folder: {HELD_OUT_VALIDATION} is a seeded, stratified {HELD_OUT_FRACTION:.0%} held out of train/",
    )
    if skipped:
        names = ", ".join(str(Path(p).relative_to(root)) for p in skipped[:3])
        data = replace(
            data,
            notes=data.notes
            + (
                f"not read: {len(skipped)} entries that are not images directly in <split>/<emotion>/ "
                f"(e.g. {names}); move them there or remove them",
            ),
        )
    return data


def _read_face(file: Path) -> np.ndarray:
    """One 48x48 face as uint8 gray; its size is read from the header, so nothing else is decoded."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by its size
        try:
            with Image.open(file) as img:  # lazy: the header only, until convert()
                if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise UserError(f"{file}: image is {img.size[0]}x{img.size[1]}, expected 48x48")
                return np.asarray(img.convert("L"), dtype=np.uint8)
        except Image.DecompressionBombError:
            raise UserError(f"{file}: image is larger than Pillow decodes, expected 48x48") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{file}: unreadable image ({exc}); replace or delete it") from None


def _read_image_split(folder: Path, skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``folder/<emotion>/``; entries it does not read are added to ``skipped``."""
    skipped.extend(str(p) for p in sorted(folder.iterdir()) if not p.is_dir())
    unknown = [d.name for d in folder.iterdir() if d.is_dir() and d.name.lower() not in EMOTIONS]
    if unknown:
        raise UserError(
            f"{folder}: unknown emotion folder(s) {', '.join(sorted(unknown))}; allowed: {', '.join(EMOTIONS)}"
        )
    images, labels = [], []
    for label, emotion in enumerate(EMOTIONS):
        candidates = [d for d in folder.iterdir() if d.is_dir() and d.name.lower() == emotion]
        for directory in candidates:
            for file in sorted(directory.iterdir()):
                if file.is_dir() or file.suffix.lower() not in _IMAGE_SUFFIXES:
                    skipped.append(str(file))
                    continue
                images.append(_read_face(file))
                labels.append(label)
    if not images:
        raise UserError(f"{folder}: no images found; expected {folder}/<emotion>/*.png or *.jpg")
    return np.stack(images), np.asarray(labels, dtype=np.int64)
