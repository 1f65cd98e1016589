"""FER2013 in its common layouts -> validated uint8 arrays, with an on-disk cache.

Layouts read:
- the Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) and ``icml_face_data.csv``
  (``emotion, Usage, pixels`` with leading spaces): the three official splits;
- the Kaggle ``train.csv`` (``emotion,pixels``, no Usage): Training only, a validation split is
  held out of it; a ``test.csv`` beside it is used only if it has labels;
- an image folder ``train/<emotion>/*.png|jpg`` + ``test/<emotion>/*``: its ``test/`` merges
  PublicTest and PrivateTest, so validation is held out of ``train/`` instead.

Every problem stops with a :class:`UserError` naming the file, the row (or image) and the fix.
Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer_tune.errors import UserError

OFFICIAL_SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
CANONICAL_MD5 = "f8428a1edbd21e88f42c73edd2a14f95"
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CACHE_VERSION = 2
HELD_OUT_VALIDATION = "Validation"
HELD_OUT_FRACTION = 0.1
_PIXELS_PATTERN = r"\d{1,3}(?: \d{1,3})*"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass(frozen=True)
class FerData:
    """A whole FER2013-style data set held in memory.

    ``roles`` maps ``train`` / ``val`` / ``test`` to a split name (``test`` may be missing);
    ``val`` is what a search selects on, ``test`` is read only by the final scoring step.
    """

    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,)
    usage: np.ndarray  # int8 (N,), index into split_names
    split_names: tuple[str, ...]
    roles: dict[str, str]
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    content_md5: str = ""  # md5 of the file's (decompressed) content, hashed while it was read; "" unknown

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split, by its name (e.g. ``PublicTest``)."""
        if name not in self.split_names:
            raise UserError(f"{self.source}: no split named {name!r}; this data has {', '.join(self.split_names)}")
        mask = self.usage == self.split_names.index(name)
        return self.images[mask], self.labels[mask]

    def role(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels for ``train``, ``val`` or ``test``."""
        if role not in self.roles:
            raise UserError(
                f"{self.source}: this data has no labelled {role} split "
                f"({'; '.join(self.notes) or 'see `launch.py data`'}); use the Kaggle fer2013.csv"
            )
        images, labels = self.split(self.roles[role])
        if role in ("train", "val") and len(labels) == 0:
            raise UserError(
                f"{self.source}: the {role} split ({self.roles[role]}) has no rows, so nothing can be "
                f"{'trained' if role == 'train' else 'validated'}; give a file with more rows per class"
            )
        return images, labels

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, in split order."""
        counts = np.bincount(self.usage, minlength=len(self.split_names))
        return {name: int(c) for name, c in zip(self.split_names, counts)}

    def thin_splits(self, batch_size: int) -> list[str]:
        """Warnings, naming the counts, for a training or validation split that lacks classes or holds fewer
        images than one batch (its scores then say little); the empty training split is refused elsewhere."""
        from fer_tune import EMOTIONS

        found = []
        for role in ("train", "val"):
            name = self.roles.get(role)
            if name is None:
                continue
            labels = self.labels[self.usage == self.split_names.index(name)]
            missing = [EMOTIONS[c] for c in range(len(EMOTIONS)) if not (labels == c).any()]
            if missing:
                found.append(f"{role} split {name} has no {', '.join(missing)} images ({len(labels)} images in all)")
            if 0 < len(labels) < batch_size:
                found.append(f"{role} split {name} has {len(labels)} images, fewer than one batch of {batch_size}")
        return found
