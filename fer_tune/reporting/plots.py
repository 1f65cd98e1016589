"""Every PNG fer-tune draws: confusion matrices, learning curves, the search (matplotlib, headless)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay

from fer_tune import EMOTIONS  # noqa: E402
from fer_tune.files import write_atomic  # noqa: E402

SMALLEST_PT = 9  # no tick label, cell value or legend entry smaller: readable at 100% on a laptop screen
TRIAL_COLOURS = "tab10"  # trial t03 has the third colour in every PNG (search.png, slice.png); t13 too


def trial_colour(name: str) -> tuple[float, float, float, float]:
    """The colour of search trial ``name`` (``t03``) in every figure that shows trials; grey for any other name."""
    if not re.fullmatch(r"t\d+", name):
        return (0.5, 0.5, 0.5, 1.0)
    return plt.get_cmap(TRIAL_COLOURS)((int(name[1:]) - 1) % 10)


def save_figure(fig, path: Path, data_note: str = "") -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically, then close it: every tick label, cell value, legend
    entry and axis label at least :data:`SMALLEST_PT` points, and ``data_note`` (a demo run's "demo faces,
    not FER2013") in its title. fer-tune's own figures are made with matplotlib's constrained layout."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for which, ticks in (("major", axis.get_major_ticks()), ("minor", axis.get_minor_ticks())):
                if ticks and ticks[0].label1.get_fontsize() < SMALLEST_PT:
                    axis.set_tick_params(which=which, labelsize=SMALLEST_PT)
        legend = ax.get_legend()
        for text in [*ax.texts, *(legend.get_texts() if legend else []), ax.xaxis.label, ax.yaxis.label]:
            text.set_fontsize(max(SMALLEST_PT, text.get_fontsize()))
    if data_note:
        title = fig.get_suptitle()
        fig.suptitle(f"{title} ({data_note})" if title else data_note, fontsize=11, color="firebrick")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def plot_confusion(confusion: Sequence[Sequence[int]], path: Path, title: str, data_note: str = "") -> Path:
    """Row-normalised confusion matrix (true label per row) with class names and cell values."""
    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100, layout="constrained")
    display = ConfusionMatrixDisplay(rates, display_labels=list(EMOTIONS))
    display.plot(
        ax=ax,
        cmap="Blues",
        values_format=".2f",
        xticks_rotation=45,
        colorbar=True,
        im_kw={"vmin": 0, "vmax": 1},
        text_kw={"fontsize": SMALLEST_PT},
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)  # the style's grid would cross every cell
    ax.set_title(textwrap.fill(title, 55), fontsize=10)  # long titles stay clear of the colour bar
    return save_figure(fig, path, data_note)


CHANCE = 1 / len(EMOTIONS)  # seven classes


def plot_curves(
    curves: dict[str, Sequence[float]],
    path: Path,
    title: str,
    ylabel: str,
    train: dict[str, Sequence[float]] | None = None,
    selected: dict[str, int] | None = None,
    data_note: str = "",
) -> Path:
    """One line per named series against epochs 1..n (dashed, same colour: its training accuracy), a
    ring at each run's selected epoch and the chance level of seven classes."""
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100, layout="constrained")
    for name, values in curves.items():
        (line,) = ax.plot(range(1, len(values) + 1), values, label=f"{name} (val)", linewidth=1.2)
        if train and name in train:
            ax.plot(range(1, len(train[name]) + 1), train[name], linestyle="--", linewidth=1, color=line.get_color())
        epoch = (selected or {}).get(name)
        if epoch and 1 <= epoch <= len(values):
            ax.scatter([epoch], [values[epoch - 1]], s=60, facecolors="none", edgecolors=line.get_color(), zorder=3)
    ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label="chance (1/7)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title + (" (dashed: training; ring: the selected epoch)" if train else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= 12:
        ax.legend(fontsize=SMALLEST_PT)
    return save_figure(fig, path, data_note)


