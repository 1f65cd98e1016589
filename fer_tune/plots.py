"""PNG pictures for people: confusion matrices and learning curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_tune import EMOTIONS  # noqa: E402
from fer_tune.files import write_atomic  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically, then close it."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def plot_confusion(confusion: Sequence[Sequence[int]], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (true label per row) with class names and cell values."""
    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(curves: dict[str, Sequence[float]], path: Path, title: str, ylabel: str) -> Path:
    """One line per named series against epochs 1..n."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
