"""The same image in two splits: exact-duplicate groups and the rows a split shares with Training."""

from __future__ import annotations

import numpy as np

from fer_tune.data.fer_data import FerData


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """A group id per image: pixel-identical images share an id."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    rows = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, group = np.unique(rows, return_inverse=True)
    return group.ravel()


def rows_with_copy_in(
    data: FerData, split: str, reference: str = "Training", group: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask over ``split``'s rows: True where the exact pixels also occur in ``reference``.
    ``group`` (from :func:`duplicate_groups`) saves recomputing it for several splits."""
    group = duplicate_groups(data.images) if group is None else group
    ref_code = data.split_names.index(reference)
    code = data.split_names.index(split)
    in_reference = np.zeros(group.max() + 1, dtype=bool)
    in_reference[group[data.usage == ref_code]] = True
    return in_reference[group[data.usage == code]]


def rows_seen_in_training(data: FerData, protocol: str) -> np.ndarray:
    """Test rows whose exact pixels occur in data the scored models trained on: Training, and under
    ``trainval`` PublicTest too (it is training data there)."""
    test_split = data.roles["test"]
    seen = rows_with_copy_in(data, test_split, data.roles["train"])
    if protocol == "trainval":
        seen = seen | rows_with_copy_in(data, test_split, data.roles["val"])
    return seen