def plot_search(
    curves: dict[str, Sequence[float]],
    path: Path,
    model: str,
    stopped: set[str] = frozenset(),
    best: str | None = None,
    data_note: str = "",
) -> Path:
    """Left: every trial's validation accuracy per epoch, labelled, its end marked (x: stopped by ASHA,
    star: the best trial, dot: any other end); right: the best so far, trial after trial."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100, layout="constrained")
    best_so_far, running = [], None
    for name, values in curves.items():
        (line,) = left.plot(
            range(1, len(values) + 1), values, "o-", markersize=2, linewidth=1, label=name, color=trial_colour(name)
        )
        if len(values):
            marker, size = ("*", 90) if name == best else ("x", 40) if name in stopped else ("o", 14)
            left.scatter([len(values)], [values[-1]], s=size, marker=marker, color=line.get_color(), zorder=3)
            running = max(values) if running is None else max(running, max(values))
        best_so_far.append(running)
    left.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label="chance (1/7)")
    left.set_xlabel("epoch")
    left.set_ylabel("val_acc")
    left.set_title(f"{model}: every trial (x: stopped by ASHA, star: best)", fontsize=10)
    if 0 < len(curves) <= 16:
        left.legend(fontsize=SMALLEST_PT, ncol=2)
    right.plot(range(1, len(best_so_far) + 1), best_so_far, drawstyle="steps-post", marker="o", markersize=3)
    right.set_xlabel("trial")
    right.set_ylabel("best val_acc so far")
    right.set_title("best so far", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path, data_note)


def plot_importances(found: dict[str, dict[str, float]], path: Path, trials: int, data_note: str = "") -> Path:
    """Horizontal bars: each hyperparameter's importance, one bar per method (fANOVA, PED-ANOVA), the
    number of trials they rest on in the title."""
    params = sorted({p for values in found.values() for p in values})
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(params) + 1.5), dpi=100, layout="constrained")
    height = 0.8 / max(len(found), 1)
    for i, (method, values) in enumerate(found.items()):
        ax.barh(
            [k + i * height for k in range(len(params))],
            [values.get(p, 0.0) for p in params],
            height=height,
            label=method,
        )
    ax.set_yticks([k + height * (len(found) - 1) / 2 for k in range(len(params))], params)
    ax.set_xlabel("importance")
    ax.set_title(f"hyperparameter importance, from {trials} trials", fontsize=10)
    ax.legend(fontsize=SMALLEST_PT)
    return save_figure(fig, path, data_note)


def _label_log_axis(axis) -> None:
    """A log axis labelled at 1, 2 and 5 of each decade when it spans less than about a decade and a half (a
    range inside one decade has one label, or none, otherwise), at the decades when wider; never the
    minor ticks (2x10^-4, 3x10^-4, ... overprint each other)."""
    low, high = sorted(axis.get_view_interval())
    if low > 0 and np.log10(high / low) < 1.5:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(np.inf, np.inf)))
    axis.set_minor_formatter(NullFormatter())


def readable_optuna_plot(axes, trials: int, width: float, names: dict[int, str] | None = None) -> plt.Figure:
    """Optuna's slice or parallel-coordinate plot made readable: a colour map whose low end is not
    white (Optuna's Blues draws the worst trial white, invisible), slanted tick labels that do not
    overprint, ``width`` inches of room laid out by matplotlib's constrained layout, and the trial count in
    the title. With ``names`` (Optuna trial number -> ``t03``), points coloured by trial number (the slice
    plot) take each trial's own colour (:func:`trial_colour`) and a legend of names in place of the colour bar."""
    axes = list(np.atleast_1d(axes).ravel())
    fig = axes[0].figure
    fig.set_size_inches(width, 4.5)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    bar_label = bars[0].get_ylabel() if bars else ""
    mappable = None
    for ax in fig.axes:
        for collection in ax.collections:
            if collection.get_array() is None:
                continue
            if names is None:
                collection.set_cmap("viridis")
                mappable = collection
                continue
            numbers = [int(n) for n in collection.get_array()]
            collection.set_array(None)
            collection.set_facecolor([trial_colour(names.get(n, "")) for n in numbers])
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                _label_log_axis(axis)
        for label in ax.get_xticklabels():
            label.set(rotation=30, ha="right", fontsize=SMALLEST_PT)
        ax.tick_params(axis="y", which="both", labelsize=SMALLEST_PT)
        if len(axes) == 1 and ax is not axes[0] and ax not in bars:  # a parallel-coordinate axis
            for tick in ax.yaxis.get_major_ticks():  # its labels sit on the lines that cross it: give them a ground
                tick.label2.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0})
    _constrained(fig, axes, bars)
    if names is not None:
        handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=trial_colour(name), label=name)
            for _, name in sorted(names.items())
        ]
        fig.legend(
            handles=handles, loc="outside right center", fontsize=SMALLEST_PT, title="trial", title_fontsize=SMALLEST_PT
        )
    elif mappable is not None:
        fig.colorbar(mappable, ax=axes, label=bar_label, pad=0.02)
    fig.suptitle(f"{axes[0].get_title() or fig.get_suptitle()}, {trials} trials", fontsize=10)
    for ax in axes:
        ax.set_title("")
    return fig


def _constrained(fig, panels: list, bars: list) -> None:
    """Hand ``fig`` to matplotlib's constrained layout: Optuna's colour bar goes (it was made without a layout
    engine, which the constrained layout cannot take: ZeroDivisionError), each panel gets its own cell of a
    one-row grid, and a parallel-coordinate plot's twin axes share its one cell."""
    for bar in bars:
        bar.remove()
    grid = fig.add_gridspec(1, len(panels))
    for i, panel in enumerate(panels):
        panel.set_subplotspec(grid[0, i])
    for ax in fig.axes:
        if ax not in panels:  # the twins of a parallel-coordinate plot
            ax.set_subplotspec(grid[0, 0])
    fig.set_layout_engine("constrained")
